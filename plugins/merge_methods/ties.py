"""TIES-Merging (Yadav et al., NeurIPS 2023): trim, elect sign, disjoint merge.

The IR fine-tune τT = ΘT − Θ0 is one more task vector (weight 1) beside the domain
vectors τ_i (weights α·w_i), as in mergekit's ``ties`` with ``base_model: Θ0``; so
α = 0 gives Θ0 + trim(τT), which is ΘT only when density = 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mergekit_ir import ALPHA, WEIGHTS, MergeMethod, hookimpl

from .sparsify import (
    NORMALIZE,
    TOPK,
    density_param,
    disjoint,
    magnitude_sparsifier,
    sparse_task_arithmetic,
)


def ties(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 1.0,
    weights: Sequence[float] | None = None,
    name: str = "",
    density: float = 0.5,
    topk: str = "tensor",
    normalize: bool = False,
) -> torch.Tensor:
    """Θ0 + disjoint merge of the per-tensor top-``density`` entries of τT, α·w_i·τ_i.

    Top-k is per tensor (``topk="tensor"``): a global top-k over the whole model
    would need every tensor before the first is merged, and merges stream tensor by
    tensor. ``normalize`` divides by the summed |weight| of agreeing vectors
    (mergekit's ``normalize: true``); it is off by default so that α stays a scale:
    with density 1 and no sign conflict, TIES then equals task arithmetic.
    """
    sparsify = magnitude_sparsifier(density, topk, "ties")
    combine = disjoint(normalize)
    return sparse_task_arithmetic(
        "ties", sparsify, combine, theta_t, taus, tau_t, alpha, weights, name
    )


@hookimpl
def register_merge_methods(register: Callable[[MergeMethod], None]) -> None:
    register(
        MergeMethod(
            name="ties",
            description="TIES: trim each task vector (incl. ΘT − Θ0) to its top-density "
            "entries per tensor, elect signs, sum the agreeing entries (normalize: average them)",
            merge=ties,
            params=(ALPHA, WEIGHTS, density_param(0.5), TOPK, NORMALIZE),
            needs_ir_vector=True,
        )
    )
