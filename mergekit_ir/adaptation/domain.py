"""ΘD for a triplet's ``adapt:`` block: built once, content-addressed in the cache
(base fingerprint + corpus fingerprint + objective + settings), reused by later runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_ir.adaptation.corpus import NamedCorpora
from mergekit_ir.adaptation.output import CARD
from mergekit_ir.adaptation.spec import AdaptSpec


def corpus_ref(spec: AdaptSpec, corpora: NamedCorpora | None) -> str:
    """A known corpus name as it is; a relative file path relative to the registry."""
    if corpora is not None and spec.corpus in corpora.names:
        return spec.corpus
    path = Path(spec.corpus).expanduser()
    if not path.is_absolute() and corpora is not None and corpora.base_dir is not None:
        path = corpora.base_dir / path
    return str(path)


@dataclass
class DomainBuild:
    folder: Path
    cached: bool
    objective: str
    steps: int
    tokens: int  # estimated tokens the build trains on


def plan_domain(
    spec: AdaptSpec,
    base: Path,
    corpora: NamedCorpora | None,
    cache_root: Path,
    where: str | None = None,
) -> DomainBuild:
    """Where ΘD lives in the cache, whether it is built, and what building costs (estimate).

    What the base decides is checked here, so ``mergeir run --dry-run`` and the run say it
    before any work: the objective fits, ``max_length`` is within the base's positions. Errors
    name the block's YAML path (``where``, by default the one the spec was parsed at).
    """
    from mergekit_ir.adaptation.build import (
        check_max_length,
        load_config,
        resolve_objective,
        run_key,
    )
    from mergekit_ir.adaptation.corpus import load_corpus
    from mergekit_ir.storage.fingerprint import folder_fingerprint

    where = where or spec.where or None
    settings = spec.settings()
    config = load_config(base)
    objective = resolve_objective(base, settings, where, config)
    check_max_length(config, settings.max_length, base, where)
    corpus = load_corpus(corpus_ref(spec, corpora), corpora, where)
    key = run_key(
        folder_fingerprint(base, cache_dir=cache_root / "fingerprints"), corpus, objective, settings
    )
    folder = cache_root / "adapt" / key
    if settings.steps:
        steps = settings.steps
    else:  # ~1.3 tokens per whitespace word: an estimate, the build counts exactly
        words = sum(len(t.split()) for t in corpus.texts)
        blocks = max(int(words * 1.3) // settings.max_length, 1)
        steps = max(int((settings.epochs or 1.0) * max(blocks // settings.batch_size, 1)), 1)
    return DomainBuild(
        folder,
        (folder / CARD).is_file(),
        objective,
        steps,
        steps * settings.batch_size * settings.max_length,
    )


def build_domain(
    spec: AdaptSpec,
    base: Path,
    corpora: NamedCorpora | None,
    cache_root: Path,
    device: Any,
    echo: Any = print,
    progress: bool = True,
) -> Path:
    """The cached ΘD folder for ``spec`` adapted from ``base``; built (resumably) if absent."""
    from mergekit_ir.adaptation.build import adapt

    plan = plan_domain(spec, base, corpora, cache_root)
    where = spec.where or None
    if plan.cached:
        echo(f"  ΘD {spec.describe()}: cached ({plan.folder.name})")
        return plan.folder
    echo(f"  ΘD {spec.describe()}: building ({plan.steps} steps, ≈{plan.tokens:,} tokens)")
    adapt(
        base,
        corpus_ref(spec, corpora),
        plan.folder,
        spec.settings(),
        device,
        corpora=corpora,
        cache_root=cache_root,
        show_progress=progress,
        overwrite=True,
        where=where,
    )
    return plan.folder
