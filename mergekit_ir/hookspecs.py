"""Hook specifications: the whole contract between mergekit-ir and its plugins.

A plugin is any module (or object) that implements one or more of these hooks and
is listed under the ``mergekit_ir`` entry-point group::

    [project.entry-points.mergekit_ir]
    my_method = "my_package.my_module"

Each hook receives a ``register`` callable and calls it once per thing it provides,
so plugins stay declarative::

    from mergekit_ir import hookimpl, MergeMethod

    @hookimpl
    def register_merge_methods(register):
        register(MergeMethod(name="my_method", description="...", merge=my_merge, params=(...)))

Names are global per kind: two plugins registering one name is an error naming both.
The built-in plugins in ``plugins/`` use exactly these hooks and the same group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from mergekit_ir.evaluation.first_stage import FirstStageKind
    from mergekit_ir.execution import ExecutorKind
    from mergekit_ir.merging.method import MergeMethod
    from mergekit_ir.merging.statistics import StatisticKind
    from mergekit_ir.scoring.scorer import ScorerKind
    from mergekit_ir.tuning.selector import AlphaSelector

PROJECT = "mergekit_ir"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_merge_methods(register: Callable[[MergeMethod], None]) -> None:
    """Register merge methods.

    A merge method is a pure per-tensor function that combines the IR model's
    weights with one or more task vectors (see :class:`mergekit_ir.MergeMethod`).
    Declare every parameter with :class:`mergekit_ir.Param` so configs are
    validated before any checkpoint is opened.
    """


@hookspec
def register_statistics(register: Callable[[StatisticKind], None]) -> None:
    """Register statistics that data-aware merge methods gather over a text source.

    The contract for "a merge method that asks for per-layer statistics over a text
    source" has two halves:

    - a **statistic** (:class:`mergekit_ir.StatisticKind`, registered here): ``collect(run,
      params)`` runs one model over the text batches of a :class:`mergekit_ir.StatisticsRun`
      (forward hooks, or its own loss and backward) and returns one tensor per parameter,
      keyed by the model's ``state_dict`` names, with memory bounded whatever the number of
      texts (accumulate, never keep activations); ``memory(model, params)`` says the bound;
    - a **data-aware merge method** (``register_merge_methods``) that declares the statistics
      it needs, ``MergeMethod(statistics=("input_gram",), params=(…, STATISTICS))``, and
      receives ``stats={name: [ΘT's, ΘD_1's, …]}`` per tensor.

    Between them the engine (:mod:`mergekit_ir.merging.statistics`) samples the target
    corpus (``statistics: {texts, max_length, batch_size, seed}``), runs every statistic once
    per model (ΘT and each ΘD_i = Θ0 + τ_i), caches the results by (model fingerprint, corpus
    sample fingerprint, settings) and reads them back tensor by tensor during the merge.
    ``mergeir run`` uses each dataset's corpus; ``mergeir merge`` takes ``--corpus``.
    The built-in ``input_gram`` (RegMean's XᵀX per ``nn.Linear``) is registered this way.
    """


@hookspec
def register_scorers(register: Callable[[ScorerKind], None]) -> None:
    """Register scorer architectures (bi-encoder, cross-encoder, seq2seq, causal LM...).

    A scorer kind loads a checkpoint folder into a :class:`mergekit_ir.Scorer`
    that re-ranks candidate documents; its ``model`` attribute exposes the torch
    module whose weights the α sweep updates in place.
    """


@hookspec
def register_first_stages(register: Callable[[FirstStageKind], None]) -> None:
    """Register first-stage retrieval backends (e.g. BM25).

    A backend indexes a corpus and returns the top-k documents per query; it
    should cache its index on disk keyed by corpus hash and settings.
    """


@hookspec
def register_alpha_selectors(register: Callable[[AlphaSelector], None]) -> None:
    """Register α selectors (how ``tuning.alpha.selector`` picks α: dev labels, pseudo-queries...).

    A selector receives the α grid and callbacks that score a candidate α on a split with the
    in-place sweep and the run cache, and returns an :class:`mergekit_ir.AlphaChoice` per
    dataset (see :class:`mergekit_ir.AlphaSelector`).
    """


@hookspec
def register_executors(register: Callable[[ExecutorKind], None]) -> None:
    """Register executors: where an experiment's triplet jobs run (in process, a cluster...).

    An executor receives the prepared run and the triplet names and yields one
    :class:`mergekit_ir.TripletOutcome` per triplet, in order; the driver builds the report
    from them, so an executor changes where work runs, never a number.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``mergeir`` command line (as simonw/llm's ``register_commands``).

    Receives the top-level :class:`click.Group`; decorate new commands with ``@cli.command()``.
    A command whose name is taken already is an error naming the plugin. Commands see the same
    one-line error handling as the built-in ones (raise :class:`mergekit_ir.MergeIRError`).
    """
