"""DELLA (Deep, Bhardwaj & Kumar, 2024, arXiv:2406.11617): magnitude-ranked random drops.

mergekit 0.1.5's ``della`` / ``della_linear`` (``della_magprune`` sparsification):
within each row (dimension 1; a vector is one row), entries are ranked by |v| and kept
with probability p = density − ε + 2ε·(rank − 1)/(row length − 1), so the smallest
entry is kept with density − ε, the largest with density + ε and the mean keep rate is
density. The kept entries are rescaled, then ``della`` elects signs and merges
disjointly like TIES and ``della_linear`` sums the weighted vectors.

Triplet mapping (as ``ties``/``dare`` here and mergekit's ``base_model: Θ0``): the
vectors are τT (weight 1) and τ_i (weights α·w_i); Θ' = Θ0 + merge. α = 0 gives
Θ0 + della(τT), not ΘT, unless density = 1.

Masks come from ``tensor_generator(seed, name)`` on the CPU, one ``torch.rand`` draw
per vector in the order τT, τ_1, ..., τ_n (kept where draw < p), so a merge is
reproducible across runs and devices and does not change with α.

Divergences from mergekit (noted in docs/merge-methods.md):

1. ``rescale`` divides each kept entry by its own keep probability p (the DELLA
   paper's rescale, E[s] = v); mergekit rescales the tensor to its original L1 norm.
   ``rescale: false`` keeps the entries as they are, as mergekit's ``rescale: false``.
2. Masks are drawn per (seed, tensor, vector), not from the global torch RNG.
3. ``normalize`` defaults to false for ``della`` (mergekit: true), as ``ties`` here, so
   α stays a scale; its divisor uses |weights|.
4. Magnitude ranks use a stable sort; a row of one entry is kept with p = density
   (mergekit divides 0 by 0 there).
5. One ``density``/``epsilon`` for all vectors (mergekit: per model); no ``lambda``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mergekit_ir import ALPHA, WEIGHTS, MergeMethod, Param, hookimpl

from .sparsify import (
    NORMALIZE,
    SEED,
    Sparsifier,
    check_density,
    density_param,
    disjoint,
    seeded_sparsifier,
    sparse_task_arithmetic,
    summed,
)
from .triplet import MethodConfigError

EPSILON = Param(
    "epsilon",
    float,
    0.15,
    "spread of the keep probabilities: density − epsilon (smallest |v| of a row) to "
    "density + epsilon (largest); both must stay inside (0, 1)",
    min=0.0,
    max=0.5,
    per_tensor=True,
)
RESCALE = Param(
    "rescale",
    bool,
    True,
    "divide each kept entry by its keep probability (unbiased, the DELLA paper's); "
    "false keeps the entries unscaled",
)


def check_epsilon(density: float, epsilon: float, method: str) -> None:
    if density < 1.0 and not (density - epsilon > 0.0 and density + epsilon < 1.0):
        raise MethodConfigError(
            f"{method}: density ± epsilon must lie in (0, 1), got density {density:g} "
            f"and epsilon {epsilon:g}"
        )


def keep_probabilities(tensor: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """p per entry, from its |v| rank within its row (dimension 1; a vector is one row).

    The returned tensor has the row layout (2-D or more); a 0-/1-D input becomes (1, n).
    """
    rows = tensor.reshape(1, -1) if tensor.dim() < 2 else tensor
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=1, stable=True), dim=1).to(torch.float32)
    length = rows.shape[1]
    rank_norm = ranks / (length - 1) if length > 1 else torch.full_like(ranks, 0.5)
    return (density - epsilon) + rank_norm.clamp(0, 1) * 2 * epsilon  # mergekit's order


def della_prune(
    tensor: torch.Tensor,
    density: float,
    epsilon: float,
    generator: torch.Generator,
    rescale: bool = True,
) -> torch.Tensor:
    """Keep each entry with its rank-based probability p (draws on the CPU), rescale by 1/p."""
    if density >= 1.0 or tensor.numel() == 0:
        return tensor
    probs = keep_probabilities(tensor, density, epsilon)
    draws = torch.rand(probs.shape, generator=generator, dtype=torch.float32, device="cpu")
    probs = probs.to(tensor.device)
    keep = draws.to(tensor.device) < probs
    rows = tensor.reshape(probs.shape)
    out = torch.where(keep, rows / probs if rescale else rows, torch.zeros_like(rows))
    return out.reshape(tensor.shape)


def della_sparsifier(
    density: float, epsilon: float, seed: int, name: str, rescale: bool, method: str
) -> Sparsifier:
    """:func:`della_prune` for every vector, after checking ``density`` and ``epsilon``."""
    density = check_density(density, method)
    epsilon = float(epsilon)
    check_epsilon(density, epsilon, method)
    return seeded_sparsifier(
        seed, name, lambda v, gen: della_prune(v, density, epsilon, gen, rescale)
    )


def della(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 1.0,
    weights: Sequence[float] | None = None,
    name: str = "",
    density: float = 0.5,
    epsilon: float = 0.15,
    seed: int = 0,
    rescale: bool = True,
    normalize: bool = False,
) -> torch.Tensor:
    """Θ0 + TIES merge (sign election, disjoint sum) of della(τT) and α·w_i·della(τ_i)."""
    sparsify = della_sparsifier(density, epsilon, seed, name, rescale, "della")
    combine = disjoint(normalize)
    return sparse_task_arithmetic(
        "della", sparsify, combine, theta_t, taus, tau_t, alpha, weights, name
    )


def della_linear(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 1.0,
    weights: Sequence[float] | None = None,
    name: str = "",
    density: float = 0.5,
    epsilon: float = 0.15,
    seed: int = 0,
    rescale: bool = True,
) -> torch.Tensor:
    """Θ0 + della(τT) + α·Σ w_i·della(τ_i)."""
    sparsify = della_sparsifier(density, epsilon, seed, name, rescale, "della_linear")
    return sparse_task_arithmetic(
        "della_linear", sparsify, summed, theta_t, taus, tau_t, alpha, weights, name
    )


@hookimpl
def register_merge_methods(register: Callable[[MergeMethod], None]) -> None:
    register(
        MergeMethod(
            name="della",
            description="DELLA + TIES: drop task-vector entries (incl. ΘT − Θ0) at random, "
            "the larger |v| in its row the likelier kept; rescale, elect signs, merge",
            merge=della,
            params=(ALPHA, WEIGHTS, density_param(0.5), EPSILON, SEED, RESCALE, NORMALIZE),
            needs_ir_vector=True,
        )
    )
    register(
        MergeMethod(
            name="della_linear",
            description="DELLA: drop task-vector entries (incl. ΘT − Θ0) at random by "
            "magnitude rank in their row, rescale, sum weighted",
            merge=della_linear,
            params=(ALPHA, WEIGHTS, density_param(0.5), EPSILON, SEED, RESCALE),
            needs_ir_vector=True,
        )
    )
