"""Bringing a mergekit recipe: a ``mergekit-yaml`` config merged by our engine, same tensors.

It lives in the experiments layer because a registry experiment may name a recipe
(``merge: {mergekit: recipe.yml}``, checked when the registry loads) and the runner merges it;
``mergekit_ir.api.recipe`` is its public face (``mergeir merge --mergekit-config``).

:func:`load_recipe` reads and checks the YAML (mergekit 0.1.5's schema: ``models`` with
per-model ``parameters``, ``base_model``, ``merge_method``, recipe-wide ``parameters``,
gradients and filters, ``dtype``/``out_dtype``, ``tokenizer_source``, or one ``slices`` entry
taking every layer); everything it cannot reproduce is a one-line :class:`ConfigError` naming
the field. :func:`prepare_recipe_merge` maps it onto a :class:`MergeJob` — which model is ΘT,
Θ0 and each ΘD_i, which of our methods with which parameters — so that the merged tensors
are mergekit's (to fp32 rounding); :func:`write_recipe_merge` writes it (ΘT's config with
the recipe's dtype, the tokenizer ``tokenizer_source`` names, ``mergekit_config.yml``);
:func:`describe_recipe` says what the recipe resolves to (``mergeir merge --plan``).

The mapping (docs/merging.md, "Bringing a mergekit recipe"): mergekit merges *models* about a
base; our methods merge ΘT with task vectors τ_i = ΘD_i − Θ0 (and τT = ΘT − Θ0).

- With ΘT = Θ0 = ``base_model`` the IR vector τT is 0, and a zero vector takes no part in
  any task-vector method here (its trimmed, weighted, sign-elected or thresholded entries are
  all 0): task_arithmetic, ties, breadcrumbs, breadcrumbs_ties, multislerp, ram and
  ramplus_tl map onto the method of the same name with ΘD_i = the other models.
- For the four task-arithmetic methods, a model with weight 1 (lambda 1, no normalize for
  the summing ones) is ΘT instead: base + 1·(ΘT − base) + Σ w_i·τ_i = ΘT + Σ w_i·τ_i, the
  paper's task arithmetic, and ΘT keeps its own tensors (a reranker's head) and config.
- slerp and nearswap: ΘT = Θ0 = base, ΘD = the other model; nuslerp and model_stock need a
  non-zero τT (ΘT = the first model, Θ0 = base); linear and karcher merge models without a
  base (ΘT = Θ0 = the first input).

mergekit's per-model weights become ``weights`` (layer-wise ones through
:func:`layerwise_weights`), its gradients and filters become filter rules on exact tensor
names, evaluated with mergekit's semantics (:func:`evaluate`: substring filters; gradients
over the layers, t = 0 on embeddings *and* on the final norm and head, :func:`positions`).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mergekit_ir.errors import CheckpointError, ConfigError, MergeIRError, key_label, short_repr
from mergekit_ir.experiments.registry_yaml import read_yaml
from mergekit_ir.merging.alignment import AlignmentRules, MergePlan, NameIndex
from mergekit_ir.merging.checkpoint import Rows, TensorInfo, TensorSource, open_checkpoint
from mergekit_ir.merging.engine import MergeJob, MergeReport, build_plan, merge_to_folder
from mergekit_ir.merging.engine import provenance as made_of
from mergekit_ir.merging.method import MergeMethod
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.params import Param, check_params, layer_index
from mergekit_ir.storage.cache import resolve_cache_root

# --------------------------------------------------------------------------------------
# mergekit 0.1.5's merge methods: their parameters, and which of them we reproduce

SHARED, INPUT, NON_BASE = "shared", "input", "non_base"
_REQUIRED = object()


@dataclass(frozen=True)
class _Spec:
    """One parameter of a mergekit merge method (its ``ParameterSpec``)."""

    name: str
    kind: type
    scope: str
    default: Any = _REQUIRED


def _gta(normalize: bool, *extra: _Spec) -> tuple[_Spec, ...]:
    return (
        _Spec("int8_mask", bool, SHARED, False),
        _Spec("normalize", bool, SHARED, normalize),
        _Spec("rescale", bool, SHARED, False),
        _Spec("lambda", float, SHARED, 1.0),
        _Spec("weight", float, NON_BASE),
        _Spec("density", float, NON_BASE, 1.0),
        *extra,
    )


_GAMMA = _Spec("gamma", float, NON_BASE, 0.01)
SPECS: dict[str, tuple[_Spec, ...]] = {
    "task_arithmetic": _gta(False),
    "ties": _gta(True),
    "breadcrumbs": _gta(False, _GAMMA),
    "breadcrumbs_ties": _gta(False, _GAMMA),
    "linear": (_Spec("weight", float, INPUT), _Spec("normalize", bool, SHARED, True)),
    "slerp": (_Spec("t", float, SHARED),),
    "nuslerp": (
        _Spec("weight", float, NON_BASE),
        _Spec("nuslerp_row_wise", bool, SHARED, False),
        _Spec("nuslerp_flatten", bool, SHARED, True),
    ),
    "multislerp": (
        _Spec("weight", float, NON_BASE),
        _Spec("normalize_weights", bool, SHARED, True),
        _Spec("eps", float, SHARED, 1e-8),
    ),
    "karcher": (_Spec("max_iter", int, SHARED, 10), _Spec("tol", float, SHARED, 1e-5)),
    "model_stock": (_Spec("filter_wise", bool, SHARED, False),),
    "nearswap": (_Spec("t", float, SHARED),),
    "ram": (_Spec("epsilon", float, SHARED, 1e-5),),
    "ramplus_tl": (
        _Spec("r", float, SHARED, 0.1),
        _Spec("alpha", float, SHARED, 0.2),
        _Spec("epsilon", float, SHARED, 1e-5),
    ),
}
"""The mergekit methods a recipe may name, with mergekit 0.1.5's parameters and defaults."""

_RANDOM = (
    "mergekit draws its random masks from the global torch RNG, ours are seeded per tensor, "
    "so the tensors cannot match; merge with `mergeir merge --method {m}` instead"
)
UNSUPPORTED_METHODS: dict[str, str] = {
    "dare_ties": _RANDOM.format(m="dare_ties"),
    "dare_linear": _RANDOM.format(m="dare_linear"),
    "della": _RANDOM.format(m="della"),
    "della_linear": _RANDOM.format(m="della_linear"),
    "sce": "mergekit turns SCE's weighting off when the task vectors' mean squares sum below "
    "1e-6 (typical of fine-tunes), ours only when they are 0, so the tensors differ; "
    "merge with `mergeir merge --method sce` instead",
    "arcee_fusion": "mergekit estimates its quantiles from a random sample on tensors over 10⁶ "
    "entries, ours are exact, so the tensors differ; merge with `mergeir merge --method "
    "arcee_fusion` instead",
    "passthrough": "nothing to merge (it copies one model, usually slice by slice)",
}

