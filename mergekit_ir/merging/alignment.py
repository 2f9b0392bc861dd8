"""Tensor alignment across a triplet: which ΘT tensor is merged, copied or skipped, and why.

Checkpoints of one family differ in layout: a base-model prefix (``bert.``,
``distilbert.``, ``roberta.``, ``model.``) present in task-head classes only;
heads that exist in one model (classifier/pooler in ΘT, MLM head in Θ0/ΘD);
legacy LayerNorm names (``gamma``/``beta``); tied embeddings stored once;
vocabularies with extra rows. Alignment maps every name to a *canonical* key and
decides per ΘT tensor:

- ``merge``: present in ΘT and in every task vector with a compatible shape;
- ``copy``: taken from ΘT unchanged — integer/bool buffers, heads only ΘT has,
  tensors matching a ``copy`` rule;
- tensors of Θ0/ΘD that ΘT lacks (e.g. an MLM head) are skipped and counted.

Anything else (a non-head tensor in ΘT that the other models lack, shapes that
differ outside the vocabulary case) is an error naming the tensor.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

# First name component of task heads; tensors under these may exist in one model only.
HEAD_PREFIXES = (
    "classifier",
    "pre_classifier",
    "pooler",
    "cls",
    "lm_head",
    "score",
    "qa_outputs",
    "vocab_transform",
    "vocab_layer_norm",
    "vocab_projector",
    "predictions",
    "lm_loss",
    "head",
    "generator_lm_head",
    "discriminator_predictions",
)
# Prefixes used when a checkpoint has no config naming its class.
KNOWN_BASE_PREFIXES = (
    "bert",
    "distilbert",
    "roberta",
    "electra",
    "deberta",
    "albert",
    "mpnet",
    "xlm_roberta",
    "model",
    "transformer",
)
# canonical key -> keys it may be stored under when weights are tied.
TIED_ALIASES = {
    "encoder.embed_tokens.weight": ("shared.weight",),
    "decoder.embed_tokens.weight": ("shared.weight",),
    "lm_head.weight": ("shared.weight", "embed_tokens.weight", "embeddings.word_embeddings.weight"),
}
_VOCAB_HINT = re.compile(
    r"(embed|word_embeddings|shared|lm_head|decoder\.weight|decoder\.bias|predictions\.bias)"
)


# base_model_prefix of common families, so alignment need not import their modelling code
# (importing e.g. the Llama classes costs ~160 MB and seconds); tests check it against transformers.
FAMILY_PREFIXES = {
    "Bert": "bert",
    "DistilBert": "distilbert",
    "Roberta": "roberta",
    "XLMRoberta": "roberta",
    "Electra": "electra",
    "Deberta": "deberta",
    "DebertaV2": "deberta",
    "Albert": "albert",
    "MPNet": "mpnet",
    "Llama": "model",
    "Mistral": "model",
    "Qwen2": "model",
    "Gemma": "model",
    "T5": "transformer",
    "MT5": "transformer",
    "GPT2": "transformer",
}
_ARCH_FAMILY = re.compile(
    r"^(?P<family>[A-Za-z0-9]+?)(?:For[A-Za-z]+|Model|LMHeadModel|EncoderModel)$"
)


def architecture_prefix(arch: str) -> str | None:
    """The base_model_prefix of a transformers class name, from the table or the class itself."""
    m = _ARCH_FAMILY.match(arch)
    if m and m.group("family") in FAMILY_PREFIXES:
        return FAMILY_PREFIXES[m.group("family")]
    import transformers

    cls = getattr(transformers, arch, None)
    return getattr(cls, "base_model_prefix", None) or None


def base_prefix(names: Sequence[str], config: dict) -> str | None:
    """The base-model prefix this checkpoint's names carry, if any."""
    candidates: list[str] = []
    for arch in config.get("architectures") or []:
        prefix = architecture_prefix(arch)
        if prefix:
            candidates.append(prefix)
    if not candidates and not config:
        candidates = list(KNOWN_BASE_PREFIXES)
    for p in candidates:
        share = sum(n.startswith(p + ".") for n in names)
        if share and share >= len(names) / 2:
            return p
    return None


