"""``adapt``: base + corpus -> ΘD, end to end (check, load, pack, train with checkpoints, write).

Everything that can be known before the work is checked before it, in the order a user would
fix it: the base (a checkpoint with a tokenizer and PyTorch weights), the objective and the
block length against the base's positions, the corpus (readable UTF-8 text), then the output
folder (the one output-folder policy: never an input, inside or above one; only an empty
folder or an earlier ``adapt`` output replaced, and only with ``--overwrite``; writable; room
for ΘD and its checkpoints) and the checkpoint folder beside it. A finished ΘD with the same
run key in the output is reported and kept: rerunning the exact command is not an error.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_ir.adaptation.corpus import (
    Corpus,
    NamedCorpora,
    corpus_path,
    load_corpus,
    packed_blocks,
)
from mergekit_ir.adaptation.naming import setting_name, setting_text
from mergekit_ir.adaptation.objectives import choose_objective
from mergekit_ir.adaptation.output import CARD, base_numel, weight_files, write_output
from mergekit_ir.adaptation.progress import Reporter, warn
from mergekit_ir.adaptation.training import (
    CHECKPOINT_INFO,
    AdaptSettings,
    DivergedError,
    read_checkpoint_info,
    train,
)
from mergekit_ir.errors import CheckpointError, ConfigError
from mergekit_ir.storage.cache import cache_key
from mergekit_ir.storage.fingerprint import folder_fingerprint
from mergekit_ir.storage.output_folder import (
    OutputKind,
    check_not_an_input,
    check_output,
    check_path_names,
)

#: The output-folder policy for ΘD: ``mergekit_ir_adapt.json`` marks adapt's own output.
ADAPT_OUTPUT = OutputKind(what="ΘD", marker=CARD, earlier="`mergeir adapt` output")

#: RoBERTa-style embeddings number positions from ``pad_token_id + 1``: fewer usable ones.
_POSITION_OFFSET_TYPES = {
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "data2vec-text",
    "ibert",
    "longformer",
    "luke",
    "mpnet",
    "roberta-prelayernorm",
    "xmod",
}


def load_tokenizer(base: Path) -> Any:
    from transformers import AutoTokenizer

    check_base_folder(base)
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


def check_base_folder(base: Path) -> None:
    if not base.is_dir() or not (base / "config.json").is_file():
        raise CheckpointError(f"{base}: not a checkpoint folder (no config.json)")


@dataclass
class Plan:
    objective: str
    blocks: int
    steps: int
    head_warmup: bool
    tokens: int


def load_config(base: Path) -> Any:
    from transformers import AutoConfig

    check_base_folder(base)
    try:
        return AutoConfig.from_pretrained(base)
    except Exception as exc:
        raise CheckpointError(f"{base}/config.json: cannot read it ({exc})") from None


def resolve_objective(
    base: Path, settings: AdaptSettings, where: str | None = None, config: Any = None
) -> str:
    config = config if config is not None else load_config(base)
    return choose_objective(
        config, settings.objective, f"adapt {base}", setting_name("objective", where)
    )


def position_limit(config: Any) -> int | None:
    """Tokens per sequence the base's position embeddings allow (None: no absolute limit,
    e.g. T5's relative positions)."""
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    if getattr(config, "model_type", "") in _POSITION_OFFSET_TYPES:
        pad = getattr(config, "pad_token_id", None)
        limit -= (pad if isinstance(pad, int) else 1) + 1
    return limit


def check_max_length(config: Any, max_length: int, base: Path, where: str | None = None) -> None:
    """A block longer than the base's position embeddings is one line before any work (the
    model would fail on its first batch with a shape error)."""
    limit = position_limit(config)
    if limit is not None and max_length > limit:
        raise ConfigError(
            f"{setting_text('max_length', max_length, where)}: more tokens than {base} has "
            f"positions for ({limit}, from max_position_embeddings in its config.json); use at "
            f"most {limit}"
        )


def run_key(base_fp: str, corpus: Corpus, objective: str, settings: AdaptSettings) -> str:
    return cache_key("adapt", base_fp, corpus.fingerprint, objective, settings.key())


def finished_card(out: Path) -> dict[str, Any] | None:
    """The card of a finished ΘD in ``out`` (written last, atomically with it), or None."""
    try:
        card = json.loads((out / CARD).read_text())
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


def needed_bytes(base: Path, settings: AdaptSettings, checkpoints: bool, checkpoint: Path) -> int:
    """What the run writes beside ``out`` at its peak: ΘD in fp32 (a LoRA adapter: little) and,
    with checkpoints, a checkpoint (model + AdamW's two moments) while the next one is written
    — less a checkpoint already there."""
    fp32 = base_numel(base) * 4
    lora = settings.lora is not None
    output = 0 if lora else fp32
    if not checkpoints:
        return output
    one = fp32 if lora else 3 * fp32
    existing = (
        (checkpoint / "state.pt").stat().st_size if (checkpoint / "state.pt").is_file() else 0
    )
    return output + max(2 * one - existing, 0)