FP32_IN_MERGEKIT = ("linear", "slerp")
"""Methods mergekit computes in float32 whatever the recipe's ``dtype`` (the others compute in
it): only these give mergekit's tensors with ``dtype: bfloat16`` or ``float16``."""

_BASE_REQUIRED = {
    "task_arithmetic",
    "ties",
    "breadcrumbs",
    "breadcrumbs_ties",
    "slerp",
    "nearswap",
    "model_stock",
    "ram",
    "ramplus_tl",
    "nuslerp",
    "multislerp",
}
"""Methods that need ``base_model`` (mergekit's contract, or ours: nuslerp and multislerp
merge task vectors about a base here; without one mergekit merges the models themselves)."""

_TOP_KEYS = (
    "merge_method",
    "base_model",
    "models",
    "slices",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
)
_REJECTED_KEYS = {
    "modules": "not supported (only whole-model merges); write the recipe with models:",
    "tokenizer": "not supported (it builds a new vocabulary and re-orders the embeddings); "
    "use tokenizer_source: base or a model's name, a plain copy",
    "chat_template": "not supported (the output's tokenizer is a plain copy); set the chat "
    "template on the merged model's tokenizer afterwards",
}
_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "merges.txt",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)
"""Tokenizer files replaced as a whole when the tokenizer comes from another model."""


# --------------------------------------------------------------------------------------
# the recipe


@dataclass(frozen=True)
class RecipeModel:
    """One model of a recipe: a folder, hub id (``id@revision``) or quickstart item."""

    ref: str
    revision: str | None
    parameters: Mapping[str, Any]
    where: str
    """Its place in the recipe, for errors: ``models[1]``, ``slices[0].sources[1]``, ``base_model``."""
    layer_range: tuple[int, int] | None = None

    @property
    def text(self) -> str:
        return f"{self.ref}@{self.revision}" if self.revision else self.ref


@dataclass(frozen=True)
class Recipe:
    """A checked mergekit recipe (values are checked again per tensor when it is prepared)."""

    path: Path
    merge_method: str
    models: tuple[RecipeModel, ...]
    """The models in recipe order, the base among them where the recipe lists it."""
    base_model: RecipeModel | None
    parameters: Mapping[str, Any]
    slice_parameters: Mapping[str, Any] = field(default_factory=dict)
    """``slices[0].parameters`` (a recipe written as one whole-model slice)."""
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    """``base`` or one of the models (a plain copy of its tokenizer); None keeps ΘT's."""
    form: str = "models"
    text: str = ""

    @property
    def label(self) -> str:
        return str(self.path)

    @property
    def base_listed(self) -> bool:
        return self.base_model is not None and any(m is self.base_model for m in self.models)

    def non_base(self) -> tuple[RecipeModel, ...]:
        return tuple(m for m in self.models if m is not self.base_model)

    def inputs(self) -> tuple[RecipeModel, ...]:
        """Every model mergekit merges: the listed ones, then the base if it is not listed."""
        if self.base_model is None or self.base_listed:
            return self.models
        return (*self.models, self.base_model)

    def error(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.label}: {where}: {message}")


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a mergekit recipe; anything we cannot reproduce is one ConfigError line
    naming the field (``recipe.yml: models[1].parameters.foo: …``)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise ConfigError(f"{path}: mergekit recipe {what}; pass the recipe's YAML file")
    raw = read_yaml(path)
    text = path.read_text(encoding="utf-8")
    label = str(path)

    def err(where: str, message: str) -> ConfigError:
        return ConfigError(f"{label}: {where}: {message}")

    if not isinstance(raw, dict):
        raise ConfigError(
            f"{label}: a mergekit recipe is a mapping (merge_method:, models:, …), not "
            f"{type(raw).__name__}"
        )
    for key in raw:
        if key in _REJECTED_KEYS:
            raise err(key_label(key), _REJECTED_KEYS[key])
        if key not in _TOP_KEYS:
            raise err(
                key_label(key),
                f"unknown recipe key (mergekit 0.1.5's are {', '.join(_TOP_KEYS)}, "
                f"{', '.join(_REJECTED_KEYS)})",
            )
    method = raw.get("merge_method")
    if not isinstance(method, str) or not method:
        raise err("merge_method", "missing; name a mergekit merge method, e.g. ties")
    if method in UNSUPPORTED_METHODS:
        raise err("merge_method", f"{method}: not supported ({UNSUPPORTED_METHODS[method]})")
    if method not in SPECS:
        raise err(
            "merge_method",
            f"{short_repr(method)} is not a mergekit 0.1.5 merge method we reproduce "
            f"(supported: {', '.join(SPECS)})",
        )
    specs = {s.name: s for s in SPECS[method]}

    base: RecipeModel | None = None
    if raw.get("base_model") is not None:
        ref, rev = _model_ref(raw["base_model"], "base_model", err)
        base = RecipeModel(ref, rev, {}, "base_model")

    if ("models" in raw) == ("slices" in raw):
        raise ConfigError(f"{label}: give exactly one of models: or slices:")
    slice_params: dict[str, Any] = {}
    entries: list[RecipeModel] = []
    if "models" in raw:
        form = "models"
        items = raw["models"]
        if not isinstance(items, list) or not items:
            raise err("models", "give a list of {model: <folder or hub id>, parameters: {...}}")
        for i, item in enumerate(items):
            entries.append(_model_entry(item, f"models[{i}]", ("model", "parameters"), err))
    else:
        form = "slices"
        entries, slice_params = _single_slice(raw["slices"], err)

    models: list[RecipeModel] = []
    seen: dict[str, str] = {}
    for m in entries:
        if m.text in seen:
            raise err(f"{m.where}.model", f"{m.text} is listed twice (also {seen[m.text]})")
        seen[m.text] = m.where
        if base is not None and m.text == base.text:
            base = m  # the listed entry: its parameters and place
        models.append(m)
    if form == "slices" and base is not None and not any(m is base for m in models):
        raise err(
            "slices[0].sources",
            f"base_model {base.text} is not among the sources (mergekit needs it in the slice)",
        )

    parameters = _settings(raw.get("parameters"), "parameters", err)
    for where, settings in (("parameters", parameters), ("slices[0].parameters", slice_params)):
        for name, value in settings.items():
            _check_setting(specs, name, value, f"{where}.{key_label(name)}", method, err)
    for m in models:
        for name, value in m.parameters.items():
            p = f"{m.where}.parameters.{key_label(name)}"
            _check_setting(specs, name, value, p, method, err)
            if specs[name].scope == SHARED:
                raise err(
                    p,
                    f"{name} is recipe-wide in {method} (mergekit ignores it here); give it "
                    "under parameters:",
                )

    dtypes = {}
    for key in ("dtype", "out_dtype"):
        value = raw.get(key)
        if value is None:
            continue
        name = value.removeprefix("torch.") if isinstance(value, str) else None
        if name not in _DTYPES:
            raise err(key, f"{short_repr(value)} is not one of {', '.join(_DTYPES)}")
        dtypes[key] = name

    tok = raw.get("tokenizer_source")
    if tok is not None:
        if tok == "union":
            raise err(
                "tokenizer_source",
                "union: not supported (it builds a new vocabulary and re-orders the "
                "embeddings); use base or a model's name, a plain copy of its tokenizer",
            )
        if not isinstance(tok, str):
            raise err("tokenizer_source", "give base or the name of one of the recipe's models")
        if tok == "base":
            if base is None:
                raise err("tokenizer_source", "base: the recipe has no base_model")
        elif tok not in {m.text for m in models} | ({base.text} if base else set()):
            raise err(
                "tokenizer_source",
                f"{short_repr(tok)} is not one of the recipe's models; name one of them or base",
            )

    recipe = Recipe(
        path=path,
        merge_method=method,
        models=tuple(models),
        base_model=base,
        parameters=parameters,
        slice_parameters=slice_params,
        dtype=dtypes.get("dtype"),
        out_dtype=dtypes.get("out_dtype"),
        tokenizer_source=tok,
        form=form,
        text=text,
    )
    roles(recipe)  # the counts and the base each method needs
    if all(_is_scalar(v) for v in _all_settings(recipe)):
        # every value is one number: the per-tensor checks of prepare_recipe_merge are the
        # same for any tensor, so run them now on one stand-in tensor
        _map(recipe, [_Position("layers.0.weight", "model.layers.0.weight", 0.0)])
    return recipe


