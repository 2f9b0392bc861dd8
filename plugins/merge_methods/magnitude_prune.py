"""Magnitude pruning then task arithmetic (PEFT's ``magnitude_prune`` combination).

TIES without the sign election: each vector (τT with weight 1, τ_i with α·w_i) keeps
its per-tensor top-``density`` entries by magnitude, and the weighted vectors are
summed, so conflicting signs partly cancel instead of being resolved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mergekit_ir import ALPHA, WEIGHTS, MergeMethod, hookimpl

from .sparsify import TOPK, density_param, magnitude_sparsifier, sparse_task_arithmetic, summed


def magnitude_prune(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 1.0,
    weights: Sequence[float] | None = None,
    name: str = "",
    density: float = 0.5,
    topk: str = "tensor",
) -> torch.Tensor:
    """Θ0 + trim(τT) + α·Σ w_i·trim(τ_i), trim = per-tensor top-``density`` by magnitude."""
    sparsify = magnitude_sparsifier(density, topk, "magnitude_prune")
    return sparse_task_arithmetic(
        "magnitude_prune", sparsify, summed, theta_t, taus, tau_t, alpha, weights, name
    )


@hookimpl
def register_merge_methods(register: Callable[[MergeMethod], None]) -> None:
    register(
        MergeMethod(
            name="magnitude_prune",
            description="trim each task vector (incl. ΘT − Θ0) to its top-density entries "
            "per tensor, then sum weighted (no sign election)",
            merge=magnitude_prune,
            params=(ALPHA, WEIGHTS, density_param(0.5), TOPK),
            needs_ir_vector=True,
        )
    )
