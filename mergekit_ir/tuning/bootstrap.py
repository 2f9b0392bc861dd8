"""Pure statistics for α selection: argmax with ties, bootstrap intervals, Kendall's τ.

Kept free of runs and models so each function has hand-computed tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: The most resamples a selector may ask for (``bootstrap:``). The Monte-Carlo error of a
#: 2.5 % percentile is sd(p̂) = sqrt(p(1 − p) / B): ±0.005 at the default B = 1000, ±0.0005 at
#: 100,000 — far below the query-sampling uncertainty the interval measures, which no B reduces.
#: The resampled curves take B × |α grid| × 8 bytes (9 MB for 11 α at the cap).
MAX_BOOTSTRAP = 100_000
#: Resampled query slots held at once (indices and counts: 2 × 8 MB), whatever B and the queries.
_CHUNK = 1 << 20


def means(values: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """α label -> mean over its queries (0.0 for none)."""
    return {a: (sum(v.values()) / len(v) if v else 0.0) for a, v in values.items()}


def argmax(curve: Mapping[str, float], order: Sequence[str]) -> str:
    """The α label with the highest value; a tie goes to the earlier label in ``order``."""
    return max(order, key=lambda a: (curve[a], -order.index(a)))


def percentile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (``q`` in [0, 1])."""
    if not sorted_xs:
        return math.nan
    pos = q * (len(sorted_xs) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


Groups = Mapping[str, Mapping[str, Mapping[str, float]]]  # group -> α label -> qid -> score


def group_curve(values: Groups, order: Sequence[str]) -> dict[str, float]:
    """α label -> mean over groups (datasets) of each group's mean: the dev rule of the runner."""
    return {a: sum(means(g)[a] for g in values.values()) / len(values) for a in order}


@dataclass(frozen=True)
class BootstrapResult:
    """Percentile intervals from resampling queries with replacement (within each group)."""

    alpha_interval: tuple[float, float]  # of the α the argmax picks (scalar α values)
    gain: float  # mean gain of the chosen α over the baseline α (mean of group means)
    gain_interval: tuple[float, float]
    stability: float  # share of resamples that pick the same α as the full sample


def bootstrap(
    values: Groups,
    baseline: Mapping[str, Mapping[str, float]],
    order: Sequence[str],
    chosen: str,
    alpha_values: Mapping[str, float],
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Resample each group's queries ``samples`` times: the argmax α per resample gives the α
    interval; the gain of ``chosen`` over the baseline per resample gives the gain interval.

    ``values`` is group -> α label -> qid -> score; ``baseline`` is group -> qid -> score at
    the baseline α (α = 0, ΘT). A group's queries are those of its baseline.

    Vectorised (numpy, seeded PCG64): a resample is a row of per-query counts, and its means
    are one matrix product; rows are drawn in chunks of at most ``_CHUNK`` query slots, so
    memory stays bounded for any number of queries. ``samples`` is at most
    :data:`MAX_BOOTSTRAP`.
    """
    if not 0 <= samples <= MAX_BOOTSTRAP:
        raise ValueError(f"bootstrap samples {samples} outside [0, {MAX_BOOTSTRAP}]")
    groups = sorted(baseline)
    qids = {g: sorted(baseline[g]) for g in groups}
    cols = {g: {a: [values[g][a][q] for q in qids[g]] for a in order} for g in groups}
    gains = {g: [values[g][chosen][q] - baseline[g][q] for q in qids[g]] for g in groups}

    def gmean(xs: Sequence[float]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    mean_gain = gmean([gmean(gains[g]) for g in groups])
    if samples == 0 or not any(qids.values()):
        a = alpha_values.get(chosen, math.nan)
        return BootstrapResult((a, a), mean_gain, (mean_gain, mean_gain), 1.0)
    rng = np.random.default_rng(seed)
    curves = np.zeros((samples, len(order)))  # resample -> α -> sum over groups of group means
    gain_sums = np.zeros(samples)  # resample -> sum over groups of the group's mean gain
    for g in groups:
        n = len(qids[g])
        if n == 0:  # an empty group adds 0 to every curve and gain, as its mean is 0
            continue
        # query -> [value at each α in order..., gain of the chosen α]
        table = np.array([[*(cols[g][a][i] for a in order), gains[g][i]] for i in range(n)])
        rows = max(1, _CHUNK // n)
        for start in range(0, samples, rows):
            b = min(rows, samples - start)
            picks = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
            counts = np.bincount(picks.ravel(), minlength=b * n).reshape(b, n)
            resampled = counts @ table / n  # each resample's mean per α (and gain)
            curves[start : start + b] += resampled[:, :-1]
            gain_sums[start : start + b] += resampled[:, -1]
    # argmax per resample, ties (up to rounding) to the earlier α in ``order``
    top = curves.max(axis=1, keepdims=True)
    best = np.argmax(curves >= top - 1e-12 * np.maximum(1.0, np.abs(top)), axis=1)
    same = int(np.count_nonzero(best == order.index(chosen)))
    scalar = np.array([alpha_values.get(a, math.nan) for a in order], dtype=float)[best]
    picked = np.sort(scalar[~np.isnan(scalar)]).tolist()
    boot_gains = np.sort(gain_sums / len(groups)).tolist()
    tail = (1.0 - confidence) / 2
    a_iv = (percentile(picked, tail), percentile(picked, 1 - tail)) if picked else (math.nan,) * 2
    g_iv = (percentile(boot_gains, tail), percentile(boot_gains, 1 - tail))
    return BootstrapResult(a_iv, mean_gain, g_iv, same / samples)


def kendall_tau(x: Mapping[str, float], y: Mapping[str, float]) -> float | None:
    """Kendall's τ-b between two curves over their common keys (None: fewer than 2 keys or a
    constant curve)."""
    keys = sorted(set(x) & set(y))
    concordant = discordant = ties_x = ties_y = 0
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            dx, dy = x[a] - x[b], y[a] - y[b]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    if len(keys) < 2 or denom == 0:
        return None
    return (concordant - discordant) / denom
