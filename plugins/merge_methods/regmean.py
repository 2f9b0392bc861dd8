"""RegMean (Jin et al., ICLR 2023, "Dataless Knowledge Fusion by Merging Weights of Language
Models"): per linear layer, the merged weight that best preserves every model's outputs on
data, in closed form from the models' input Gram matrices.

For a linear layer with weights W_i (out × in) and inputs X_i in model i, RegMean minimises
Σ_i ω_i·‖X_i·Wᵀ − X_i·W_iᵀ‖², whose solution is

    Wᵀ = (Σ_i ω_i·G̃_i)⁻¹ · Σ_i ω_i·G̃_i·W_iᵀ,   G_i = X_iᵀX_i / N,

with the off-diagonal entries shrunk, G̃ = r·G + (1 − r)·diag(G) (``off_diagonal`` = r, the
paper's α; r = 1 is the exact least-squares merge of the stacked data, r = 0 keeps only the
diagonal: a per-input-feature average weighted by each feature's energy). Other parameters
(biases, LayerNorms, embeddings, and linear layers the text never reaches) are averaged
with the same weights, Σ_i ω_i·θ_i / Σ_i ω_i, as the paper does.

The triplet maps on as the "share" methods do (``plugins/merge_methods/triplet.py``): the
models are ΘT and ΘD_i = Θ0 + τ_i, weighted ω = [1 − α, α·w_1, …, α·w_n]. So α = 0 is ΘT, α =
0.5 with one domain is the paper's RegMean of ΘT and ΘD (equal weights), α = 1 is ΘD's side
alone. Θ0 enters only to rebuild ΘD_i. The Gram matrices are gathered by the ``input_gram``
statistic over the target corpus (``statistics:`` settings); see docs/merge-methods.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mergekit_ir import STATISTICS, MergeMethod, Param, hookimpl

from .triplet import (
    MethodConfigError,
    interpolation_alpha,
    nonzero_sum,
    rebuild_triplet,
    share_weights,
)

OFF_DIAGONAL = Param(
    "off_diagonal",
    float,
    0.9,
    "scale of the Gram matrices' off-diagonal entries (the paper's α): 1 is exact least "
    "squares on the corpus, 0 a per-input-feature weighted average",
    min=0.0,
    max=1.0,
    per_tensor=True,
)


def shrink(gram: torch.Tensor, off_diagonal: float) -> torch.Tensor:
    """G̃ = r·G + (1 − r)·diag(G)."""
    if off_diagonal == 1.0:
        return gram
    return off_diagonal * gram + (1.0 - off_diagonal) * torch.diag(torch.diagonal(gram))


def regmean_linear(
    weights: Sequence[torch.Tensor],
    grams: Sequence[torch.Tensor],
    omegas: Sequence[float],
    off_diagonal: float = 1.0,
    name: str = "",
) -> torch.Tensor:
    """W with Wᵀ = (Σ ω_i·G̃_i)⁻¹·Σ ω_i·G̃_i·W_iᵀ, solved in fp64 (fp32 result)."""
    lhs: torch.Tensor | None = None
    rhs: torch.Tensor | None = None
    for w, W, G in zip(omegas, weights, grams, strict=True):
        if w == 0:
            continue
        if G.shape != (W.shape[1], W.shape[1]):
            raise MethodConfigError(
                f"regmean: tensor {name or '?'} is {tuple(W.shape)} but its Gram matrix is "
                f"{tuple(G.shape)}; the statistics belong to another model"
            )
        g = shrink(G.to(torch.float64), off_diagonal)
        term = w * (g @ W.to(torch.float64).T)
        lhs = w * g if lhs is None else lhs + w * g
        rhs = term if rhs is None else rhs + term
    assert lhs is not None and rhs is not None
    try:
        solved = torch.linalg.solve(lhs, rhs)
    except RuntimeError:  # singular (an input feature no text ever activates): least norm
        solved = torch.linalg.lstsq(lhs.cpu(), rhs.cpu(), driver="gelsd").solution.to(lhs.device)
    return solved.T.to(torch.float32)


def regmean(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    stats: Mapping[str, Sequence[torch.Tensor | None]] | None = None,
    alpha: float = 0.5,
    weights: Sequence[float] | None = None,
    off_diagonal: float = 0.9,
    tau_t: torch.Tensor | None = None,
    name: str = "",
) -> torch.Tensor:
    """RegMean of ΘT and ΘD_i = Θ0 + τ_i with weights [1 − α, α·w_i] (α = 0: ΘT exactly)."""
    if alpha == 0:
        return theta_t.to(torch.float32).clone()
    models = rebuild_triplet(theta_t, taus, tau_t, "regmean", name).models
    omegas = share_weights(alpha, weights, len(taus), name)
    total = nonzero_sum(omegas, "regmean", name)
    grams = (stats or {}).get("input_gram")
    if (
        theta_t.dim() == 2
        and grams is not None
        and len(grams) == len(models)
        and all(g is not None for g in grams)
    ):
        if abs(total) < 1e-8 or any(w < 0 for w in omegas):
            raise MethodConfigError(
                f"regmean: negative model weights {omegas} (tensor {name or '?'}); "
                "RegMean weighs Gram matrices, which needs weights ≥ 0"
            )
        return regmean_linear(models, grams, omegas, off_diagonal, name)  # type: ignore[arg-type]
    out = torch.zeros_like(models[0])
    for w, m in zip(omegas, models, strict=True):
        out.add_(m, alpha=w / total)
    return out


@hookimpl
def register_merge_methods(register):
    register(
        MergeMethod(
            name="regmean",
            description="RegMean: per linear layer, the least-squares merge of ΘT and ΘD on the "
            "target corpus's inputs (Gram matrices); other tensors averaged",
            merge=regmean,
            params=(
                interpolation_alpha(
                    0.5,
                    "ΘD's share: weights [1 − α, α·w_i] for ΘT, ΘD_i (0.5: the paper's RegMean)",
                ),
                Param("weights", list, None, "per-domain-model weights w_i (default: 1 each)"),
                OFF_DIAGONAL,
                STATISTICS,
            ),
            needs_ir_vector=True,
            statistics=("input_gram",),
        )
    )
