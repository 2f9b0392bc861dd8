"""The plugin host: one pluggy PluginManager, fed from the ``mergekit_ir`` entry points.

Built-in plugins (``plugins/`` in the source tree, installed as ``mergekit_ir_plugins``)
are listed under the same entry-point group as third-party ones; nothing here
knows their names.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from functools import cache
from typing import Any, Generic, TypeVar

import pluggy

from mergekit_ir import hookspecs
from mergekit_ir.errors import PluginError, short_repr
from mergekit_ir.evaluation.first_stage import FirstStageKind
from mergekit_ir.merging.method import MergeMethod
from mergekit_ir.scoring.scorer import ScorerKind

T = TypeVar("T")


@dataclass(frozen=True)
class Registered(Generic[T]):
    """A registered thing and the plugin that provided it."""

    item: T
    plugin: str


@dataclass
class PluginCatalog:
    """Everything the installed plugins registered, by kind and name."""

    merge_methods: dict[str, Registered[MergeMethod]]
    scorers: dict[str, Registered[ScorerKind]]
    first_stages: dict[str, Registered[FirstStageKind]]

    def merge_method(self, name: str, where: str = "merge method") -> MergeMethod:
        return _lookup(self.merge_methods, name, where, "merge method")

    def scorer(self, name: str, where: str = "scorer") -> ScorerKind:
        return _lookup(self.scorers, name, where, "scorer")

    def first_stage(self, name: str, where: str = "first stage") -> FirstStageKind:
        return _lookup(self.first_stages, name, where, "first-stage backend")


def _lookup(table: dict[str, Registered[Any]], name: str, where: str, kind: str) -> Any:
    try:
        return table[name].item
    except (KeyError, TypeError):  # TypeError: a list or mapping where a name belongs
        known = ", ".join(sorted(table)) or "none installed"
        raise PluginError(
            f"{where}: unknown {kind} {short_repr(name)} (installed: {known}); "
            "see `mergeir plugins` or install the plugin that provides it"
        ) from None


def make_plugin_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if load_entrypoints:
        for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
            if pm.get_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must say which one it is
                dist = ep.dist.name if ep.dist else "?"
                raise PluginError(
                    f"plugin '{ep.name}' ({ep.value}, from package {dist}) failed to load: {exc}; "
                    f"fix it or `pip uninstall {dist}`"
                ) from exc
            pm.register(plugin, name=ep.name)
            _DISTS[ep.name] = ep.dist.name if ep.dist else ""
    return pm


_DISTS: dict[str, str] = {}


def _plugin_names(pm: pluggy.PluginManager) -> dict[int, str]:
    """Plugin object -> "entry-point name (package)" for messages."""
    names = {}
    for name, plugin in pm.list_name_plugin():
        dist = _DISTS.get(name)
        names[id(plugin)] = f"{name} ({dist})" if dist else name
    return names


def collect(pm: pluggy.PluginManager) -> PluginCatalog:
    """Call every registration hook; two plugins claiming one name is an error naming both."""
    names = _plugin_names(pm)
    catalog = PluginCatalog({}, {}, {})

    def run(
        hook: pluggy.HookCaller, table: dict[str, Registered[Any]], kind: str, cls: type
    ) -> None:
        for impl in hook.get_hookimpls():
            plugin_name = names.get(id(impl.plugin), impl.plugin_name)

            def register(item: Any, _plugin: str = plugin_name) -> None:
                if not isinstance(item, cls):
                    raise PluginError(
                        f"plugin {_plugin}: register() expects a {cls.__name__}, got {type(item).__name__}"
                    )
                if item.name in table:
                    raise PluginError(
                        f"{kind} '{item.name}' is registered twice: by plugin {table[item.name].plugin} "
                        f"and by plugin {_plugin}; uninstall one of them"
                    )
                table[item.name] = Registered(item, _plugin)

            impl.function(register=register)

    run(pm.hook.register_merge_methods, catalog.merge_methods, "merge method", MergeMethod)
    run(pm.hook.register_scorers, catalog.scorers, "scorer", ScorerKind)
    run(pm.hook.register_first_stages, catalog.first_stages, "first-stage backend", FirstStageKind)
    return catalog


@cache
def catalog() -> PluginCatalog:
    """The installed plugins (entry points loaded once per process)."""
    pm = make_plugin_manager()
    if not pm.get_plugins():
        raise PluginError(
            "no mergekit_ir plugins found: the package is not installed; run `pip install -e .`"
        )
    return collect(pm)


def installed_distributions() -> dict[str, str]:
    """Versions of the packages a run depends on, for manifests."""
    out = {}
    for dist in (
        "mergekit-ir",
        "torch",
        "transformers",
        "safetensors",
        "peft",
        "bm25s",
        "ranx",
        "ir_datasets",
        "pluggy",
        "PyStemmer",
        "sentence-transformers",
    ):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out
