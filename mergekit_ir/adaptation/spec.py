"""A triplet's ``domain: {adapt: {...}}`` block: ΘD to build before merging, validated with the
YAML path of every wrong field (light: no torch import)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mergekit_ir.errors import ConfigError, key_label, short_repr
from mergekit_ir.params import Param

_FIELDS = {
    "corpus": str,
    "objective": str,
    "steps": int,
    "epochs": (int, float),
    "max_length": int,
    "batch_size": int,
    "lr": (int, float),
    "warmup": (int, float),
    "seed": int,
    "head_warmup": int,
    "freeze_head": bool,
    "lora": Mapping,
    "base": str,
}
_LORA = {"r": int, "alpha": int, "dropout": (int, float), "targets": list}

#: The numeric settings of an adaptation, declared once for ``mergeir adapt``'s flags and a
#: registry ``adapt:`` block: finite, in a range that can run, an integer where meant. The
#: upper bounds are far past any sensible run; they exist so that a typo (``lr: 1e30``,
#: ``seed: 1e23``) is one line, not a NaN model or an overflow after the work.
ADAPT_PARAMS: dict[str, Param] = {
    p.name: p
    for p in (
        Param("steps", int, None, "optimizer steps", min=1, max=10**9),
        Param("epochs", float, None, "passes over the corpus", min=1e-6, max=1e4),
        Param("max_length", int, 256, "tokens per training block", min=4, max=2**20),
        Param("batch_size", int, 32, "blocks per step", min=1, max=2**16),
        Param("lr", float, 5e-5, "peak learning rate", min=1e-12, max=10.0),
        Param(
            "warmup",
            float,
            0.06,
            "learning-rate warm-up: a fraction of the steps (< 1) or a number of steps",
            min=0.0,
            max=1e7,
        ),
        Param("seed", int, 0, "random seed", min=0, max=2**32 - 1),
        Param("head_warmup", int, 100, "steps that train only a fresh MLM head", min=0, max=10**7),
    )
}


@dataclass(frozen=True)
class AdaptSpec:
    corpus: str
    objective: str = "auto"
    steps: int | None = None
    epochs: float | None = None
    max_length: int = 256
    batch_size: int = 32
    lr: float = 5e-5
    warmup: float = 0.06
    seed: int = 0
    head_warmup: int = 100
    freeze_head: bool = False
    lora: tuple[tuple[str, Any], ...] | None = None  # sorted (key, value) pairs: hashable
    base: str = "pretrained"  # pretrained | ir
    #: the block's YAML path (``triplets.t.domain.adapt``): errors found when ΘD is planned or
    #: built name the block's keys, not CLI flags. Not part of the value (equality, hash).
    where: str = field(default="", compare=False, repr=False)

    def describe(self) -> str:
        length = f"{self.steps} steps" if self.steps else f"{self.epochs or 1} epoch(s)"
        lora = " LoRA" if self.lora is not None else ""
        return f"adapt:{self.corpus} {self.objective}{lora} {length} from {self.base}"

    def settings(self) -> Any:
        from mergekit_ir.adaptation.training import AdaptSettings, LoraSpec

        lora = None
        if self.lora is not None:
            d = dict(self.lora)
            r = d.get("r", 16)
            lora = LoraSpec(
                r=r,
                alpha=d.get("alpha", 2 * r),
                dropout=float(d.get("dropout", 0.0)),
                targets=tuple(d["targets"]) if d.get("targets") else None,
            )
        return AdaptSettings(
            objective=self.objective,
            steps=self.steps,
            epochs=self.epochs if self.epochs is not None or self.steps else 1.0,
            max_length=self.max_length,
            batch_size=self.batch_size,
            lr=float(self.lr),
            warmup=float(self.warmup),
            seed=self.seed,
            head_warmup=self.head_warmup,
            freeze_head=self.freeze_head,
            lora=lora,
        )


def _typed(value: Any, typ: Any, path: str) -> Any:
    if not isinstance(value, typ) or (typ in (int, (int, float)) and isinstance(value, bool)):
        names = "/".join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))
        raise ConfigError(
            f"{path}: expected {names}, got {type(value).__name__} {short_repr(value)}"
        )
    return value


def parse_adapt(raw: Any, path: str) -> AdaptSpec:
    """``path`` is the YAML path of the ``adapt`` block, e.g. ``triplets.x.domain.adapt``."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping with corpus, objective, steps…")
    for k in raw:
        if k not in _FIELDS:
            raise ConfigError(
                f"{path}.{key_label(k)}: unknown field (allowed: {', '.join(sorted(_FIELDS))})"
            )
    if "corpus" not in raw:
        raise ConfigError(
            f"{path}.corpus: missing required field (a dataset name or a .jsonl/.txt file)"
        )
    values = {k: _typed(v, _FIELDS[k], f"{path}.{k}") for k, v in raw.items()}
    if values.get("objective", "auto") not in ("auto", "mlm", "span", "clm"):
        raise ConfigError(
            f"{path}.objective: {short_repr(values['objective'])}; use auto, mlm, span or clm"
        )
    if values.get("base", "pretrained") not in ("pretrained", "ir"):
        raise ConfigError(
            f"{path}.base: {short_repr(values['base'])}; use pretrained (Θ0) or ir (ΘT)"
        )
    if "steps" in values and "epochs" in values:
        raise ConfigError(f"{path}: give steps or epochs, not both")
    for k, param in ADAPT_PARAMS.items():
        if k in values:
            values[k] = param.check_scalar(values[k], f"{path}.{k}")
    lora = None
    if "lora" in values:
        for k, v in values["lora"].items():
            if k not in _LORA:
                raise ConfigError(
                    f"{path}.lora.{key_label(k)}: unknown field (allowed: {', '.join(_LORA)})"
                )
            _typed(v, _LORA[k], f"{path}.lora.{k}")
        if values["lora"].get("r", 16) < 1:
            raise ConfigError(f"{path}.lora.r: must be ≥ 1")
        lora = tuple(
            sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in values["lora"].items())
        )
    values["lora"] = lora
    return AdaptSpec(**values, where=path)
