"""Pure statistics for α selection: argmax with ties, bootstrap intervals, Kendall's τ.

Kept free of runs and models so each function has hand-computed tests.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


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
    """
    groups = sorted(baseline)
    qids = {g: sorted(baseline[g]) for g in groups}
    cols = {g: {a: [values[g][a][q] for q in qids[g]] for a in order} for g in groups}
    gains = {g: [values[g][chosen][q] - baseline[g][q] for q in qids[g]] for g in groups}

    def gmean(xs: Sequence[float]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    mean_gain = gmean([gmean(gains[g]) for g in groups])
    if samples < 1 or not any(qids.values()):
        a = alpha_values.get(chosen, math.nan)
        return BootstrapResult((a, a), mean_gain, (mean_gain, mean_gain), 1.0)
    rng = random.Random(seed)
    picked, boot_gains, same = [], [], 0
    for _ in range(samples):
        idx = {g: [rng.randrange(len(qids[g])) for _ in qids[g]] for g in groups}
        curve = {a: sum(gmean([cols[g][a][i] for i in idx[g]]) for g in groups) for a in order}
        best = argmax(curve, order)
        same += best == chosen
        if best in alpha_values:
            picked.append(alpha_values[best])
        boot_gains.append(gmean([gmean([gains[g][i] for i in idx[g]]) for g in groups]))
    tail = (1.0 - confidence) / 2
    picked.sort()
    boot_gains.sort()
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
