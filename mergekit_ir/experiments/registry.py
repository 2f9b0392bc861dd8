"""The declarative registry: checkpoint triplets, datasets and experiments in YAML.

``load_registry`` parses and validates a registry without loading any weights:
unknown plugins, unknown or out-of-range parameters, missing fields, duplicate
names and dangling references are one-line :class:`ConfigError` s naming the YAML
path, e.g. ``experiments.table1.merge.alpha[3]: 2.7 is outside [-2, 2]``.

See ``docs/registry.md`` for the schema and ``registry.yaml`` for the paper's triplets.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergekit_ir.adaptation.spec import AdaptSpec, parse_adapt
from mergekit_ir.errors import ConfigError, MergeIRError, key_label, short_repr
from mergekit_ir.evaluation.datasets import parse_split
from mergekit_ir.evaluation.fusion import FUSION_METHODS, NORMS
from mergekit_ir.evaluation.significance import CORRECTIONS, TESTS
from mergekit_ir.experiments.recipe import Recipe, load_recipe, roles
from mergekit_ir.experiments.registry_yaml import read_yaml
from mergekit_ir.merging.alignment import AlignmentRules
from mergekit_ir.merging.method import check_alpha_grid, check_weights
from mergekit_ir.params import Param, check_params
from mergekit_ir.reports.reported import ReportedRow, parse_reported
from mergekit_ir.results import (
    AGAINST,
    MERGED_AT_1,
    domain_row_keys,
    grid_point,
    model_row_keys,
)
from mergekit_ir.scoring.compiled import BACKENDS
from mergekit_ir.scoring.scorer import DTYPES
from mergekit_ir.tuning.search import SearchSpec, parse_search
from mergekit_ir.tuning.selector import BOOTSTRAP

DEFAULT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(1, 11))


SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
"""Dataset, triplet and experiment names become file and folder names under ``--out``."""


def check_name(name: Any, path: str) -> str:
    """A dataset/triplet/experiment name, which becomes a file name: safe characters only."""
    text = str(name)
    if not SAFE_NAME.match(text):
        raise ConfigError(
            f"{path}: name {short_repr(text)} is not allowed (it becomes a file name): use letters, "
            "digits, '.', '_', '+' or '-', starting with a letter or digit, at most 100 characters"
        )
    return text


# -- typed registry ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint, a LoRA adapter or a saved task vector, as written in the registry."""

    ref: str
    kind: str = "checkpoint"  # checkpoint | lora | task_vector | adapt
    revision: str | None = None
    adapt: AdaptSpec | None = None  # kind adapt: ΘD built by `mergeir adapt` before merging

    @property
    def is_model(self) -> bool:
        """A full checkpoint (ΘD with a row of its own), given or built."""
        return self.kind == "checkpoint" or (
            self.kind == "adapt" and self.adapt is not None and self.adapt.lora is None
        )

    def describe(self) -> str:
        if self.adapt is not None:
            return self.adapt.describe()
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.ref}{rev}" if self.kind == "checkpoint" else f"{self.kind}:{self.ref}"


@dataclass(frozen=True)
class Triplet:
    name: str
    ir: CheckpointRef
    domains: tuple[CheckpointRef, ...]
    pretrained: CheckpointRef | None
    scorer: str
    scorer_options: Mapping[str, Any]
    alignment: AlignmentRules = AlignmentRules()
    description: str = ""

    @property
    def domain_rows(self) -> tuple[str, ...]:
        """Result row keys of the ΘD checkpoints run alone: ``domain``, or ``domain1``… for several.

        LoRA adapters and saved task vectors have no model of their own to run, so no row.
        """
        return domain_row_keys(sum(d.is_model for d in self.domains))

    @property
    def rows(self) -> tuple[str, ...]:
        """Every model row key a run of this triplet produces, in table order (after the
        first stage's own row)."""
        return model_row_keys(self.pretrained is not None, len(self.domain_rows))


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    beir: str | None = None
    ir_datasets: str | None = None
    test: str = "test"
    dev: str | None = None
    language: str = "english"
    description: str = ""


