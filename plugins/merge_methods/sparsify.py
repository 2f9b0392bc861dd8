"""Shared pieces of the sparse merge methods (TIES, DARE, DELLA, magnitude pruning, Breadcrumbs).

Every sparse method here is the same pipeline, in mergekit's "generalized task
arithmetic" form, applied to one tensor (:func:`sparse_task_arithmetic`):

1. the vectors are v_0 = τT = ΘT − Θ0 (the IR fine-tune, weight 1) and
   v_i = τ_i = ΘD_i − Θ0 (weights α·w_i);
2. each vector is sparsified on its own (:func:`trim_magnitude`, :func:`trim_outliers`,
   :func:`dare_drop`, DELLA's ``della_prune``), before weighting (magnitude order and
   random masks do not depend on a positive scale, and weights are applied next);
3. the weighted vectors d_i = W_i·sparse(v_i) are either summed (linear methods,
   :func:`summed`) or merged disjointly over the entries that agree with the elected
   sign (:func:`disjoint`: :func:`elect_sign`, :func:`disjoint_sum`);
4. Θ' = Θ0 + merged = ΘT − τT + merged.

The helpers are pure tensor functions, so each method module is a few lines (its
sparsifier, from :func:`magnitude_sparsifier`, :func:`outlier_sparsifier` or
:func:`seeded_sparsifier`, and its combine step) and the oracle tests can compare each
step against mergekit's own functions. All top-k selections are per tensor: the engine
streams one tensor at a time, so a global (whole-model) top-k threshold is not available
to a merge method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mergekit_ir import ConfigError, Param, domain_weights, tensor_generator

from .triplet import fp32, require_tau_t

Sparsifier = Callable[[torch.Tensor, int], torch.Tensor]
"""``(vector, index) -> sparse vector``; ``index`` is the vector's position (0 = τT)."""

Combine = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(weighted sparse vectors stacked on dim 0, their weights) -> merged task vector``."""


@dataclass(frozen=True)
class FractionParam(Param):
    """A fraction in (min, max]: the lower bound is exclusive.

    ``density = 0`` would keep nothing (and DARE would rescale by 1/0); rejecting it
    when the config is checked beats failing half-way through a merge.
    """

    def check_scalar(self, value: Any, path: str) -> Any:
        value = super().check_scalar(value, path)
        if value is not None and self.min is not None and value <= self.min:
            raise ConfigError(f"{path}: {value:g} must be greater than {self.min:g}")
        return value

    def describe(self) -> str:
        return super().describe().replace(f"in [{self.min:g},", f"in ({self.min:g},", 1)


def density_param(default: float) -> FractionParam:
    """The ``density`` parameter (fraction of each task vector kept), layer-wise capable."""
    return FractionParam(
        "density",
        float,
        default,
        "fraction of each task vector's entries kept, in (0, 1]; per tensor, not global",
        min=0.0,
        max=1.0,
        per_tensor=True,
    )


TOPK = Param(
    "topk",
    str,
    "tensor",
    "scope of the magnitude ranking: 'tensor' (per-tensor top-k). A global top-k "
    "over the whole model is not offered: merges stream tensor by tensor",
    choices=("tensor",),
)
NORMALIZE = Param(
    "normalize",
    bool,
    False,
    "divide each entry by the summed |weight| of the vectors that agree with the "
    "elected sign (mergekit's default for ties is true); false keeps α a scale",
)
SEED = Param("seed", int, 0, "random seed for DARE's drop masks (combined with the tensor name)")
GAMMA = Param(
    "gamma",
    float,
    0.01,
    "fraction of the largest-magnitude entries dropped as outliers (Breadcrumbs)",
    min=0.0,
    max=1.0,
    per_tensor=True,
)


def check_density(density: float, method: str) -> float:
    """Reject densities outside (0, 1] for direct callers (configs are checked earlier)."""
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"{method}: density must be in (0, 1], got {density:g}")
    return density


def check_topk(topk: str, method: str) -> None:
    if topk != "tensor":
        raise ValueError(
            f"{method}: topk={topk!r} is not supported; only per-tensor top-k ('tensor') is, "
            "because tensors are merged one at a time"
        )


def check_gamma(gamma: float, method: str) -> None:
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"{method}: gamma must be in [0, 1], got {gamma:g}")


def rank_window_mask(tensor: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Boolean mask of the entries whose ascending |value| rank lies in [lo, hi).

    Ranks are those of a stable sort: among equal magnitudes the earlier flat index
    ranks lower, so the mask is the same on every device and every run. Selection
    uses ``kthvalue`` thresholds rather than a full sort (about 10x faster on CPU and
    no int64 index tensor the size of the weight).
    """
    flat = tensor.detach().abs().reshape(-1).float()
    n = flat.numel()
    lo, hi = max(lo, 0), min(hi, n)
    if lo >= hi:
        return torch.zeros(tensor.shape, dtype=torch.bool, device=tensor.device)
    mask = torch.ones(n, dtype=torch.bool, device=tensor.device)
    if hi < n:
        mask &= _rank_below(flat, hi)
    if lo > 0:
        mask &= ~_rank_below(flat, lo)
    return mask.reshape(tensor.shape)


