"""AdaMerging for re-rankers: block-wise merge coefficients learnt by gradient descent on a
label-free objective (Yang et al., ICLR 2024, "AdaMerging: Adaptive Model Merging for
Multi-Task Learning", transposed from classification to ranking).

Θ'(c) = ΘT + Σ_l c_l·τ_l, with τ = Σ_i w_i·τ_i the weighted domain vector(s) and l a group of
tensors: a transformer block (``block``), the embeddings, and everything else; or every
tensor on its own (``tensor``, AdaMerging's "layer-wise"). The coefficients start at ``init``
(AdaMerging's 0.3) and follow Adam on one or both objectives:

- ``entropy``: for each (unlabelled) test query, the entropy of the softmax over its BM25
  candidates' re-ranking scores / T — AdaMerging's prediction entropy, with the candidate
  list as the classes;
- ``contrastive``: for each pseudo-query (a document's title, a sentence or a span, from the
  label-free α selectors), −log softmax of its source document's score / T among the BM25
  candidates (the source document always among them).

T is the temperature: by default the mean per-query standard deviation of the scores of
Θ'(init) over the candidate lists, measured once before learning, so the softmax is neither
flat nor one-hot whatever the scorer's scale (cosines, logits). Gradients flow through plain
torch autograd: each step binds ΘT + Σ c_l·τ_l to the scorer's model with
``torch.func.functional_call`` and back-propagates through the scorer's own
``differentiable_scores`` (bi-encoders, cross-encoders and SPLADE). The model's own weights are
never changed.

The coefficients come back as a layer-wise α of ``task_arithmetic`` (filter rules on tensor
names, :func:`coefficient_rules`), so Θ' at them is a normal merge — the α sweep applies it
in place, ``mergeir merge --from-run`` writes it.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mergekit_ir.errors import ConfigError
from mergekit_ir.params import layer_index

#: ``_LAYER_INDEX`` of :mod:`mergekit_ir.params` for one block number: tensors of block ``l``.
_BLOCK = r"(?:^|\.)(?:layers?|block|h|blocks)\.{}\."
_EMBED = "embed|shared"
EMBEDDINGS, OTHER = "embeddings", "other"


@dataclass
class MergeAccess:
    """What AdaMerging needs of a triplet in a run: the live ΘT scorer and the in-place sweep's
    slots (ΘT's fp32 masters and τ_i per merged tensor, the model's parameter names)."""

    scorer: Any
    slots: Sequence[Any]  # mergekit_ir.merging.sweep.SweepSlot
    method: str
    weights: Sequence[float] | None = None


@dataclass(frozen=True)
class Query:
    """One query and its candidate documents' texts; ``positive`` indexes the document a
    pseudo-query came from (contrastive objective), None for an unlabelled test query."""

    text: str
    docs: Sequence[str]
    positive: int | None = None


@dataclass(frozen=True)
class LearnSettings:
    steps: int = 20
    batch_queries: int = 4
    lr: float = 0.05
    init: float = 0.3
    objective: str = "both"  # entropy | contrastive | both
    temperature: float | None = None  # None: measured (see the module docstring)
    granularity: str = "block"  # block | tensor
    seed: int = 0


@dataclass
class LearnResult:
    """The learnt coefficients (group label -> value), the layer-wise α they make, and the
    learning's trace (loss per step, temperature, time)."""

    coefficients: dict[str, float]
    alpha: list[dict[str, Any]]
    losses: list[float] = field(default_factory=list)
    temperature: float = 1.0
    seconds: float = 0.0
    start: dict[str, float] = field(default_factory=dict)


def group_of(key: str, granularity: str) -> str:
    """The coefficient group of a tensor: ``block <l>``, ``embeddings`` or ``other`` (or the
    tensor's own key with ``granularity="tensor"``)."""
    if granularity == "tensor":
        return key
    layer = layer_index(key)
    if layer is not None:
        return f"block {layer}"
    return EMBEDDINGS if re.search(_EMBED, key) else OTHER


def group_order(labels: Sequence[str]) -> list[str]:
    """Embeddings first, blocks in order, the rest last (tensor keys in name order)."""

    def rank(label: str) -> tuple[int, int, str]:
        if label == EMBEDDINGS:
            return (0, 0, label)
        if label.startswith("block "):
            return (1, int(label.split()[1]), label)
        return (3, 0, label) if label == OTHER else (2, 0, label)

    return sorted(set(labels), key=rank)


def coefficient_rules(
    coefficients: dict[str, float], granularity: str, default: float
) -> list[dict[str, Any]]:
    """A layer-wise α (filter rules, first match wins) that gives each tensor its group's
    coefficient; ``default`` covers the tensors no group holds (not used by the scorer)."""
    rules: list[dict[str, Any]] = []
    rest = default
    for label in group_order(list(coefficients)):
        value = round(float(coefficients[label]), 6)
        if granularity == "tensor":
            rules.append({"filter": f"^{re.escape(label)}$", "value": value})
        elif label.startswith("block "):
            rules.append({"filter": _BLOCK.format(int(label.split()[1])), "value": value})
        elif label == EMBEDDINGS:
            rules.append({"filter": _EMBED, "value": value})
        else:
            rest = value
    rules.append({"value": round(float(rest), 6)})
    return rules


