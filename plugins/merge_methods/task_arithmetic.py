"""Task arithmetic (Ilharco et al., 2023; Braga et al., SIGIR'25, Eq. 1-2).

Θ' = ΘT + α·Σ_i w_i·τ_i with τ_i = ΘD_i − Θ0. A negative α subtracts (forgetting).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergekit_ir import ALPHA, WEIGHTS, MergeMethod, domain_weights, hookimpl


def task_arithmetic(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    alpha: float = 1.0,
    weights: Sequence[float] | None = None,
    tau_t: torch.Tensor | None = None,
    name: str = "",
) -> torch.Tensor:
    """ΘT + α·Σ w_i·τ_i; with α = 0 it returns ΘT unchanged (same values)."""
    ws = domain_weights(weights, len(taus), name)
    if alpha == 0 or not taus:
        return theta_t.clone()
    if len(taus) == 1 and ws[0] == 1.0:
        combined = taus[0]  # read-only: the α sweep reuses its task vectors
    else:
        combined = torch.zeros_like(theta_t)
        for w, tau in zip(ws, taus, strict=True):
            combined.add_(tau, alpha=w)
    # one temporary of the tensor's size: memory during a streaming merge stays at a few tensors
    return torch.mul(combined, alpha).add_(theta_t)


@hookimpl
def register_merge_methods(register):
    register(
        MergeMethod(
            name="task_arithmetic",
            description="ΘT + α·Σ w_i·(ΘD_i − Θ0): add domain task vectors to the IR model",
            merge=task_arithmetic,
            params=(ALPHA, WEIGHTS),
            elementwise=True,
        )
    )
