"""mergekit-ir: build domain- and language-adapted rerankers by merging checkpoints.

This module is the public API. Plugin authors import only from here:

- the plugin contract: :func:`hookimpl`, the kinds they register (:class:`MergeMethod`,
  :class:`ScorerKind`, :class:`FirstStageKind`, :class:`AlphaSelector`,
  :class:`ExecutorKind`, :class:`StatisticKind`) and :class:`Param` for their parameters
  (:data:`STATISTICS` for a data-aware method's text pass);
- the toolkit the built-in plugins use: data types (:class:`Document`, :data:`Run`),
  tokenising and batching helpers, :func:`read_model_config` for a scorer's ``check()``,
  ``atomic`` writes, the one-line errors, the selectors' :func:`bootstrap` and AdaMerging's
  :func:`learn_coefficients`;
- the Python API scripts use: :func:`merge`, :func:`merge_triplet`, :class:`TaskVector` (and
  :func:`save_quantized` / :func:`save_residual` / :class:`QuantSpec` for TVQ),
  :func:`load_registry`, :func:`run_experiment`.

Everything else (``mergekit_ir.merging``, ``.scoring``, ``.evaluation``, ``.experiments``,
``.reports``, ``.storage``) is the machinery behind it and may change between releases.
"""

from mergekit_ir.errors import CheckpointError, ConfigError, DatasetError, MergeIRError, PluginError
from mergekit_ir.evaluation.datasets import Dataset, Document
from mergekit_ir.evaluation.first_stage import FirstStage, FirstStageKind
from mergekit_ir.execution import (
    Executor,
    ExecutorKind,
    FirstStageJobs,
    TripletJobs,
    TripletOutcome,
)
from mergekit_ir.experiments.jobs import (
    WorkerSetup,
    run_first_stage_job,
    run_triplet_job,
    wire_splits,
    worker_setup,
)
from mergekit_ir.hookspecs import hookimpl
from mergekit_ir.merging.method import ALPHA, WEIGHTS, MergeMethod, domain_weights, tensor_generator
from mergekit_ir.merging.statistics import STATISTICS, StatisticKind, StatisticsRun
from mergekit_ir.params import Param
from mergekit_ir.ranking import Qrels, Ranking
from mergekit_ir.results import AlphaChoice, alpha_label
from mergekit_ir.scoring.batching import (
    encode_template,
    fill_template,
    pad_token_id,
    parse_template,
    require_fast,
    resolve_token,
    run_batches,
    tokenize,
    truncate_texts,
)
from mergekit_ir.scoring.mlm_head import encoder_of, mlm_head
from mergekit_ir.scoring.model_config import read_model_config
from mergekit_ir.scoring.scorer import Scorer, ScorerKind, ScoringSettings
from mergekit_ir.storage import atomic
from mergekit_ir.tuning.adamerging import LearnSettings
from mergekit_ir.tuning.adamerging import Query as LearnQuery
from mergekit_ir.tuning.adamerging import learn as learn_coefficients
from mergekit_ir.tuning.bootstrap import bootstrap
from mergekit_ir.tuning.selector import BASELINE_ALPHA, AlphaSelector, SelectionContext

__all__ = [
    "ALPHA",
    "BASELINE_ALPHA",
    "AlphaChoice",
    "AlphaSelector",
    "WEIGHTS",
    "alpha_label",
    "CheckpointError",
    "ConfigError",
    "Dataset",
    "DatasetError",
    "Document",
    "Executor",
    "ExecutorKind",
    "FirstStage",
    "FirstStageJobs",
    "FirstStageKind",
    "MergeIRError",
    "MergeMethod",
    "Param",
    "PluginError",
    "Qrels",
    "Ranking",
    "Run",
    "Scorer",
    "ScorerKind",
    "ScoringSettings",
    "SelectionContext",
    "STATISTICS",
    "StatisticKind",
    "StatisticsRun",
    "LearnQuery",
    "LearnSettings",
    "bootstrap",
    "learn_coefficients",
    "TripletJobs",
    "TripletOutcome",
    "WorkerSetup",
    "atomic",
    "domain_weights",
    "encode_template",
    "fill_template",
    "hookimpl",
    "pad_token_id",
    "parse_template",
    "read_model_config",
    "encoder_of",
    "mlm_head",
    "require_fast",
    "resolve_token",
    "run_batches",
    "run_first_stage_job",
    "run_triplet_job",
    "tensor_generator",
    "tokenize",
    "truncate_texts",
    "wire_splits",
    "worker_setup",
]

#: The Python API for scripts, imported on first use (``import mergekit_ir`` stays light for
#: plugins): name -> (module, attribute).
_LAZY = {
    "merge": ("mergekit_ir.api.merge", "merge"),
    "prepare_merge": ("mergekit_ir.api.merge", "prepare_merge"),
    "merge_triplet": ("mergekit_ir.api.triplet_merge", "merge_triplet"),
    "TaskVector": ("mergekit_ir.merging.task_vector", "TaskVector"),
    "QuantSpec": ("mergekit_ir.merging.quantized_store", "QuantSpec"),
    "save_quantized": ("mergekit_ir.merging.quantized_store", "save_quantized"),
    "save_residual": ("mergekit_ir.merging.residual", "save_residual"),
    "open_checkpoint": ("mergekit_ir.merging.checkpoint", "open_checkpoint"),
    "load_registry": ("mergekit_ir.experiments.registry", "load_registry"),
    "run_experiment": ("mergekit_ir.experiments.runner", "run_experiment"),
    "RunOptions": ("mergekit_ir.experiments.runner", "RunOptions"),
    "Results": ("mergekit_ir.results", "Results"),
    "DomainRef": ("mergekit_ir.references.checkpoints", "DomainRef"),
    "write_reports": ("mergekit_ir.reports.render", "write_reports"),
}
__all__ += sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'mergekit_ir' has no attribute {name!r}")


#: Deprecated: the old name of :data:`Ranking` ("run" now means an experiment's execution
#: only). Kept for one release; new code should use ``Ranking``.
Run = Ranking

__version__ = "0.1.0"
