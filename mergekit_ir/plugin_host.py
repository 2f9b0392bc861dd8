"""The plugin host: one pluggy PluginManager, fed from the ``mergekit_ir`` entry points.

Built-in plugins (``plugins/`` in the source tree, installed as ``mergekit_ir_plugins``)
are listed under the same entry-point group as third-party ones; nothing here knows
their names. The host enforces the one door: a misspelt hook, a hook with a wrong
argument name, a plugin that fails to import, two packages claiming one entry-point
name and two plugins claiming one registered name are each a one-line
:class:`PluginError` naming the plugin and its package.
"""

from __future__ import annotations

import difflib
import importlib.metadata
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Generic, TypeVar

import pluggy

from mergekit_ir import hookspecs
from mergekit_ir.errors import MergeIRError, PluginError, short_repr
from mergekit_ir.evaluation.first_stage import FirstStageKind
from mergekit_ir.execution import ExecutorKind
from mergekit_ir.merging.method import MergeMethod
from mergekit_ir.merging.statistics import StatisticKind
from mergekit_ir.scoring.scorer import ScorerKind
from mergekit_ir.tuning.selector import AlphaSelector

T = TypeVar("T")


@dataclass(frozen=True)
class Registered(Generic[T]):
    """A registered thing and the plugin that provided it."""

    item: T
    plugin: str


@dataclass(frozen=True)
class PluginKind:
    """One kind of plugin: its hook, what it registers, and how messages call it."""

    hook: str
    label: str
    cls: type
    attr: str
    heading: str


#: Every kind of plugin, in the order ``mergeir plugins`` lists them. A new kind is one line
#: here, one hook in ``hookspecs`` and one type.
KINDS = (
    PluginKind(
        "register_merge_methods", "merge method", MergeMethod, "merge_methods", "merge methods"
    ),
    PluginKind("register_scorers", "scorer", ScorerKind, "scorers", "scorers"),
    PluginKind(
        "register_first_stages",
        "first-stage backend",
        FirstStageKind,
        "first_stages",
        "first stages",
    ),
    PluginKind(
        "register_alpha_selectors", "α selector", AlphaSelector, "alpha_selectors", "α selectors"
    ),
    PluginKind("register_executors", "executor", ExecutorKind, "executors", "executors"),
    PluginKind("register_statistics", "statistic", StatisticKind, "statistics", "statistics"),
)


@dataclass
class PluginCatalog:
    """Everything the installed plugins registered, by kind and name."""

    merge_methods: dict[str, Registered[MergeMethod]] = field(default_factory=dict)
    scorers: dict[str, Registered[ScorerKind]] = field(default_factory=dict)
    first_stages: dict[str, Registered[FirstStageKind]] = field(default_factory=dict)
    alpha_selectors: dict[str, Registered[AlphaSelector]] = field(default_factory=dict)
    executors: dict[str, Registered[ExecutorKind]] = field(default_factory=dict)
    statistics: dict[str, Registered[StatisticKind]] = field(default_factory=dict)

    def table(self, kind: PluginKind) -> dict[str, Registered[Any]]:
        return getattr(self, kind.attr)

    def merge_method(self, name: str, where: str = "merge method") -> MergeMethod:
        return _lookup(self.merge_methods, name, where, "merge method")

    def scorer(self, name: str, where: str = "scorer") -> ScorerKind:
        return _lookup(self.scorers, name, where, "scorer")

    def first_stage(self, name: str, where: str = "first stage") -> FirstStageKind:
        return _lookup(self.first_stages, name, where, "first-stage backend")

    def alpha_selector(self, name: str, where: str = "α selector") -> AlphaSelector:
        return _lookup(self.alpha_selectors, name, where, "α selector")

    def executor(self, name: str, where: str = "executor") -> ExecutorKind:
        return _lookup(self.executors, name, where, "executor")

    def statistic(self, name: str, where: str = "statistic") -> StatisticKind:
        return _lookup(self.statistics, name, where, "statistic")


def _lookup(table: dict[str, Registered[Any]], name: str, where: str, kind: str) -> Any:
    try:
        return table[name].item
    except (KeyError, TypeError):  # TypeError: a list or mapping where a name belongs
        known = ", ".join(sorted(table)) or "none installed"
        raise PluginError(
            f"{where}: unknown {kind} {short_repr(name)} (installed: {known}); "
            "see `mergeir plugins` or install the plugin that provides it"
        ) from None


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    return ep.dist.name if ep.dist else "?"