def canonical(name: str, prefix: str | None) -> str:
    if prefix and name.startswith(prefix + "."):
        name = name[len(prefix) + 1 :]
    if name.endswith(".gamma"):
        name = name[: -len(".gamma")] + ".weight"
    elif name.endswith(".beta"):
        name = name[: -len(".beta")] + ".bias"
    return name


def is_head(key: str) -> bool:
    return key.split(".", 1)[0] in HEAD_PREFIXES


@dataclass
class NameIndex:
    """Canonical key -> original name for one checkpoint."""

    label: str
    names: dict[str, str]
    tied: bool = True

    @classmethod
    def build(cls, label: str, names: Sequence[str], config: dict) -> NameIndex:
        prefix = base_prefix(names, config)
        index: dict[str, str] = {}
        for n in names:
            index.setdefault(canonical(n, prefix), n)
        return cls(label, index, tied=config.get("tie_word_embeddings", True) is not False)

    def find(self, key: str) -> str | None:
        if key in self.names:
            return self.names[key]
        if key == "lm_head.weight" and not self.tied:
            return None
        for alias in TIED_ALIASES.get(key, ()):
            if alias in self.names:
                return self.names[alias]
        return None

    def keys(self) -> Iterable[str]:
        return self.names.keys()


@dataclass(frozen=True)
class PlanEntry:
    """What happens to one output tensor."""

    name: str  # name in ΘT and in the output
    key: str  # canonical key shared across the triplet
    action: str  # "merge" or "copy"
    reason: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    rows: int | None = None  # vocabulary case: only the first ``rows`` rows are merged


@dataclass
class MergePlan:
    entries: list[PlanEntry]
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (model, name, reason)

    def counts(self) -> dict[str, int]:
        c = Counter(e.action for e in self.entries)
        return {"merge": c["merge"], "copy": c["copy"], "skip": len(self.skipped)}

    @cached_property
    def num_layers(self) -> int:
        from mergekit_ir.params import layer_index

        idx = [i for e in self.entries if (i := layer_index(e.key)) is not None]
        return max(idx) + 1 if idx else 1

    def table(self, params: Mapping[str, Any] | None = None) -> str:
        """A plain-text table for ``mergeir merge --plan``; with ``params``, each merged
        tensor's parameters as the merge resolves them (layer-wise rules per tensor)."""
        from mergekit_ir.params import TensorPosition, layer_index, resolve_all

        def resolved(e: PlanEntry) -> str:
            if not params or e.action != "merge":
                return ""
            pos = TensorPosition(e.key, layer_index(e.key), self.num_layers)
            return "  " + " ".join(
                f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in resolve_all(params, pos).items()
                if v is not None
            )

        lines = [f"{'action':<6}  {'tensor':<60}  {'shape':<18}  reason"]
        for e in self.entries:
            shape = "×".join(map(str, e.shape)) or "scalar"
            lines.append(f"{e.action:<6}  {e.name:<60}  {shape:<18}  {e.reason}{resolved(e)}")
        for model, name, reason in self.skipped:
            lines.append(f"{'skip':<6}  {name:<60}  {'':<18}  {reason} ({model})")
        c = self.counts()
        lines.append(f"-- {c['merge']} merged, {c['copy']} copied from ΘT, {c['skip']} skipped")
        return "\n".join(lines)


@dataclass(frozen=True)
class AlignmentRules:
    """User overrides from the triplet's ``alignment:`` block (regexes on ΘT names)."""

    copy: tuple[str, ...] = ()
    skip_missing: bool = False  # copy any ΘT tensor the task vectors lack instead of failing

    def forces_copy(self, name: str) -> bool:
        return any(re.search(p, name) for p in self.copy)


def vocab_case(key: str, a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Shapes that differ only in their first (vocabulary) dimension of an embedding or head."""
    return (
        len(a) == len(b)
        and len(a) >= 1
        and a[1:] == b[1:]
        and a[0] != b[0]
        and bool(_VOCAB_HINT.search(key))
    )
