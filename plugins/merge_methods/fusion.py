"""Selective two-model merges after mergekit 0.1.5: ``nearswap`` and ``arcee_fusion``.

Both keep the base model and import some of the other model's values. Here the base is
ΘT (the IR model is kept) and the other model is the one domain model ΘD; with M the
mergekit method's result, Θ' = ΘT + α·(M − ΘT), α in [0, 1], and α = 1 is mergekit's
method with ``base_model: ΘT``.

- ``nearswap`` (alchemonaut, QuartetAnemoi-70B-t0.0001 model card; mergekit's
  ``nearswap``): per entry, w = clamp(t / |ΘD − ΘT|, 0, 1) and M = ΘT + w·(ΘD − ΘT):
  entries where the models are within ``t`` of each other take ΘD's value, farther ones
  move toward it by t / distance. Elementwise.
- ``arcee_fusion`` (Arcee AI, "Arcee Fusion"; mergekit's ``arcee_fusion``): importance
  = |ΘD − ΘT| · KL(softmax(ΘD) ‖ softmax(ΘT)) with the softmax and KL over each row
  (last dimension); entries whose importance is at least median + 1.5·IQR of the
  tensor's importances take ΘD's value, the others keep ΘT's.

Divergences from mergekit: the α interpolation; ``nearswap``'s ``t`` defaults to 1e-4
(the reference model's; mergekit requires it); ``arcee_fusion`` computes its quartiles
exactly on every tensor (the same floor-index order statistics as mergekit), where
mergekit estimates them from a random sample of 10⁶ entries (global torch RNG) on tensors
larger than that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from mergekit_ir import MergeMethod, Param, hookimpl

from .triplet import rebuild_triplet, toward, toward_alpha

TOWARD_ALPHA = toward_alpha("mergekit's result with base ΘT")


def nearswap(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 1.0,
    name: str = "",
    t: float = 1e-4,
) -> torch.Tensor:
    """ΘT + α·w·(ΘD − ΘT), w = clamp(t / |ΘD − ΘT|, 0, 1)."""
    a, b = rebuild_triplet(theta_t, taus, tau_t, "nearswap", name, one_domain=True).models
    weight = (t / torch.abs(a - b).clamp(min=1e-6)).clamp(min=0, max=1)
    merged = weight * b + (1 - weight) * a
    return toward(a, merged, alpha).to(theta_t.dtype)


def fusion_mask(theta_t: torch.Tensor, theta_d: torch.Tensor) -> torch.Tensor:
    """Arcee Fusion's mask: importance ≥ median + 1.5·IQR over the tensor."""
    eps = 1e-8
    p = F.softmax(theta_d, dim=-1) + eps
    q = F.softmax(theta_t, dim=-1) + eps
    kl = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    importance = (theta_d - theta_t).abs() * kl
    # the quantile positions as mergekit computes them (fp32 q times n − 1, floored)
    qs = (torch.tensor([0.25, 0.5, 0.75]) * (importance.numel() - 1)).long().tolist()
    flat = importance.reshape(-1)
    q1, median, q3 = (torch.kthvalue(flat, i + 1).values for i in qs)
    return importance >= median + 1.5 * (q3 - q1)


def arcee_fusion(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 1.0,
    name: str = "",
) -> torch.Tensor:
    """ΘT + α·m·(ΘD − ΘT), m = Arcee Fusion's importance mask."""
    a, b = rebuild_triplet(theta_t, taus, tau_t, "arcee_fusion", name, one_domain=True).models
    if a.numel() == 0:
        return theta_t.clone()
    merged = a + (b - a) * fusion_mask(a, b)
    return toward(a, merged, alpha).to(theta_t.dtype)


@hookimpl
def register_merge_methods(register: Callable[[MergeMethod], None]) -> None:
    register(
        MergeMethod(
            name="nearswap",
            description="NearSwap: ΘT's entries within t of ΘD take ΘD's value, farther "
            "ones move toward it by t/distance; α interpolates from ΘT; one domain",
            merge=nearswap,
            params=(
                TOWARD_ALPHA,
                Param(
                    "t",
                    float,
                    1e-4,
                    "distance below which an entry takes ΘD's value (weight t/|ΘD − ΘT|)",
                    min=0.0,
                    per_tensor=True,
                ),
            ),
            needs_ir_vector=True,
            elementwise=True,
        )
    )
    register(
        MergeMethod(
            name="arcee_fusion",
            description="Arcee Fusion: ΘT takes ΘD's value where |ΘD − ΘT|·KL(row) is an "
            "outlier (≥ median + 1.5·IQR); α interpolates from ΘT; one domain",
            merge=arcee_fusion,
            params=(TOWARD_ALPHA,),
            needs_ir_vector=True,
        )
    )