def check_checkpoint_folder(checkpoint: Path, key: str, out: Path) -> None:
    """``<out>.checkpoint`` holds only adapt's own checkpoint of this very run (it is removed
    once ΘD is written, so a user's folder of that name must not be taken for it)."""
    if not checkpoint.exists() and not checkpoint.is_symlink():
        return
    ours = {"state.pt", CHECKPOINT_INFO}
    names = (
        {p.name for p in checkpoint.iterdir() if not p.name.startswith(".")}
        if checkpoint.is_dir()
        else None
    )
    if checkpoint.is_symlink() or names is None or not names <= ours:
        raise ConfigError(
            f"{checkpoint}: exists and is not a checkpoint of `mergeir adapt` (which keeps its "
            f"resumable state for {out} there and removes it when done); move it away or choose "
            "another --out"
        )
    info = read_checkpoint_info(checkpoint)
    if info is not None and info.get("run_key") != key:
        raise ConfigError(
            f"{checkpoint}: a checkpoint of a run with other settings (step {info.get('step')}); "
            "delete it to start over, or rerun with those settings"
        )


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
    checkpoint_minutes: float = 2.0,
    where: str | None = None,
) -> dict[str, Any]:
    """Build ΘD in ``out``; checkpoints live in ``<out>.checkpoint`` until it is written.

    ``where`` is the YAML path of a registry ``adapt:`` block (messages then name its keys
    instead of CLI flags). Returns the card's facts; ``already_built`` when ``out`` holds a
    finished ΘD of the same run key (nothing is trained or written then).
    """
    base = Path(base)
    out = Path(out).expanduser()
    reporter = Reporter(show_progress)
    reporter.say(f"checking {base}, the corpus {corpus_spec} and {out}…")
    # 1. the base and the output path (cheap, before reading anything big)
    check_base_folder(base)
    weight_files(base)
    inputs = [(f"the base of {where}" if where else "--base", base)]
    local_corpus = corpus_path(corpus_spec)
    if local_corpus is not None:
        inputs.append((setting_name("corpus", where), local_corpus))
    check_path_names(out, ADAPT_OUTPUT.flag)
    check_not_an_input(out, inputs, ADAPT_OUTPUT)
    # 2. the settings against the base, and the corpus text
    tokenizer = load_tokenizer(base)
    config = load_config(base)
    objective = resolve_objective(base, settings, where, config)
    check_max_length(config, settings.max_length, base, where)
    corpus = load_corpus(corpus_spec, corpora, where)
    fp_cache = cache_root / "fingerprints" if cache_root is not None else None
    base_fp = folder_fingerprint(base, cache_dir=fp_cache)
    key = run_key(base_fp, corpus, objective, settings)
    # 3. the exact run already finished here: done, not an error
    card = finished_card(out)
    if card is not None and card.get("run_key") == key:
        return {**card, "already_built": True}
    # 4. the output folder and the checkpoint beside it
    checkpoint = out.with_name(out.name + ".checkpoint")
    checkpoints = bool(checkpoint_every or checkpoint_minutes)
    check_output(
        out,
        ADAPT_OUTPUT,
        inputs=inputs,
        overwrite=overwrite,
        needed_bytes=needed_bytes(base, settings, checkpoints, checkpoint),
    )
    check_checkpoint_folder(checkpoint, key, out)
    # 5. the work
    blocks = packed_blocks(
        corpus, tokenizer, base, objective, settings.max_length, cache_root, where, reporter
    )
    try:
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
            checkpoint_minutes=checkpoint_minutes,
            where=where,
            reporter=reporter,
        )
    except DivergedError:
        # its checkpoints are of a run that diverges (rerunning it diverges again), and a
        # run with a lower lr has another key: they can only be in the way
        shutil.rmtree(checkpoint, ignore_errors=True)
        raise
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
    _warn_if_rising(result.losses, result.head_warmup_steps, settings.lr, where)
    write_output(out, base, result, info, overwrite, warn, setting_name("lr", where))
    shutil.rmtree(checkpoint, ignore_errors=True)
    return {**info, "tokens_per_s": result.extra["tokens_per_s"], "seconds": result.seconds}


def _warn_if_rising(losses: list[float], head_steps: int, lr: float, where: str | None) -> None:
    """A finite but exploding loss (a too-high lr on a robust model) is worth a line: the
    first loss after any head warm-up is the model before the first full update."""
    curve = losses[head_steps:]
    if len(curve) < 10:
        return
    tail = max(len(curve) // 10, 3)
    first = curve[0]
    last = sum(curve[-tail:]) / tail
    if last > 2 * first and last > first + 1:
        warn(
            f"the loss rose from {first:.3g} to {last:.3g}: the run may have diverged; consider "
            f"a lower {setting_name('lr', where)} (now {lr:g})"
        )
