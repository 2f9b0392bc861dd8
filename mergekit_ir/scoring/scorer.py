"""The scorer plugin type and what every scorer shares: device, dtype, batching.

Scorers re-rank candidates. Each batch is cut from inputs sorted by length so a
batch holds texts of similar length (little padding); results are put back in the
caller's order. Inference runs under ``torch.inference_mode()``.
"""

from __future__ import annotations

import functools
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mergekit_ir.errors import CheckpointError, MergeIRError
from mergekit_ir.params import Param
from mergekit_ir.ranking import Ranking
from mergekit_ir.scoring import calibration, compiled
from mergekit_ir.scoring.compiled import COMPILED

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


#: ``MERGEIR_CPU_BF16=1`` makes ``--dtype auto`` use bf16 (calibrated) on any CPU, ``0`` never;
#: unset, :data:`AUTO_CPU_BF16` decides on a CPU with bf16 hardware.
CPU_BF16_ENV = "MERGEIR_CPU_BF16"

#: Whether ``--dtype auto`` picks bf16 by itself on a CPU with bf16 hardware
#: (:func:`cpu_has_bf16_hardware`). Off: bf16 was to become the default only if it moved NDCG@10
#: by at most 0.002 against fp32 on SciFact (BM25 top-20 re-ranked), and splade-tiny moved it
#: by +0.0029 over 100 test queries (``benchmarks/scoring_speed.py``; docs/performance.md,
#: "bf16 on CPU"). The calibration keeps each model's ranking, not its NDCG to 0.002.
AUTO_CPU_BF16 = False

#: /proc/cpuinfo flags of bf16 arithmetic in hardware (AVX-512 BF16 dot products, AMX tiles).
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def _cpuinfo_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16_hardware() -> bool:
    """Whether bf16 matmuls on this CPU run on bf16 hardware (AVX-512 BF16 or AMX) through
    oneDNN — then bf16 is faster than fp32; elsewhere torch emulates it, several times slower.

    ``/proc/cpuinfo`` flag ``avx512_bf16`` or ``amx_bf16``, and torch built with oneDNN and
    running its AVX-512 kernels (``torch.backends.cpu.get_cpu_capability()``).
    """
    if not torch.backends.mkldnn.is_available():
        return False
    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    if not capability.startswith("AVX512"):  # e.g. AVX2: no AVX-512 kernels (or forced off)
        return False
    return any(flag in _cpuinfo_flags() for flag in _BF16_FLAGS)