def _model_ref(value: Any, where: str, err: Callable) -> tuple[str, str | None]:
    if not isinstance(value, str) or not value.strip():
        raise err(where, "give a folder, hub id (id@revision) or quickstart: item, as a string")
    if "+" in value:
        raise err(
            where,
            f"{short_repr(value)}: a model+LoRA reference is not supported; merge the adapter "
            "into its model first (or use `mergeir merge --domain lora:DIR`)",
        )
    if value.count("@") > 1:
        raise err(where, f"{short_repr(value)}: more than one @ (give id@revision)")
    ref, _, rev = value.partition("@")
    return ref, rev or None


def _model_entry(item: Any, where: str, keys: tuple[str, ...], err: Callable) -> RecipeModel:
    if not isinstance(item, dict) or "model" not in item:
        raise err(where, "give {model: <folder or hub id>, parameters: {...}}")
    for key in item:
        if key not in keys:
            hint = (
                "layer ranges belong in slices:, and we merge whole models only"
                if key == "layer_range"
                else f"a model entry has {', '.join(keys)}"
            )
            raise err(f"{where}.{key_label(key)}", f"not supported ({hint})")
    ref, rev = _model_ref(item["model"], f"{where}.model", err)
    layers = None
    if "layer_range" in keys:
        lr = item.get("layer_range")
        if (
            not isinstance(lr, list)
            or len(lr) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in lr)
        ):
            raise err(f"{where}.layer_range", "give [first, end], e.g. [0, 32]")
        if lr[0] != 0:
            raise err(
                f"{where}.layer_range",
                f"{lr}: not supported (only whole-model merges: [0, number of layers])",
            )
        layers = (lr[0], lr[1])
    params = _settings(item.get("parameters"), f"{where}.parameters", err)
    return RecipeModel(ref, rev, params, where, layers)


def _single_slice(slices: Any, err: Callable) -> tuple[list[RecipeModel], dict[str, Any]]:
    """``slices:`` with one slice taking every layer of every source: a whole-model merge."""
    if not isinstance(slices, list) or len(slices) != 1 or not isinstance(slices[0], dict):
        raise err(
            "slices",
            "not supported (only whole-model merges: one slice whose sources all take every "
            "layer); write the recipe with models:",
        )
    s = slices[0]
    for key in s:
        if key in ("base_model", "residual_weight"):
            raise err(f"slices[0].{key}", "not supported; give base_model at the recipe's top")
        if key not in ("sources", "parameters"):
            raise err(f"slices[0].{key_label(key)}", "unknown slice key (sources, parameters)")
    sources = s.get("sources")
    if not isinstance(sources, list) or not sources:
        raise err("slices[0].sources", "give a list of {model:, layer_range: [0, N]}")
    entries = [
        _model_entry(src, f"slices[0].sources[{i}]", ("model", "layer_range", "parameters"), err)
        for i, src in enumerate(sources)
    ]
    return entries, _settings(s.get("parameters"), "slices[0].parameters", err)


def _settings(value: Any, where: str, err: Callable) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise err(where, "give a mapping of parameter names to values")
    return dict(value)


def _is_scalar(v: Any) -> bool:
    return isinstance(v, bool | int | float | str)


def _all_settings(recipe: Recipe) -> list[Any]:
    out = [*recipe.parameters.values(), *recipe.slice_parameters.values()]
    for m in recipe.models:
        out += list(m.parameters.values())
    return out


def _check_setting(
    specs: Mapping[str, _Spec], name: str, value: Any, where: str, method: str, err: Callable
) -> None:
    """A known parameter, in mergekit's setting forms, every leaf of the parameter's type."""
    if name not in specs:
        raise err(
            where,
            f"unknown parameter of mergekit's {method} (it takes: "
            f"{', '.join(s.name for s in SPECS[method])})",
        )
    kind = specs[name].kind

    def leaf(v: Any, p: str) -> None:
        _coerce(v, kind, p, err)

    def scalar_or_gradient(v: Any, p: str) -> None:
        if isinstance(v, list):
            if not v or not all(_is_scalar(x) for x in v):
                raise err(p, "a gradient is a list of at least one value, e.g. [0, 0.5, 1]")
            for i, x in enumerate(v):
                leaf(x, f"{p}[{i}]")
        elif _is_scalar(v):
            leaf(v, p)
        else:
            raise err(p, f"{short_repr(v)} is not a value, a gradient or filter rules")

    def rule(r: Mapping, p: str) -> None:
        for k in r:
            if k not in ("filter", "value"):
                raise err(f"{p}.{key_label(k)}", "a rule is {filter: <text>, value: <value>}")
        if "value" not in r:
            raise err(p, "a rule is {filter: <text>, value: <value>}; its value is missing")
        if r.get("filter") is not None and not isinstance(r["filter"], str):
            raise err(f"{p}.filter", "give a text matched against the tensor names")
        scalar_or_gradient(r["value"], f"{p}.value")

    if isinstance(value, dict):
        rule(value, where)
    elif isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
        for i, r in enumerate(value):
            rule(r, f"{where}[{i}]")
    else:
        scalar_or_gradient(value, where)


