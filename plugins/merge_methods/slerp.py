"""Spherical merges after mergekit 0.1.5: ``slerp``, ``nuslerp``, ``multislerp``, ``karcher``.

α is the domain models' share in all four (a fraction in [0, 1]): 0 gives ΘT, 1 the
domain model(s).

- ``slerp`` (Shoemake 1985; mergekit's ``slerp``): base ΘT, input ΘD, t = α. Each tensor
  is flattened to one vector; where |cos θ| > 0.9995 it falls back to linear
  interpolation. Two fine-tunes of one Θ0 are usually that close to parallel, so on
  real triplets slerp is mostly lerp; ``nuslerp`` is the spherical one of task vectors.
- ``nuslerp`` (mergekit's ``nuslerp`` with ``base_model``): base Θ0, inputs ΘT (weight
  1 − α) and ΘD (weight α), so t = α and Θ' = Θ0 + slerp_t(τT, τD) over the flattened
  tensor (``nuslerp_flatten``, default), its rows (last dimension) or, with
  ``nuslerp_row_wise``, its columns; colinear pairs are lerped.
- ``multislerp`` (Goddard, "multislerp"; mergekit's ``multislerp`` with ``base_model``):
  base Θ0, inputs ΘT (weight 1 − α) and ΘD_i (α·w_i): the task vectors are projected
  onto the unit sphere, averaged in the tangent space at their weighted mean direction,
  mapped back and scaled by the weighted mean norm. Any number of domains.
- ``karcher`` (the Riemannian/Karcher mean, arXiv:2603.04972; mergekit's ``karcher``):
  the weighted Karcher mean of the unit directions of the *models* ΘT and ΘD_i (no base,
  as mergekit), scaled by their weighted mean norm. mergekit weights the models equally;
  here they get 1 − α and α·w_i (normalised), so α = 0.5 with unit w_i is mergekit's.

Divergences from mergekit: ``karcher`` takes weights (mergekit's method uses equal
ones; its ``karcher_merge_tensors`` does take them and is what we follow);
``multislerp`` raises ``ValueError`` when the weights sum to 0 (mergekit divides by 0);
``slerp`` and ``nuslerp`` take exactly one domain model (mergekit: exactly two inputs).
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
)

DOT_THRESHOLD = 0.9995  # mergekit's slerp: lerp above this |cos θ|
SLERP_EPS = 1e-8


def slerp_vectors(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """mergekit's ``slerp`` of two whole tensors (flattened), lerp when nearly colinear."""
    a, b = v0.reshape(-1), v1.reshape(-1)
    if a.numel() == 0:
        return ((1 - t) * a + t * b).reshape(v0.shape)
    norm_a = torch.linalg.vector_norm(a)
    norm_b = torch.linalg.vector_norm(b)
    norm_a = torch.where(norm_a > SLERP_EPS, norm_a, 1)
    norm_b = torch.where(norm_b > SLERP_EPS, norm_b, 1)
    dot = ((a / norm_a) * (b / norm_b)).sum().clamp(-1, 1)
    if float(dot.abs()) > DOT_THRESHOLD:
        coef_a, coef_b = 1 - t, t
    else:
        theta = torch.acos(dot)
        sin_theta = torch.sin(theta)
        coef_a = torch.sin((1 - t) * theta) / sin_theta
        coef_b = torch.sin(t * theta) / sin_theta
    return (coef_a * a + coef_b * b).reshape(v0.shape)


def slerp(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 0.5,
    name: str = "",
) -> torch.Tensor:
    """slerp_α(ΘT, ΘD): ΘT at α = 0, ΘD at α = 1."""
    t, theta_d = rebuild_triplet(theta_t, taus, tau_t, "slerp", name, one_domain=True).models
    return slerp_vectors(alpha, t, theta_d).to(theta_t.dtype)


