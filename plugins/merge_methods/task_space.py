"""Data-free task-space merges after FusionBench 0.2.33: ``tsv_m``, ``iso_c``, ``iso_cts``.

These methods (and ``wudi``, in ``wudi.py``) merge the triplet's task vectors about Θ0 —
the IR vector τT = ΘT − Θ0 and the domain vectors τ_i = ΘD_i − Θ0, weighted w_i — into
one task vector M, per tensor:

- a 2-D tensor (a weight matrix, an embedding table) is merged by the method's matrix
  rule (:mod:`.spectral`: TSV-M, Iso-C, Iso-CTS; :mod:`.wudi`);
- every other tensor (biases, LayerNorm weights, 3-D and 4-D ones) gets the mean of the
  task vectors, FusionBench's rule for the tensors its methods do not decompose.

FusionBench's merged model is Θ0 + λ·M, λ its ``scaling_factor`` (TSV-M's ``alpha``;
WUDI has none, i.e. 1). Here α keeps the meaning every merge has in this project —
α = 0 is ΘT, the model the α selectors' do-no-harm guard falls back to — through the
"toward" mapping: Θ' = ΘT + α·(Θ0 + λ·M − ΘT), α in [0, 1], so α = 1 is FusionBench's
merge and α = 0 is ΘT; λ is the parameter ``scaling_factor``. Both can be swept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mergekit_ir import WEIGHTS, MergeMethod, Param, domain_weights, hookimpl

from .sparsify import FractionParam
from .spectral import iso_c_matrix, iso_cts_matrix, tsv_matrix
from .triplet import rebuild_triplet, toward, toward_alpha

MatrixMerge = Callable[[list[torch.Tensor]], torch.Tensor]
"""``(task matrices [τT, w_1·τ_1, …]) -> merged task matrix M``, fp32, one 2-D shape."""

ALPHA = toward_alpha("FusionBench's merge Θ0 + scaling_factor·M")
SCALING_FACTOR = Param(
    "scaling_factor",
    float,
    1.0,
    "λ: the method's merge is Θ0 + λ·M, M the merged task vector (FusionBench's "
    "scaling_factor; TSV-M's alpha)",
    min=0.0,
    max=4.0,
    per_tensor=True,
)
SV_REDUCTION = FractionParam(
    "sv_reduction",
    float,
    None,
    "share of each task matrix's singular triplets TSV-M keeps, in (0, 1]; default 1/N for "
    "N task vectors (τT and each τ_i), as in the paper",
    min=0.0,
    max=1.0,
    per_tensor=True,
)
COMMON_SPACE_FRACTION = Param(
    "common_space_fraction",
    float,
    0.8,
    "share of the r = min(m, n) directions Iso-CTS takes from the summed task matrix (the "
    "common space); the rest is split equally among the task vectors",
    min=0.0,
    max=1.0,
    per_tensor=True,
)


def mean_vector(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The rule for tensors that are not 2-D: the mean of the task vectors."""
    return torch.stack(list(vectors)).mean(dim=0)


def task_space_merge(
    method: str,
    matrix_merge: MatrixMerge,
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    tau_t: torch.Tensor | None,
    alpha: float,
    weights: Sequence[float] | None,
    scaling_factor: float,
    name: str,
) -> torch.Tensor:
    """ΘT + α·(Θ0 + λ·M − ΘT), M = ``matrix_merge`` (2-D) or the mean (other tensors) of
    [τT, w_1·τ_1, …]; fp32 inside, returned in ΘT's dtype. α = 0 skips the merge."""
    theta_0, t, vectors = rebuild_triplet(theta_t, taus, tau_t, method, name)
    if alpha == 0:
        return theta_t.clone()
    ws = domain_weights(weights, len(taus), name)
    vectors = [vectors[0]] + [w * v for w, v in zip(ws, vectors[1:], strict=True)]
    matrix = t.dim() == 2 and t.numel() > 0
    merged = matrix_merge(vectors) if matrix else mean_vector(vectors)
    return toward(t, theta_0 + float(scaling_factor) * merged, alpha).to(theta_t.dtype)


def tsv_m(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 1.0,
    weights: Sequence[float] | None = None,
    scaling_factor: float = 1.0,
    sv_reduction: float | None = None,
    name: str = "",
) -> torch.Tensor:
    """TSV-M: per 2-D tensor, each task vector's top sv_reduction·r singular triplets,
    decorrelated (polar factors of the stacked singular vectors) and summed."""
    if sv_reduction is not None and not 0.0 < float(sv_reduction) <= 1.0:
        raise ValueError(f"tsv_m: sv_reduction must be in (0, 1], got {sv_reduction:g}")
    return task_space_merge(
        "tsv_m",
        lambda vs: tsv_matrix(vs, sv_reduction),
        theta_t,
        taus,
        tau_t,
        alpha,
        weights,
        scaling_factor,
        name,
    )


def iso_c(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 1.0,
    weights: Sequence[float] | None = None,
    scaling_factor: float = 1.0,
    name: str = "",
) -> torch.Tensor:
    """Iso-C: per 2-D tensor, the summed task vectors with a flat (mean) singular spectrum."""
    return task_space_merge(
        "iso_c", iso_c_matrix, theta_t, taus, tau_t, alpha, weights, scaling_factor, name
    )


def iso_cts(
    theta_t: torch.Tensor,
    taus: Sequence[torch.Tensor],
    *,
    tau_t: torch.Tensor | None = None,
    alpha: float = 1.0,
    weights: Sequence[float] | None = None,
    scaling_factor: float = 1.0,
    common_space_fraction: float = 0.8,
    name: str = "",
) -> torch.Tensor:
    """Iso-CTS: Iso-C on the common space of the sum plus each task vector's own top
    directions outside it."""
    if not 0.0 <= float(common_space_fraction) <= 1.0:
        raise ValueError(
            f"iso_cts: common_space_fraction must be in [0, 1], got {common_space_fraction:g}"
        )
    return task_space_merge(
        "iso_cts",
        lambda vs: iso_cts_matrix(vs, float(common_space_fraction)),
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
            name="tsv_m",
            description="TSV-M (task singular vectors): per matrix, each task vector's top "
            "singular triplets, decorrelated and summed; α moves from ΘT to Θ0 + λ·M",
            merge=tsv_m,
            params=(ALPHA, WEIGHTS, SCALING_FACTOR, SV_REDUCTION),
            needs_ir_vector=True,
        )
    )
    register(
        MergeMethod(
            name="iso_c",
            description="Iso-C (isotropic merging): per matrix, the summed task vectors with "
            "every singular value set to their mean; α moves from ΘT to Θ0 + λ·M",
            merge=iso_c,
            params=(ALPHA, WEIGHTS, SCALING_FACTOR),
            needs_ir_vector=True,
        )
    )
    register(
        MergeMethod(
            name="iso_cts",
            description="Iso-CTS: Iso-C on the sum's common subspace plus each task vector's "
            "own top directions; α moves from ΘT to Θ0 + λ·M",
            merge=iso_cts,
            params=(ALPHA, WEIGHTS, SCALING_FACTOR, COMMON_SPACE_FRACTION),
            needs_ir_vector=True,
        )
    )