def _coerce(value: Any, kind: type, where: str, err: Callable) -> Any:
    """mergekit's (pydantic's lax) reading of one value as the parameter's type."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise err(where, f"{short_repr(value)} is not true or false")
    if isinstance(value, bool):
        raise err(where, f"{value} is not a number")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise err(where, f"{short_repr(value)} is not a number") from None
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise err(where, f"{short_repr(value)} is not a finite number")
    if kind is int:
        if float(value) != int(value):
            raise err(where, f"{value:g} is not a whole number")
        return int(value)
    return float(value)


# --------------------------------------------------------------------------------------
# which model is which: the roles of the triplet


@dataclass(frozen=True)
class Roles:
    """A recipe's models as our triplet: ΘT, Θ0 and the domain inputs ΘD_i, and our method."""

    ir: RecipeModel
    pretrained: RecipeModel
    domains: tuple[RecipeModel, ...]
    method: str
    how: str
    """One line: how the recipe's parameters become ours."""


_HOW = {
    "task_arithmetic": "ΘT = Θ0 = base, ΘD_i = the other models; alpha 1, weights λ·w_i "
    "(÷ Σ w_i with normalize): Θ' = base + Σ λ·w_i·(M_i − base)",
    "ties": "ΘT = Θ0 = base (τT = 0 takes no part), ΘD_i = the other models; alpha 1, "
    "weights λ·w_i, density and normalize as given",
    "breadcrumbs": "ΘT = Θ0 = base (τT = 0 takes no part), ΘD_i = the other models; alpha 1, "
    "weights λ·w_i (÷ Σ w_i with normalize), density and gamma as given",
    "breadcrumbs_ties": "ΘT = Θ0 = base (τT = 0 takes no part), ΘD_i = the other models; "
    "alpha 1, weights λ·w_i, density, gamma and normalize as given",
    "linear": "ΘT = Θ0 = the first model, ΘD_i = the others; with c_j the weights, alpha = "
    "1 − c_T/Σc and weights c_i/(Σc − c_T) (normalize), so Θ' = Σ c_j·M_j / Σ c_j",
    "slerp": "ΘT = Θ0 = base, ΘD = the other model; alpha = t",
    "nearswap": "ΘT = Θ0 = base, ΘD = the other model; alpha 1, t as given",
    "nuslerp": "ΘT = the first model, Θ0 = base, ΘD = the second; alpha = w_2/(w_1 + w_2)",
    "multislerp": "ΘT = Θ0 = base (τT = 0 takes no part), ΘD_i = the other models; alpha 1, "
    "weights w_i",
    "karcher": "ΘT = Θ0 = the first model, ΘD_i = the others; alpha = (N − 1)/N, "
    "weights 1/(N − 1): every model 1/N, as mergekit",
    "model_stock": "ΘT = the first model, Θ0 = base, ΘD_i = the others; alpha 1",
    "ram": "ΘT = Θ0 = base (τT = 0 never contributes), ΘD_i = the other models; alpha 1",
    "ramplus_tl": "ΘT = Θ0 = base (τT = 0 never contributes), ΘD_i = the other models; "
    "alpha 1, rho_max = mergekit's alpha",
}


def roles(recipe: Recipe) -> Roles:
    """ΘT, Θ0, ΘD_i and our method for a recipe; errors for counts a method cannot take."""
    m = recipe.merge_method
    base = recipe.base_model
    if m in _BASE_REQUIRED and base is None:
        why = (
            " (without one mergekit merges the models themselves; mergekit-ir merges about a base)"
            if m in ("nuslerp", "multislerp")
            else ""
        )
        raise recipe.error("base_model", f"required by {m}{why}")
    others = recipe.non_base()
    inputs = recipe.inputs()
    where = "slices[0].sources" if recipe.form == "slices" else "models"

    def count(ok: bool, need: str) -> None:
        if not ok:
            raise recipe.error(where, f"{m} needs {need}, got {len(others)} beside the base")

    if m in ("slerp", "nearswap"):
        count(len(others) == 1, "exactly one model beside base_model")
        return Roles(base, base, others, m, _HOW[m])  # type: ignore[arg-type]
    if m == "nuslerp":
        count(len(others) == 2, "exactly two models beside base_model")
        return Roles(others[0], base, others[1:], m, _HOW[m])  # type: ignore[arg-type]
    if m == "model_stock":
        count(len(others) >= 2, "at least two models beside base_model")
        return Roles(others[0], base, others[1:], m, _HOW[m])  # type: ignore[arg-type]
    if m in ("linear", "karcher"):
        if len(inputs) < 2:
            raise recipe.error(where, f"{m} needs at least two models, got {len(inputs)}")
        return Roles(inputs[0], inputs[0], inputs[1:], m, _HOW[m])
    count(len(others) >= 1, "at least one model beside base_model")
    if m in _GTA_METHODS and (ir := _unit_weight_model(recipe)) is not None:
        rest = tuple(x for x in others if x is not ir)
        return Roles(ir, base, rest, m, _HOW_UNIT)  # type: ignore[arg-type]
    return Roles(base, base, others, m, _HOW[m])  # type: ignore[arg-type]


_GTA_METHODS = ("task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties")
_HOW_UNIT = (
    "ΘT = the model with weight 1, Θ0 = base, ΘD_i = the other models: mergekit's "
    "base + 1·(ΘT − base) + Σ w_i·τ_i is ΘT + Σ w_i·τ_i, with τT = ΘT − base trimmed like "
    "the τ_i (weight 1); alpha 1, weights w_i, the method's density, gamma, normalize as given"
)


def _static(recipe: Recipe, name: str, model: RecipeModel | None = None) -> Any:
    """A parameter's value where one plain value sets it for every tensor; None where it
    depends on the tensor; mergekit's default where the recipe does not set it."""
    levels = [model.parameters] if model is not None else []
    for settings in (*levels, recipe.slice_parameters, recipe.parameters):
        if name in settings:
            v = settings[name]
            return v if _is_scalar(v) and not isinstance(v, str) else None
    spec = {s.name: s for s in SPECS[recipe.merge_method]}[name]
    return None if spec.default is _REQUIRED else spec.default


def _unit_weight_model(recipe: Recipe) -> RecipeModel | None:
    """The first model beside the base with weight 1 on every tensor, where that weight
    stays 1 (lambda 1, and no normalize dividing it for the summing methods): it can be ΘT,
    which keeps its own tensors (a reranker's head) and config."""
    if _static(recipe, "lambda") != 1:
        return None
    if (
        recipe.merge_method not in ("ties", "breadcrumbs_ties")
        and _static(recipe, "normalize") is not False
    ):
        return None
    others = recipe.non_base()
    if len(others) < 2:  # ΘT needs a domain input beside it
        return None
    return next((x for x in others if _static(recipe, "weight", x) == 1), None)


# --------------------------------------------------------------------------------------
# per-tensor values, with mergekit's semantics


