"""mergekit-ir: build domain- and language-adapted rerankers by merging checkpoints.

Public API for plugin authors and scripts.
"""

from .errors import CheckpointError, ConfigError, DatasetError, MergeIRError, PluginError
from .first_stage import FirstStage, FirstStageKind, Run
from .hookspecs import hookimpl
from .merge_method import ALPHA, WEIGHTS, MergeMethod, domain_weights, tensor_generator
from .params import Param
from .scoring import Scorer, ScorerKind, ScoringSettings

__all__ = [
    "ALPHA",
    "WEIGHTS",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "FirstStage",
    "FirstStageKind",
    "MergeIRError",
    "MergeMethod",
    "Param",
    "PluginError",
    "Run",
    "Scorer",
    "ScorerKind",
    "ScoringSettings",
    "domain_weights",
    "hookimpl",
    "tensor_generator",
]

__version__ = "0.1.0"
