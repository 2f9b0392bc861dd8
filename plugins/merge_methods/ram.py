"""Reinforced Agent Merging (arXiv:2601.13572) after mergekit 0.1.5: ``ram``, ``ramplus_tl``.

RAM merges sparse task vectors (RL fine-tunes change few weights): base Θ0, inputs ΘT
and ΘD_i, task vectors τT and τ_i. An entry is a contributor of vector i where
|v_i| > ``epsilon``; where one vector contributes, its value is kept whole; where
several do, they are averaged over the contributors; M = Θ0 + that.
``ramplus_tl`` (tensor-local RAM+) also scales each vector's unique entries by
λ_i = 1 + r·clamp(ρ_i, 0, ``rho_max``), ρ_i = (its shared entries) / (its unique
entries), counted per tensor.

mergekit's RAM methods have no weights, and scaling a dense τD by a small α would halve
τT on every shared entry at once (averaging is not continuous in α at 0), so α moves
from ΘT to mergekit's result: Θ' = ΘT + α·(M − ΘT), α in [0, 1]; α = 1 is mergekit's
``ram`` / ``ramplus_tl`` on base Θ0 with inputs ΘT, ΘD_i.

Divergences from mergekit: the α interpolation; ``ramplus_tl``'s ``alpha`` (the cap on
ρ) is called ``rho_max`` here, since ``alpha`` is the merge's α.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mergekit_ir import MergeMethod, Param, hookimpl

from .triplet import rebuild_triplet, toward, toward_alpha

EPSILON = Param(
    "epsilon",
    float,
    1e-5,
    "an entry of a task vector counts as changed (a contributor) where |τ| > epsilon",
    min=0.0,
)


def ram_delta(
    vectors: Sequence[torch.Tensor],
    epsilon: float,
    r: float | None = None,
    rho_max: float = 0.2,
) -> torch.Tensor:
    """RAM's merged task vector; with ``r`` given, RAM+'s λ-scaled unique entries."""
    stacked = torch.stack(list(vectors))
    flat = stacked.reshape(stacked.shape[0], -1)
    nonzero = flat.abs() > epsilon
    counts = nonzero.sum(dim=0, keepdim=True)
    overlap = counts > 1
    unique = counts == 1
    kept = flat * nonzero
    unique_part = kept * unique
    if r is not None:
        shared_counts = (nonzero & overlap).sum(dim=1)
        unique_counts = (nonzero & unique).sum(dim=1)
        rho = shared_counts / unique_counts.clamp(min=epsilon)
        lam = 1 + r * rho.clamp(min=0, max=rho_max)
        unique_part = unique_part * lam.unsqueeze(-1)
    merged = (unique_part + kept * overlap / counts.clamp(min=1)).sum(dim=0)
    return merged.reshape(stacked.shape[1:])


def _ram(
    method: str,
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    tau_t: torch.Tensor | None,
    alpha: float,
    name: str,
    epsilon: float,
    r: float | None = None,
    rho_max: float = 0.2,
) -> torch.Tensor:
    theta_0, t, vectors = rebuild_triplet(theta_t, taus, tau_t, method, name)
    delta = ram_delta(vectors, float(epsilon), r, rho_max)
    return toward(t, theta_0 + delta, alpha).to(theta_t.dtype)


def ram(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 1.0,
    name: str = "",
    epsilon: float = 1e-5,
) -> torch.Tensor:
    """ΘT + α·(M − ΘT), M = Θ0 + RAM(τT, τ_1, ...)."""
    return _ram("ram", theta_t, taus, tau_t, alpha, name, epsilon)


def ramplus_tl(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 1.0,
    name: str = "",
    r: float = 0.1,
    rho_max: float = 0.2,
    epsilon: float = 1e-5,
) -> torch.Tensor:
    """ΘT + α·(M − ΘT), M = Θ0 + RAM+(τT, τ_1, ...) with per-tensor overlap ratios."""
    return _ram("ramplus_tl", theta_t, taus, tau_t, alpha, name, epsilon, float(r), float(rho_max))


TOWARD_ALPHA = toward_alpha("mergekit's result")


@hookimpl
def register_merge_methods(register: Callable[[MergeMethod], None]) -> None:
    register(
        MergeMethod(
            name="ram",
            description="RAM: Θ0 + task vectors (τT, τ_i) kept whole where only one changes "
            "an entry, averaged where several do; α interpolates from ΘT to it",
            merge=ram,
            params=(TOWARD_ALPHA, EPSILON),
            needs_ir_vector=True,
            elementwise=True,
        )
    )
    register(
        MergeMethod(
            name="ramplus_tl",
            description="RAM+ (tensor-local): RAM with each vector's unique entries scaled "
            "by 1 + r·min(shared/unique, rho_max); α interpolates from ΘT to it",
            merge=ramplus_tl,
            params=(
                TOWARD_ALPHA,
                Param("r", float, 0.1, "strength of the unique-entry boost", min=0.0),
                Param(
                    "rho_max",
                    float,
                    0.2,
                    "cap on the shared/unique ratio ρ (mergekit's ramplus_tl 'alpha')",
                    min=0.0,
                ),
                EPSILON,
            ),
            needs_ir_vector=True,
        )
    )