@dataclass(frozen=True)
class _Position:
    key: str  # our canonical key (what filter rules match)
    name: str  # the checkpoint's tensor name (what mergekit's filters match)
    t: float  # mergekit's gradient position


def positions(src: TensorSource) -> list[_Position]:
    """ΘT's floating tensors with mergekit's gradient position t: layer i of L at i/(L − 1)
    (1 with one layer); embeddings, final norm and head at 0 (mergekit's pre/post weights)."""
    index = NameIndex.build("ΘT", src.names(), src.config)
    floating = [(k, n) for k, n in index.names.items() if src.info(n).dtype.is_floating_point]
    layers = [i for k, _ in floating if (i := layer_index(k)) is not None]
    n = max(layers) + 1 if layers else 1
    out = []
    for key, name in floating:
        i = layer_index(key)
        t = 0.0 if i is None else (i / (n - 1) if n > 1 else 1.0)
        out.append(_Position(key, name, t))
    return out


def evaluate(setting: Any, tensor: str, t: float, kind: type = float) -> Any:
    """mergekit's ``evaluate_setting``: a value, a gradient (interpolated at t for numbers,
    picked for others) or filter rules (first whose filter is a *substring* of the tensor
    name, ``*`` or absent); None where no rule matches."""
    if isinstance(setting, dict):
        setting = [setting]
    if _is_scalar(setting):
        return _coerce(setting, kind, "", _raise)
    if not setting:
        return None
    if all(_is_scalar(x) for x in setting):
        values = [_coerce(x, kind, "", _raise) for x in setting]
        if kind is bool:
            return values[int(t * (len(values) - 1))]
        scaled = t * (len(values) - 1)
        i0 = int(scaled)
        i1 = min(len(values) - 1, i0 + 1)
        frac = scaled - i0
        return _coerce((1 - frac) * values[i0] + frac * values[i1], kind, "", _raise)
    for rule in setting:
        f = rule.get("filter")
        if f is None or f == "*" or (tensor and f in tensor):
            return evaluate(rule["value"], tensor, t, kind)
    return None


def _raise(where: str, message: str) -> ConfigError:
    return ConfigError(message)


class _Values:
    """The recipe's parameters resolved per tensor (and per model), with the path that set each."""

    def __init__(self, recipe: Recipe, where: list[_Position]):
        self.recipe, self.where = recipe, where
        self.specs = {s.name: s for s in SPECS[recipe.merge_method]}

    def _levels(self, model: RecipeModel | None) -> list[tuple[str, Mapping[str, Any]]]:
        r = self.recipe
        levels = [(f"{model.where}.parameters", model.parameters)] if model is not None else []
        return [*levels, ("slices[0].parameters", r.slice_parameters), ("parameters", r.parameters)]

    def get(self, name: str, model: RecipeModel | None = None) -> dict[str, tuple[Any, str]]:
        """key -> (value, recipe path that gave it) for every tensor."""
        spec = self.specs[name]
        out = {}
        for pos in self.where:
            for level, settings in self._levels(model):
                if name in settings:
                    try:
                        v = evaluate(settings[name], pos.name, pos.t, spec.kind)
                    except ConfigError as exc:  # e.g. an int gradient between whole numbers
                        raise self.recipe.error(f"{level}.{name}", f"{exc} on {pos.name}") from None
                    if v is not None:
                        out[pos.key] = (v, f"{level}.{name}")
                        break
            else:
                if spec.default is _REQUIRED:
                    who = f"{model.where}.parameters" if model is not None else "parameters"
                    raise self.recipe.error(
                        f"{who}.{name}",
                        f"required by {self.recipe.merge_method} but not set for tensor "
                        f"{pos.name} (give it per model or under parameters:)",
                    )
                out[pos.key] = (spec.default, f"{name} (mergekit's default)")
        return out

    def constant(self, name: str) -> tuple[Any, str]:
        """A recipe-wide value that must be one value (our parameter takes no layer-wise value)."""
        values = self.get(name)
        return _one(self.recipe, values, f"{self.recipe.merge_method}'s {name}")


def _one(recipe: Recipe, values: Mapping[str, tuple[Any, str]], what: str) -> tuple[Any, str]:
    items = list(values.values())
    if not items:
        return None, ""
    first = items[0]
    for v, p in items[1:]:
        if v != first[0]:
            raise recipe.error(
                p,
                f"a layer-wise value (gradient or filter) is not supported for {what}: "
                "mergekit-ir takes one value there",
            )
    return first


# --------------------------------------------------------------------------------------
# the mapping onto our methods


@dataclass
class _Mapped:
    method: str
    params: dict[str, Any]  # scalars, or {key: value} for per-tensor ones
    weights: dict[str, tuple[float, ...]] | None = None  # key -> one weight per ΘD_i


