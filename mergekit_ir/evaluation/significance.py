"""Paired significance tests and the paper's "significant improvement" marks.

The t-test is ranx's own function (the one ``ranx.compare`` calls: scipy's
``ttest_rel``), so its p-value equals ``ranx.compare``'s for the same per-query
scores. ranx's Fisher randomisation test is not reproducible (its numba threads
ignore the seed), so "fisher" is the same test, counting permutations the same way
(swap each pair with probability 1/2, p = share of permutations whose |mean
difference| is at least the observed one), drawn from a seeded numpy generator:
it agrees with ranx's to within Monte-Carlo error and is identical run to run.
Queries are paired by id, in sorted order, as ranx orders them.

Family for the Bonferroni correction (the paper: "statistically significant
improvements compared to the best baseline, paired t-test with Bonferroni
correction, p<0.01"): one family per (triplet section, dataset, metric), made of
the candidate rows tested against that column's best baseline. With the two merged
rows of Table 1 (α=1 and best α) that is m = 2, so the threshold is 0.01 / 2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from mergekit_ir.errors import ConfigError
from mergekit_ir.results import AGAINST, Results, Section, SignificanceSettings, Verdict

TESTS = ("student", "fisher")
CORRECTIONS = ("bonferroni", "none")


def p_values(
    baseline: Mapping[str, float],
    candidate: Mapping[str, float],
    test: str = "student",
    *,
    n_permutations: int = 1000,
    random_seed: int = 42,
) -> float:
    """Two-sided paired p-value over the queries both score vectors share.

    ``student`` is scipy's ``ttest_rel`` (via ranx); ``fisher`` is a seeded
    randomisation test with ``n_permutations`` draws. Identical vectors (t-test undefined) give 1.0, not NaN, so
    they are never "significant" and the value stays JSON-able.
    """
    qids = sorted(set(baseline) & set(candidate))
    if len(qids) < 2:
        return 1.0
    a = np.array([float(baseline[q]) for q in qids], dtype=np.float64)
    b = np.array([float(candidate[q]) for q in qids], dtype=np.float64)
    if test == "student":
        from ranx.statistical_tests import paired_student_t_test

        p, _ = paired_student_t_test(a, b)
    elif test == "fisher":
        p = _randomisation_p(b - a, n_permutations, random_seed)
    else:
        raise ConfigError(f"unknown significance test {test!r}: use one of {', '.join(TESTS)}")
    p = float(p)
    return 1.0 if math.isnan(p) else p


def _randomisation_p(diff: np.ndarray, n_permutations: int, seed: int) -> float:
    """Share of random sign flips of the paired differences at least as extreme."""
    rng = np.random.default_rng(seed)
    observed = abs(diff.mean()) - 1e-12  # tolerate rounding on the identity flip
    hits, done = 0, 0
    while done < n_permutations:
        n = min(1000, n_permutations - done)
        signs = rng.integers(0, 2, size=(n, diff.size)) * 2 - 1
        hits += int(np.count_nonzero(np.abs((signs * diff).mean(axis=1)) >= observed))
        done += n
    return hits / max(1, n_permutations)


def bonferroni(alpha: float, n_comparisons: int) -> float:
    """Per-comparison threshold that keeps the family-wise error rate at ``alpha``."""
    return alpha / max(1, int(n_comparisons))


def mark_improvements(
    target: Results | Section,
    *,
    baselines: Sequence[str],
    candidates: Sequence[str],
    metrics: Sequence[str] | None = None,
    max_p: float = 0.01,
    test: str = "student",
    correction: str = "bonferroni",
    comparisons: int | None = None,
    n_permutations: int = 1000,
    random_seed: int = 42,
) -> None:
    """Mark candidate cells that beat the best baseline of their column, in place.

    ``target`` is a whole :class:`Results` or one :class:`Section` (as the runner passes);
    the settings used are recorded on it (``significance``) for the report legend.

    Per section, dataset and metric the best baseline is the baseline row with the
    highest mean (the first one listed wins a tie). Each candidate cell gets
    ``p_value``, ``compared_to`` (the baseline's row key) and ``significant``: its
    mean is higher and ``p < max_p / m`` (``m`` = ``comparisons`` when given, else the
    candidates tested in the family; 1 with ``correction="none"``). Missing rows or
    cells are skipped.
    """
    if correction not in CORRECTIONS:
        raise ConfigError(f"unknown correction {correction!r}: use one of {', '.join(CORRECTIONS)}")
    if test not in TESTS:
        raise ConfigError(f"unknown significance test {test!r}: use one of {', '.join(TESTS)}")
    if comparisons is not None and comparisons < 1:
        raise ConfigError(f"comparisons must be at least 1, not {comparisons}")
    if isinstance(target, Section):
        sections, metric_list, declared = [target], list(metrics or []), []
    else:
        sections = target.sections
        metric_list = list(metrics) if metrics is not None else list(target.metrics)
        declared = list(target.datasets)
    target.significance = SignificanceSettings(
        test=test, max_p=max_p, correction=correction, comparisons=comparisons
    )
    for section in sections:
        rows = {r.key: r for r in section.rows}
        base_rows = [rows[k] for k in baselines if k in rows]
        cand_rows = [rows[k] for k in candidates if k in rows]
        datasets = declared or sorted({d for r in section.rows for d in r.cells})
        for ds in datasets:
            for metric in metric_list:
                base = [(r.key, c) for r in base_rows if (c := r.cell(ds, metric))]
                cands = [c for r in cand_rows if (c := r.cell(ds, metric))]
                if not base or not cands:
                    continue
                best_key, best = max(base, key=lambda kc: kc[1].mean)  # first max wins
                m = (comparisons or len(cands)) if correction == "bonferroni" else 1
                threshold = bonferroni(max_p, m)
                for cell in cands:
                    p = p_values(
                        best.per_query,
                        cell.per_query,
                        test,
                        n_permutations=n_permutations,
                        random_seed=random_seed,
                    )
                    cell.p_value = p
                    cell.compared_to = best_key
                    cell.significant = bool(cell.mean > best.mean and p < threshold)


def verdicts(
    section: Section,
    *,
    candidates: Sequence[str],
    baselines: Sequence[str],
    theta_t: str,
    datasets: Sequence[str],
    metrics: Sequence[str],
    against: Sequence[str] = AGAINST,
    max_p: float = 0.01,
    test: str = "student",
    correction: str = "bonferroni",
    comparisons: int | None = None,
) -> list[Verdict]:
    """Each merged row against ΘT and/or the best baseline, per dataset and metric.

    The family corrected for is one dataset × metric: every candidate against every
    reference (``m`` = candidates × references, or ``comparisons`` when given). The best
    baseline is the baseline row with the highest mean there (ΘT included; the first listed
    wins a tie). A returned list, nothing marked on the section.
    """
    unknown = [a for a in against if a not in AGAINST]
    if unknown:
        raise ConfigError(
            f"significance.against: {unknown[0]!r} is not one of {', '.join(AGAINST)}"
        )
    rows = {r.key: r for r in section.rows}
    out: list[Verdict] = []
    for ds in datasets:
        for metric in metrics:
            refs: list[tuple[str, str]] = []  # (against, row key)
            for how in against:
                if how == "theta_t" and theta_t in rows and rows[theta_t].cell(ds, metric):
                    refs.append((how, theta_t))
                elif how == "best_baseline":
                    present = [
                        (k, c) for k in baselines if k in rows and (c := rows[k].cell(ds, metric))
                    ]
                    if present:
                        refs.append((how, max(present, key=lambda kc: kc[1].mean)[0]))
            cands = [k for k in candidates if k in rows and rows[k].cell(ds, metric)]
            m = (comparisons or max(len(cands) * len(refs), 1)) if correction == "bonferroni" else 1
            threshold = bonferroni(max_p, m)
            for key in cands:
                cell = rows[key].cell(ds, metric)
                for how, ref in refs:
                    base = rows[ref].cell(ds, metric)
                    p = p_values(base.per_query, cell.per_query, test)
                    out.append(
                        Verdict(
                            candidate=key,
                            reference=ref,
                            against=how,
                            dataset=ds,
                            metric=metric,
                            candidate_mean=cell.mean,
                            reference_mean=base.mean,
                            p_value=p,
                            threshold=threshold,
                            test=test,
                        )
                    )
    return out
