"""A data-aware merge method in a run: its statistics, gathered per corpus before merging.

``mergeir run`` merges in place for every α; a data-aware method (``regmean``) also needs
statistics of ΘT and each ΘD_i over a text source. The text source is the corpus of the split
being ranked (a dataset's test and dev splits share one corpus, so one statistics pass
serves both); the pass runs once per (model, corpus sample, settings), before the first
Θ' on that corpus is scored, and lands in the run's cache, so a rerun, the α sweep and
``mergeir merge --from-run`` read it back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mergekit_ir.evaluation.datasets import Dataset
from mergekit_ir.merging.method import MergeMethod
from mergekit_ir.merging.statistics import (
    STATISTICS,
    CorpusSample,
    StatisticsSet,
    gather_statistics,
    sample_corpus,
)
from mergekit_ir.plugin_host import catalog


def corpus_texts(ds: Dataset) -> list[str]:
    """A dataset's documents as a statistics pass reads them: title and body, in id order
    (the order ``mergeir merge --corpus DATASET`` reads them in, so both share the cache)."""
    return [ds.corpus[d].full_text for d in sorted(ds.corpus)]


class CorpusStatistics:
    """One triplet's statistics per corpus, for a data-aware method in a run."""

    def __init__(
        self,
        method: MergeMethod,
        merge_params: Mapping[str, Any],
        cache_root: Path,
        *,
        device: Any,
        reuse: bool,
        progress: bool,
        echo: Callable[[str], None],
        where: str,
    ):
        cat = catalog()
        self.kinds = {
            k: (cat.statistic(k, f"{where}: merge method '{method.name}' statistics"), {})
            for k in method.statistics
        }
        self.settings = dict(merge_params.get(STATISTICS.name) or STATISTICS.default)
        self.cache_root, self.device, self.reuse = cache_root, device, reuse
        self.progress, self.echo = progress, echo
        self._samples: dict[str, CorpusSample] = {}
        self._sets: dict[str, StatisticsSet] = {}

    def sample(self, ds: Dataset) -> CorpusSample:
        fp = ds.fingerprint()
        if fp not in self._samples:
            self._samples[fp] = sample_corpus(
                corpus_texts(ds), self.settings["texts"], self.settings["seed"], ds.name
            )
        return self._samples[fp]

    def identity(self, ds: Dataset) -> list[Any]:
        """What Θ' on ``ds`` depends on beyond the weights: the statistics' corpus sample and
        the statistics themselves (name and version), for the model-run cache key."""
        return [
            "statistics",
            sorted((name, kind.version) for name, (kind, _) in self.kinds.items()),
            self.sample(ds).fingerprint,
        ]

    def note(self, ds: Dataset) -> str:
        """The report's line on where a data-aware Θ''s statistics came from."""
        names = ", ".join(self.kinds)
        return f"Θ' merged from statistics ({names}) over {self.sample(ds).describe()}"

    def attach(self, job: Any, plan: Any, ds: Dataset) -> StatisticsSet:
        """Gather (or read back) the statistics over ``ds``'s corpus and attach them to ``job``."""
        fp = ds.fingerprint()
        if fp not in self._sets:
            sample = self.sample(ds)
            self.echo(f"  statistics for {job.method.name}: {sample.describe()}")
            self._sets[fp] = gather_statistics(
                job,
                plan,
                self.kinds,
                sample,
                self.settings,
                self.cache_root,
                device=self.device,
                progress=self.progress,
                echo=self.echo,
                reuse=self.reuse,
            )
        job.statistics = self._sets[fp]
        return job.statistics