def _map(recipe: Recipe, where: list[_Position]) -> _Mapped:
    """Our method and its parameters (per tensor where they vary), checked with recipe paths."""
    r = roles(recipe)
    v = _Values(recipe, where)
    m = recipe.merge_method
    keys = [p.key for p in where]
    err = recipe.error

    def each(values: Mapping[str, tuple[Any, str]], fn: Callable[[Any, str], Any]) -> dict:
        return {k: fn(values[k][0], f"{recipe.label}: {values[k][1]}") for k in keys}

    if m in ("task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties"):
        consensus = m in ("ties", "breadcrumbs_ties")
        lam = v.get("lambda")
        normalize = v.get("normalize")
        rescale, rescale_at = _one(recipe, v.get("rescale"), f"{m}'s rescale")
        if rescale:
            raise err(
                rescale_at,
                f"true is not supported for {m} (mergekit-ir does not rescale the trimmed "
                "task vectors to their L1 norm); remove it",
            )
        v.get("int8_mask")  # the mask's storage type: no effect on the values
        ws = [v.get("weight", d) for d in r.domains]
        # the models whose task vectors are trimmed: τT too where ΘT is a weight-1 model
        trimmed = r.domains if r.ir is r.pretrained else (r.ir, *r.domains)
        weights: dict[str, tuple[float, ...]] = {}
        for k in keys:
            lam_k, lam_at = lam[k]
            norm_k = normalize[k][0]
            w = [x[k][0] for x in ws]
            if consensus:
                if norm_k and lam_k != 1.0:
                    raise err(
                        lam_at,
                        f"{lam_k:g} with normalize: true is not supported for {m} "
                        "(mergekit-ir's normalize divides the weights' scale out); drop "
                        "lambda or set normalize: false",
                    )
                if norm_k and any(x < 0 for x in w):
                    i = next(i for i, x in enumerate(w) if x < 0)
                    raise err(
                        ws[i][k][1],
                        f"{w[i]:g}: a negative weight with normalize: true is not supported "
                        f"for {m} (mergekit divides by the signed sum of weights, mergekit-ir "
                        "by |weights|)",
                    )
                if lam_k < 0:
                    raise err(
                        lam_at,
                        f"{lam_k:g}: a negative lambda is not supported for {m} (it would "
                        "flip mergekit-ir's sign election)",
                    )
                weights[k] = tuple(lam_k * x for x in w)
            else:
                total = sum(w)
                div = total if norm_k and abs(total) >= 1e-8 else 1.0
                weights[k] = tuple(lam_k * x / div for x in w)
        params: dict[str, Any] = {"alpha": 1.0}
        if consensus:
            params["normalize"] = _one(recipe, normalize, f"{m}'s normalize")[0]
        if m != "task_arithmetic":
            params["density"] = _same_per_model(recipe, trimmed, v, "density", keys, _density)
        if m in ("breadcrumbs", "breadcrumbs_ties"):
            params["gamma"] = _same_per_model(recipe, trimmed, v, "gamma", keys, _gamma)
        return _Mapped(m, params, weights)

    if m == "linear":
        normalize = v.get("normalize")
        cs = [v.get("weight", x) for x in (r.ir, *r.domains)]
        alpha: dict[str, float] = {}
        weights = {}
        for k in keys:
            c = [x[k][0] for x in cs]
            at = cs[0][k][1]
            n_dom = len(c) - 1
            if normalize[k][0]:
                total = sum(c)
                if total == 0:
                    raise err(at, f"the weights sum to 0 on tensor {k}: mergekit divides by 0")
                a = 1.0 - c[0] / total
                rest = total - c[0]
                w = tuple(x / rest for x in c[1:]) if rest != 0 else (0.0,) * n_dom
            else:
                a = 1.0 - c[0]
                if a == 0 and any(c[1:]):
                    raise err(
                        at,
                        f"{c[0]:g} with normalize: false is not supported unless the other "
                        "weights are 0 (the first model's weight is 1 − alpha here)",
                    )
                w = tuple(x / a for x in c[1:]) if a != 0 else (0.0,) * n_dom
            if not 0.0 <= a <= 1.0:
                raise err(
                    at,
                    f"{c[0]:g}: the first model's share of the weights must lie in [0, 1] "
                    f"for mergekit-ir's linear (it is {1 - a:g} on tensor {k})",
                )
            alpha[k], weights[k] = a, w
        params = {"alpha": alpha, "normalize": _one(recipe, normalize, "linear's normalize")[0]}
        return _Mapped(m, params, weights)

    if m == "slerp":
        return _Mapped(m, {"alpha": each(v.get("t"), _fraction("slerp's t"))})

    if m == "nearswap":

        def t_value(x: float, at: str) -> float:
            if x < 0:
                raise ConfigError(f"{at}: {x:g} must be ≥ 0")
            return x

        return _Mapped(m, {"alpha": 1.0, "t": each(v.get("t"), t_value)})

    if m == "nuslerp":
        w1, w2 = v.get("weight", r.ir), v.get("weight", r.domains[0])
        frac = _fraction("nuslerp's t = w_2/(w_1 + w_2)")
        alpha = {}
        for k in keys:
            total = w1[k][0] + w2[k][0]
            t = 0.5 if abs(total) < 1e-6 else w2[k][0] / total
            alpha[k] = frac(t, f"{recipe.label}: {w2[k][1]}")
        return _Mapped(
            m,
            {
                "alpha": alpha,
                "nuslerp_flatten": v.constant("nuslerp_flatten")[0],
                "nuslerp_row_wise": v.constant("nuslerp_row_wise")[0],
            },
        )

    if m == "multislerp":
        eps, eps_at = v.constant("eps")
        if eps != 1e-8:
            raise err(eps_at, f"{eps:g}: only mergekit's default 1e-8 is supported")
        ws = [v.get("weight", d) for d in r.domains]
        weights = {k: tuple(x[k][0] for x in ws) for k in keys}
        params = {"alpha": 1.0, "normalize_weights": v.constant("normalize_weights")[0]}
        return _Mapped(m, params, weights)

    if m == "karcher":
        n = 1 + len(r.domains)
        max_iter, at = v.constant("max_iter")
        if max_iter < 1:
            raise err(at, f"{max_iter} must be ≥ 1")
        tol, at = v.constant("tol")
        if tol < 0:
            raise err(at, f"{tol:g} must be ≥ 0")
        params = {"alpha": (n - 1) / n, "max_iter": max_iter, "tol": tol}
        return _Mapped(m, params, {k: (1.0 / (n - 1),) * (n - 1) for k in keys})

    if m == "model_stock":
        return _Mapped(m, {"alpha": 1.0, "filter_wise": v.constant("filter_wise")[0]})

    # ram, ramplus_tl: mergekit's alpha (the cap on ρ) is our rho_max, alpha being the merge's
    params = {"alpha": 1.0}
    names = {"epsilon": "epsilon", "r": "r", "alpha": "rho_max"}
    for theirs, ours in names.items() if m == "ramplus_tl" else [("epsilon", "epsilon")]:
        value, at = v.constant(theirs)
        if value < 0:
            raise err(at, f"{value:g} must be ≥ 0")
        params[ours] = value
    return _Mapped(m, params)


def _fraction(what: str) -> Callable[[float, str], float]:
    def check(x: float, at: str) -> float:
        if not 0.0 <= x <= 1.0:
            raise ConfigError(
                f"{at}: {x:g} is outside [0, 1] for {what} (mergekit-ir interpolates, it "
                "does not extrapolate)"
            )
        return x

    return check


def _density(x: float, at: str) -> float:
    if x <= 0:
        raise ConfigError(f"{at}: {x:g} must be greater than 0 (0 drops the whole task vector)")
    return min(x, 1.0)  # mergekit: a density ≥ 1 keeps everything


def _gamma(x: float, at: str) -> float:
    if not 0.0 <= x <= 1.0:
        raise ConfigError(f"{at}: {x:g} is outside [0, 1]")
    return x


def _same_per_model(
    recipe: Recipe,
    models: Sequence[RecipeModel],
    v: _Values,
    name: str,
    keys: Sequence[str],
    check: Callable[[float, str], float],
) -> dict[str, float]:
    """A per-model parameter our method takes once per tensor: equal for every model."""
    per = [v.get(name, m) for m in models]
    out = {}
    for k in keys:
        first, at = per[0][k]
        for values in per[1:]:
            if values[k][0] != first:
                raise ConfigError(
                    f"{recipe.label}: {values[k][1]}: {values[k][0]:g} differs from "
                    f"{models[0].where}'s {first:g} on tensor {k} (mergekit-ir uses one {name} "
                    f"for all models); give one {name} under parameters:"
                )
        out[k] = check(first, f"{recipe.label}: {at}")
    return out


