"""Shared pieces of the mergekit-style methods: the triplet's models and α as a fraction.

mergekit merges *models* (a base and inputs); a merge method here sees ΘT, the domain
task vectors τ_i = ΘD_i − Θ0 and, with ``needs_ir_vector=True``, τT = ΘT − Θ0. Every
model a mergekit method needs is rebuilt from those (fp32, :func:`rebuild_triplet`):

- Θ0 = ΘT − τT;
- ΘD_i = Θ0 + τ_i.

The methods map α onto mergekit's parameters in one of three ways (docs/merge-methods.md):

- **scale** (``ALPHA``, in [-2, 2]): base Θ0, ΘT with weight 1, ΘD_i with weight α·w_i
  (or, for methods without weights, the input model Θ0 + α·w_i·τ_i);
- **share** (:func:`interpolation_alpha`, in [0, 1]): the inputs ΘT and ΘD_i get
  weights 1 − α and α·w_i, so α is the domain models' share (slerp's t);
- **toward** (:func:`interpolation_alpha`, in [0, 1]): Θ' = ΘT + α·(M − ΘT), M the
  mergekit method's result; α = 1 is mergekit's method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from mergekit_ir import ConfigError, Param, domain_weights


class MethodConfigError(ConfigError, ValueError):
    """A setting the parameter checks cannot see (the domain count, two parameters together).

    A ``ConfigError``, so the CLI prints one line; a ``ValueError`` for direct callers, like
    the other argument errors of the merge functions.
    """


def interpolation_alpha(default: float, help: str) -> Param:
    """``alpha`` as a fraction in [0, 1] (an interpolation t), layer-wise capable."""
    return Param("alpha", float, default, help, min=0.0, max=1.0, per_tensor=True)


def toward_alpha(result: str) -> Param:
    """``alpha`` of the "toward" mapping (:func:`toward`): 0 is ΘT, 1 is ``result``."""
    return interpolation_alpha(1.0, f"fraction of the way from ΘT (0) to {result} (1)")


def require_tau_t(
    tau_t: torch.Tensor | None,
    method: str,
    name: str,
    why: str = "it rebuilds Θ0 and ΘD_i from it",
) -> torch.Tensor:
    """τT in fp32; a method that needs it (``needs_ir_vector``) says ``why`` when it is missing."""
    if tau_t is None:
        raise ValueError(
            f"{method} needs the IR task vector tau_t = ΘT − Θ0 ({why}); "
            f"tensor {name or '?'} was merged without it"
        )
    return tau_t.to(torch.float32)


def fp32(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [t.to(torch.float32) for t in tensors]


class Triplet(NamedTuple):
    """The models a method needs, in fp32, rebuilt from ΘT, τT and the τ_i."""

    theta_0: torch.Tensor
    theta_t: torch.Tensor
    vectors: list[torch.Tensor]  # the task vectors about Θ0: [τT, τ_1, ..., τ_n]

    @property
    def models(self) -> list[torch.Tensor]:
        """[ΘT, ΘD_1, ..., ΘD_n], with ΘD_i = Θ0 + τ_i."""
        return [self.theta_t] + [self.theta_0 + tau for tau in self.vectors[1:]]


def rebuild_triplet(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    tau_t: torch.Tensor | None,
    method: str,
    name: str,
    *,
    one_domain: bool = False,
) -> Triplet:
    """Θ0 = ΘT − τT, ΘT and the vectors in fp32; ``one_domain`` for the two-model methods.

    Methods with base Θ0 merge ``vectors`` and return ``Θ0 + merged``; the others merge
    ``models``.
    """
    if one_domain:
        single_domain(taus, method, name)
    tau_t = require_tau_t(tau_t, method, name)
    t = theta_t.to(torch.float32)
    return Triplet(t - tau_t, t, [tau_t, *fp32(taus)])


def single_domain(taus: Sequence[torch.Tensor], method: str, name: str) -> None:
    """Two-model methods (ΘT and one ΘD) reject other domain counts."""
    if len(taus) != 1:
        raise MethodConfigError(
            f"{method} merges ΘT with exactly one domain model, got {len(taus)} task vectors "
            f"(tensor {name or '?'}); use multislerp, karcher or linear for several"
        )


def share_weights(alpha: float, weights: Sequence[float] | None, n: int, name: str) -> list[float]:
    """The "share" mapping: [1 − α, α·w_1, ..., α·w_n] for ΘT, ΘD_1, ..., ΘD_n."""
    return [1.0 - alpha] + [alpha * w for w in domain_weights(weights, n, name)]


def nonzero_sum(ws: Sequence[float], method: str, name: str) -> float:
    total = float(sum(ws))
    if abs(total) < 1e-8:
        raise MethodConfigError(
            f"{method}: the weights of ΘT and the domain models sum to 0 (tensor {name or '?'}); "
            "there is nothing to normalise by: change alpha or the weights"
        )
    return total


def toward(theta_t: torch.Tensor, merged: torch.Tensor, alpha: float) -> torch.Tensor:
    """The "toward" mapping: ΘT + α·(M − ΘT), exactly M at α = 1 and ΘT at α = 0."""
    if alpha == 1.0:
        return merged
    if alpha == 0.0:
        return theta_t.clone()
    return theta_t + alpha * (merged - theta_t)
