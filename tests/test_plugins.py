"""The plugin host: discovery, duplicates, errors, and the documented third-party plugin."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mergekit_ir import MergeMethod, hookimpl
from mergekit_ir.cli import main
from mergekit_ir.errors import PluginError
from mergekit_ir.plugin_host import catalog, collect, make_plugin_manager

ROOT = Path(__file__).resolve().parents[1]


def test_builtins_come_from_entry_points():
    cat = catalog()
    assert {"task_arithmetic", "ties", "dare_ties", "dare_linear"} <= set(cat.merge_methods)
    assert {"bi-encoder", "cross-encoder", "monot5", "causal-lm"} <= set(cat.scorers)
    assert "bm25s" in cat.first_stages
    assert cat.merge_methods["task_arithmetic"].plugin.startswith("task_arithmetic (mergekit-ir)")


def test_duplicate_names_name_both_plugins():
    def fn(theta_t, taus, **kw):
        return theta_t

    class A:
        @hookimpl
        def register_merge_methods(self, register):
            register(MergeMethod("same", "a", fn))

    class B:
        @hookimpl
        def register_merge_methods(self, register):
            register(MergeMethod("same", "b", fn))

    pm = make_plugin_manager(load_entrypoints=False)
    pm.register(A(), name="plugin_a")
    pm.register(B(), name="plugin_b")
    with pytest.raises(
        PluginError,
        match=r"merge method 'same' is registered twice: by plugin plugin_\w and by plugin plugin_\w",
    ):
        collect(pm)


def test_unknown_name_lists_installed():
    with pytest.raises(
        PluginError,
        match=r"--method: unknown merge method 'nope' \(installed: .*ties.*\); see `mergeir plugins`",
    ):
        catalog().merge_method("nope", "--method")


def test_plugins_command_lists_params():
    res = CliRunner().invoke(main, ["plugins"])
    assert res.exit_code == 0
    assert "task_arithmetic" in res.output and "alpha: float = 1.0 in [-2, 2]" in res.output
    assert "bm25s" in res.output and "bi-encoder" in res.output


def doc_files() -> dict[str, str]:
    text = (ROOT / "docs" / "plugins.md").read_text()
    return {
        m.group(1): m.group(2)
        for m in re.finditer(r"<!-- file: (\S+) -->\n```\w+\n(.*?)```", text, re.S)
    }


def test_documented_example_function():
    ns: dict = {}
    exec(doc_files()["mergekit-ir-clipped/mergekit_ir_clipped.py"], ns)
    out = ns["clipped_task_arithmetic"](
        torch.zeros(3), [torch.tensor([0.5, -0.005, -2.0])], alpha=1.0, clip=0.01
    )
    assert torch.equal(out, torch.tensor([0.01, -0.005, -0.01]))


@pytest.mark.slow
def test_third_party_plugin_from_docs(tmp_path, tiny_triplet):
    """Install the package exactly as docs/plugins.md writes it, then use it from the CLI."""
    for rel, content in doc_files().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content)
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(tmp_path / "mergekit-ir-clipped"),
        ],
        check=True,
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "MERGEIR_CACHE": str(tmp_path / "cache"),
    }
    mergeir = [sys.executable, "-c", "from mergekit_ir.cli import main; main()"]
    listed = subprocess.run(
        [*mergeir, "plugins"], env=env, capture_output=True, text=True, check=True
    )
    assert "clipped_task_arithmetic" in listed.stdout and "mergekit-ir-clipped" in listed.stdout
    assert "clip: float = 0.01 in [0, 10] (layer-wise)" in listed.stdout
    merged = subprocess.run(
        [
            *mergeir,
            "merge",
            "--ir",
            str(tiny_triplet["ir"]),
            "--pretrained",
            str(tiny_triplet["pretrained"]),
            "--domain",
            str(tiny_triplet["domain"]),
            "--method",
            "clipped_task_arithmetic",
            "--param",
            "clip=0.001",
            "--out",
            str(tmp_path / "m"),
            "-q",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert merged.returncode == 0, merged.stderr
    from safetensors.torch import load_file

    k = "bert.encoder.layer.0.attention.self.query.weight"
    diff = (
        load_file(tmp_path / "m" / "model.safetensors")[k]
        - load_file(tiny_triplet["ir"] / "model.safetensors")[k]
    )
    assert diff.abs().max() <= 0.001 + 1e-7 and diff.abs().max() > 0
    ran = subprocess.run(
        [
            *mergeir,
            "run",
            "clipped",
            "--registry",
            str(tmp_path / "registry-clipped.yaml"),
            "--out",
            str(tmp_path / "out"),
            "-q",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 0, ran.stderr
    assert "Θ' (α=1)" in ran.stdout and (tmp_path / "out" / "results.json").is_file()


# -- the one door, enforced -------------------------------------------------------------------
def test_misspelt_hook_is_an_error_naming_the_plugin():
    from mergekit_ir.plugin_host import register_plugin

    class Typo:
        @hookimpl
        def register_merge_method(self, register):  # missing "s": would contribute nothing
            raise AssertionError("never called")

    pm = make_plugin_manager(load_entrypoints=False)
    register_plugin(pm, Typo(), "typo_plugin", "typo-dist")
    with pytest.raises(PluginError) as err:
        collect(pm)
    assert str(err.value) == (
        "plugin typo_plugin (typo-dist): 'register_merge_method' is not a mergekit_ir hook; "
        "did you mean 'register_merge_methods'?"
    )


def test_wrong_hook_argument_is_one_line():
    from mergekit_ir.plugin_host import register_plugin

    class WrongArg:
        @hookimpl
        def register_scorers(self, reg):
            pass

    pm = make_plugin_manager(load_entrypoints=False)
    with pytest.raises(
        PluginError, match=r"^plugin wrong \(wrong-dist\): .*reg.*; fix the hook's signature$"
    ):
        register_plugin(pm, WrongArg(), "wrong", "wrong-dist")


def test_failing_registration_names_the_plugin():
    from mergekit_ir.plugin_host import register_plugin

    class Broken:
        @hookimpl
        def register_first_stages(self, register):
            raise RuntimeError("boom")

    pm = make_plugin_manager(load_entrypoints=False)
    register_plugin(pm, Broken(), "broken", "broken-dist")
    with pytest.raises(
        PluginError,
        match=r"^plugin broken \(broken-dist\): register_first_stages failed \(RuntimeError: boom\)$",
    ):
        collect(pm)


def _fake_distribution(site: Path, dist: str, module: str, ep_name: str) -> None:
    """A real installed distribution (dist-info with entry points) that importlib.metadata finds."""
    (site / f"{module}.py").write_text("")
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[mergekit_ir]\n{ep_name} = {module}\n")


def test_entry_point_name_collision_names_both_packages(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "first-pkg", "first_mod", "shared_name")
    _fake_distribution(tmp_path, "second-pkg", "second_mod", "shared_name")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as err:
        make_plugin_manager()
    msg = str(err.value)
    assert "entry point 'shared_name'" in msg and "first-pkg" in msg and "second-pkg" in msg
    assert msg.endswith("uninstall one of them")


def test_builtin_plugins_import_only_public_names():
    """Built-ins use the same toolkit a third-party author sees: ``from mergekit_ir import ...``."""
    import ast

    import mergekit_ir

    public = set(mergekit_ir.__all__)
    offenders = []
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.startswith("mergekit_ir.") or node.module == "mergekit_ir_plugins":
                    offenders.append(f"{path.name}: from {node.module}")
                elif node.module == "mergekit_ir":
                    offenders += [
                        f"{path.name}: {a.name}" for a in node.names if a.name not in public
                    ]
            elif isinstance(node, ast.Import):
                offenders += [
                    f"{path.name}: import {a.name}"
                    for a in node.names
                    if a.name.startswith("mergekit_ir")
                ]
    assert offenders == []


# -- executors and commands from a plugin (docs/plugins.md "Executors and commands") -----------
def _tools_plugin():
    import types

    module = types.ModuleType("mergekit_ir_tools")
    exec(doc_files()["mergekit-ir-tools/mergekit_ir_tools.py"], module.__dict__)
    return module


@pytest.fixture
def with_tools_plugin(monkeypatch):
    """The installed plugins plus the documented tools plugin, as the CLI sees them."""
    from mergekit_ir import plugin_host

    pm = make_plugin_manager()
    plugin_host.register_plugin(pm, _tools_plugin(), "tools", "mergekit-ir-tools")
    monkeypatch.setattr(plugin_host, "plugin_manager", lambda: pm)
    monkeypatch.setattr(plugin_host, "catalog", lambda: collect(pm))
    return pm


def test_documented_command_plugin_adds_a_command(with_tools_plugin, tiny_triplet):
    res = CliRunner().invoke(main, ["tensors", str(tiny_triplet["ir"])])
    assert res.exit_code == 0, res.output
    assert "bert.encoder.layer.0.attention.self.query.weight (32, 32) float32" in res.output
    assert "tensors" in CliRunner().invoke(main, ["--help"]).output
    # a built-in command is found without loading the plugins' commands
    assert CliRunner().invoke(main, ["validate", "--help"]).exit_code == 0


def test_plugin_command_errors_are_one_line(with_tools_plugin, tmp_path):
    res = CliRunner().invoke(main, ["tensors", str(tmp_path / "absent")])
    assert res.exit_code == 2 and res.output.startswith("error: ") and res.output.count("\n") == 1


def test_a_plugin_command_may_not_take_a_builtin_name(monkeypatch):
    import types

    from mergekit_ir import plugin_host

    module = types.ModuleType("shadow")

    @hookimpl
    def register_commands(cli):
        @cli.command("merge")
        def merge():
            pass

    module.register_commands = register_commands
    pm = make_plugin_manager()
    plugin_host.register_plugin(pm, module, "shadow", "shadow-pkg")
    monkeypatch.setattr(plugin_host, "plugin_manager", lambda: pm)
    res = CliRunner().invoke(main, ["nonesuch"])
    assert res.exit_code == 2
    assert "a plugin adds the command 'merge', which is built in" in res.output


def test_two_plugins_adding_one_command_name_both():
    import types

    from mergekit_ir import plugin_host

    pm = make_plugin_manager(load_entrypoints=False)
    for name in ("first", "second"):
        module = types.ModuleType(name)

        @hookimpl
        def register_commands(cli):
            @cli.command("same")
            def same():
                pass

        module.register_commands = register_commands
        plugin_host.register_plugin(pm, module, name, f"{name}-pkg")
    with pytest.raises(PluginError, match="command 'same' is added twice: by plugin"):
        plugin_host.collect_commands(pm)


@pytest.mark.slow
def test_documented_executor_plugin_runs_jobs_with_its_params(with_tools_plugin, tmp_path):
    res = CliRunner().invoke(
        main,
        [
            "run", "quickstart", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"),
            "--executor", "timed", "--executor-param", "label=job", "-q",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert re.search(r"^job: quickstart-tiny took \d+\.\ds$", res.output, re.M), res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--executor-param", "label"], "error: --executor-param 'label': write NAME=VALUE"),
        (["--executor-param", "lable=x"], "error: --executor timed.lable: unknown parameter"),
    ],
)
def test_executor_params_are_checked_before_any_work(with_tools_plugin, tmp_path, args, message):
    res = CliRunner().invoke(
        main,
        ["run", "quickstart", "--out", str(tmp_path / "o"), "--executor", "timed", *args],
    )
    assert res.exit_code == 2 and res.output.startswith(message), res.output
    assert not (tmp_path / "o").exists()
