"""``mergeir run --dry-run --estimate``: what a run will cost on this machine, measured.

The dry run counts passes without touching weights; the estimate goes one step further and
runs what is cheap: the first stage of every split (BM25, cached for the run), which gives the
exact query–document pairs and distinct documents each pass re-ranks, and a short throughput
probe of each triplet's ΘT scorer on a few batches of real candidates. A pass costs its
scorer's unit (:attr:`~mergekit_ir.scoring.scorer.Scorer.cost_unit`: pairs, or documents for
scorers that encode each document once) divided by the probe's rate. It is an estimate —
loading, merging and fusion are left out, and throughput on a few batches is not a long run's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mergekit_ir.ranking import Ranking

if TYPE_CHECKING:
    from mergekit_ir.experiments.runner import ExperimentRun, Split
    from mergekit_ir.scoring.scorer import Scorer


@dataclass(frozen=True)
class SplitWork:
    """What one pass over a split re-ranks."""

    queries: int
    pairs: int
    documents: int

    def units(self, unit: str) -> int:
        return self.documents if unit == "document" else self.pairs


def split_work(candidates: Ranking) -> SplitWork:
    docs = {d for ranked in candidates.values() for d in ranked}
    return SplitWork(len(candidates), sum(len(r) for r in candidates.values()), len(docs))


@dataclass(frozen=True)
class Throughput:
    """A scorer's measured rate, in its cost unit per second."""

    unit: str
    per_second: float
    sample: int  # units timed


def _sample(candidates: Ranking, unit: str, target: int) -> Ranking:
    """The first queries (in id order) whose candidates reach ``target`` units."""
    out: Ranking = {}
    docs: set[str] = set()
    for qid in sorted(candidates):
        out[qid] = candidates[qid]
        docs.update(candidates[qid])
        size = len(docs) if unit == "document" else sum(len(r) for r in out.values())
        if size >= target:
            break
    return out


#: Probes per scorer: the estimate reports the range they span.
PROBES = 3


def probe(scorer: Scorer, split: Split, batches: int = 3) -> Throughput:
    """Time ``batches`` batches' worth of the split's real candidates (after one warm-up query)."""
    unit = scorer.cost_unit
    candidates = split.first_stage
    ds = split.dataset
    docs = {d: ds.corpus[d].full_text for r in candidates.values() for d in r}
    first = min(candidates)
    warm = {first: dict(list(candidates[first].items())[:2])}
    scorer.rerank({first: ds.queries[first]}, warm, docs)
    sample = _sample(candidates, unit, batches * scorer.settings.batch_size)
    started = time.perf_counter()
    scorer.rerank({q: ds.queries[q] for q in sample}, sample, docs)
    seconds = max(time.perf_counter() - started, 1e-9)
    units = split_work(sample).units(unit)
    return Throughput(unit, units / seconds, units)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_lines(er: ExperimentRun) -> list[str]:
    """The dry run's ``estimate`` block: per split the work, per triplet the probe and time."""
    from mergekit_ir.experiments.dry_run import count_passes
    from mergekit_ir.experiments.sources import resolve_ref
    from mergekit_ir.plugin_host import catalog
    from mergekit_ir.references.checkpoints import locate_checkpoint

    er.prepare_splits()
    exp, reg = er.exp, er.reg
    work = {("test", d): split_work(s.first_stage) for d, s in er.tests.items()}
    work |= {("dev", d): split_work(s.first_stage) for d, s in er.devs.items()}
    lines = ["", "estimate (measured on this machine; loading, merging and fusion not included):"]
    for (role, dname), w in work.items():
        lines.append(
            f"  {dname}:{role:<5} {w.queries} queries, {w.pairs:,} pairs, {w.documents:,} documents"
        )
    total_low = total_high = 0.0
    for tname in exp.triplets:
        t = reg.triplet(tname)
        # passes per split: the counts of a one-dataset experiment on that split's dataset
        passes = {}
        for d in er.tests:
            counts = count_passes(reg, exp, tname, [d], [d] if d in er.devs else [])
            # selectors' own splits are sized like the test split (pseudo-queries over the
            # same corpus): priced on it
            on_test = (
                "baselines",
                "Θ' on test",
                "selectors' α grid",
                "test curve (selection report)",
            )
            passes[("test", d)] = sum(counts.get(k, 0) for k in on_test)
            if d in er.devs:
                passes[("dev", d)] = sum(counts.values()) - passes[("test", d)]
        loc = locate_checkpoint(t.ir.ref, t.ir.revision, reg.base_dir)
        if loc.kind not in ("local", "quickstart", "hub-cached"):
            lines.append(f"  {tname}: no probe, ΘT is not local yet (the run downloads it)")
            continue
        folder = resolve_ref(t.ir, reg.base_dir, er.opts.cache.root)
        kind = catalog().scorer(t.scorer, f"triplets.{tname}.scorer.kind")
        if kind.check:
            kind.check(folder)
        torch.manual_seed(exp.seed)
        scorer = kind.load(folder, t.scorer_options, er.settings)
        first = er.tests[next(iter(er.tests))]
        # several probes: one on a momentarily loaded machine must not set the forecast
        rates = [probe(scorer, first) for _ in range(PROBES)]
        del scorer
        fast, slow = max(r.per_second for r in rates), min(r.per_second for r in rates)
        unit = rates[0].unit
        units = sum(n * work[split].units(unit) for split, n in passes.items())
        low, high = units / fast, units / slow
        total_low, total_high = total_low + low, total_high + high
        builds = [d for d in t.domains if d.kind == "adapt"]
        lines.append(
            f"  {tname}: {slow:,.0f}–{fast:,.0f} {unit}s/s ({t.scorer}, {PROBES} probes of "
            f"{rates[0].sample} {unit}s on {er.settings.torch_device.type}) → "
            f"{_duration(low)}–{_duration(high)} for its {sum(passes.values())} passes"
            + (f"; plus {len(builds)} ΘD build(s), see the plan above" if builds else "")
        )
    lines.append(
        f"  total {_duration(total_low)}–{_duration(total_high)} (from {PROBES} probes of a "
        "few batches each; cache hits are free; ΘD builds not timed)"
    )
    return lines
