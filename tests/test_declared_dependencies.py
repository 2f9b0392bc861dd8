"""Every third-party module our code, tests and benchmarks import is declared, and CI proves it.

A package installed by hand once made CI green while a fresh machine failed at collection
(`hypothesis`). `.ci/run` now runs the README's test command in a fresh virtual environment;
this test names the undeclared import directly instead of leaving it to a collection error.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"mergekit_ir", "mergekit_ir_plugins"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions() -> dict[str, set[str]]:
    """Distribution names per group: "" for the core dependencies, else the extra's name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"": project["dependencies"], **project["optional-dependencies"]}
    return {
        group: {_normalise(re.match(r"[A-Za-z0-9._-]+", req).group(0)) for req in reqs}
        for group, reqs in groups.items()
    }


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every absolute import in a file, lazy ones inside functions too."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def undeclared(folders: list[str], allowed: set[str]) -> list[str]:
    providers = importlib.metadata.packages_distributions()
    problems = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            local = {p.stem for p in path.parent.glob("*.py")} | {"tests", "benchmarks"}
            for module in sorted(imported_modules(path)):
                if module in sys.stdlib_module_names or module in FIRST_PARTY | local:
                    continue
                dists = {_normalise(d) for d in providers.get(module, [])}
                if not dists:
                    problems.append(f"{path.relative_to(ROOT)}: {module} is not installed")
                elif not dists & allowed:
                    problems.append(
                        f"{path.relative_to(ROOT)}: {module} (from {', '.join(sorted(dists))}) "
                        "is not a declared dependency or extra"
                    )
    return problems


def test_tests_benchmarks_and_scripts_import_only_declared_packages():
    allowed = set().union(*declared_distributions().values())
    assert undeclared(["tests", "benchmarks", "scripts"], allowed) == []


def test_the_package_imports_only_its_dependencies_and_extras():
    # Optional extras (ray, mergekit) may only be imported lazily, where the feature needs them;
    # the catalog test in test_plugins.py checks that the package loads without them.
    allowed = set().union(*declared_distributions().values())
    assert undeclared(["mergekit_ir", "plugins"], allowed) == []


def test_the_check_catches_an_undeclared_import(tmp_path, monkeypatch):
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "test_x.py").write_text("import yaml\nimport pytest\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert undeclared(["probe"], {"pytest"}) == [
        "probe/test_x.py: yaml (from pyyaml) is not a declared dependency or extra"
    ]


def test_ci_runs_the_readme_test_command_in_a_fresh_venv():
    readme_blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    printed = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run"), "--print"], capture_output=True, text=True, check=True
    ).stdout
    assert printed == readme_blocks[1]
    script = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv" in script and 'source "$venv/bin/activate"' in script
