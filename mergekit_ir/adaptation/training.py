"""Continued pre-training of a base checkpoint: a plain torch loop.

Why not ``transformers.Trainer``: resuming it bit-identically needs its own checkpoint layout,
RNG bookkeeping and data-loader state, and its per-step overhead shows on tiny CPU models.
Here every step's randomness (data order, masking, dropout) is a function of (seed, step), so
a checkpoint holds model, optimizer, scheduler and step — and a resumed run on CPU ends with
exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mergekit_ir.adaptation.naming import setting_name, setting_text
from mergekit_ir.adaptation.objectives import sentinel_ids, span_corruption
from mergekit_ir.adaptation.progress import Reporter, duration, is_tty, now, warn
from mergekit_ir.errors import CheckpointError, ConfigError, MergeIRError
from mergekit_ir.scoring.mlm_head import encoder_of, mlm_head

log = logging.getLogger(__name__)

#: Beside ``state.pt`` in a checkpoint folder: its run key and step, readable before any work.
CHECKPOINT_INFO = "run.json"


class DivergedError(MergeIRError):
    """The loss (or gradient) became NaN/inf: training stopped, nothing written."""


@dataclass(frozen=True)
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """``r=16,alpha=32,targets=query,value`` (a bare word continues the previous list)."""
        values: dict[str, Any] = {}
        key = None
        for item in (s.strip() for s in text.split(",") if s.strip()):
            if "=" in item:
                key, _, value = item.partition("=")
                key = key.strip()
                if key not in ("r", "alpha", "dropout", "targets"):
                    raise ConfigError(
                        f"--lora {text}: unknown key {key!r} (use r, alpha, dropout, targets)"
                    )
                values[key] = [value.strip()] if key == "targets" else value.strip()
            elif key == "targets":
                values["targets"].append(item)
            else:
                raise ConfigError(f"--lora {text}: {item!r} is not key=value")
        try:
            return cls(
                r=int(values.get("r", 16)),
                alpha=int(values.get("alpha", 2 * int(values.get("r", 16)))),
                dropout=float(values.get("dropout", 0.0)),
                targets=tuple(values["targets"]) if "targets" in values else None,
            )
        except ValueError as exc:
            raise ConfigError(f"--lora {text}: {exc}") from None


@dataclass(frozen=True)
class AdaptSettings:
    """Everything that decides the result (the cache key and the model card are made of it)."""

    objective: str = "auto"
    steps: int | None = None
    epochs: float | None = None
    max_length: int = 256
    batch_size: int = 32
    lr: float = 5e-5
    warmup: float = 0.06  # < 1: a fraction of the steps; else a number of steps
    weight_decay: float = 0.01
    seed: int = 0
    mlm_probability: float = 0.15
    head_warmup: int = 100  # steps with the encoder frozen when the MLM head is fresh
    freeze_head: bool = False
    lora: LoraSpec | None = None

    def key(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    model: torch.nn.Module
    objective: str
    steps: int
    head_warmup_steps: int
    tokens_seen: int
    losses: list[float]
    fresh_head: list[str]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


_AUTO = {
    "mlm": "AutoModelForMaskedLM",
    "span": "AutoModelForSeq2SeqLM",
    "clm": "AutoModelForCausalLM",
}


def load_for_objective(base: Path, objective: str) -> tuple[torch.nn.Module, list[str]]:
    """The base with its objective's head; names of weights the checkpoint lacked (a fresh head)."""
    import transformers

    cls = getattr(transformers, _AUTO[objective])
    try:
        model, info = cls.from_pretrained(base, output_loading_info=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{base}: cannot load as {cls.__name__} ({exc})") from None
    return model, sorted(info.get("missing_keys") or ())


def head_parameters(model: torch.nn.Module) -> list[str]:
    """Trainable parameter names outside the base (encoder/decoder) model: the LM head."""
    base = model.base_model
    if base is not model:
        inside = {id(p) for p in base.parameters()}
        return [n for n, p in model.named_parameters() if id(p) not in inside]
    out = model.get_output_embeddings()
    ids = {id(p) for p in out.parameters()} if out is not None else set()
    shared = {id(p) for p in model.get_input_embeddings().parameters()}
    return [n for n, p in model.named_parameters() if id(p) in ids and id(p) not in shared]


def apply_lora(
    model: torch.nn.Module, spec: LoraSpec, where: str, flag: str = "--lora"
) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    if spec.targets:
        leaves = {
            n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
        }
        missing = [
            t
            for t in spec.targets
            if t not in leaves and not any(n == t for n, _ in model.named_modules())
        ]
        if missing:
            raise ConfigError(
                f"{flag}: LoRA targets {', '.join(missing)} match no module of the base "
                f"({where}); linear modules: {', '.join(sorted(leaves))}"
            )
    cfg = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.targets) if spec.targets else None,
        bias="none",
    )
    try:
        return get_peft_model(model, cfg)
    except ValueError as exc:
        raise ConfigError(f"{flag} ({where}): {exc}; give targets=… explicitly") from None


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % (2**63)