@dataclass(frozen=True)
class SelectorSpec:
    """One α selector as the registry names it (``tuning.alpha`` or a ``tuning.compare`` entry)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    guard: bool = False
    bootstrap: int = 1000
    confidence: float = 0.95
    label: str = ""


#: Keys of a ``tuning.alpha`` mapping that the runner reads; the rest are the selector's params.
SELECTOR_KEYS = ("selector", "guard", "bootstrap", "confidence")


@dataclass(frozen=True)
class Experiment:
    name: str
    triplets: tuple[str, ...]
    datasets: tuple[str, ...]
    method: str = "task_arithmetic"
    alphas: tuple[Any, ...] = DEFAULT_ALPHAS
    merge_params: Mapping[str, Any] = field(default_factory=dict)
    first_stage: str = "bm25s"
    first_stage_params: Mapping[str, Any] = field(default_factory=dict)
    k: int = 100
    fusion_method: str = "wsum"
    fusion_norm: str = "min-max"
    fusion_params: Mapping[str, Any] = field(default_factory=lambda: {"weights": [0.5, 0.5]})
    tune_fusion: bool = False
    tune_alpha: bool = True
    transfer_alpha: bool = False
    #: α selectors (first: the one Θ'(tuned α) uses; the rest compared in selection.md);
    #: empty: ``tuning.alpha: true`` / absent, the dev protocol without a selection report
    alpha_selectors: tuple[SelectorSpec, ...] = ()
    #: how the dev sweep searches the grid (``tuning.search``): every point on every dev
    #: query, or successive halving over query subsets (mergekit_ir.tuning.search)
    search: SearchSpec = SearchSpec()
    eval_queries: str = "all"
    objective: str = "NDCG@10"
    metrics: tuple[str, ...] = ("P@10", "NDCG@3", "NDCG@10", "MAP@100")
    significance_test: str = "student"
    max_p: float = 0.01
    correction: str = "bonferroni"
    comparisons: int | None = None
    #: method parameters swept with α: (name, values) per dimension; ``alphas`` then holds
    #: grid points (see ``results.grid_point``)
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    #: what the verdicts compare the merged rows with (theta_t, best_baseline)
    significance_against: tuple[str, ...] = AGAINST
    batch_size: int = 32
    dtype: str = "auto"
    backend: str = "auto"
    seed: int = 0
    description: str = ""
    reported: tuple[ReportedRow, ...] = ()
    executor: str = "local"
    executor_params: Mapping[str, Any] = field(default_factory=dict)
    #: ``merge: {mergekit: recipe.yml}``: Θ' is this mergekit recipe's merge (``method`` is
    #: the mergekit-ir method it maps onto; no α grid, nothing tuned but λ)
    mergekit_recipe: Recipe | None = None


@dataclass
class Registry:
    path: Path
    datasets: dict[str, DatasetSpec]
    triplets: dict[str, Triplet]
    experiments: dict[str, Experiment]

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def experiment(self, name: str) -> Experiment:
        return _get(self.experiments, name, "experiment", self.path)

    def triplet(self, name: str) -> Triplet:
        return _get(self.triplets, name, "triplet", self.path)

    def dataset(self, name: str) -> DatasetSpec:
        return _get(self.datasets, name, "dataset", self.path)


def _get(table: dict[str, Any], name: str, kind: str, path: Path) -> Any:
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table)) or "none"
        if (
            path.resolve() == bundled_registry_path().resolve()
            and not Path("registry.yaml").is_file()
            and not os.environ.get("MERGEIR_REGISTRY")
        ):
            # the bundled registry answered because none was found here: say that first
            raise ConfigError(
                f"no ./registry.yaml in {Path.cwd()} (pass --registry FILE or set "
                f"$MERGEIR_REGISTRY); the bundled registry has no {kind} named "
                f"{short_repr(name)} (it has: {known})"
            ) from None
        raise ConfigError(
            f"{path}: no {kind} named {short_repr(name)} (defined: {known})"
        ) from None


# -- parsing helpers --------------------------------------------------------------------------
def _expect(value: Any, typ: type | tuple[type, ...], path: str, what: str) -> Any:
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(
            f"{path}: expected {what}, got {type(value).__name__} {short_repr(value)}"
        )
    return value


def _section(raw: Mapping[str, Any], key: str, path: str) -> dict[str, Any]:
    """A copy of an optional mapping-valued field (empty when absent)."""
    value = raw.get(key)
    if value is None:
        return {}
    return dict(_expect(value, Mapping, f"{path}.{key}", "a mapping"))


def _keys(
    block: Mapping[str, Any], path: str, allowed: set[str], required: set[str] = frozenset()
) -> None:
    for k in block:
        if k not in allowed:
            raise ConfigError(
                f"{path}.{key_label(k)}: unknown field (allowed: {', '.join(sorted(allowed))})"
            )
    for k in sorted(required):
        if k not in block:
            raise ConfigError(f"{path}.{k}: missing required field")


def _ref(value: Any, path: str) -> CheckpointRef:
    if isinstance(value, str) and value.strip():
        return CheckpointRef(value.strip())
    if isinstance(value, Mapping):
        _keys(value, path, {"checkpoint", "revision", "lora", "task_vector", "adapt"})
        kinds = [k for k in ("checkpoint", "lora", "task_vector", "adapt") if k in value]
        if len(kinds) != 1:
            raise ConfigError(f"{path}: give exactly one of checkpoint, lora, task_vector, adapt")
        kind = kinds[0]
        if kind == "adapt":
            if len(value) != 1:
                raise ConfigError(f"{path}: adapt takes no other field beside it")
            spec = parse_adapt(value["adapt"], f"{path}.adapt")
            return CheckpointRef(f"adapt:{spec.corpus}", "adapt", None, spec)
        ref = _expect(value[kind], str, f"{path}.{kind}", "a hub id or folder")
        rev = value.get("revision")
        if rev is not None:
            _expect(rev, str, f"{path}.revision", "a revision string")
        return CheckpointRef(ref, kind, rev)
    raise ConfigError(
        f"{path}: expected a hub id, a folder, or {{checkpoint|lora|task_vector: ...}}"
    )


def _triplet(name: str, raw: Any, catalog: Any) -> Triplet:
    path = f"triplets.{name}"
    _expect(raw, Mapping, path, "a mapping")
    _keys(
        raw,
        path,
        {"description", "scorer", "pretrained", "domain", "ir", "alignment"},
        {"ir", "domain", "scorer"},
    )
    ir = _ref(raw["ir"], f"{path}.ir")
    if ir.kind != "checkpoint":
        raise ConfigError(f"{path}.ir: ΘT must be a full checkpoint, not a {ir.kind}")
    domains_raw = raw["domain"] if isinstance(raw["domain"], list) else [raw["domain"]]
    if not domains_raw:
        raise ConfigError(f"{path}.domain: give at least one domain checkpoint")
    domains = tuple(
        _ref(d, f"{path}.domain[{i}]" if isinstance(raw["domain"], list) else f"{path}.domain")
        for i, d in enumerate(domains_raw)
    )
    pretrained = (
        _ref(raw["pretrained"], f"{path}.pretrained") if raw.get("pretrained") is not None else None
    )
    if pretrained is not None and pretrained.kind == "adapt":
        raise ConfigError(f"{path}.pretrained: Θ0 must be a checkpoint; adapt builds a domain")
    needs_pre = any(
        d.kind == "checkpoint" or (d.kind == "adapt" and d.adapt.base == "pretrained")
        for d in domains
    )
    if pretrained is None and needs_pre:
        raise ConfigError(
            f"{path}.pretrained: missing required field (needed to form ΘD − Θ0"
            + (
                "; or build ΘD from ΘT with adapt.base: ir)"
                if any(d.kind == "adapt" for d in domains)
                else ")"
            )
        )
    scorer_raw = raw["scorer"]
    if isinstance(scorer_raw, str):
        scorer_raw = {"kind": scorer_raw}
    _expect(scorer_raw, Mapping, f"{path}.scorer", "a scorer kind or {kind: ..., <options>}")
    if "kind" not in scorer_raw:
        raise ConfigError(f"{path}.scorer.kind: missing required field")
    kind = _expect(scorer_raw["kind"], str, f"{path}.scorer.kind", "a scorer name")
    scorer = catalog.scorer(kind, f"{path}.scorer.kind")
    options = check_params(
        scorer.params,
        {k: v for k, v in scorer_raw.items() if k != "kind"},
        f"{path}.scorer",
        f"scorer '{kind}'",
    )
    align_raw = raw.get("alignment") or {}
    _expect(align_raw, Mapping, f"{path}.alignment", "a mapping")
    _keys(align_raw, f"{path}.alignment", {"copy", "skip_missing"})
    copy = align_raw.get("copy") or []
    _expect(copy, list, f"{path}.alignment.copy", "a list of regexes")
    for i, pattern in enumerate(copy):
        _expect(pattern, str, f"{path}.alignment.copy[{i}]", "a regex")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{path}.alignment.copy[{i}]: bad regex ({exc})") from None
    rules = AlignmentRules(tuple(copy), bool(align_raw.get("skip_missing", False)))
    return Triplet(
        name, ir, domains, pretrained, kind, options, rules, str(raw.get("description", ""))
    )


def _dataset(name: str, raw: Any) -> DatasetSpec:
    path = f"datasets.{name}"
    _expect(raw, Mapping, path, "a mapping")
    _keys(raw, path, {"beir", "ir_datasets", "test", "dev", "language", "description"})
    if not raw.get("beir") and not raw.get("ir_datasets"):
        raise ConfigError(f"{path}: give 'beir' (a local BEIR folder) and/or 'ir_datasets' (an id)")
    for k in ("beir", "ir_datasets", "test", "dev", "language"):
        if raw.get(k) is not None:
            _expect(raw[k], str, f"{path}.{k}", "a string")
    for k in ("test", "dev"):
        if raw.get(k) is not None:
            try:
                split, n, pct = parse_split(raw[k])
            except MergeIRError as exc:
                raise ConfigError(f"{path}.{k}: {exc}") from None
            if pct and n is not None and not 0 < n <= 100:
                raise ConfigError(
                    f"{path}.{k}: {short_repr(raw[k])} is not a split; write e.g. test, "
                    "train[:20%] or train[:161]"
                )
    return DatasetSpec(
        name,
        raw.get("beir"),
        raw.get("ir_datasets"),
        raw.get("test", "test"),
        raw.get("dev"),
        raw.get("language", "english"),
        str(raw.get("description", "")),
    )


#: Plain-valued fields of an experiment, declared once: type, range and choices are checked
#: by :class:`Param` (the same checks as plugin parameters and CLI flags).
SCORING_FIELDS = (
    Param("dtype", str, "auto", "scoring precision", choices=DTYPES),
    Param(
        "backend",
        str,
        "auto",
        "torch, or a compiled backend for fixed weights (docs/scorers.md)",
        choices=BACKENDS,
    ),
)
EVALUATION_FIELDS = (
    Param(
        "queries",
        str,
        "all",
        "all judged queries, or those the first stage retrieved anything for",
        choices=("all", "retrieved"),
    ),
)
SIGNIFICANCE_FIELDS = (
    Param("test", str, "student", "paired test", choices=TESTS),
    Param("max_p", float, 0.01, "significance level", min=0.0, max=1.0),
    Param("correction", str, "bonferroni", "multiple-comparison correction", choices=CORRECTIONS),
)
SEED = Param("seed", int, 0, "seed for heads a checkpoint lacks and random merge masks")

EXPERIMENT_FIELDS = (
    "description",
    "triplets",
    "datasets",
    "merge",
    "first_stage",
    "fusion",
    "metrics",
    "tuning",
    "significance",
    "scoring",
    "seed",
    "evaluation",
    "reported",
    "executor",
)


def _fields(
    section: Mapping[str, Any], declared: Sequence[Param], path: str, also: Sequence[str] = ()
) -> dict[str, Any]:
    """A section of plain values checked against its declaration (unknown keys, types, ranges);
    ``also`` names the section's other keys, checked by the caller."""
    _keys(section, path, {p.name for p in declared} | set(also))
    return {p.name: p.check(section.get(p.name, p.default), f"{path}.{p.name}") for p in declared}