def cpu_auto_bf16() -> bool:
    """Whether ``--dtype auto`` is bf16 on this CPU: ``MERGEIR_CPU_BF16`` if set, else
    :data:`AUTO_CPU_BF16` on bf16 hardware."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    return AUTO_CPU_BF16 and cpu_has_bf16_hardware()


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on CUDA (fp16 where bf16 is unsupported); on a CPU, bf16 where
    :func:`cpu_auto_bf16` says so (checked against fp32 per model, see
    :mod:`mergekit_ir.scoring.calibration`), else fp32."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_auto_bf16():
            return torch.bfloat16
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
    #: torch, a compiled backend (onnx, onnx-int8, openvino, openvino-int8) or auto: each
    #: scorer's :attr:`Scorer.auto_backend` where it pays (:mod:`mergekit_ir.scoring.compiled`)
    backend: str = "auto"
    #: where compiled models are cached (``<cache>/compiled/``); None: the default cache
    cache_dir: Path | None = None

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype, self.torch_device)

    @property
    def calibrates(self) -> bool:
        """``--dtype auto`` chose bf16 on a CPU: every model state is checked against fp32 on a
        sample first and scored in fp32 where bf16 ranks it differently (the
        :data:`~mergekit_ir.scoring.calibration.RULE`). An explicit ``--dtype bf16`` is not."""
        return (
            self.dtype == "auto"
            and self.torch_device.type == "cpu"
            and self.torch_dtype == torch.bfloat16
        )

    def check_backend(self, where: str = "--backend") -> None:
        """A one-line refusal, before any work, of a backend that cannot run here: an unknown
        name, or an explicit compiled one off the CPU, on a non-fp32 model or without its
        packages. (``auto`` never refuses: it is torch wherever a compiled backend cannot run.)"""
        compiled.check_backend(self.backend, where)
        if self.backend not in COMPILED:
            return
        if self.torch_device.type != "cpu":
            raise MergeIRError(
                f"{where} {self.backend}: compiled backends run on the CPU, not "
                f"{self.torch_device.type}; use --device cpu, or --backend torch / auto"
            )
        if self.torch_dtype != torch.float32:
            name = str(self.torch_dtype).removeprefix("torch.")
            raise MergeIRError(
                f"{where} {self.backend}: exports fp32 weights, but the scoring dtype is {name}; "
                "use --dtype fp32 (or --backend torch for bf16/fp16)"
            )
        compiled.require_backend(self.backend, where)

    def resolved_backend(self, auto_backend: str = "torch") -> tuple[str, bool]:
        """(the backend a scorer whose ``auto`` choice is ``auto_backend`` runs, whether it was
        asked for explicitly). ``auto`` is that choice on the CPU in fp32 with its packages
        installed, torch elsewhere; an explicit compiled backend compiles every model state,
        ``auto`` only where it pays (:func:`mergekit_ir.scoring.compiled.pays`)."""
        if self.backend != "auto":
            return self.backend, True
        if (
            auto_backend in COMPILED
            and self.torch_device.type == "cpu"
            and self.torch_dtype == torch.float32
            and not compiled.missing_packages(auto_backend)
        ):
            return auto_backend, False
        return "torch", False

    def backend_identity(self, auto_backend: str = "torch") -> str | None:
        """The backend as a run's cache key names it; None for torch (the key stays what it was
        before compiled backends). A compiled run may hold torch scores (a state that did not
        pay, or failed the first-batch check), so it is its own entry: ``onnx-int8`` never
        answers ``onnx`` (fp32) or torch, and no explicit backend answers ``auto``."""
        backend, explicit = self.resolved_backend(auto_backend)
        if backend == "torch":
            return None
        how = "" if explicit else f"auto≥{compiled.EXPORT_COST.min_items}:"
        return f"{how}{backend}+torch-fallback({compiled.RULE.identity})"

    @property
    def dtype_identity(self) -> str:
        """The resolved dtype as a cache key names it. A calibrated ``auto`` run is its own
        entry (``bfloat16+fp32-fallback…``): it may hold fp32 scores of a model that failed
        calibration, so it answers neither an explicit bf16 nor an fp32 run, and neither of
        those answers it."""
        name = str(self.torch_dtype).removeprefix("torch.")
        if self.calibrates:
            return f"{name}+fp32-fallback({calibration.RULE.identity})"
        return name


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
    #: what ``--backend auto`` runs this scorer with on a CPU in fp32, where it pays: ``torch``
    #: or a compiled backend measured faster *and* faithful for it (docs/performance.md)
    auto_backend: str = "torch"
    #: whether ``--backend openvino`` converts this scorer's graph from the torch program
    #: (OpenVINO's PyTorch frontend: attention stays one fused operation) rather than from its
    #: ONNX export; true where measured faster: the bi- and cross-encoder (1.17× / 1.24× on
    #: MiniLM). Not SPLADE (0.93×: its graph is dominated by the vocabulary head), T5 (the
    #: conversion fails) or a Llama (non-finite scores through it); docs/performance.md
    openvino_from_torch: bool = False

    def __new__(cls, *args: Any, **kwargs: Any) -> Scorer:
        # What built this scorer, and the RNG state it was built under (the runner seeds it
        # right before): the calibration builds the same scorer in fp32 from it, with the same
        # random initialisation of weights its checkpoint lacks.
        self = super().__new__(cls)
        self._built_with = (args, kwargs, torch.random.get_rng_state())
        return self

    def __init__(self, settings: ScoringSettings) -> None:
        self.settings = settings
        self.device = settings.torch_device
        self.dtype = settings.torch_dtype
        self.truncation = TruncationStats()
        self.warnings: list[str] = []  # for the run's report notes; each is also logged
        self.newly_initialised: list[str] = []  # weights the checkpoint lacked (random init)
        #: what the current pass is (e.g. ``pass 3/15 · ΘD · scifact:test``); see :meth:`labelled`
        self.pass_label = ""
        #: calibration outcome per weight state (:mod:`mergekit_ir.scoring.calibration`)
        self.calibrations: dict[str, calibration.CalibrationResult] = {}
        self._fp32_twin: tuple[str, Scorer] | None = None  # (state, the fp32 scorer of it)
        self._in_call = False
        #: items (texts or pairs, as :attr:`cost_unit` says) of the pass being scored
        self._pass_items: int | None = None
        #: compiled graphs of the current weight state: (state, graph) -> CompiledForward
        self._compiled: dict[tuple[str, str], compiled.CompiledForward] = {}

    # -- precision: --dtype auto on a bf16 CPU ----------------------------------------------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's own ``rerank`` / ``score_pairs`` go through :meth:`_scorer_for_call`."""
        super().__init_subclass__(**kwargs)
        for name in ("rerank", "score_pairs"):
            fn = cls.__dict__.get(name)
            if callable(fn) and not getattr(fn, "_precision_checked", False):
                setattr(cls, name, _precision_checked(fn))

    # -- compiled backends: --backend onnx|openvino|auto ------------------------------------

    def backend_forward(
        self,
        method: str,
        *,
        graph: str | None = None,
        config: Mapping[str, Any] | None = None,
        items: int | None = None,
    ) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        """The function a pass feeds its batches: ``getattr(self, method)`` under torch, else
        the same computation compiled (:class:`~mergekit_ir.scoring.compiled.CompiledForward`)
        for the weights the model holds now.

        ``graph`` names the method exported when it is not ``method`` itself (an equivalent
        that torch.export can trace); ``config`` is everything besides the weights that the
        graph depends on (pooling, label…), part of the compiled model's cache key; ``items``
        is this call's size, when it is not called within a ``rerank``/``score_pairs`` pass.
        """
        torch_fn = getattr(self, method)
        backend, explicit = self.settings.resolved_backend(self.auto_backend)
        if backend == "torch":
            return torch_fn
        state = self.weight_state()
        key = (state, graph or method)
        for other in [k for k in self._compiled if k[0] != state]:
            del self._compiled[other]  # one state's compiled models at a time
        found = self._compiled.get(key)
        if found is not None and found.used != "torch":
            return found
        fwd = compiled.CompiledForward(
            self,
            graph or method,
            torch_fn,
            config or {},
            backend,
            compiled.compiled_root(self.settings.cache_dir),
            self.warn,
            self.describe(state),
            explicit=explicit,
            items=self._pass_items if self._pass_items is not None else items,
        )
        if found is not None:  # the same weights: keep their digest
            fwd.reuse_keys(found)
        self._compiled[key] = fwd
        return fwd

    def weight_state(self) -> str:
        """Which weights :attr:`model` holds: ``"ir"`` as loaded, else the in-place sweep's
        point (see :func:`mergekit_ir.scoring.calibration.register_weight_state`)."""
        provider = calibration.weight_state(getattr(self, "model", None))
        token = provider.state_token() if provider is not None else calibration.LOADED
        return token if token == calibration.LOADED else f"{id(provider)}:{token}"

    def _scorer_for_call(self, name: str, args: tuple, kwargs: dict) -> Scorer:
        """The scorer that answers this call: ``self``, or — where the current weights failed
        calibration — the same model in fp32. Calibrates the state on its first call."""
        if not getattr(self, "settings", None) or not self.settings.calibrates:
            return self
        state = self.weight_state()
        result = self.calibrations.get(state)
        if result is None:
            groups = _calibration_sample(name, args, kwargs)
            if not groups:  # too few pairs to compare: decide on a later call
                return self
            result = self.calibrate(groups, state)
        if result.passed:
            return self
        twin = self._twin_for(state)
        return self if twin is None else twin

    def _twin_for(self, state: str) -> Scorer | None:
        if self._fp32_twin is None or self._fp32_twin[0] != state:
            self._fp32_twin = None  # the last state's twin goes before the next one loads
            twin = self.fp32_twin()
            if twin is None:
                return None
            self._fp32_twin = (state, twin)
        twin = self._fp32_twin[1]
        twin.pass_label, twin.settings = self.pass_label, replace(self.settings, dtype="fp32")
        return twin

    def fp32_twin(self) -> Scorer | None:
        """This scorer built again in fp32 (same checkpoint, options and random init), holding
        the weights :attr:`model` holds now, computed from fp32 masters; None if this scorer
        cannot be rebuilt (it was not made as ``Kind(path, options, settings)``)."""
        built = getattr(self, "_built_with", None)
        if built is None:
            return None
        args, kwargs, rng = built
        fp32 = replace(self.settings, dtype="fp32")
        found = [isinstance(a, ScoringSettings) for a in (*args, *kwargs.values())]
        if sum(found) != 1:
            return None
        args = tuple(fp32 if isinstance(a, ScoringSettings) else a for a in args)
        kwargs = {k: fp32 if isinstance(v, ScoringSettings) else v for k, v in kwargs.items()}
        with torch.random.fork_rng(devices=[]):
            torch.random.set_rng_state(rng)
            twin = type(self)(*args, **kwargs)
        provider = calibration.weight_state(getattr(self, "model", None))
        if provider is not None and provider.state_token() != calibration.LOADED:
            provider.write_state(twin.model)
        twin.truncation = self.truncation  # its passes count as this scorer's
        return twin

    def calibrate(
        self, groups: Sequence[Sequence[tuple[str, str]]], state: str | None = None
    ) -> calibration.CalibrationResult:
        """Score ``groups`` (pairs per sample query) with this model and in fp32, decide by the
        rule, remember the outcome for ``state`` and, on a failure, warn (report notes)."""
        state = self.weight_state() if state is None else state
        pairs = [p for g in groups for p in g]
        self._fp32_twin = None  # one fp32 model at a time
        twin = self.fp32_twin()
        if twin is None:
            result = calibration.CalibrationResult(True, 1.0, 1.0, 0, 0)
            log.info("%s: cannot rebuild it in fp32, so bf16 is not calibrated", self.describe())
            self.calibrations[state] = result
            return result
        got = _quietly(self, lambda: self.score_pairs(pairs))
        ref = _quietly(twin, lambda: twin.score_pairs(pairs))
        result = calibration.compare(_regroup(ref, groups), _regroup(got, groups))
        self.calibrations[state] = result
        what = self.describe(state)
        if result.passed:
            log.info("%s: bf16 agrees with fp32 (%s); scoring in bf16", what, result.summary())
            del twin
        else:
            self._fp32_twin = (state, twin)
            self.warn(
                f"{what}: bf16 ranks its calibration sample unlike fp32 ({result.summary()}; "
                f"needs {calibration.RULE.describe()}), so it is scored in fp32"
            )
        return result

    def describe(self, state: str | None = None) -> str:
        """The checkpoint this scorer loaded (and the sweep point it holds), for messages."""
        args = getattr(self, "_built_with", ((), {}, None))[0]
        path = next((str(a) for a in args if isinstance(a, str | Path)), type(self).__name__)
        if state and state != calibration.LOADED:
            return f"{path} at sweep point {state.partition(':')[2]}"
        return path

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

    def differentiable_scores(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """One score per pair as a tensor with autograd on, from ``self.model``'s current
        parameters (one forward, no inference mode, no calibration twin): what AdaMerging
        (:mod:`mergekit_ir.tuning.adamerging`) differentiates through, with the merged
        parameters bound by ``torch.func.functional_call``. The caller keeps ``pairs`` few.
        Scorers that implement it: bi-encoder, cross-encoder, splade."""
        raise MergeIRError(
            f"scorer {type(self).__name__} gives no gradients of its scores, which AdaMerging "
            "needs; use a bi-encoder, cross-encoder or splade triplet, or another α selector"
        )

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


def _precision_checked(fn: Callable) -> Callable:
    """``fn`` (a scorer's ``rerank`` or ``score_pairs``) answered by the scorer that
    :meth:`Scorer._scorer_for_call` picks; calls made inside it run as they are."""

    @functools.wraps(fn)
    def checked(self: Scorer, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_in_call", True):
            return fn(self, *args, **kwargs)
        other = self._scorer_for_call(fn.__name__, args, kwargs)
        if other is not self:
            return getattr(other, fn.__name__)(*args, **kwargs)
        self._in_call = True
        self._pass_items = _pass_items(self, fn.__name__, args, kwargs)
        try:
            return fn(self, *args, **kwargs)
        finally:
            self._in_call = False
            self._pass_items = None

    checked._precision_checked = True  # type: ignore[attr-defined]
    return checked


Scorer.rerank = _precision_checked(Scorer.rerank)  # type: ignore[method-assign]


def _calibration_sample(name: str, args: tuple, kwargs: dict) -> list[list[tuple[str, str]]]:
    if name == "rerank":
        names = ("queries", "candidates", "docs")
        values = dict(zip(names, args, strict=False)) | {k: kwargs[k] for k in names if k in kwargs}
        if len(values) < 3:
            return []
        return calibration.sample_from_rerank(
            values["queries"], values["candidates"], values["docs"]
        )
    pairs = args[0] if args else kwargs.get("pairs", ())
    return calibration.sample_from_pairs(list(pairs))


def _pass_items(scorer: Scorer, name: str, args: tuple, kwargs: dict) -> int | None:
    """A pass's size in the scorer's :attr:`~Scorer.cost_unit`: (query, document) pairs, or the
    distinct texts a bi-encoder or SPLADE encodes."""
    per_document = getattr(scorer, "cost_unit", "pair") == "document"
    if name == "rerank":
        names = ("queries", "candidates", "docs")
        values = dict(zip(names, args, strict=False)) | {k: kwargs[k] for k in names if k in kwargs}
        candidates = values.get("candidates")
        if not isinstance(candidates, Mapping):
            return None
        if per_document:
            return len(candidates) + len({d for c in candidates.values() for d in c})
        return sum(len(c) for c in candidates.values())
    pairs = args[0] if args else kwargs.get("pairs")
    if not isinstance(pairs, Sequence):
        return None
    if per_document:
        return len({p[0] for p in pairs}) + len({p[1] for p in pairs})
    return len(pairs)


def _regroup(scores: Sequence[float], groups: Sequence[Sequence[Any]]) -> list[list[float]]:
    out, i = [], 0
    for g in groups:
        out.append([float(x) for x in scores[i : i + len(g)]])
        i += len(g)
    return out


def _quietly(scorer: Scorer, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on ``scorer`` as a side computation: no progress bar, no truncation counts
    or logs, no calibration of its own."""
    saved = (scorer.settings, scorer.truncation, scorer._in_call)
    scorer.settings = replace(scorer.settings, show_progress=False)
    scorer.truncation = TruncationStats()
    scorer.log_truncation = lambda: None  # type: ignore[method-assign]
    scorer._in_call = True
    try:
        return fn()
    finally:
        scorer.settings, scorer.truncation, scorer._in_call = saved
        del scorer.log_truncation


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