class Batches:
    """The blocks of step ``s``: a fresh permutation per epoch, both functions of the seed."""

    def __init__(self, n_blocks: int, batch_size: int, seed: int):
        self.n, self.bs, self.seed = n_blocks, min(batch_size, n_blocks), seed
        self.per_epoch = max(n_blocks // self.bs, 1)
        self._perm: tuple[int, torch.Tensor] | None = None

    def indices(self, step: int) -> torch.Tensor:
        epoch, b = divmod(step, self.per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1000 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=gen))
        return self._perm[1][b * self.bs : (b + 1) * self.bs]


def make_batch(
    objective: str,
    ids: torch.Tensor,
    tokenizer: Any,
    settings: AdaptSettings,
    step: int,
    collator: Any,
) -> dict[str, torch.Tensor]:
    if objective == "clm":
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    if objective == "mlm":
        return dict(collator([{"input_ids": row} for row in ids.tolist()]))
    rng = random.Random(_step_seed(settings.seed, step))
    pairs = [
        span_corruption(row, collator["sentinels"], collator["eos"], rng) for row in ids.tolist()
    ]
    pad = tokenizer.pad_token_id or 0
    width_in = max(len(a) for a, _ in pairs)
    width_out = max(len(b) for _, b in pairs)
    inp = torch.full((len(pairs), width_in), pad, dtype=torch.long)
    lab = torch.full((len(pairs), width_out), -100, dtype=torch.long)
    for i, (a, b) in enumerate(pairs):
        inp[i, : len(a)] = torch.tensor(a)
        lab[i, : len(b)] = torch.tensor(b)
    return {"input_ids": inp, "attention_mask": (inp != pad).long(), "labels": lab}