def _positive_int(value: Any, path: str) -> int:
    _expect(value, int, path, "a positive integer")
    if value < 1:
        raise ConfigError(f"{path}: {value} must be at least 1")
    return value


def _experiment(name: str, raw: Any, reg: Registry, catalog: Any) -> Experiment:
    """One experiment, each section checked by its own function; errors name the YAML path."""
    path = f"experiments.{name}"
    _expect(raw, Mapping, path, "a mapping")
    _keys(raw, path, set(EXPERIMENT_FIELDS), {"triplets", "datasets"})
    trips = _members(raw["triplets"], reg.triplets, f"{path}.triplets", "triplet")
    dsets = _members(raw["datasets"], reg.datasets, f"{path}.datasets", "dataset")
    kw: dict[str, Any] = {
        "name": name,
        "triplets": trips,
        "datasets": dsets,
        "description": str(raw.get("description", "")),
        **_merge_section(_section(raw, "merge", path), trips, reg, catalog, f"{path}.merge"),
        **_first_stage_section(_section(raw, "first_stage", path), catalog, f"{path}.first_stage"),
        **_fusion_section(_section(raw, "fusion", path), f"{path}.fusion"),
        **_metrics_section(raw.get("metrics"), f"{path}.metrics"),
        **_tuning_section(_section(raw, "tuning", path), catalog, f"{path}.tuning"),
        **_significance_section(_section(raw, "significance", path), f"{path}.significance"),
        **_scoring_section(_section(raw, "scoring", path), f"{path}.scoring"),
        **_executor_section(_section(raw, "executor", path), catalog, f"{path}.executor"),
    }
    kw["eval_queries"] = _fields(
        _section(raw, "evaluation", path), EVALUATION_FIELDS, f"{path}.evaluation"
    )["queries"]
    if kw.get("mergekit_recipe") is not None:
        _no_alpha_to_tune(_section(raw, "tuning", path), f"{path}.tuning")
        kw["tune_alpha"] = False
    if kw["grid"] and kw.get("alpha_selectors"):
        names = ", ".join(n for n, _ in kw["grid"])
        raise ConfigError(
            f"{path}.tuning.alpha: α selectors choose α alone, and merge also sweeps {names}; "
            "tune the grid on dev (tuning.alpha: true) or give those parameters one value"
        )
    if "seed" in raw:
        kw["seed"] = SEED.check(raw["seed"], f"{path}.seed")
    if raw.get("reported") is not None:
        first_stage_row = catalog.first_stage(kw["first_stage"]).row_key
        kw["reported"] = parse_reported(
            raw["reported"],
            f"{path}.reported",
            triplets={
                t: (
                    first_stage_row,
                    *(  # a recipe's Θ' is one row: merged@best
                        r
                        for r in reg.triplets[t].rows
                        if kw.get("mergekit_recipe") is None or r != MERGED_AT_1
                    ),
                )
                for t in trips
            },
            first_stage_row=first_stage_row,
            datasets=dsets,
            metrics=kw.get("metrics", Experiment.metrics),
            ablation_metric=kw.get("objective", Experiment.objective),
            alphas=kw["alphas"],
            sweep_datasets=[d for d in dsets if reg.datasets[d].dev] if kw["tune_alpha"] else [],
        )
    return Experiment(**kw)