def compress(values: Mapping[str, Any]) -> Any:
    """Per-tensor values as our parameter value: one value, or filter rules on exact tensor
    keys (the most common value last, without a filter)."""
    groups: dict[Any, list[str]] = {}
    for key, value in values.items():
        groups.setdefault(value, []).append(key)
    if len(groups) <= 1:
        return next(iter(groups), None)
    default = max(groups, key=lambda g: len(groups[g]))
    rules: list[dict[str, Any]] = [
        {"filter": "^(?:" + "|".join(re.escape(k) for k in ks) + ")$", "value": value}
        for value, ks in groups.items()
        if value != default
    ]
    return [*rules, {"value": default}]


def layerwise_weights(method: MergeMethod, n: int) -> MergeMethod:
    """``method`` with ``weights`` given as n per-tensor parameters ``weight_1`` … ``weight_n``.

    Our ``weights`` is one list for the whole model; a recipe's per-model weights may be
    gradients or filters. (The engine could take a layer-wise ``weights`` itself.)"""
    names = tuple(f"weight_{i + 1}" for i in range(n))

    def merge(
        theta_t: torch.Tensor,
        taus: Sequence[torch.Tensor],
        *,
        tau_t: torch.Tensor | None = None,
        name: str = "",
        **params: Any,
    ) -> torch.Tensor:
        ws = [params.pop(k) for k in names]
        return method.merge(theta_t, taus, tau_t=tau_t, name=name, weights=ws, **params)

    params = tuple(p for p in method.params if p.name != "weights") + tuple(
        Param(k, float, 1.0, f"weight of domain input {i + 1} (layer-wise)", per_tensor=True)
        for i, k in enumerate(names)
    )
    return MergeMethod(
        method.name,
        method.description,
        merge,
        params,
        needs_ir_vector=method.needs_ir_vector,
        elementwise=method.elementwise,
    )


# --------------------------------------------------------------------------------------
# dtype: read as mergekit reads, write in the recipe's output dtype


class DtypeSource(TensorSource):
    """A checkpoint read in the recipe's ``dtype`` (as mergekit loads it) whose floating
    tensors the output takes in ``out`` (the engine writes ΘT's dtype: info() says ``out``).

    Tensors the engine merges are read in ``read`` (then fp32); those it copies (and the extra
    vocabulary rows of a merged one) are cast to ``out``. (The engine could take an output
    dtype itself.)"""

    def __init__(self, src: TensorSource, read: torch.dtype | None, out: torch.dtype | None):
        self.__dict__.update(src.__dict__)
        self.read_dtype, self.out_dtype = read, out
        self.copied: set[str] = set()
        self.merged_rows: dict[str, int] = {}

    def info(self, name: str) -> TensorInfo:
        i = super().info(name)
        if self.out_dtype is not None and i.dtype.is_floating_point:
            return TensorInfo(i.shape, self.out_dtype, i.file)
        return i

    def get(self, name: str, rows: Rows = None) -> torch.Tensor:
        t = super().get(name, rows)
        if not t.is_floating_point():
            return t
        if self.read_dtype is not None:
            t = t.to(self.read_dtype)
        extra = name in self.merged_rows and rows is not None and rows[0] >= self.merged_rows[name]
        if self.out_dtype is not None and (name in self.copied or extra):
            t = t.to(self.out_dtype)
        return t


# --------------------------------------------------------------------------------------
# preparing and writing


@dataclass(frozen=True)
class SideFiles:
    """What the output takes beside the weights: ΘT's config and side files (the engine copies
    them; the weights are ΘT-shaped), with the recipe's dtype; the tokenizer of
    ``tokenizer_source``; the recipe as ``mergekit_config.yml``, as mergekit writes it."""

    ir_folder: Path  # what the engine copied side files from
    tokenizer_from: Path
    torch_dtype: str | None
    recipe_text: str


@dataclass
class RecipeMerge:
    """A prepared recipe merge: write it with :func:`write_recipe_merge`. (The fields of
    ``mergekit_ir.api.merge.PreparedMerge``, which the experiments layer cannot import, then
    the recipe's own.)"""

    job: MergeJob
    plan: MergePlan
    provenance: dict[str, str]
    recipe: Recipe
    roles: Roles
    side: SideFiles


def prepare_recipe_merge(
    path: str | Path | Recipe,
    *,
    cache_root: Path | None = None,
    allow_nonfinite: bool = False,
    base_dir: Path | None = None,
) -> RecipeMerge:
    """The recipe as a validated, planned merge of our engine (nothing written yet).

    Model references are read as mergekit reads them: folders relative to the current
    folder (or first to ``base_dir``, e.g. a registry's folder), hub ids, ``id@revision``;
    quickstart items too. Values set layer-wise are checked for every tensor here."""
    recipe = path if isinstance(path, Recipe) else load_recipe(path)
    r = roles(recipe)
    cache_root = resolve_cache_root(cache_root)
    opened: dict[str, TensorSource] = {}

    def source(m: RecipeModel) -> TensorSource:
        if m.text not in opened:
            try:
                opened[m.text] = open_checkpoint(m.ref, m.revision, base_dir, cache_root)
            except MergeIRError as exc:
                raise CheckpointError(f"{recipe.label}: {m.where}.model: {exc}") from None
        return opened[m.text]

    for m in recipe.inputs():
        src = source(m)
        if m.layer_range is not None:
            n = _num_layers(src)
            if m.layer_range[1] != n:
                raise recipe.error(
                    f"{m.where}.layer_range",
                    f"{list(m.layer_range)}: not supported (only whole-model merges: "
                    f"{m.text} has {n} layers, give [0, {n}])",
                )

    read = _DTYPES[recipe.dtype] if recipe.dtype else None
    out_name = recipe.out_dtype or recipe.dtype
    out = _DTYPES[out_name] if out_name else None
    ir_raw, pre_raw = source(r.ir), source(r.pretrained)
    mapped = _map(recipe, positions(ir_raw))
    mm, params = _our_method(recipe, mapped)

    def wrap(src: TensorSource, out_dtype: torch.dtype | None = None) -> TensorSource:
        return src if read is None and out_dtype is None else DtypeSource(src, read, out_dtype)

    ir = wrap(ir_raw, out)
    pre = wrap(pre_raw)
    vectors = [TaskVector.from_checkpoints(pre, wrap(source(d))) for d in r.domains]
    job = MergeJob(
        ir,
        vectors,
        mm,
        params,
        pretrained=pre,
        rules=AlignmentRules(),
        allow_nonfinite=allow_nonfinite,
    )
    plan = build_plan(job)
    if isinstance(ir, DtypeSource):
        ir.copied = {e.name for e in plan.entries if e.action == "copy"}
        ir.merged_rows = {e.name: e.rows for e in plan.entries if e.action == "merge" and e.rows}
    made_from = {
        **made_of(ir_raw.ref, pre_raw.ref, [d.text for d in r.domains]),
        "mergekit recipe": recipe.label,
        "mergekit merge_method": recipe.merge_method,
    }
    tok = recipe.tokenizer_source
    tokenizer_from = ir_raw.folder
    if tok is not None:
        donor = (
            recipe.base_model
            if tok == "base"
            else next(m for m in recipe.inputs() if m.text == tok)
        )
        assert donor is not None  # load_recipe checked it
        tokenizer_from = source(donor).folder
        _check_plain_tokenizer(recipe, donor, [(m, source(m)) for m in recipe.inputs()])
    side = SideFiles(ir_raw.folder, tokenizer_from, out_name, recipe.text)
    return RecipeMerge(job, plan, made_from, recipe=recipe, roles=r, side=side)


