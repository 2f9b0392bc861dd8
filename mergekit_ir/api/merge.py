"""The merge as a Python call: what ``mergeir merge`` runs, for scripts and notebooks.

:func:`prepare_merge` turns references (folders or hub ids) into a :class:`MergeJob` with
every parameter validated against the method's declarations; :func:`merge` then streams
Θ' to a folder. ``mergekit_ir.api.triplet_merge.merge_triplet`` does the same from a
registry triplet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_ir.errors import ConfigError
from mergekit_ir.merging.alignment import AlignmentRules, MergePlan
from mergekit_ir.merging.checkpoint import TensorSource, open_checkpoint
from mergekit_ir.merging.engine import MergeJob, MergeReport, build_plan, merge_to_folder
from mergekit_ir.merging.engine import provenance as made_of
from mergekit_ir.merging.method import check_weights
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.references.checkpoints import DomainRef, resolve_checkpoint
from mergekit_ir.storage.cache import resolve_cache_root


@dataclass
class PreparedMerge:
    """A validated merge, ready to plan or write. A data-aware method (``regmean``) also
    carries the corpus sample its statistics are gathered over, and the cache they go to."""

    job: MergeJob
    plan: MergePlan
    provenance: dict[str, str]
    sample: Any = None  # a mergekit_ir.merging.statistics.CorpusSample
    cache_root: Path | None = None


#: What ``corpus=`` accepts: a registry dataset name, a BEIR folder or a .jsonl/.txt file
#: (as ``mergeir adapt --corpus``), or the document texts themselves.
CorpusArg = str | Path | Sequence[str]


def corpus_sample(
    corpus: CorpusArg,
    settings: Mapping[str, Any],
    corpora: Any = None,
    where: str = "--corpus",
) -> Any:
    """The seeded sample of ``corpus`` a statistics pass reads (``settings``: the method's
    checked ``statistics:`` mapping); a bad spec is one line naming ``where``."""
    from mergekit_ir.adaptation.corpus import load_corpus
    from mergekit_ir.merging.statistics import sample_corpus

    if isinstance(corpus, str | Path):
        found = load_corpus(str(corpus), corpora, None)
        name, texts = found.name, found.texts
    else:
        texts = [str(t) for t in corpus]
        name = "texts"
        if not texts:
            raise ConfigError(f"{where}: no documents given")
    return sample_corpus(texts, settings["texts"], settings["seed"], name)


def prepare_merge(
    ir: str | Path | TensorSource,
    domains: Sequence[str | DomainRef],
    *,
    pretrained: str | Path | TensorSource | None = None,
    method: str = "task_arithmetic",
    params: Mapping[str, Any] | None = None,
    alignment: AlignmentRules | None = None,
    allow_nonfinite: bool = False,
    base_dir: Path | None = None,
    cache_root: Path | None = None,
    provenance: Mapping[str, str] | None = None,
    where: str = "--param",
    corpus: CorpusArg | None = None,
    corpora: Any = None,
) -> PreparedMerge:
    """Resolve inputs, validate ``params`` (α included) against the method, and plan the merge.

    ``cache_root`` is where quickstart checkpoints are built (default: the cache folder), and
    where a data-aware method's statistics are cached. ``corpus`` is the text source of a
    data-aware method (``regmean``): a registry dataset name (looked up in ``corpora``, a
    :class:`~mergekit_ir.adaptation.corpus.NamedCorpora`), a BEIR folder, a .jsonl/.txt
    file, or the texts; it is sampled now, and read when the merge is written."""
    cache_root = resolve_cache_root(cache_root)
    from mergekit_ir.params import check_params
    from mergekit_ir.plugin_host import catalog

    mm = catalog().merge_method(method, "--method" if where == "--param" else f"{where}.method")
    checked = check_params(mm.params, dict(params or {}), where, f"merge method '{method}'")
    sample = None
    if corpus is not None:
        if not mm.statistics:
            raise ConfigError(
                f"--corpus: merge method '{method}' reads no corpus (data-aware methods such as "
                "regmean do); drop --corpus"
            )
        for kind in mm.statistics:  # every statistic it names is installed
            catalog().statistic(kind, f"merge method '{method}' statistics")
        from mergekit_ir.merging.statistics import STATISTICS

        sample = corpus_sample(corpus, checked.get(STATISTICS.name) or STATISTICS.default, corpora)

    def source(x: str | Path | TensorSource) -> TensorSource:
        if isinstance(x, TensorSource):
            return x
        return open_checkpoint(str(resolve_checkpoint(str(x), None, base_dir, cache_root)))

    ir_src = source(ir)
    pre_src = source(pretrained) if pretrained is not None else None
    vectors = []
    for d in domains:
        d = d if isinstance(d, DomainRef) else DomainRef.parse(str(d))
        folder = resolve_checkpoint(
            d.ref, None, base_dir, cache_root
        )  # adapters may be hub ids too
        vectors.append(TaskVector.from_reference(d.kind, folder, pre_src))
    if not vectors:
        raise ConfigError("give at least one domain input (a ΘD checkpoint, lora: or task_vector:)")
    check_weights(checked.get("weights"), len(vectors), f"{where} weights")
    job = MergeJob(
        ir_src,
        vectors,
        mm,
        checked,
        pretrained=pre_src,
        rules=alignment or AlignmentRules(),
        allow_nonfinite=allow_nonfinite,
    )
    made_from = provenance or made_of(
        str(ir_src.ref),
        str(pre_src.ref) if pre_src is not None else None,
        [v.describe() for v in vectors],
    )
    if sample is not None:
        made_from = {**made_from, "statistics corpus": sample.describe()}
    return PreparedMerge(job, build_plan(job), dict(made_from), sample, cache_root)


def merge(
    ir: str | Path | TensorSource,
    domains: Sequence[str | DomainRef],
    out: str | Path,
    *,
    pretrained: str | Path | TensorSource | None = None,
    method: str = "task_arithmetic",
    params: Mapping[str, Any] | None = None,
    alignment: AlignmentRules | None = None,
    allow_nonfinite: bool = False,
    shard_size: int = 5 * 10**9,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
    cache_dir: str | Path | None = None,
    corpus: CorpusArg | None = None,
) -> MergeReport:
    """Write Θ' = merge(ΘT, τ…; params) as a Hugging Face folder; see ``docs/merging.md``.
    ``corpus``: the text source of a data-aware method such as ``regmean``.

    >>> merge("ir/", ["bio/"], "merged/", pretrained="base/", params={"alpha": 0.3})  # doctest: +SKIP
    """
    prepared = prepare_merge(
        ir,
        domains,
        pretrained=pretrained,
        method=method,
        params=params,
        alignment=alignment,
        allow_nonfinite=allow_nonfinite,
        cache_root=resolve_cache_root(cache_dir),
        corpus=corpus,
    )
    return write_merge(
        prepared, out, shard_size=shard_size, overwrite=overwrite, device=device, progress=progress
    )


def write_merge(
    prepared: PreparedMerge,
    out: str | Path,
    *,
    shard_size: int = 5 * 10**9,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> MergeReport:
    """Stream a prepared merge to ``out`` (atomically); a data-aware method's statistics
    are gathered first (or read from the cache), with one line per model on ``echo``."""
    from mergekit_ir.scoring.scorer import resolve_device

    if prepared.job.method.statistics and prepared.job.statistics is None:
        attach_statistics(prepared, device=device, progress=progress, echo=echo)
    return merge_to_folder(
        prepared.job,
        out,
        shard_size=shard_size,
        overwrite=overwrite,
        device=str(resolve_device(device)),
        progress=progress,
        provenance=prepared.provenance,
        plan=prepared.plan,
    )


def attach_statistics(
    prepared: PreparedMerge,
    *,
    device: str = "cpu",
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> Any:
    """Gather (or read back from the cache) the statistics a data-aware merge needs over the
    prepared corpus sample, and attach them to the job; an error before any work when no
    corpus was given."""
    from mergekit_ir.merging.statistics import STATISTICS, gather_statistics, missing_statistics
    from mergekit_ir.plugin_host import catalog
    from mergekit_ir.scoring.scorer import resolve_device

    job = prepared.job
    if prepared.sample is None:
        raise missing_statistics(job.method)
    kinds = {k: (catalog().statistic(k), {}) for k in job.method.statistics}
    job.statistics = gather_statistics(
        job,
        prepared.plan,
        kinds,
        prepared.sample,
        job.params.get(STATISTICS.name) or STATISTICS.default,
        resolve_cache_root(prepared.cache_root),
        device=resolve_device(device),
        progress=progress,
        echo=echo,
    )
    return job.statistics