def _members(value: Any, defined: Mapping[str, Any], path: str, kind: str) -> tuple[str, ...]:
    """A name or list of names, each defined in the registry's ``kind`` section."""
    names = value if isinstance(value, list) else [value]
    for i, n in enumerate(names):
        _expect(n, str, f"{path}[{i}]", f"a {kind} name")
        if n not in defined:
            raise ConfigError(
                f"{path}[{i}]: unknown {kind} {short_repr(n)} (defined: {', '.join(sorted(defined)) or 'none'})"
            )
    return tuple(names)


def _merge_section(
    merge: dict[str, Any], trips: Sequence[str], reg: Registry, catalog: Any, path: str
) -> dict[str, Any]:
    if "mergekit" in merge:
        return _recipe_section(merge, reg, path)
    method_name = _expect(merge.pop("method", "task_arithmetic"), str, f"{path}.method", "a name")
    method = catalog.merge_method(method_name, f"{path}.method")
    if method.param("alpha") is None:
        raise ConfigError(f"{path}.method: '{method_name}' declares no 'alpha' parameter to sweep")
    alphas = check_alpha_grid(method, merge.pop("alpha", list(DEFAULT_ALPHAS)), f"{path}.alpha")
    grid = _parameter_grid(method, merge, path)
    if grid:
        alphas = tuple(
            grid_point({"alpha": a, **dict(zip((n for n, _ in grid), combo, strict=True))})
            for a in alphas
            for combo in itertools.product(*(values for _, values in grid))
        )
    fixed = check_params(
        [p for p in method.params if p.name != "alpha"],
        merge,
        path,
        f"merge method '{method_name}'",
    )
    # a swept parameter is not a fixed one: Θ'(α = 1) runs at the method's default for it
    fixed = {k: v for k, v in fixed.items() if k not in dict(grid)}
    if fixed.get("weights") is not None:
        for t in trips:
            check_weights(fixed["weights"], len(reg.triplets[t].domains), f"{path}.weights")
    return {
        "method": method_name,
        "alphas": alphas,
        "merge_params": fixed,
        "grid": tuple((n, v) for n, v in grid),
    }


