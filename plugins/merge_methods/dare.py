"""DARE (Yu et al., ICML 2024): drop task-vector entries at random, rescale the rest.

``dare_ties`` then elects signs and merges disjointly like TIES; ``dare_linear``
sums the weighted vectors. Masks come from ``tensor_generator(seed, name)`` drawn on
the CPU, one draw per vector in the order τT, τ_1, ..., τ_n, so a merge is
reproducible across runs and devices and the masks do not change with α.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mergekit_ir import ALPHA, WEIGHTS, MergeMethod, hookimpl

from .sparsify import (
    NORMALIZE,
    SEED,
    dare_sparsifier,
    density_param,
    disjoint,
    sparse_task_arithmetic,
    summed,
)


def dare_ties(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 1.0,
    weights: Sequence[float] | None = None,
    name: str = "",
    density: float = 0.5,
    seed: int = 0,
    normalize: bool = False,
) -> torch.Tensor:
    """Θ0 + disjoint merge (TIES sign election) of DARE-dropped τT and α·w_i·τ_i.

    Kept entries are scaled by 1/density (= 1/(1 − p)) as in the DARE paper and
    PEFT, not to mergekit's matching L1 norm.
    """
    sparsify = dare_sparsifier(density, seed, name, "dare_ties")
    combine = disjoint(normalize)
    return sparse_task_arithmetic(
        "dare_ties", sparsify, combine, theta_t, taus, tau_t, alpha, weights, name
    )


def dare_linear(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 1.0,
    weights: Sequence[float] | None = None,
    name: str = "",
    density: float = 0.5,
    seed: int = 0,
) -> torch.Tensor:
    """Θ0 + dare(τT) + α·Σ w_i·dare(τ_i): with density 1 this is task arithmetic."""
    sparsify = dare_sparsifier(density, seed, name, "dare_linear")
    return sparse_task_arithmetic(
        "dare_linear", sparsify, summed, theta_t, taus, tau_t, alpha, weights, name
    )


@hookimpl
def register_merge_methods(register: Callable[[MergeMethod], None]) -> None:
    register(
        MergeMethod(
            name="dare_ties",
            description="DARE + TIES: randomly drop 1 − density of each task vector "
            "(incl. ΘT − Θ0), rescale by 1/density, elect signs, merge agreeing entries",
            merge=dare_ties,
            params=(ALPHA, WEIGHTS, density_param(0.5), SEED, NORMALIZE),
            needs_ir_vector=True,
        )
    )
    register(
        MergeMethod(
            name="dare_linear",
            description="DARE: randomly drop 1 − density of each task vector "
            "(incl. ΘT − Θ0), rescale by 1/density, sum weighted",
            merge=dare_linear,
            params=(ALPHA, WEIGHTS, density_param(0.5), SEED),
            needs_ir_vector=True,
        )
    )
