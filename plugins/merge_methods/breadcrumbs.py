"""Model Breadcrumbs (Davari & Belilovsky, 2023): drop outliers and small entries, sum.

Each vector (τT with weight 1, τ_i with α·w_i) loses its largest ``gamma`` fraction
(outliers) and its smallest entries so that a ``density`` fraction remains, per
tensor; the weighted vectors are summed, as mergekit's ``breadcrumbs``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mergekit_ir import ALPHA, WEIGHTS, MergeMethod, hookimpl

from .sparsify import GAMMA, TOPK, density_param, outlier_sparsifier, sparse_task_arithmetic, summed


def breadcrumbs(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 1.0,
    weights: Sequence[float] | None = None,
    name: str = "",
    density: float = 0.9,
    gamma: float = 0.01,
    topk: str = "tensor",
) -> torch.Tensor:
    """Θ0 + crumbs(τT) + α·Σ w_i·crumbs(τ_i); density takes precedence over gamma."""
    sparsify = outlier_sparsifier(density, gamma, topk, "breadcrumbs")
    return sparse_task_arithmetic(
        "breadcrumbs", sparsify, summed, theta_t, taus, tau_t, alpha, weights, name
    )


@hookimpl
def register_merge_methods(register: Callable[[MergeMethod], None]) -> None:
    register(
        MergeMethod(
            name="breadcrumbs",
            description="Breadcrumbs: drop each task vector's largest gamma and smallest "
            "entries per tensor so density remains (incl. ΘT − Θ0), then sum weighted",
            merge=breadcrumbs,
            params=(ALPHA, WEIGHTS, density_param(0.9), GAMMA, TOPK),
            needs_ir_vector=True,
        )
    )