def _recipe_section(merge: dict[str, Any], reg: Registry, path: str) -> dict[str, Any]:
    """``merge: {mergekit: recipe.yml}``: Θ' is a mergekit recipe's merge. The recipe (a path
    relative to the registry file) is read and checked now, before any work; what it cannot
    reproduce is one line naming this YAML path and the recipe's field."""
    others = [k for k in merge if k != "mergekit"]
    if others:
        raise ConfigError(
            f"{path}.{key_label(others[0])}: not allowed beside mergekit: (the recipe names the "
            "merge method and every parameter); give one or the other"
        )
    value = merge["mergekit"]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"{path}.mergekit: expected the path of a mergekit recipe (YAML, relative to the "
            f"registry file), got {type(value).__name__} {short_repr(value)}"
        )
    written = value.strip()
    file = Path(written) if Path(written).is_absolute() else reg.base_dir / written
    try:
        recipe = load_recipe(file)
        method = roles(recipe).method
    except ConfigError as exc:
        text = str(exc)
        if text.startswith(f"{file}: "):  # the recipe as the registry names it
            text = f"{written}: {text[len(str(file)) + 2 :]}"
        raise ConfigError(f"{path}.mergekit: {text}") from None
    return {
        "method": method,
        "alphas": (),
        "merge_params": {},
        "grid": (),
        "mergekit_recipe": recipe,
    }


