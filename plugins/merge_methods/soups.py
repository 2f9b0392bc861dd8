"""Weight averages: ``linear`` (model soup) and ``model_stock``, after mergekit 0.1.5.

- ``linear`` (Wortsman et al., ICML 2022, "Model soups"; mergekit's ``linear``): the
  weighted average of ΘT and the ΘD_i with weights 1 − α and α·w_i, divided by their
  sum (``normalize``, mergekit's default). α is the domain models' share: 0 is ΘT, 1 the
  (weighted) average of the domain models, and with one domain α = 0.5 is the uniform
  soup (ΘT + ΘD)/2. No Θ0 enters the result; it is needed only to rebuild ΘD_i = Θ0 + τ_i.
- ``model_stock`` (Jang et al., ECCV 2024, arXiv:2403.19522; mergekit's ``model_stock``):
  base Θ0, fine-tuned models ΘT and ΘD_i. With N fine-tuned models and cos θ the mean
  pairwise cosine of their task vectors (per tensor, or per row with ``filter_wise``),
  t = N·cos θ / (1 + (N − 1)·cos θ) and M = t·mean(ΘT, ΘD_i) + (1 − t)·Θ0. mergekit's
  method has no weight to sweep, so α moves from ΘT to it: Θ' = ΘT + α·(M − ΘT), and
  α = 1 is mergekit's ``model_stock``.

Divergences from mergekit: ``linear`` raises ``ValueError`` when the weights sum to 0
(mergekit divides by 0); ``model_stock``'s α interpolation is ours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mergekit_ir import WEIGHTS, MergeMethod, Param, hookimpl

from .triplet import (
    MethodConfigError,
    interpolation_alpha,
    nonzero_sum,
    rebuild_triplet,
    share_weights,
    toward,
    toward_alpha,
)


def linear(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 0.5,
    weights: Sequence[float] | None = None,
    name: str = "",
    normalize: bool = True,
) -> torch.Tensor:
    """Σ c_j·Θ_j / Σ c_j over (ΘT, ΘD_1, ...) with c = (1 − α, α·w_1, ...)."""
    models = rebuild_triplet(theta_t, taus, tau_t, "linear", name).models
    cs = share_weights(alpha, weights, len(taus), name)
    out = torch.zeros_like(models[0])
    for c, model in zip(cs, models, strict=True):
        out.add_(model, alpha=c)
    if normalize:
        out.div_(nonzero_sum(cs, "linear", name))
    return out.to(theta_t.dtype)


def model_stock(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 1.0,
    name: str = "",
    filter_wise: bool = False,
) -> torch.Tensor:
    """ΘT + α·(M − ΘT), M = mergekit's model_stock over base Θ0 and ΘT, ΘD_i."""
    if not taus:
        raise MethodConfigError(
            f"model_stock needs at least one domain model beside ΘT (tensor {name or '?'})"
        )
    theta_0, t, offsets = rebuild_triplet(theta_t, taus, tau_t, "model_stock", name)
    shape = t.shape
    if filter_wise:
        # one cosine per row of the last dimension; a vector (or scalar) is one row
        flat = [o.reshape(1, -1) if o.dim() <= 1 else o for o in offsets]
    else:
        flat = [o.reshape(-1) for o in offsets]
    cosines = []
    for i, a in enumerate(flat):
        for b in flat[i + 1 :]:
            norms = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(offsets)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6  # no finite estimate: keep Θ0 there, as mergekit
    ratio = torch.where(
        singular,
        torch.zeros_like(cos),
        n * cos / torch.where(singular, torch.ones_like(denominator), denominator),
    )
    mean_offset = torch.stack(flat).mean(dim=0)
    base = theta_0.reshape(mean_offset.shape)
    merged = (base + ratio * mean_offset).reshape(shape)
    return toward(t, merged, alpha).to(theta_t.dtype)


@hookimpl
def register_merge_methods(register: Callable[[MergeMethod], None]) -> None:
    register(
        MergeMethod(
            name="linear",
            description="model soup: weighted average of ΘT (weight 1 − α) and the ΘD_i "
            "(weights α·w_i), divided by the weights' sum (normalize)",
            merge=linear,
            params=(
                interpolation_alpha(
                    0.5, "the domain models' share of the average: 0 is ΘT, 1 the domain models"
                ),
                WEIGHTS,
                Param(
                    "normalize",
                    bool,
                    True,
                    "divide by the sum of the weights (1 − α + α·Σ w_i), as mergekit's default",
                ),
            ),
            needs_ir_vector=True,
            elementwise=True,
        )
    )
    register(
        MergeMethod(
            name="model_stock",
            description="Model Stock: Θ0 + t·mean(τT, τ_i), t from the task vectors' mean "
            "angle; α interpolates from ΘT (0) to it (1)",
            merge=model_stock,
            params=(
                toward_alpha("mergekit's model_stock result"),
                Param(
                    "filter_wise",
                    bool,
                    False,
                    "one angle (and t) per row of the last dimension instead of per tensor",
                ),
            ),
            needs_ir_vector=True,
        )
    )