def _weighted_vectors(access: MergeAccess) -> list[torch.Tensor]:
    out = []
    for slot in access.slots:
        taus = slot.taus
        ws = list(access.weights) if access.weights is not None else [1.0] * len(taus)
        if len(ws) != len(taus):
            raise ConfigError(f"adamerging: {len(ws)} weights for {len(taus)} task vectors")
        tau = (
            taus[0] * ws[0] if len(taus) == 1 else sum(w * t for w, t in zip(ws, taus, strict=True))
        )
        out.append(tau)
    return out


class _Bound(torch.nn.Module):
    """The scorer's model as a submodule, so ``functional_call`` can bind merged parameters
    while the scorer's own scoring code runs."""

    def __init__(self, scorer: Any):
        super().__init__()
        self.model = scorer.model
        self._score = scorer.differentiable_scores

    def forward(self, pairs: list[tuple[str, str]]) -> torch.Tensor:
        return self._score(pairs)


def _scores(
    bound: _Bound, params: dict[str, torch.Tensor], queries: Sequence[Query]
) -> list[torch.Tensor]:
    """Each query's candidate scores (one forward for all pairs of the batch)."""
    pairs = [(q.text, d) for q in queries for d in q.docs]
    flat = torch.func.functional_call(bound, params, (pairs,), strict=False)
    out, start = [], 0
    for q in queries:
        out.append(flat[start : start + len(q.docs)])
        start += len(q.docs)
    return out


def learn(
    access: MergeAccess,
    test_queries: Sequence[Query],
    pseudo_queries: Sequence[Query],
    settings: LearnSettings,
    echo: Callable[[str], None] | None = None,
) -> LearnResult:
    """Learn the coefficients (see the module docstring); the scorer's model is left as it was."""
    if access.method != "task_arithmetic":
        raise ConfigError(
            f"adamerging learns the coefficients of task arithmetic, not of '{access.method}'; "
            "use merge: {method: task_arithmetic}"
        )
    s = settings
    use_entropy = s.objective in ("entropy", "both") and bool(test_queries)
    use_contrastive = s.objective in ("contrastive", "both") and bool(pseudo_queries)
    if not (use_entropy or use_contrastive):
        raise ConfigError(
            f"adamerging: no queries for the {s.objective} objective (test queries: "
            f"{len(test_queries)}, pseudo-queries: {len(pseudo_queries)})"
        )
    scorer = access.scorer
    model: torch.nn.Module = scorer.model
    slots = list(access.slots)
    labels = [group_of(slot.entry.key, s.granularity) for slot in slots]
    order = group_order(labels)
    index = {label: i for i, label in enumerate(order)}
    gid = [index[label] for label in labels]
    vectors = _weighted_vectors(access)
    device = slots[0].theta_t.device if slots else torch.device("cpu")
    coef = torch.full((len(order),), float(s.init), device=device, requires_grad=True)
    bound = _Bound(scorer)
    full = dict(model.named_parameters())

    def merged() -> dict[str, torch.Tensor]:
        params = {}
        for slot, g, tau in zip(slots, gid, vectors, strict=True):
            value = (slot.theta_t + coef[g] * tau).to(slot.target.dtype)
            rows = slot.entry.rows
            if rows:  # ΘT's extra vocabulary rows stay as they are
                live = full.get(slot.pname, slot.target)
                value = torch.cat([value, live.detach()[rows:]])
            params[f"model.{slot.pname}"] = value
        return params

    rng = random.Random(f"adamerging:{s.seed}")
    frozen = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    was_training = model.training
    model.eval()
    losses: list[float] = []
    started = time.perf_counter()
    try:
        temperature = s.temperature
        if temperature is None:
            with torch.no_grad():
                params = merged()
                probe = list(test_queries if use_entropy else pseudo_queries)
                probe = rng.sample(probe, min(len(probe), 4 * s.batch_queries))
                stds = [
                    x.float().std().item() for x in _scores(bound, params, probe) if x.numel() > 1
                ]
            temperature = max(sum(stds) / len(stds) if stds else 1.0, 1e-4)
        opt = torch.optim.Adam([coef], lr=s.lr)
        for step in range(s.steps):
            params = merged()
            loss = torch.zeros((), device=device)
            if use_entropy:
                batch = rng.sample(list(test_queries), min(s.batch_queries, len(test_queries)))
                for x in _scores(bound, params, batch):
                    logp = torch.log_softmax(x.float() / temperature, dim=0)
                    loss = loss - (logp.exp() * logp).sum() / len(batch)
            if use_contrastive:
                batch = rng.sample(list(pseudo_queries), min(s.batch_queries, len(pseudo_queries)))
                for q, x in zip(batch, _scores(bound, params, batch), strict=True):
                    logp = torch.log_softmax(x.float() / temperature, dim=0)
                    loss = loss - logp[q.positive] / len(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                coef.clamp_(-2.0, 2.0)  # task arithmetic's α range
            losses.append(float(loss.detach()))
            if echo is not None and (step == 0 or (step + 1) % max(1, s.steps // 4) == 0):
                echo(f"    adamerging step {step + 1}/{s.steps}: loss {losses[-1]:.4f}")
    finally:
        for p, flag in zip(model.parameters(), frozen, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    values = {label: float(coef[i].detach()) for label, i in index.items()}
    if not all(math.isfinite(v) for v in values.values()):
        raise ConfigError("adamerging: the coefficients diverged (NaN); lower lr")
    return LearnResult(
        coefficients=values,
        alpha=coefficient_rules(values, s.granularity, s.init),
        losses=[round(x, 6) for x in losses],
        temperature=float(temperature),
        seconds=time.perf_counter() - started,
        start={label: float(s.init) for label in order},
    )
