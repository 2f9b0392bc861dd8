"""Sign-consensus merges after mergekit 0.1.5: ``breadcrumbs_ties`` and ``sce``.

Both take base Θ0 and treat the IR fine-tune as one more task vector: τT with weight 1
and the domain vectors scaled by α·w_i, so α is a scale in [-2, 2] as in ``ties``.

- ``breadcrumbs_ties`` (Davari & Belilovsky, 2023, arXiv:2312.06795; mergekit's
  ``breadcrumbs_ties``): each vector loses its largest ``gamma`` and smallest entries
  so that ``density`` remains (``breadcrumbs``' sparsifier), then TIES' sign election
  and disjoint merge. Deterministic. α = 0 gives Θ0 + crumbs(τT).
- ``sce`` (Wan et al., 2024, "FuseChat", arXiv:2408.07990; mergekit's ``sce``):
  **S**elect the ``select_topk`` fraction of positions with the largest variance across
  the vectors, **C**alculate one weight per vector ∝ its mean square, **E**rase the
  entries whose sign disagrees with the elected one; Θ' = Θ0 + Σ_i λ_i·m_i·v_i / Σ_i
  λ_i·m_i. mergekit's ``sce`` has no weights; here the inputs are ΘT and
  Θ0 + α·w_i·τ_i (exactly mergekit's ``sce`` on those models), so α = 0 gives ΘT when
  ``select_topk`` = 1 and α = 1 with unit weights is mergekit's ``sce`` on ΘT, ΘD_i.

Divergences from mergekit: ``breadcrumbs_ties`` as ``breadcrumbs``/``ties`` here
(per-tensor ranking with a stable sort, normalize divisor with |weights|, one density
and gamma for all vectors, no ``lambda``/``rescale``); ``sce`` falls back to equal
weights only when every vector is 0 (mergekit already when the summed mean squares are
below 1e-6, which is typical of small fine-tuning deltas and silently turns SCE's
weighting off), and breaks variance ties by position (stable) where mergekit's
``topk`` is unspecified.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mergekit_ir import ALPHA, WEIGHTS, MergeMethod, Param, domain_weights, hookimpl

from .sparsify import (
    GAMMA,
    NORMALIZE,
    TOPK,
    density_param,
    disjoint,
    elect_sign,
    outlier_sparsifier,
    rank_window_mask,
    sparse_task_arithmetic,
)
from .triplet import rebuild_triplet


def breadcrumbs_ties(
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
    normalize: bool = False,
) -> torch.Tensor:
    """Θ0 + TIES merge of crumbs(τT) and α·w_i·crumbs(τ_i)."""
    sparsify = outlier_sparsifier(density, gamma, topk, "breadcrumbs_ties")
    combine = disjoint(normalize)
    return sparse_task_arithmetic(
        "breadcrumbs_ties", sparsify, combine, theta_t, taus, tau_t, alpha, weights, name
    )


def sce_select(vectors: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mask of the ⌊fraction·(nonzero-variance positions)⌋ positions of largest variance."""
    if fraction >= 1.0:
        return torch.ones(vectors.shape[1:], dtype=torch.bool, device=vectors.device)
    var = torch.var(vectors, dim=0, unbiased=False)
    k = int(int(torch.count_nonzero(var)) * fraction) if fraction > 0 else 0
    n = var.numel()
    return rank_window_mask(var, n - k, n)


def sce_weights(vectors: torch.Tensor) -> torch.Tensor:
    """One weight per vector ∝ its mean square, summing to 1 (equal if all vectors are 0)."""
    ms = vectors.square().reshape(vectors.shape[0], -1).mean(dim=1)
    total = ms.sum()
    if float(total) == 0.0:
        return torch.full_like(ms, 1.0 / ms.shape[0])
    return ms / total


def sce(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 1.0,
    weights: Sequence[float] | None = None,
    name: str = "",
    select_topk: float = 1.0,
) -> torch.Tensor:
    """Θ0 + SCE(τT, α·w_1·τ_1, ...)."""
    theta_0, _, (tau_t32, *domain) = rebuild_triplet(theta_t, taus, tau_t, "sce", name)
    if not 0.0 <= select_topk <= 1.0:
        raise ValueError(f"sce: select_topk must be in [0, 1], got {select_topk:g}")
    ws = [alpha * w for w in domain_weights(weights, len(taus), name)]
    vectors = torch.stack([tau_t32] + [w * tau for w, tau in zip(ws, domain, strict=True)])
    if select_topk < 1.0:
        vectors = vectors * sce_select(vectors, select_topk)
    agree = elect_sign(vectors)
    lam = sce_weights(vectors).reshape((-1,) + (1,) * (vectors.dim() - 1))
    erased = lam * agree
    merged = (vectors * erased).sum(dim=0) / erased.sum(dim=0).clamp(min=1e-6)
    return (theta_0 + merged).to(theta_t.dtype)


@hookimpl
def register_merge_methods(register: Callable[[MergeMethod], None]) -> None:
    register(
        MergeMethod(
            name="breadcrumbs_ties",
            description="Breadcrumbs + TIES: drop each task vector's largest gamma and "
            "smallest entries (incl. ΘT − Θ0) so density remains, elect signs, merge",
            merge=breadcrumbs_ties,
            params=(ALPHA, WEIGHTS, density_param(0.9), GAMMA, TOPK, NORMALIZE),
            needs_ir_vector=True,
        )
    )
    register(
        MergeMethod(
            name="sce",
            description="SCE: keep the highest-variance positions of τT and α·w_i·τ_i, "
            "weight each vector by its mean square, average the sign-agreeing entries",
            merge=sce,
            params=(
                ALPHA,
                WEIGHTS,
                Param(
                    "select_topk",
                    float,
                    1.0,
                    "fraction of the positions (of those whose values differ across the "
                    "vectors) kept, by variance across vectors; 1 keeps all",
                    min=0.0,
                    max=1.0,
                    per_tensor=True,
                ),
            ),
            needs_ir_vector=True,
        )
    )
