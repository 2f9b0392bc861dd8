"""The scorer plugin type and what every scorer shares: device, dtype, batching.

Scorers re-rank candidates. Each batch is cut from inputs sorted by length so a
batch holds texts of similar length (little padding); results are put back in the
caller's order. Inference runs under ``torch.inference_mode()``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mergekit_ir.errors import CheckpointError, MergeIRError
from mergekit_ir.params import Param
from mergekit_ir.ranking import Ranking

log = logging.getLogger(__name__)

_LOGGED_WARNINGS: set[str] = set()

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: The scoring dtypes a run, the registry's ``scoring.dtype`` and ``--dtype`` accept.
#: Ends every warning that ``--strict`` turns into a refusal (see ``Scorer.refuse_if_strict``).
STRICT_NOTE = "(--strict refuses it)"

DTYPES: tuple[str, ...] = ("auto", *_DTYPES)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; asking for an absent one is an error."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise MergeIRError(f"--device {device!r}: not a device; use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MergeIRError(
            f"--device {device}: CUDA is not available on this machine; use --device auto or cpu"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise MergeIRError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
            "use cuda:0 … or --device auto"
        )
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise MergeIRError(f"--device {device}: MPS is not available; use --device auto or cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on CUDA (fp16 where bf16 is unsupported) and fp32 elsewhere."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise MergeIRError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}") from None


@dataclass
class ScoringSettings:
    """Run-wide settings every scorer honours."""

    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 32
    show_progress: bool = True
    strict: bool = (
        False  # refuse what would otherwise be a warning (e.g. a randomly initialised head)
    )

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype, self.torch_device)


@dataclass
class TruncationStats:
    """How many inputs were cut to a token limit (reported, not silent).

    ``texts``/``truncated`` count over every field; ``fields`` keeps the same two
    numbers per field (e.g. ``queries``, ``documents``), since scorers truncate
    each field to its own limit.
    """

    texts: int = 0
    truncated: int = 0
    fields: dict[str, list[int]] = field(default_factory=dict)

    def add(self, lengths: Sequence[int], limit: int | None, name: str = "text") -> None:
        """Count texts of these token ``lengths`` against ``limit`` (None: no limit)."""
        self.record([limit is not None and n > limit for n in lengths], name)

    def record(self, flags: Sequence[bool], name: str = "text") -> None:
        """Count one text per flag; a true flag is a truncated text."""
        n, cut = len(flags), sum(1 for f in flags if f)
        self.texts += n
        self.truncated += cut
        counts = self.fields.setdefault(name, [0, 0])
        counts[0] += n
        counts[1] += cut

    def summary(self) -> str:
        """E.g. ``documents 12/300 truncated, queries 0/300 truncated``."""
        return ", ".join(f"{name} {cut}/{n} truncated" for name, (n, cut) in self.fields.items())


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Index batches over inputs sorted longest first (stable, so deterministic)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def padding_waste(lengths: Sequence[int], batch_size: int, sort: bool = True) -> float:
    """Fraction of pad tokens a batching scheme would feed the model."""
    if not lengths:
        return 0.0
    batches = (
        length_sorted_batches(lengths, batch_size)
        if sort
        else (
            list(range(i, min(i + batch_size, len(lengths))))
            for i in range(0, len(lengths), batch_size)
        )
    )
    real = padded = 0
    for b in batches:
        longest = max(lengths[i] for i in b)
        real += sum(lengths[i] for i in b)
        padded += longest * len(b)
    return 1 - real / padded if padded else 0.0


def _stderr_is_tty() -> bool:
    import sys

    return bool(getattr(sys.stderr, "isatty", lambda: False)())


#: How often a pass speaks in a log (non-TTY stderr): a line at least this often.
LOG_EVERY_S = 30.0


class LogLines:
    """A file for tqdm that turns its carriage-return redraws into whole lines on stderr."""

    def write(self, text: str) -> None:
        import sys

        for part in text.replace("\r", "\n").split("\n"):
            if part.strip():
                sys.stderr.write(part.strip() + "\n")

    def flush(self) -> None:
        import sys

        sys.stderr.flush()


class Scorer(ABC):
    """A loaded re-ranking model.

    Subclasses implement :meth:`score_pairs` (or override :meth:`rerank` when they
    can share work across pairs, as a bi-encoder does). ``model`` is the torch
    module whose parameters the α sweep updates in place.
    """

    model: torch.nn.Module
    settings: ScoringSettings
    #: what a pass's cost grows with: ``"pair"`` (every query–document pair runs the model) or
    #: ``"document"`` (documents are encoded once per pass, as a bi-encoder or SPLADE does);
    #: ``mergeir run --dry-run --estimate`` prices passes in this unit
    cost_unit: str = "pair"

    def __init__(self, settings: ScoringSettings) -> None:
        self.settings = settings
        self.device = settings.torch_device
        self.dtype = settings.torch_dtype
        self.truncation = TruncationStats()
        self.warnings: list[str] = []  # for the run's report notes; each is also logged
        self.newly_initialised: list[str] = []  # weights the checkpoint lacked (random init)
        #: what the current pass is (e.g. ``pass 3/15 · ΘD · scifact:test``); see :meth:`labelled`
        self.pass_label = ""

    @contextmanager
    def labelled(self, label: str) -> Iterator[None]:
        """Progress bars inside the block carry ``label`` (the runner's pass counter); the
        label is the scorer's own state, back to what it was after the block."""
        before, self.pass_label = self.pass_label, label
        try:
            yield
        finally:
            self.pass_label = before

    def refuse_if_strict(self, message: str, fix: str) -> None:
        """A problem ``--strict`` refuses and a normal run reports (a random head): raise, or
        record it marked with :data:`STRICT_NOTE`, so that a warm run, which reads the note
        from the cache instead of loading the model, refuses it under ``--strict`` too."""
        if self.settings.strict:
            raise CheckpointError(f"{message}; refusing under --strict ({fix})")
        self.warn(f"{message}; {fix} {STRICT_NOTE}")

    def warn(self, message: str) -> None:
        """Record a warning for the report notes; log it once per process (INFO on repeats)."""
        if message not in self.warnings:
            self.warnings.append(message)
        first = message not in _LOGGED_WARNINGS
        _LOGGED_WARNINGS.add(message)
        log.log(logging.WARNING if first else logging.INFO, "%s", message)

    @abstractmethod
    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """One relevance score per (query, document) pair."""

    def rerank(
        self, queries: Mapping[str, str], candidates: Ranking, docs: Mapping[str, str]
    ) -> Ranking:
        """Score every candidate of every query; returns a run over the same pairs."""
        keys = [(qid, did) for qid in sorted(candidates) for did in sorted(candidates[qid])]
        pairs = [(queries[qid], docs[did]) for qid, did in keys]
        scores = self.score_pairs(pairs)
        run: Ranking = {}
        for (qid, did), s in zip(keys, scores, strict=True):
            run.setdefault(qid, {})[did] = float(s)
        return run

    def progress(self, total: int, desc: str, unit: str = "pair") -> tqdm:
        """A bar labelled with the pass it belongs to; off under ``-q``. When stderr is not a
        terminal (a log), a pass longer than :data:`LOG_EVERY_S` seconds writes a plain line
        (done/total, rate, ETA) every :data:`LOG_EVERY_S` seconds — a long pass never goes
        silent, a short one adds nothing to the runner's one line per pass, and a log never
        fills with redraws."""
        label = f"{self.pass_label} · {desc}" if self.pass_label else desc
        if not self.settings.show_progress:
            return tqdm(total=total, disable=True)
        if _stderr_is_tty():
            return tqdm(total=total, desc=label, unit=unit, leave=False, dynamic_ncols=True)
        return tqdm(
            total=total,
            desc=label,
            unit=unit,
            file=LogLines(),
            delay=LOG_EVERY_S,
            mininterval=LOG_EVERY_S,
            maxinterval=LOG_EVERY_S,
            leave=False,
            bar_format="{desc}: {n_fmt}/{total_fmt} {unit}s, {rate_fmt}, ETA {remaining}",
        )

    def load_pretrained(
        self, auto_class: Any, path: Path, *, report_missing: bool = False, **kwargs: Any
    ) -> torch.nn.Module:
        """``auto_class.from_pretrained`` in the run's dtype, on the run's device, in eval mode.

        Weights load straight into ``self.dtype`` (a bf16 7B model is never
        materialised in fp32) and, on CUDA, straight onto the GPU. SDPA attention
        is asked for and dropped for architectures that do not support it. With
        ``report_missing``, the weights transformers had to initialise randomly are
        kept in ``self.newly_initialised``.
        """
        kwargs = {"dtype": self.dtype, **kwargs}
        if report_missing:
            kwargs["output_loading_info"] = True
        if self.device.type == "cuda":
            kwargs.setdefault("device_map", str(self.device))
        try:
            model = auto_class.from_pretrained(path, attn_implementation="sdpa", **kwargs)
        except (ValueError, ImportError) as exc:
            log.info("%s: SDPA attention unavailable (%s); using the default", path, exc)
            model = auto_class.from_pretrained(path, **kwargs)
        if report_missing:
            model, info = model
            self.newly_initialised = sorted(info.get("missing_keys") or ())
        if self.device.type != "cuda":
            model.to(self.device)
        return model.eval()

    def warn_empty(self, texts: Sequence[str], what: str) -> None:
        """Empty texts are scored as they are (the prompt or special tokens alone); say so."""
        n = sum(1 for t in texts if not t or not t.strip())
        if n:
            log.warning("%d empty %s: scored as empty text", n, what)

    def log_truncation(self) -> None:
        """Warn on the first pass that truncates; later passes (a sweep has dozens) log at INFO."""
        if not self.truncation.truncated:
            return
        first = not getattr(self, "_truncation_warned", False)
        self._truncation_warned = True
        log.log(
            logging.WARNING if first else logging.INFO,
            "%s: %s (so far%s)",
            type(self).__name__,
            self.truncation.summary(),
            "; later passes are logged at INFO level" if first else "",
        )


@dataclass(frozen=True)
class ScorerKind:
    """A named scorer architecture.

    ``load(path, options, settings)`` reads a checkpoint folder and returns a
    :class:`Scorer`; ``options`` are the triplet's scorer options, already
    validated against ``params``. ``check(path)`` may raise a one-line error when
    the folder is not of this architecture, before anything heavy is loaded.

    ``caveat(path)`` (cheap: configs only) names what would make this folder's scores
    meaningless without making it unloadable — e.g. a cross-encoder folder without a trained
    classification head. The dry run and the run apply it the same way: ΘT with a caveat is
    refused up front (the IR model must be one), Θ0/ΘD rows are reported with it, and
    ``--strict`` refuses them too.
    """

    name: str
    description: str
    load: Callable[[Path, Mapping[str, Any], ScoringSettings], Scorer]
    params: tuple[Param, ...] = ()
    check: Callable[[Path], None] | None = None
    caveat: Callable[[Path], str | None] | None = None