def make_plugin_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    """A manager with our hook specs and, by default, every ``mergekit_ir`` entry point."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if load_entrypoints:
        owners: dict[str, str] = {}
        for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
            dist = _dist_name(ep)
            if ep.name in owners:
                if owners[ep.name] == dist:  # the same distribution seen twice on sys.path
                    continue
                raise PluginError(
                    f"entry point '{ep.name}' of group {hookspecs.PROJECT} is declared by two packages, "
                    f"{owners[ep.name]} and {dist}; uninstall one of them"
                )
            owners[ep.name] = dist
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must say which one it is
                raise PluginError(
                    f"plugin '{ep.name}' ({ep.value}, from package {dist}) failed to load: {exc}; "
                    f"fix it or `pip uninstall {dist}`"
                ) from None
            register_plugin(pm, plugin, ep.name, dist)
    return pm


def register_plugin(pm: pluggy.PluginManager, plugin: Any, name: str, dist: str = "") -> None:
    """Register one plugin object; pluggy's validation errors become one line naming it."""
    label = f"{name} ({dist})" if dist else name
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        detail = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise PluginError(f"plugin {label}: {detail}; fix the hook's signature") from None
    _LABELS[name] = label


_LABELS: dict[str, str] = {}


def check_hooks(pm: pluggy.PluginManager) -> None:
    """Every hookimpl must match a hook spec: a misspelt hook would otherwise contribute nothing."""
    known = sorted([*(k.hook for k in KINDS), COMMAND_HOOK])
    for hook_name, caller in vars(pm.hook).items():
        if hook_name.startswith("_") or getattr(caller, "spec", None) is not None:
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook:
                continue
            close = difflib.get_close_matches(hook_name, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known hooks: {', '.join(known)}"
            raise PluginError(
                f"plugin {_LABELS.get(impl.plugin_name, impl.plugin_name)}: '{hook_name}' is not a "
                f"mergekit_ir hook; {hint}"
            )
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:  # anything pluggy finds that we did not
        detail = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise PluginError(f"plugin validation failed: {detail}") from None


def collect(pm: pluggy.PluginManager) -> PluginCatalog:
    """Call every registration hook; two plugins claiming one name is an error naming both."""
    check_hooks(pm)
    catalog = PluginCatalog()
    for kind in KINDS:
        table = catalog.table(kind)
        for impl in getattr(pm.hook, kind.hook).get_hookimpls():
            plugin_name = _LABELS.get(impl.plugin_name, impl.plugin_name)

            def register(
                item: Any,
                _plugin: str = plugin_name,
                _kind: PluginKind = kind,
                _table: dict = table,
            ) -> None:
                if not isinstance(item, _kind.cls):
                    raise PluginError(
                        f"plugin {_plugin}: register() in {_kind.hook} expects a {_kind.cls.__name__}, "
                        f"got {type(item).__name__}"
                    )
                if item.name in _table:
                    raise PluginError(
                        f"{_kind.label} '{item.name}' is registered twice: by plugin "
                        f"{_table[item.name].plugin} and by plugin {_plugin}; uninstall one of them"
                    )
                _table[item.name] = Registered(item, _plugin)

            try:
                impl.function(register=register)
            except MergeIRError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {plugin_name}: {kind.hook} failed ({type(exc).__name__}: {exc})"
                ) from None
    return catalog


@cache
def plugin_manager() -> pluggy.PluginManager:
    """The installed plugins' manager (entry points loaded once per process)."""
    pm = make_plugin_manager()
    if not pm.get_plugins():
        raise PluginError(
            "no mergekit_ir plugins found: the package is not installed; run `pip install -e .`"
        )
    return pm


@cache
def catalog() -> PluginCatalog:
    """The installed plugins' merge methods, scorers, first stages, selectors and executors."""
    return collect(plugin_manager())


#: The hook through which plugins add ``mergeir`` commands (not a kind: it gets the CLI group).
COMMAND_HOOK = "register_commands"


def collect_commands(pm: pluggy.PluginManager) -> dict[str, Any]:
    """Commands the plugins add, by name (click commands). Each plugin fills a group of its
    own, so two plugins claiming one name is an error naming both, never a silent override."""
    import click

    check_hooks(pm)
    commands: dict[str, Any] = {}
    owners: dict[str, str] = {}
    for impl in getattr(pm.hook, COMMAND_HOOK).get_hookimpls():
        plugin_name = _LABELS.get(impl.plugin_name, impl.plugin_name)
        group = click.Group()
        try:
            impl.function(cli=group)
        except MergeIRError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {plugin_name}: {COMMAND_HOOK} failed ({type(exc).__name__}: {exc})"
            ) from None
        for name, command in group.commands.items():
            if name in commands:
                raise PluginError(
                    f"command '{name}' is added twice: by plugin {owners[name]} and by plugin "
                    f"{plugin_name}; uninstall one of them"
                )
            commands[name], owners[name] = command, plugin_name
    return commands


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
