"""The SVD math of the task-space merges TSV-M, Iso-C and Iso-CTS, on one 2-D tensor.

Pure functions: a list of task matrices (fp32, one shape) in, one merged task matrix out,
following FusionBench 0.2.33 (``fusion_bench.method.task_singular_vector`` and
``fusion_bench.method.isotropic_merging``), which the oracle test compares them with:

- :func:`tsv_matrix` — TSV-M (Gargiulo et al., CVPR 2025): keep each task matrix's top
  ``k = ⌊r·fraction⌋`` singular triplets (r = min(m, n)), stack them, replace the stacked
  left and right singular vectors by their nearest orthonormal matrices (the polar factor,
  :func:`polar`) and sum: ``polar([U_1,k … U_N,k]) · diag(S) · polar([V_1,k … V_N,k])ᵀ``;
- :func:`iso_c_matrix` — Iso-C (Marczak et al., ICML 2025): the SVD of the summed task
  matrices with every singular value replaced by their mean (an isotropic spectrum);
- :func:`iso_cts_matrix` — Iso-CTS: the top singular directions of the sum (the common
  space, a ``common_space_fraction`` of r) plus, for each task, the top directions of
  what the common space leaves of it, orthonormalised by :func:`polar` and given the mean
  of all their singular values.

One rule beyond FusionBench: singular directions whose singular value is at roundoff
level (:func:`significant`) are dropped before they are used. Their vectors are arbitrary
(any orthonormal completion is an SVD), so FusionBench's result is implementation-defined
there — on a zero task matrix (a tensor one model left unchanged, or one its checkpoint
lacks) and on exactly low-rank ones (task vectors built from LoRA adapters). Full-rank
inputs, the usual case, never reach the rule, and the results equal FusionBench's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The thin SVD ``a = u · diag(s) · vh`` (singular values in descending order)."""
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    return u, s, vh


def significant(s: torch.Tensor, shape: Sequence[int], tol: float | None = None) -> int:
    """How many leading singular values lie above roundoff: ``s > tol``, by default
    ``s_max·eps·√max(m, n)``.

    LAPACK leaves the singular values of an exactly rank-ρ fp32 matrix beyond ρ at a few
    eps·s_max; legitimate small singular values of a full-rank matrix are far above.
    """
    if s.numel() == 0:
        return 0
    if tol is None:
        tol = float(s[0]) * torch.finfo(s.dtype).eps * math.sqrt(max(shape))
    return int((s > tol).sum())


def polar(a: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor ``u·vh`` of ``a = u·diag(s)·vh``: the matrix with
    orthonormal columns (rows, if ``a`` is wide) nearest to ``a`` in Frobenius norm."""
    if a.numel() == 0:
        return a
    u, _, vh = svd(a)
    return u @ vh


def _assemble(
    us: list[torch.Tensor],
    ss: list[torch.Tensor],
    vhs: list[torch.Tensor],
    like: torch.Tensor,
    level: torch.Tensor | None = None,
) -> torch.Tensor:
    """``polar([us]) · diag(ss or level) · polar([vhs])``; zeros when nothing is kept."""
    s = torch.cat(ss) if ss else like.new_zeros(0)
    if s.numel() == 0:
        return torch.zeros_like(like)
    u = polar(torch.cat(us, dim=1))
    vh = polar(torch.cat(vhs, dim=0))
    return (u * (s if level is None else level)) @ vh


def tsv_matrix(vectors: Sequence[torch.Tensor], fraction: float | None = None) -> torch.Tensor:
    """TSV-M's merged task matrix; ``fraction`` (FusionBench's ``sv_reduction``) is the share
    of each matrix's singular triplets kept, default 1/N for N matrices.

    With ``fraction`` ≤ 1/N this is FusionBench's ``compute_and_sum_svd_mem_reduction``;
    above it, the stacks are wider than r, as in its ``…_lossless`` variant (fraction 1).
    """
    shape = vectors[0].shape
    fraction = 1.0 / len(vectors) if fraction is None else float(fraction)
    k = int(min(shape) * fraction)  # FusionBench: int(s.shape[0] * sv_reduction)
    us, ss, vhs = [], [], []
    if k > 0:
        for v in vectors:
            u, s, vh = svd(v)
            keep = min(k, significant(s, shape))
            us.append(u[:, :keep])
            ss.append(s[:keep])
            vhs.append(vh[:keep])
    return _assemble(us, ss, vhs, vectors[0])


def iso_c_matrix(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Iso-C's merged task matrix: the sum's singular vectors, every singular value set to
    the mean of the sum's r singular values (FusionBench's ``iso_c``)."""
    total = torch.stack(list(vectors)).sum(dim=0)
    u, s, vh = svd(total)
    keep = significant(s, total.shape)
    if s.numel() == 0 or keep == 0:
        return torch.zeros_like(total)
    return (u[:, :keep] * s.mean()) @ vh[:keep]


def common_space_split(rank: int, n_tasks: int, fraction: float) -> tuple[int, int]:
    """Iso-CTS's split of the r = min(m, n) directions: (common, per task).

    FusionBench's rule: common = ⌊r·fraction⌋, then the task-specific remainder is rounded
    (Python's round, half to even) to a multiple of the task count, and the common space
    takes what is left, so common + n_tasks·per_task = r. Where that rounding would exceed
    r (small fractions on small matrices; FusionBench then slices with a negative common
    size) the remainder is rounded down instead.
    """
    common = int(rank * fraction)
    specific = round((rank - common) / n_tasks) * n_tasks
    if specific > rank:
        specific = (rank - common) // n_tasks * n_tasks
    return rank - specific, specific // n_tasks


def iso_cts_matrix(vectors: Sequence[torch.Tensor], common_space_fraction: float) -> torch.Tensor:
    """Iso-CTS's merged task matrix (FusionBench's ``iso_cts``): common space of the sum plus
    each task's top directions outside it, orthonormalised, with an isotropic spectrum (the
    mean of all r kept singular values; dropped roundoff directions count as 0)."""
    shape = vectors[0].shape
    rank = min(shape)
    common, per_task = common_space_split(rank, len(vectors), common_space_fraction)
    total = torch.stack(list(vectors)).sum(dim=0)
    u, s, vh = svd(total)
    c = min(common, significant(s, shape))
    uc, sc, vhc = u[:, :c], s[:c], vh[:c]
    us, ss, vhs = [], [], []
    if per_task > 0:
        for v in vectors:
            outside = v - uc @ (uc.T @ v)  # the part of the task matrix the common space misses
            ut, st, vht = svd(outside)
            # roundoff of the projection is a few eps·‖v‖ (measured ≤ 20 eps·‖v‖_F up to 768²)
            tol = float(torch.linalg.matrix_norm(v)) * torch.finfo(v.dtype).eps * 2 * sum(shape)
            keep = min(per_task, significant(st, shape, tol))
            us.append(ut[:, :keep])
            ss.append(st[:keep])
            vhs.append(vht[:keep])
    us.append(uc)
    ss.append(sc)
    vhs.append(vhc)
    level = torch.cat(ss).sum() / max(rank, 1)
    return _assemble(us, ss, vhs, total, level)