def _no_alpha_to_tune(tuning: Mapping[str, Any], path: str) -> None:
    """A recipe's Θ' is one fixed model: asking to tune or select its α is an error."""
    for key in ("alpha", "compare", "transfer"):
        value = tuning.get(key)
        if value is None or value is False:
            continue
        raise ConfigError(
            f"{path}.{key}: merge is a mergekit recipe, whose Θ' is one fixed model with no α "
            "to tune or select; remove it (λ may still be tuned: fusion.tune)"
        )


def _parameter_grid(
    method: Any, merge: dict[str, Any], path: str
) -> list[tuple[str, tuple[Any, ...]]]:
    """Numeric method parameters given as a list of values: each a grid dimension swept with α
    (removed from ``merge``); one value is a fixed parameter, as before. A list of ``filter``
    rules stays a layer-wise value."""
    grid = []
    for p in method.params:
        value = merge.get(p.name)
        if p.name in ("alpha", "weights") or p.type not in (int, float):
            continue
        if not isinstance(value, list) or not value:
            continue
        if any(isinstance(v, Mapping) for v in value):
            continue  # layer-wise rules ({filter: …, value: …}), checked as a fixed value
        merge.pop(p.name)
        values = tuple(p.check(v, f"{path}.{p.name}[{i}]") for i, v in enumerate(value))
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{path}.{p.name}: a value is listed twice; give each once")
        if len(values) == 1:
            merge[p.name] = values[0]
            continue
        grid.append((p.name, values))
    return grid


def _first_stage_section(fs: dict[str, Any], catalog: Any, path: str) -> dict[str, Any]:
    backend = _expect(fs.pop("backend", "bm25s"), str, f"{path}.backend", "a name")
    kind = catalog.first_stage(backend, f"{path}.backend")
    k = _positive_int(fs.pop("k", 100), f"{path}.k")
    return {
        "first_stage": backend,
        "k": k,
        "first_stage_params": check_params(kind.params, fs, path, f"backend '{backend}'"),
    }


def _fusion_section(fusion: dict[str, Any], path: str) -> dict[str, Any]:
    _keys(fusion, path, {"method", "norm", "weights", "params", "tune"})
    fmethod = fusion.get("method", "wsum")
    if not isinstance(fmethod, str) or fmethod.lower() not in FUSION_METHODS:
        raise ConfigError(
            f"{path}.method: unknown ranx fusion {short_repr(fmethod)} (e.g. wsum, rrf, combsum, combmnz)"
        )
    norm = fusion.get("norm", "min-max")
    if norm not in NORMS:
        raise ConfigError(
            f"{path}.norm: unknown normalisation {short_repr(norm)} (one of {', '.join(NORMS)})"
        )
    params = _section(fusion, "params", path)
    if "weights" in fusion:
        w = fusion["weights"]
        if not (
            isinstance(w, list)
            and len(w) == 2
            and all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                for x in w
            )
        ):
            raise ConfigError(
                f"{path}.weights: give two numbers [λ_BM25, λ_model], e.g. [0.5, 0.5]"
            )
        params["weights"] = [float(x) for x in w]
    elif fmethod == "wsum":
        params.setdefault("weights", [0.5, 0.5])
    return {
        "fusion_method": fmethod,
        "fusion_norm": norm,
        "fusion_params": params,
        "tune_fusion": bool(fusion.get("tune", False)),
    }