def _rank_below(flat: torch.Tensor, r: int) -> torch.Tensor:
    """Mask of the ``r`` smallest entries of a 1-D tensor (0 < r < n), stable on ties."""
    threshold = torch.kthvalue(flat, r).values
    below = flat < threshold
    equal = flat == threshold
    missing = r - int(below.sum())
    if int(equal.sum()) == missing:  # no tie straddles the cut (the usual case)
        return below | equal
    return below | (equal & (torch.cumsum(equal, 0, dtype=torch.int64) <= missing))


def magnitude_keep_count(numel: int, density: float) -> int:
    """How many entries TIES keeps: ``max(1, int(density·n))``, as mergekit does.

    Keeping at least one entry means a tiny tensor (a bias, a norm weight) is never
    wiped out entirely by a low density; PEFT keeps ``int(density·n)``, possibly 0.
    """
    return max(1, int(density * numel)) if numel else 0


def trim_magnitude(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``magnitude_keep_count`` largest-|value| entries of ``tensor``, zero the rest."""
    n = tensor.numel()
    if density >= 1.0 or n == 0:
        return tensor
    keep = magnitude_keep_count(n, density)
    return tensor * rank_window_mask(tensor, n - keep, n)


def trim_outliers(tensor: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Breadcrumbs: drop the largest ``gamma`` fraction and the smallest, keeping ``density``.

    Counts follow mergekit's ``magnitude_outliers``: keep ``int(density·n)`` entries,
    drop ``int(gamma·n)`` from the top unless that would leave fewer than the target
    (then fewer outliers are dropped), and the rest from the bottom.
    """
    n = tensor.numel()
    if density >= 1.0 or n == 0:
        return tensor
    target = int(density * n)
    n_top = int(gamma * n)
    n_bottom = max(0, n - target - n_top)
    return tensor * rank_window_mask(tensor, n_bottom, n_bottom + target)


def dare_drop(tensor: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE: drop each entry with probability p = 1 − density, scale the kept by 1/(1 − p).

    The uniform draws are made on the CPU with ``generator`` and moved to the
    tensor's device, so the mask depends only on (seed, tensor name, vector index),
    not on the device or on anything else drawn in the process.
    """
    if density >= 1.0 or tensor.numel() == 0:
        return tensor
    draws = torch.rand(tensor.shape, generator=generator, dtype=torch.float32, device="cpu")
    keep = (draws < density).to(tensor.device)
    return tensor * keep / density


def elect_sign(weighted: torch.Tensor) -> torch.Tensor:
    """Sign election over stacked weighted vectors (dim 0), mergekit's ``sum`` method.

    The elected sign is that of Σ_i d_i (+1 on a tie at zero); an entry of d_i takes
    part if its sign equals the elected one, so zeros (trimmed or zero-weight
    entries) never do.
    """
    elected = torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0).to(weighted.dtype)
    return weighted.sign() == elected


def disjoint_sum(
    weighted: torch.Tensor, weights: torch.Tensor, agree: torch.Tensor, normalize: bool
) -> torch.Tensor:
    """Sum the agreeing weighted entries; optionally divide by their summed |weight|.

    Dividing by Σ|W_i| rather than mergekit's signed Σ W_i keeps the result a weighted
    mean when a weight is negative (α < 0): with the signed sum, τT and a subtracted
    τ_D cancel the divisor to 0 (mergekit then divides by 1) or blow it up near 0.
    For non-negative weights both are the same.
    """
    mixed = (weighted * agree).sum(dim=0)
    if not normalize:
        return mixed
    shape = (-1,) + (1,) * (weighted.dim() - 1)
    divisor = (weights.abs().reshape(shape) * agree).sum(dim=0)
    divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    return mixed / divisor


def magnitude_sparsifier(density: float, topk: str, method: str) -> Sparsifier:
    """TIES' trim (:func:`trim_magnitude`) for every vector, after checking its parameters."""
    density = check_density(density, method)
    check_topk(topk, method)
    return lambda v, _i: trim_magnitude(v, density)


def outlier_sparsifier(density: float, gamma: float, topk: str, method: str) -> Sparsifier:
    """Breadcrumbs' trim (:func:`trim_outliers`) for every vector, after checking its parameters."""
    density = check_density(density, method)
    check_topk(topk, method)
    check_gamma(gamma, method)
    return lambda v, _i: trim_outliers(v, density, gamma)


def seeded_sparsifier(
    seed: int, name: str, drop: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
) -> Sparsifier:
    """A random ``drop(vector, generator)`` with one generator per tensor.

    The generator is ``tensor_generator(seed, name)``; the vectors draw from it in order
    (τT, τ_1, ..., τ_n), so their masks differ and depend only on (seed, tensor name,
    vector index), not on α, the device or anything else drawn in the process.
    """
    gen = tensor_generator(int(seed), name)
    return lambda v, _i: drop(v, gen)


def dare_sparsifier(density: float, seed: int, name: str, method: str) -> Sparsifier:
    """DARE's drop (:func:`dare_drop`) for every vector, after checking ``density``."""
    density = check_density(density, method)
    return seeded_sparsifier(seed, name, lambda v, gen: dare_drop(v, density, gen))


def summed(weighted: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The linear methods' combine step: Σ_i d_i."""
    return weighted.sum(dim=0)


def disjoint(normalize: bool) -> Combine:
    """TIES' combine step: elect signs (:func:`elect_sign`), then :func:`disjoint_sum`."""
    return lambda weighted, weights: disjoint_sum(
        weighted, weights, elect_sign(weighted), normalize
    )


def sparse_task_arithmetic(
    method: str,
    sparsify: Sparsifier,
    combine: Combine,
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    tau_t: torch.Tensor | None,
    alpha: float,
    weights: Sequence[float] | None,
    name: str,
) -> torch.Tensor:
    """The shared pipeline: Θ0 + combine(sparse(τT)·1, sparse(τ_i)·α·w_i).

    ``method`` names the merge in errors; ``combine`` is :func:`summed` or
    :func:`disjoint` (TIES-style sign election and disjoint merge); the rest are the
    merge function's own arguments. Computed in fp32, returned in ``theta_t``'s dtype.
    """
    tau_t = require_tau_t(tau_t, method, name, "it treats the IR fine-tune as one more task vector")
    ws = [1.0] + [alpha * w for w in domain_weights(weights, len(taus), name)]
    t = theta_t.to(torch.float32)
    vectors = [tau_t, *fp32(taus)]
    weight_vec = torch.tensor(ws, dtype=torch.float32, device=t.device)
    weighted = torch.stack(
        [w * sparsify(v, i) for i, (w, v) in enumerate(zip(ws, vectors, strict=True))]
    )
    return (t - vectors[0] + combine(weighted, weight_vec)).to(theta_t.dtype)