def _num_layers(src: TensorSource) -> int:
    n = src.config.get("num_hidden_layers")
    if isinstance(n, int):
        return n
    layers = [i for name in src.names() if (i := layer_index(name)) is not None]
    return max(layers) + 1 if layers else 0


def _our_method(recipe: Recipe, mapped: _Mapped) -> tuple[MergeMethod, dict[str, Any]]:
    from mergekit_ir.plugin_host import catalog

    mm = catalog().merge_method(mapped.method, f"{recipe.label}: merge_method")
    params = {k: compress(v) if isinstance(v, dict) else v for k, v in mapped.params.items()}
    if mapped.weights is not None:
        distinct = set(mapped.weights.values())
        if len(distinct) == 1:
            params["weights"] = list(next(iter(distinct)))
        else:
            n = len(next(iter(distinct)))
            mm = layerwise_weights(mm, n)
            for i in range(n):
                params[f"weight_{i + 1}"] = compress({k: w[i] for k, w in mapped.weights.items()})
    checked = check_params(
        mm.params, params, f"{recipe.label}: (as mergekit-ir)", f"merge method '{mm.name}'"
    )
    return mm, checked


def _check_plain_tokenizer(
    recipe: Recipe, donor: RecipeModel, models: Sequence[tuple[RecipeModel, TensorSource]]
) -> None:
    """``tokenizer_source`` is a plain copy only where mergekit would not touch the embeddings:
    every model has the source's vocabulary, exactly as many tokens as embedding rows."""
    from transformers import AutoTokenizer

    def vocab(src: TensorSource) -> dict[str, int] | None:
        try:
            return dict(AutoTokenizer.from_pretrained(str(src.folder)).get_vocab())
        except Exception:  # mergekit: "Unable to load tokenizer … Assuming same as base"
            return None

    srcs = {m.text: s for m, s in models}
    ref = vocab(srcs[donor.text]) if donor.text in srcs else None
    if ref is None:
        raise recipe.error("tokenizer_source", f"{donor.text} has no tokenizer to copy")
    for m, src in models:
        v = ref if m.text == donor.text else vocab(src)
        if v is None:
            continue
        size = src.config.get("vocab_size")
        if v != ref or (isinstance(size, int) and len(v) != size):
            why = (
                f"{m.text}'s vocabulary differs from {donor.text}'s"
                if v != ref
                else f"{m.text} has {len(v)} tokens for {size} embedding rows"
            )
            raise recipe.error(
                "tokenizer_source",
                f"not a plain copy here ({why}): mergekit would re-order or cut the "
                "embeddings; leave tokenizer_source out or merge models with one vocabulary",
            )


def write_recipe_merge(
    prepared: RecipeMerge,
    out: str | Path,
    *,
    shard_size: int = 5 * 10**9,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> MergeReport:
    """Write the merge (as ``mergeir merge`` writes one: streamed, atomic), then the recipe's
    side files: the config's dtype set to the recipe's, the tokenizer of ``tokenizer_source``
    in place of ΘT's, and ``mergekit_config.yml``, the recipe itself (see :class:`SideFiles`)."""
    from mergekit_ir.scoring.scorer import resolve_device

    report = merge_to_folder(
        prepared.job,
        out,
        shard_size=shard_size,
        overwrite=overwrite,
        device=str(resolve_device(device)),
        progress=progress,
        provenance=prepared.provenance,
        plan=prepared.plan,
    )
    finish_side_files(Path(out), prepared.side)
    return report


def finish_side_files(out: Path, side: SideFiles) -> None:
    """Adjust the side files the engine copied from ΘT into ``out`` (see :class:`SideFiles`)."""
    if side.tokenizer_from.resolve() != side.ir_folder.resolve():
        for name in TOKENIZER_FILES:
            (out / name).unlink(missing_ok=True)
            if (side.tokenizer_from / name).is_file():
                shutil.copy2(side.tokenizer_from / name, out / name)
    config = out / "config.json"
    if side.torch_dtype and config.is_file():
        data = json.loads(config.read_text())
        keys = [k for k in ("dtype", "torch_dtype") if k in data] or ["torch_dtype"]
        for k in keys:
            data[k] = side.torch_dtype
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (out / "mergekit_config.yml").write_text(side.recipe_text)


# --------------------------------------------------------------------------------------
# describing


def describe_recipe(recipe: Recipe, prepared: RecipeMerge | None = None) -> list[str]:
    """What a recipe resolves to, one line each (``mergeir merge --plan`` prints them above the
    plan table, which shows every tensor's resolved parameters)."""
    r = roles(recipe)
    lines = [
        f"mergekit recipe {recipe.label}: merge_method {recipe.merge_method} "
        f"({len(recipe.inputs())} models{', one whole-model slice' if recipe.form == 'slices' else ''})",
        f"  ΘT = {r.ir.text}   ({r.ir.where})",
        f"  Θ0 = {r.pretrained.text}   ({r.pretrained.where})",
    ]
    lines += [f"  ΘD{i + 1} = {d.text}   ({d.where})" for i, d in enumerate(r.domains)]
    lines.append(f"  as mergekit-ir's {r.method}: {r.how}")
    if prepared is not None:
        shown = {
            k: f"layer-wise ({len(v)} rules)"
            if isinstance(v, list) and v and isinstance(v[0], dict)
            else v
            for k, v in prepared.job.params.items()
        }
        lines.append(f"  parameters: {json.dumps(shown, default=str)}")
    stored = "the checkpoints' dtype"
    lines.append(
        f"  dtype: read as {recipe.dtype or stored}, merged in float32, written as "
        f"{recipe.out_dtype or recipe.dtype or stored}"
    )
    if recipe.dtype in ("bfloat16", "float16") and recipe.merge_method not in FP32_IN_MERGEKIT:
        lines.append(
            f"  note: mergekit does {recipe.merge_method}'s arithmetic in {recipe.dtype}, "
            "mergekit-ir in float32 rounded once: some entries differ in their last bits"
        )
    tok = recipe.tokenizer_source
    donor = (recipe.base_model.text if tok == "base" else tok) if tok else r.ir.text  # type: ignore[union-attr]
    lines.append(f"  config from ΘT ({r.ir.text}); tokenizer copied from {donor}")
    return lines
