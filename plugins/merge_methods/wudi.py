"""WUDI-Merging (Cheng et al., ICML 2025, "Whoever Started the Interference Should End It")
after FusionBench 0.2.33's ``wudi_merging``: ``wudi``.

Per 2-D tensor, the merged task matrix M starts at the sum of the task matrices
v_i (τT and w_i·τ_i) and takes ``iterations`` Adam steps (learning rate ``lr``, betas
(0.9, 0.999), eps 1e-8, as torch's Adam) on the interference objective

    L(M) = Σ_i ‖(M − v_i)·v_iᵀ‖²_F / ‖v_i‖²_F

(the rows of a task vector stand in for the inputs its layer saw, so M should act on
them as v_i does). Other tensors get the mean of the task vectors, FusionBench's rule.
The merge then follows the task-space pipeline of ``task_space.py``: Θ' = ΘT +
α·(Θ0 + λ·M − ΘT), α = 1 being FusionBench's merge at λ = ``scaling_factor``.

The gradient is computed in closed form (:func:`wudi_gradient`): with M = Σ_i v_i + D,
∇L = 2·(R + D·G), G = Σ_i v_iᵀv_i/‖v_i‖² and R the interference at the start, both built
once (one m×n by n×n product a step), or with D·G taken as Σ_i (D·v_iᵀ)·v_i/‖v_i‖² when
n > 2·N·m makes that cheaper. It is the gradient FusionBench's autograd computes, Adam is
torch's update written out (on D), so the merge also runs under ``torch.inference_mode``. A zero task vector (a tensor a model did
not change) is left out of L; FusionBench divides by its zero norm and returns NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mergekit_ir import WEIGHTS, MergeMethod, Param, hookimpl

from .task_space import ALPHA, SCALING_FACTOR, task_space_merge

ITERATIONS = Param(
    "iterations",
    int,
    300,
    "Adam steps per matrix (FusionBench's iter_num; 0 keeps the summed task vectors)",
    min=0,
    max=100_000,
    per_tensor=True,
)
LR = Param("lr", float, 1e-5, "Adam's learning rate", min=0.0, max=1.0, per_tensor=True)
BETAS = (0.9, 0.999)
EPS = 1e-8


def wudi_gradient(
    vectors: Sequence[torch.Tensor], route: str | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """∇L at M = Σ_i v_i + D, as a function of the displacement D, for the nonzero task
    matrices ``vectors`` (m×n each).

    ∇L = 2·Σ_i (M − v_i)·v_iᵀv_i/q_i (q_i = ‖v_i‖²) = 2·(R + Σ_i D·v_iᵀv_i/q_i), where
    R = Σ_i (Σ_{j≠i} v_j)·v_iᵀv_i/q_i is the interference at the start, built once from the
    cross terms: no difference of two large products, so a gradient that is 0 is 0 (one
    task vector, or task vectors with orthogonal row spaces, stay where they start — Adam
    would turn roundoff into steps of size ``lr``). ``route`` is ``"gram"``
    (D·G with G = Σ_i v_iᵀv_i/q_i: 2mn² flops a step) or ``"direct"``
    (Σ_i ((D·v_iᵀ)·v_i)/q_i: 4·N·m²n flops a step); by default the cheaper one.
    """
    m, n = vectors[0].shape
    sq = [torch.linalg.vector_norm(v).square() for v in vectors]
    if route is None:
        route = "gram" if n <= 2 * len(vectors) * m else "direct"
    start = torch.zeros_like(vectors[0])
    gram = torch.zeros((n, n), dtype=start.dtype, device=start.device) if route == "gram" else None
    for i, (v, q) in enumerate(zip(vectors, sq, strict=True)):
        others = [w for j, w in enumerate(vectors) if j != i]
        if gram is not None:
            g = (v.T @ v) / q
            gram.add_(g)
            if others:
                start.add_(torch.stack(others).sum(dim=0) @ g)
        elif others:
            start.add_(((torch.stack(others).sum(dim=0) @ v.T) @ v) / q)
    if gram is not None:
        return lambda displacement: 2 * torch.addmm(start, displacement, gram)

    def direct(displacement: torch.Tensor) -> torch.Tensor:
        grad = start.clone()
        for v, q in zip(vectors, sq, strict=True):
            grad.add_(((displacement @ v.T) @ v) / q)
        return 2 * grad

    return direct


def wudi_matrix(vectors: Sequence[torch.Tensor], iterations: int, lr: float) -> torch.Tensor:
    """WUDI's merged task matrix: ``iterations`` Adam steps on L from Σ v_i."""
    total = torch.stack(list(vectors)).sum(dim=0)
    active = [v for v in vectors if bool(v.any())]
    iterations = int(round(iterations))  # a layer-wise gradient may give a float
    if iterations <= 0 or not active or lr == 0:
        return total
    grad_of = wudi_gradient(active)
    beta1, beta2 = BETAS
    displacement = torch.zeros_like(total)  # M − Σ v_i, the part Adam moves
    exp_avg = torch.zeros_like(total)
    exp_avg_sq = torch.zeros_like(total)
    for step in range(1, iterations + 1):  # torch.optim.Adam's single-tensor update
        grad = grad_of(displacement)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = lr / (1 - beta1**step)
        denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(EPS)
        displacement.addcdiv_(exp_avg, denom, value=-step_size)
    return total + displacement


def wudi(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 1.0,
    weights: Sequence[float] | None = None,
    scaling_factor: float = 1.0,
    iterations: int = 300,
    lr: float = 1e-5,
    name: str = "",
) -> torch.Tensor:
    """WUDI: per 2-D tensor, Adam on the interference objective from the summed vectors."""
    if iterations < 0 or not lr >= 0.0:  # also NaN
        raise ValueError(f"wudi: iterations must be ≥ 0 and lr ≥ 0, got {iterations}, {lr:g}")
    return task_space_merge(
        "wudi",
        lambda vs: wudi_matrix(vs, iterations, float(lr)),
        theta_t,
        taus,
        tau_t,
        alpha,
        weights,
        scaling_factor,
        name,
    )


@hookimpl
def register_merge_methods(register: Callable[[MergeMethod], None]) -> None:
    register(
        MergeMethod(
            name="wudi",
            description="WUDI: per matrix, Adam from the summed task vectors on their "
            "interference ‖(M − v_i)·v_iᵀ‖²/‖v_i‖²; α moves from ΘT to Θ0 + λ·M",
            merge=wudi,
            params=(ALPHA, WEIGHTS, SCALING_FACTOR, ITERATIONS, LR),
            needs_ir_vector=True,
        )
    )
