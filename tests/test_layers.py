"""The imports follow the layers: no cycle, no import from a lower layer to a higher one.

Every import counts — module level, inside functions (lazy) and under ``TYPE_CHECKING`` —
because a reader cannot tell them apart from the tree. The order, bottom to top, is the one
the README's Layout map lists; a module may import its own layer and the layers below.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Bottom to top. Each entry is a layer: the module prefixes it holds (a prefix matches the
#: module and its sub-modules).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("mergekit_ir.errors", "mergekit_ir.params", "mergekit_ir.ranking", "mergekit_ir.results"),
    ("mergekit_ir.storage",),
    ("mergekit_ir.references",),
    ("mergekit_ir.evaluation", "mergekit_ir.scoring", "mergekit_ir.merging", "mergekit_ir.tuning"),
    ("mergekit_ir.adaptation", "mergekit_ir.reports", "mergekit_ir.execution"),
    ("mergekit_ir.hookspecs", "mergekit_ir.plugin_host"),
    ("mergekit_ir.experiments",),
    ("mergekit_ir.api",),
    ("mergekit_ir.cli", "mergekit_ir.__main__", "mergekit_ir"),
    ("mergekit_ir_plugins",),
)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] == "plugins":
        parts[0] = "mergekit_ir_plugins"
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return package_modules(ROOT)


def package_modules(root: Path = ROOT) -> dict[str, Path]:
    return {
        module_name(p, root): p
        for base in ("mergekit_ir", "plugins")
        for p in (root / base).rglob("*.py")
    }


def imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Our modules that ``name`` imports (``from pkg import sub`` is an import of ``pkg.sub``;
    the implicit import of parent packages is not counted)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in modules]
            targets = subs if len(subs) == len(node.names) else [module, *subs]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    if rank < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and the README)")
    return rank


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)})"
        for src, targets in graph.items()
        for dst in targets
        if layer_of(dst) > layer_of(src)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    return {k: set(v) for k, v in _graph(root).items()}  # a copy: tests add probe edges


@functools.cache
def _graph(root: Path) -> dict[str, frozenset[str]]:
    modules = package_modules(root)
    return {name: frozenset(imports(name, path, modules)) for name, path in modules.items()}


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_no_import_against_the_layer_order():
    assert upward_imports(import_graph()) == []


def test_plugins_use_only_the_public_toolkit():
    graph = import_graph()
    private = sorted(
        f"{src} imports {dst}"
        for src, targets in graph.items()
        if src.startswith("mergekit_ir_plugins")
        for dst in targets
        if dst.startswith("mergekit_ir.")
        or (dst != "mergekit_ir" and not dst.startswith("mergekit_ir_plugins"))
    )
    assert private == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        # merging reaching up to the runner's package
        ("mergekit_ir.merging.probe", "from mergekit_ir.experiments import runner\n"),
        # a lazy import inside a function counts as much as one at the top
        ("mergekit_ir.storage.probe", "def f():\n    import mergekit_ir.cli\n"),
        # and so does a TYPE_CHECKING import
        (
            "mergekit_ir.params_probe",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from mergekit_ir.plugin_host import catalog\n",
        ),
    ],
)
def test_the_check_fails_on_an_added_upward_import(tmp_path, module, source):
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    graph = import_graph()
    assert upward_imports(graph) == []
    if module == "mergekit_ir.params_probe":
        module = "mergekit_ir.params"  # as if the contract layer's params.py held it
    graph[module] = graph.get(module, set()) | imports(module, probe, _modules())
    assert len(upward_imports(graph)) == 1


def test_the_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
