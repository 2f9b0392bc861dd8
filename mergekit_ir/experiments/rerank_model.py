"""``mergeir rerank``: one checkpoint through an experiment's protocol, without a triplet.

A merged folder (or any model a scorer kind can load) is scored with the same first stage,
fusion and metrics a ``mergeir run`` uses — the protocol comes from a registry experiment, or
the defaults — so its numbers sit next to a run's rows.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mergekit_ir.experiments.registry import Experiment, Registry
from mergekit_ir.experiments.runner import ExperimentRun, RunOptions
from mergekit_ir.params import check_params
from mergekit_ir.plugin_host import catalog
from mergekit_ir.ranking import Ranking
from mergekit_ir.references.checkpoints import resolve_checkpoint
from mergekit_ir.scoring.devices import load_on_devices

_NAME = "rerank"


@dataclass
class RerankedDataset:
    """One dataset's means for the first stage, the model alone and the model fused with it."""

    dataset: str
    means: dict[str, dict[str, float]] = field(default_factory=dict)  # row -> metric -> mean
    runs: dict[str, Ranking] = field(default_factory=dict)  # row -> run (for TREC files)


def rerank_model(
    reg: Registry,
    model: str,
    scorer: str,
    options: Mapping[str, Any],
    datasets: list[str],
    opts: RunOptions,
    experiment: str | None = None,
    first_stage: str | None = None,
    k: int | None = None,
) -> list[RerankedDataset]:
    """Score ``model`` on each dataset's test split; λ is the protocol's fixed one (no dev).

    ``first_stage`` (a backend name, with its default parameters) and ``k`` override the
    experiment's (or the defaults')."""
    base = reg.experiment(experiment) if experiment else Experiment(_NAME, (), tuple(datasets))
    exp = dataclasses.replace(
        base, name=_NAME, triplets=(), datasets=tuple(datasets), tune_alpha=False, tune_fusion=False
    )
    if first_stage is not None and first_stage != exp.first_stage:
        backend = catalog().first_stage(first_stage, "--first-stage")
        params = check_params(backend.params, {}, "--first-stage", first_stage)
        exp = dataclasses.replace(exp, first_stage=first_stage, first_stage_params=params)
    if k is not None:
        exp = dataclasses.replace(exp, k=k)
    run = ExperimentRun(dataclasses.replace(reg, experiments={_NAME: exp}), _NAME, opts)
    kind = catalog().scorer(scorer, "--scorer")
    checked = check_params(kind.params, dict(options), "--option", scorer)
    folder = resolve_checkpoint(model, cache_root=opts.cache.root)
    if kind.check:
        kind.check(folder)
    run.prepare_splits()
    opts.echo(f"loading {model} ({scorer})")
    # one copy per device with --device cuda:0,cuda:1 (mergekit_ir.scoring.devices)
    scoring = load_on_devices(
        lambda settings: kind.load(folder, checked, settings), run.settings, run.devices
    )
    out = []
    for i, (name, split) in enumerate(run.tests.items(), 1):
        ds = split.dataset
        docs = {d: ds.corpus[d].full_text for q in split.first_stage.values() for d in q}
        queries = {q: ds.queries[q] for q in split.first_stage}
        label = f"pass {i}/{len(run.tests)} · {model} · {name}:test"
        opts.echo(f"{label}: {sum(map(len, split.first_stage.values())):,} pairs")
        started = time.perf_counter()
        with scoring.labelled(label):
            model_ranking = scoring.rerank(queries, split.first_stage, docs)
        opts.echo(f"{label}: {time.perf_counter() - started:.1f}s")
        fused = run.fused(split.first_stage, model_ranking, exp.fusion_params)
        result = RerankedDataset(name)
        for row, r in (
            ("first stage", split.first_stage),
            ("model", model_ranking),
            ("fused", fused),
        ):
            result.means[row] = {m: c.mean for m, c in run.cells(split, r).items()}
            result.runs[row] = r
        out.append(result)
    return out