def _metrics_section(metrics: Any, path: str) -> dict[str, Any]:
    from mergekit_ir.evaluation.metrics import ranx_metric  # ranx loads on first use

    if metrics is None:
        return {}
    _expect(metrics, list, path, "a list such as [P@10, NDCG@10]")
    for i, m in enumerate(metrics):
        _expect(m, str, f"{path}[{i}]", "a metric such as NDCG@10")
        try:
            ranx_metric(str(m))
        except ConfigError as exc:
            raise ConfigError(f"{path}[{i}]: {exc}") from None
    return {"metrics": tuple(str(m) for m in metrics)}


def _tuning_section(tuning: dict[str, Any], catalog: Any, path: str) -> dict[str, Any]:
    from mergekit_ir.evaluation.metrics import ranx_metric

    _keys(tuning, path, {"objective", "alpha", "transfer", "compare", "search"})
    out: dict[str, Any] = {}
    if "objective" in tuning:
        try:
            ranx_metric(str(tuning["objective"]))
        except ConfigError as exc:
            raise ConfigError(f"{path}.objective: {exc}") from None
        out["objective"] = str(tuning["objective"])
    alpha_cfg = tuning.get("alpha", True)
    if isinstance(alpha_cfg, Mapping):
        specs = [_selector(alpha_cfg, f"{path}.alpha", catalog)]
        compare = tuning.get("compare") or []
        _expect(compare, list, f"{path}.compare", "a list of {selector: name, ...}")
        specs += [_selector(c, f"{path}.compare[{i}]", catalog) for i, c in enumerate(compare)]
        seen: dict[str, str] = {}
        for i, sp in enumerate(specs):
            where = f"{path}.alpha" if i == 0 else f"{path}.compare[{i - 1}]"
            if sp.label in seen:
                raise ConfigError(
                    f"{where}: selector {sp.label} is already given at {seen[sp.label]}; "
                    "give each selector once (or other params)"
                )
            seen[sp.label] = where
        out["alpha_selectors"] = tuple(specs)
        alpha_cfg = True
    elif "compare" in tuning:
        raise ConfigError(
            f"{path}.compare: needs tuning.alpha as a mapping, e.g. {{selector: dev}}"
        )
    if not isinstance(alpha_cfg, bool):
        raise ConfigError(
            f"{path}.alpha: {short_repr(alpha_cfg)} is neither true/false nor a mapping "
            "such as {selector: pseudo-queries, source: title}"
        )
    out["tune_alpha"] = alpha_cfg
    out["transfer_alpha"] = bool(tuning.get("transfer", False))
    if tuning.get("search") is not None:
        out["search"] = parse_search(tuning["search"], f"{path}.search")
        if out["search"].method != "grid" and (out.get("alpha_selectors") or not alpha_cfg):
            why = "α selectors choose α" if alpha_cfg else "tuning.alpha is false"
            raise ConfigError(
                f"{path}.search: searches the dev sweep of tuning.alpha: true, and {why}; "
                "remove it or tune on dev"
            )
    return out


def _significance_section(sig: dict[str, Any], path: str) -> dict[str, Any]:
    fields = _fields(sig, SIGNIFICANCE_FIELDS, path, also=["comparisons", "against"])
    against = sig.get("against", list(AGAINST))
    if isinstance(against, str):
        against = [against]
    if (
        not isinstance(against, list)
        or not against
        or any(a not in AGAINST for a in against)
        or len(set(against)) != len(against)
    ):
        raise ConfigError(
            f"{path}.against: {short_repr(against)}; give one or both of "
            f"{', '.join(AGAINST)} (what the merged rows are compared with)"
        )
    if not 0 < fields["max_p"] < 1:
        raise ConfigError(f"{path}.max_p: {short_repr(fields['max_p'])} is outside (0, 1)")
    comparisons = sig.get("comparisons")
    if comparisons is not None and (
        isinstance(comparisons, bool) or not isinstance(comparisons, int) or comparisons < 1
    ):
        raise ConfigError(
            f"{path}.comparisons: {short_repr(comparisons)} is not a positive integer "
            "(the Bonferroni m; leave it out to use the number of merged rows)"
        )
    if comparisons is not None and fields["correction"] != "bonferroni":
        raise ConfigError(
            f"{path}.comparisons: only used with correction: bonferroni; "
            "remove it or set the correction"
        )
    return {
        "significance_test": fields["test"],
        "max_p": fields["max_p"],
        "correction": fields["correction"],
        "comparisons": comparisons,
        "significance_against": tuple(against),
    }


def _scoring_section(scoring: dict[str, Any], path: str) -> dict[str, Any]:
    fields = _fields(scoring, SCORING_FIELDS, path, also=["batch_size"])
    return {
        **fields,
        "batch_size": _positive_int(scoring.get("batch_size", 32), f"{path}.batch_size"),
    }


