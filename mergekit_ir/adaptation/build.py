"""``adapt``: base + corpus -> ΘD, end to end (load, pack, train with checkpoints, write)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_ir.adaptation.corpus import Corpus, NamedCorpora, load_corpus, packed_blocks
from mergekit_ir.adaptation.objectives import choose_objective
from mergekit_ir.adaptation.output import write_output
from mergekit_ir.adaptation.training import AdaptSettings, train
from mergekit_ir.errors import CheckpointError
from mergekit_ir.storage.cache import cache_key
from mergekit_ir.storage.fingerprint import folder_fingerprint


def load_tokenizer(base: Path) -> Any:
    from transformers import AutoTokenizer

    if not base.is_dir() or not (base / "config.json").is_file():
        raise CheckpointError(f"{base}: not a checkpoint folder (no config.json)")
    marker = (
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "spiece.model",
        "tokenizer.model",
    )
    if not any((base / m).is_file() for m in marker):
        raise CheckpointError(
            f"{base}: no tokenizer (tokenizer.json, vocab.txt…); adaptation tokenises the corpus with "
            "the base's own tokenizer: save it into the folder with tokenizer.save_pretrained"
        )
    try:
        return AutoTokenizer.from_pretrained(base)
    except Exception as exc:
        raise CheckpointError(f"{base}: cannot load the tokenizer ({exc})") from None


@dataclass
class Plan:
    objective: str
    blocks: int
    steps: int
    head_warmup: bool
    tokens: int


def resolve_objective(base: Path, settings: AdaptSettings) -> str:
    from transformers import AutoConfig

    return choose_objective(AutoConfig.from_pretrained(base), settings.objective, f"adapt {base}")


def run_key(base_fp: str, corpus: Corpus, objective: str, settings: AdaptSettings) -> str:
    return cache_key("adapt", base_fp, corpus.fingerprint, objective, settings.key())


def adapt(
    base: Path,
    corpus_spec: str,
    out: Path,
    settings: AdaptSettings,
    device: Any,
    corpora: NamedCorpora | None = None,
    cache_root: Path | None = None,
    checkpoint_every: int = 200,
    overwrite: bool = False,
    show_progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Build ΘD in ``out``; checkpoints live in ``<out>.checkpoint`` until it is written."""
    base = Path(base)
    out = Path(out)
    tokenizer = load_tokenizer(base)
    objective = resolve_objective(base, settings)
    corpus = load_corpus(corpus_spec, corpora)
    blocks = packed_blocks(corpus, tokenizer, base, objective, settings.max_length, cache_root)
    base_fp = folder_fingerprint(base)
    key = run_key(base_fp, corpus, objective, settings)
    checkpoint = out.with_name(out.name + ".checkpoint")
    result = train(
        base,
        blocks,
        tokenizer,
        objective,
        settings,
        device,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        run_key=key,
        show_progress=show_progress,
        stop_after=stop_after,
    )
    info = {
        "base": str(base),
        "base_fingerprint": base_fp,
        "corpus": corpus.name,
        "corpus_fingerprint": corpus.fingerprint,
        "corpus_documents": len(corpus.texts),
        "corpus_blocks": len(blocks),
        "objective": objective,
        "steps": result.steps - result.head_warmup_steps,
        "head_warmup_steps": result.head_warmup_steps,
        "fresh_head": result.fresh_head,
        "seed": settings.seed,
        "tokens_seen": result.tokens_seen,
        "settings": settings.key(),
        "run_key": key,
    }
    if stop_after is not None and result.steps < result.extra["total_steps"]:
        return {**info, "interrupted": True}
    write_output(out, base, result, info, overwrite)
    shutil.rmtree(checkpoint, ignore_errors=True)
    return {**info, "tokens_per_s": result.extra["tokens_per_s"], "seconds": result.seconds}