def nuslerp_vectors(
    t: float,
    v0: torch.Tensor,
    v1: torch.Tensor,
    *,
    row_wise: bool = False,
    flatten: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """mergekit's ``nuslerp`` kernel: slerp along the last dim (or dim 0, or flattened)."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / torch.norm(x, dim=-1, keepdim=True).clamp(min=1e-7)

    cos = torch.sum(unit(v0) * unit(v1), dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, 0, cos))
    sin_theta = torch.sin(theta)
    out = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin_theta
    out = torch.where(colinear, (1 - t) * v0 + t * v1, out)
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


def nuslerp(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 0.5,
    name: str = "",
    nuslerp_flatten: bool = True,
    nuslerp_row_wise: bool = False,
) -> torch.Tensor:
    """Θ0 + slerp_α(τT, τD): task-vector slerp about Θ0."""
    theta_0, _, (tau_t32, tau_d) = rebuild_triplet(
        theta_t, taus, tau_t, "nuslerp", name, one_domain=True
    )
    merged = nuslerp_vectors(
        alpha, tau_t32, tau_d, row_wise=nuslerp_row_wise, flatten=nuslerp_flatten
    )
    return (theta_0 + merged).to(theta_t.dtype)


def multislerp_vectors(
    vectors: Sequence[torch.Tensor],
    ws: Sequence[float],
    *,
    normalize_weights: bool = True,
    eps: float = 1e-8,
    method: str = "multislerp",
    name: str = "",
) -> torch.Tensor:
    """mergekit's ``multislerp`` of (base-subtracted) vectors with weights ``ws``."""
    if len(vectors) == 1:
        return vectors[0]
    stacked = torch.stack(list(vectors))
    flat = stacked.reshape(stacked.shape[0], -1)
    weights = torch.tensor(list(ws), dtype=stacked.dtype, device=stacked.device)
    if normalize_weights:
        weights = weights / nonzero_sum(ws, method, name)
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * weights.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if float(mean_norm) < eps:
        if len(vectors) == 2:  # antipodal pair: linear interpolation, as mergekit
            return (stacked[0] * weights[0] + stacked[1] * weights[1]).reshape(stacked.shape[1:])
        raise MethodConfigError(
            f"{method}: the weighted mean direction of the task vectors is 0 (tensor "
            f"{name or '?'}): antipodal vectors with balancing weights; change alpha or weights"
        )
    mean = mean / mean_norm
    dots = (units * mean).sum(-1, keepdim=True)
    tangent = ((units - dots * mean) * weights.view(-1, 1)).sum(0)
    tangent_norm = torch.norm(tangent) + eps
    out = mean * torch.cos(tangent_norm) + tangent * (torch.sin(tangent_norm) / tangent_norm)
    out = out * (norms.squeeze(-1) * weights).sum()
    return out.reshape(stacked.shape[1:])


def multislerp(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 0.5,
    weights: Sequence[float] | None = None,
    name: str = "",
    normalize_weights: bool = True,
) -> torch.Tensor:
    """Θ0 + multislerp(τT, τ_1, ...; weights 1 − α, α·w_1, ...)."""
    theta_0, _, vectors = rebuild_triplet(theta_t, taus, tau_t, "multislerp", name)
    ws = share_weights(alpha, weights, len(taus), name)
    merged = multislerp_vectors(vectors, ws, normalize_weights=normalize_weights, name=name)
    return (theta_0 + merged).to(theta_t.dtype)


def karcher_mean(
    tensors: Sequence[torch.Tensor], ws: Sequence[float], max_iter: int = 10, tol: float = 1e-5
) -> torch.Tensor:
    """mergekit's ``karcher_merge_tensors``: weighted Karcher mean of unit directions × mean norm."""
    if len(tensors) == 1:
        return tensors[0]
    norms = [torch.linalg.vector_norm(x) for x in tensors]
    units = [
        torch.zeros_like(x) if float(n) == 0.0 else x / n
        for x, n in zip(tensors, norms, strict=True)
    ]
    valid = [i for i, n in enumerate(norms) if float(n) > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    total = sum(ws[i] for i in valid)
    alphas = [ws[i] / total for i in valid]
    vunits = [units[i] for i in valid]
    mean = torch.zeros_like(vunits[0])
    for a, u in zip(alphas, vunits, strict=True):
        mean += a * u
    mean_norm = torch.linalg.vector_norm(mean)
    mean = vunits[0].clone() if float(mean_norm) < tol else mean / mean_norm
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for a, u in zip(alphas, vunits, strict=True):
            dot = torch.clamp(torch.dot(mean.flatten(), u.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if float(theta) < tol:
                continue
            tangent += a * (theta / torch.sin(theta)) * (u - dot * mean)
        tangent_norm = torch.linalg.vector_norm(tangent)
        if float(tangent_norm) < tol:
            break
        mean = torch.cos(tangent_norm) * mean + torch.sin(tangent_norm) * (tangent / tangent_norm)
        unit_norm = torch.linalg.vector_norm(mean)
        if float(unit_norm) > tol:
            mean = mean / unit_norm
    scale = sum(w * n for w, n in zip(ws, norms, strict=True))
    return scale * mean


def karcher(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 0.5,
    weights: Sequence[float] | None = None,
    name: str = "",
    max_iter: int = 10,
    tol: float = 1e-5,
) -> torch.Tensor:
    """Karcher mean of ΘT and the ΘD_i with weights (1 − α, α·w_1, ...)/their sum."""
    models = rebuild_triplet(theta_t, taus, tau_t, "karcher", name).models
    ws = share_weights(alpha, weights, len(taus), name)
    total = nonzero_sum(ws, "karcher", name)
    ws = [w / total for w in ws]
    return karcher_mean(models, ws, int(max_iter), float(tol)).to(theta_t.dtype)


SHARE_HELP = "the domain models' share: 0 gives ΘT, 1 the domain model(s) (slerp's t)"


@hookimpl
def register_merge_methods(register: Callable[[MergeMethod], None]) -> None:
    register(
        MergeMethod(
            name="slerp",
            description="spherical interpolation of the flattened ΘT and ΘD tensors, t = α "
            "(lerp where they are nearly parallel); one domain",
            merge=slerp,
            params=(interpolation_alpha(0.5, SHARE_HELP),),
            needs_ir_vector=True,
        )
    )
    register(
        MergeMethod(
            name="nuslerp",
            description="Θ0 + slerp of the task vectors τT and τD (t = α), per tensor, "
            "row or column; one domain",
            merge=nuslerp,
            params=(
                interpolation_alpha(0.5, SHARE_HELP),
                Param(
                    "nuslerp_flatten",
                    bool,
                    True,
                    "slerp each tensor as one vector (false: each row, or column with row_wise)",
                ),
                Param(
                    "nuslerp_row_wise",
                    bool,
                    False,
                    "without flatten: slerp the columns (dim 0) instead of the rows",
                ),
            ),
            needs_ir_vector=True,
        )
    )
    register(
        MergeMethod(
            name="multislerp",
            description="Θ0 + barycentric slerp of τT (weight 1 − α) and the τ_i (α·w_i) "
            "on the unit sphere, scaled by their mean norm",
            merge=multislerp,
            params=(
                interpolation_alpha(0.5, SHARE_HELP),
                WEIGHTS,
                Param(
                    "normalize_weights",
                    bool,
                    True,
                    "divide the weights by their sum (1 − α + α·Σ w_i)",
                ),
            ),
            needs_ir_vector=True,
        )
    )
    register(
        MergeMethod(
            name="karcher",
            description="weighted Karcher (Riemannian) mean of the directions of ΘT "
            "(weight 1 − α) and ΘD_i (α·w_i), scaled by their mean norm",
            merge=karcher,
            params=(
                interpolation_alpha(0.5, SHARE_HELP),
                WEIGHTS,
                Param("max_iter", int, 10, "maximum iterations of the Karcher mean", min=1),
                Param("tol", float, 1e-5, "convergence tolerance (tangent norm)", min=0.0),
            ),
            needs_ir_vector=True,
        )
    )