def masked_lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The masked-LM loss with the vocabulary head run on the masked positions only.

    The same cross-entropy transformers' ``*ForMaskedLM`` computes (mean over positions whose
    label is not -100), without logits for the ~85 % of positions it ignores; the head has no
    dropout, so the random stream is the same too. Heads under unknown names take the model's
    own loss.
    """
    head = mlm_head(model)
    if head is None:
        return model(**batch).loss
    labels = batch["labels"]
    hidden = encoder_of(model)(**{k: v for k, v in batch.items() if k != "labels"})
    hidden = hidden.last_hidden_state
    picked = labels != -100
    if not bool(picked.any()):  # nothing masked in this batch: no signal (not NaN)
        return hidden.sum() * 0.0
    logits = head(hidden[picked])
    return torch.nn.functional.cross_entropy(logits.float(), labels[picked])


def _lr_lambda(warmup: int, total: int, head_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < head_steps:
            return 1.0
        s = step - head_steps
        if s < warmup:
            return (s + 1) / warmup
        return max(0.0, (total - s) / max(total - warmup, 1))

    return f


def read_checkpoint_info(checkpoint: Path) -> dict[str, Any] | None:
    """The run key and step of the checkpoint in ``checkpoint`` (None: none, or unreadable)."""
    try:
        info = json.loads((checkpoint / CHECKPOINT_INFO).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def train_steps(settings: AdaptSettings, n_blocks: int) -> int:
    """Optimizer steps after any head warm-up: ``steps``, or ``epochs`` passes over the blocks."""
    if settings.steps is not None:
        return settings.steps
    per_epoch = Batches(n_blocks, settings.batch_size, settings.seed).per_epoch
    return max(math.ceil((settings.epochs or 1.0) * per_epoch), 1)


def _step_line(step: int, total: int, loss: float, tokens: float, done: int, elapsed: float) -> str:
    rate = done / max(elapsed, 1e-9)
    eta = (total - step) / rate if rate > 0 else 0.0
    return (
        f"adapt step {step}/{total} · loss {loss:.3f} · {tokens / max(elapsed, 1e-9):.0f} "
        f"tokens/s · {rate:.2f} steps/s · ETA {duration(eta)}"
    )


def train(
    base: Path,
    blocks: torch.Tensor,
    tokenizer: Any,
    objective: str,
    settings: AdaptSettings,
    device: torch.device,
    checkpoint: Path | None = None,
    checkpoint_every: int = 0,
    run_key: str = "",
    show_progress: bool = True,
    stop_after: int | None = None,
    checkpoint_minutes: float = 0.0,
    where: str | None = None,
    reporter: Reporter | None = None,
) -> TrainResult:
    """Run (or resume from ``checkpoint``) the adaptation; ``stop_after`` ends early, as a kill would.

    A checkpoint is saved every ``checkpoint_every`` steps and whenever ``checkpoint_minutes``
    passed since the last one. A NaN/inf loss or gradient stops the run (:class:`DivergedError`)
    before the weights it would poison are saved. ``where`` is the YAML path of a registry
    ``adapt:`` block (messages then name its keys instead of CLI flags).
    """
    label = f"adapt {base}"
    reporter = reporter or Reporter(show_progress)
    reporter.say(f"loading {base} for {_AUTO[objective].removeprefix('AutoModelFor')}…")
    torch.manual_seed(settings.seed)
    model, missing = load_for_objective(base, objective)
    head = set(head_parameters(model))
    fresh_head = sorted(
        n for n in missing if n in head or n.startswith(("cls.", "lm_head", "vocab_"))
    )
    steps = train_steps(settings, len(blocks))
    head_steps = settings.head_warmup if fresh_head else 0
    if fresh_head and settings.freeze_head:
        raise ConfigError(
            f"{setting_name('freeze_head', where)}: {base} has no {objective.upper()} head "
            f"(a fresh one is made: {fresh_head[0]}…), and a frozen random head teaches the "
            f"model nothing; drop {setting_name('freeze_head', where)} for this base"
        )
    if head_steps > steps:
        # The warm-up is a guard for the encoder, not the run itself: a 10-step run does not
        # get 100 steps of head training on top. Capped, and said so.
        warn(
            f"{base} has no {objective.upper()} head: the fresh head warms up for {steps} steps "
            f"({setting_text('head_warmup', settings.head_warmup, where)} capped at the "
            f"{steps} training steps)"
        )
        head_steps = steps
    if settings.lora is not None:
        model = apply_lora(model, settings.lora, label, setting_name("lora", where))
        prefix = "base_model.model."
        head = {prefix + n for n in head}
        if fresh_head:
            for n, p in model.named_parameters():
                if n in head:
                    p.requires_grad_(True)
    model.to(device).train()
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    if settings.freeze_head:
        trainable -= head

    batches = Batches(len(blocks), settings.batch_size, settings.seed)
    warmup = int(settings.warmup * steps) if settings.warmup < 1 else int(settings.warmup)
    total = head_steps + steps
    # The fused kernel (as Trainer's default adamw_torch_fused): one pass over all parameters.
    opt = torch.optim.AdamW(
        [params[n] for n in sorted(trainable)],
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(warmup, steps, head_steps))
    collator: Any = None
    if objective == "mlm":
        from transformers import DataCollatorForLanguageModeling

        if tokenizer.mask_token_id is None:
            raise ConfigError(f"{label}: the tokenizer has no mask token; masked LM needs one")
        collator = DataCollatorForLanguageModeling(
            tokenizer, mlm=True, mlm_probability=settings.mlm_probability, return_tensors="pt"
        )
    elif objective == "span":
        collator = {"sentinels": sentinel_ids(tokenizer, label), "eos": tokenizer.eos_token_id}

    step, tokens_seen, losses = 0, 0, []
    if checkpoint is not None and (checkpoint / "state.pt").is_file():
        state = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=False)
        if state.get("run_key") != run_key:
            raise ConfigError(
                f"{checkpoint}: a checkpoint of a run with other settings; delete it or rerun with them"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, tokens_seen, losses = state["step"], state["tokens"], state["losses"]
        log.info("resuming %s from step %d", label, step)
        reporter.say(f"resuming from the checkpoint at step {step}/{total}")

    def set_phase(s: int) -> None:
        warm = s < head_steps
        for n, p in params.items():
            p.requires_grad_(n in trainable and (not warm or n in head))

    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and torch.cuda.is_bf16_supported()
        else torch.autocast("cpu", enabled=False)
    )
    phases = (
        f"{head_steps} head warm-up (only the fresh head trains) + {steps}" if head_steps else ""
    )
    reporter.say(f"training {phases or total} steps on {device}…")
    start = now()
    last_checkpoint = start
    first_step = step
    done_tokens = 0
    # A bar on a terminal; in a log (stderr not a TTY) a line every tenth of the run, and at
    # least every LOG_INTERVAL_S seconds, instead of one redraw per step.
    tty = is_tty()
    log_every = max(1, total // 10) if show_progress and not tty else 0
    bar = tqdm(
        total=total,
        initial=step,
        desc="adapt",
        unit="step",
        disable=not show_progress or not tty,
        dynamic_ncols=True,
    )
    lr_flag = setting_name("lr", where)
    try:
        while step < total:
            if stop_after is not None and step >= stop_after:
                break
            set_phase(step)
            torch.manual_seed(_step_seed(settings.seed, step))
            ids = blocks[batches.indices(step)]
            batch = {
                k: v.to(device)
                for k, v in make_batch(objective, ids, tokenizer, settings, step, collator).items()
            }
            with autocast:
                loss = masked_lm_loss(model, batch) if objective == "mlm" else model(**batch).loss
            value = loss.item()
            if not math.isfinite(value) and step == 0:
                raise DivergedError(
                    f"{label}: the loss is {value} on the first batch, before any update: the "
                    "base itself gives NaN/inf (check its weights, or its dtype); nothing written"
                )
            if not math.isfinite(value):
                raise DivergedError(
                    f"{label}: the loss is {value} at step {step + 1}/{total}: training "
                    f"diverged; lower {lr_flag} (now {settings.lr:g}); nothing written"
                )
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(
                [p for p in params.values() if p.requires_grad], 1.0
            )
            if not math.isfinite(float(norm)):
                raise DivergedError(
                    f"{label}: the gradient is {float(norm)} at step {step + 1}/{total} "
                    f"(loss {value:.4g}): training diverged; lower {lr_flag} "
                    f"(now {settings.lr:g}); nothing written"
                )
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            n_tok = int(batch["attention_mask"].sum())
            tokens_seen += n_tok
            done_tokens += n_tok
            losses.append(value)
            t = now()
            elapsed = t - start
            bar.set_postfix(loss=f"{value:.3f}", tok_s=f"{done_tokens / max(elapsed, 1e-9):.0f}")
            bar.update(1)
            if log_every and (step % log_every == 0 or step == total or reporter.due()):
                reporter.line(
                    _step_line(step, total, value, done_tokens, step - first_step, elapsed)
                )
            if (
                checkpoint is not None
                and step < total
                and (
                    (checkpoint_every and step % checkpoint_every == 0)
                    or (checkpoint_minutes and t - last_checkpoint >= checkpoint_minutes * 60)
                )
            ):
                _save_state(checkpoint, model, opt, sched, step, tokens_seen, losses, run_key)
                last_checkpoint = now()
    finally:
        bar.close()
    model.eval()
    seconds = now() - start
    return TrainResult(
        model=model,
        objective=objective,
        steps=step,
        head_warmup_steps=head_steps,
        tokens_seen=tokens_seen,
        losses=losses,
        fresh_head=fresh_head,
        seconds=seconds,
        extra={"total_steps": total, "tokens_per_s": done_tokens / max(seconds, 1e-9)},
    )


def _save_state(folder: Path, model, opt, sched, step, tokens, losses, run_key) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".state.{os.getpid()}.tmp"
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "step": step,
            "tokens": tokens,
            "losses": losses,
            "run_key": run_key,
            "torch_rng": torch.get_rng_state(),
        },
        tmp,
    )
    os.replace(tmp, folder / "state.pt")
    info = folder / f".{CHECKPOINT_INFO}.{os.getpid()}.tmp"
    info.write_text(json.dumps({"run_key": run_key, "step": step}))
    os.replace(info, folder / CHECKPOINT_INFO)