def _executor_section(ex: dict[str, Any], catalog: Any, path: str) -> dict[str, Any]:
    name = _expect(ex.pop("kind", "local"), str, f"{path}.kind", "an executor name")
    kind = catalog.executor(name, f"{path}.kind")
    return {
        "executor": name,
        "executor_params": check_params(kind.params, ex, path, f"executor '{name}'"),
    }


def _selector(raw: Any, path: str, catalog: Any) -> SelectorSpec:
    """A ``{selector: name, guard:, bootstrap:, confidence:, <selector params>}`` mapping."""
    _expect(raw, Mapping, path, "a mapping such as {selector: pseudo-queries, source: title}")
    given = dict(raw)
    name = _expect(given.pop("selector", "dev"), str, f"{path}.selector", "a selector name")
    sel = catalog.alpha_selector(name, f"{path}.selector")
    guard = given.pop("guard", False)
    _expect(guard, bool, f"{path}.guard", "true or false")
    samples = given.pop("bootstrap", BOOTSTRAP.default)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ConfigError(f"{path}.bootstrap: {short_repr(samples)} is not a whole number ≥ 0")
    samples = BOOTSTRAP.check_scalar(samples, f"{path}.bootstrap")  # capped: bounded work
    conf = given.pop("confidence", 0.95)
    if isinstance(conf, bool) or not isinstance(conf, int | float) or not 0 < conf < 1:
        raise ConfigError(f"{path}.confidence: {short_repr(conf)} is outside (0, 1)")
    params = check_params(sel.params, given, path, f"α selector '{name}'")
    label = name + (f":{params['source']}" if "source" in params else "")
    return SelectorSpec(
        name, params, guard, samples, float(conf), label + ("+guard" if guard else "")
    )


def _named(raw: Mapping[str, Any], section: str) -> list[tuple[str, Any]]:
    """(checked name, value) for each entry of a section, in file order."""
    out: dict[str, Any] = {}
    for n, v in (raw.get(section) or {}).items():
        name = check_name(n, f"{section}.{key_label(n)}")
        if name in out:
            raise ConfigError(f"{section}.{name}: defined twice; rename one of them")
        out[name] = v
    return list(out.items())


def load_registry(path: str | Path) -> Registry:
    """Parse and validate a registry file (no weights or data are touched)."""
    from mergekit_ir.plugin_host import catalog

    path = Path(path)
    raw = read_yaml(path)
    if raw is None:
        raise ConfigError(
            f"{path}: the registry is empty (no datasets, triplets or experiments); "
            "see docs/registry.md for the schema"
        )
    _expect(raw, Mapping, str(path), "a mapping with datasets, triplets and experiments")
    if not any(raw.get(s) for s in ("datasets", "triplets", "experiments")):
        raise ConfigError(
            f"{path}: the registry defines no datasets, triplets or experiments; "
            "see docs/registry.md for the schema"
        )
    for k in raw:
        if k not in ("version", "datasets", "triplets", "experiments"):
            raise ConfigError(
                f"{key_label(k)}: unknown top-level section (allowed: version, datasets, triplets, experiments)"
            )
    cat = catalog()
    reg = Registry(path.resolve(), {}, {}, {})
    for section in ("datasets", "triplets", "experiments"):
        if raw.get(section) is not None:
            _expect(raw[section], Mapping, section, "a mapping of names")
    reg.datasets = {n: _dataset(n, v) for n, v in _named(raw, "datasets")}
    reg.triplets = {n: _triplet(n, v, cat) for n, v in _named(raw, "triplets")}
    reg.experiments = {n: _experiment(n, v, reg, cat) for n, v in _named(raw, "experiments")}
    return reg


def bundled_registry_path() -> Path:
    """The registry shipped inside the package (the repository's top-level ``registry.yaml``)."""
    from importlib.resources import files

    return Path(str(files("mergekit_ir") / "registry.yaml"))


def default_registry_path() -> Path:
    """``$MERGEIR_REGISTRY``, else ``./registry.yaml``, else the one bundled with the package."""
    env = os.environ.get("MERGEIR_REGISTRY")
    if env:
        return Path(env)
    local = Path("registry.yaml")
    if local.is_file():
        return local
    bundled = bundled_registry_path()
    if bundled.is_file():
        return bundled
    raise ConfigError("no registry.yaml in this folder and none bundled; pass --registry FILE")
