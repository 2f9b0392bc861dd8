"""Compiled scoring backends where the weights are fixed: ONNX Runtime and OpenVINO.

A scorer's pass feeds batches to one function (its *graph*: token ids in, one score or one
vector per row out). With ``--backend onnx|onnx-int8|openvino|openvino-int8`` (or ``auto``
where it pays, :func:`pays`) that graph is traced once per model state by ``torch.export``,
then run instead of torch by ONNX Runtime (fp32, or dynamic int8; torch's ONNX exporter, the
one ``mergeir export`` uses: :func:`export_graph`) or OpenVINO (fp32: OpenVINO's own PyTorch
frontend converts the exported program, :func:`export_openvino`; int8: OpenVINO reading the
dynamic int8 ONNX model).

- **Cached by what the graph computes**: the key (:func:`entry_key`) is the digest of the
  graph's weights as they are *now* (every parameter and buffer of the scorer's modules, so a
  point of the in-place α sweep is its own entry), the scorer class, the graph and its
  options, the input names, the runtime and the precision, the opset and the library
  versions. An int8 or OpenVINO entry never answers for an fp32 ONNX one, nor the reverse. The
  fp32 ONNX model is the base the int8 entries are built from, and is cached too.
- **Checked on the first batch** (:data:`RULE`): that batch is scored by torch fp32 as well;
  the compiled model must match it (fp32: max |diff| within a tolerance; int8: cosine and
  rank agreement) or the state is scored by torch, with one warning saying why. A failed
  export is the same: one warning, torch.
- **Where it pays**: an export costs seconds to minutes (:data:`EXPORT_COST`), so ``auto``
  compiles a model state only when its pass is long enough to win that back — the baselines,
  ``mergeir rerank`` and the test passes of a full-size split — and leaves small passes (the
  dev sweep's points on a small dev split, a smoke test) to torch.

This module holds no scorer code: :class:`CompiledForward` is given the scorer and the names
of its graph method; :meth:`mergekit_ir.scoring.scorer.Scorer.backend_forward` wires it in.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from mergekit_ir.errors import CheckpointError, ConfigError
from mergekit_ir.scoring import calibration
from mergekit_ir.storage import atomic
from mergekit_ir.storage.cache import cache_key, resolve_cache_root

log = logging.getLogger(__name__)

#: The scoring backends ``--backend`` and the registry's ``scoring.backend`` accept (the one
#: list: the CLI's choices and the registry's check read it).
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
#: The compiled ones: ``runtime[-int8]``.
COMPILED: tuple[str, ...] = BACKENDS[2:]
OPSET = 18
#: The packages each runtime needs (the export itself needs onnx and onnxscript).
NEEDS = {
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
    "openvino": ("onnx", "onnxscript", "onnxruntime", "openvino"),
}
#: compiled-2: OpenVINO fp32 entries are converted from the exported program, not from ONNX
ENTRY_VERSION = "compiled-2"
#: How int8 entries are quantised (part of their key): ONNX Runtime's dynamic int8 with
#: per-channel weight scales and 7-bit weights (``reduce_range``). Per-tensor scales lose too
#: much on MiniLM (min cosine 0.90 vs fp32 on 32 SciFact documents); per-channel keeps 0.989,
#: and ``reduce_range`` avoids the u8×s8 saturation of AVX2 CPUs without VNNI (ORT's advice).
INT8_RECIPE = "ort-dynamic-qint8-per-channel-reduce-range"
BASE_FILE = "model.onnx"
FILES = {
    ("onnx", "fp32"): BASE_FILE,
    ("onnx", "int8"): "model_qint8.onnx",
    ("openvino", "fp32"): "openvino_model.xml",
    ("openvino", "int8"): "model_qint8.onnx",  # OpenVINO reads ONNX Runtime's int8 graph
}
RECORD = "compiled.json"


def split_backend(backend: str) -> tuple[str, str]:
    """``onnx-int8`` -> ``("onnx", "int8")``; ``openvino`` -> ``("openvino", "fp32")``."""
    runtime, _, precision = backend.partition("-")
    return runtime, precision or "fp32"


def check_backend(value: Any, where: str = "--backend") -> str:
    """``value`` if it names a backend, else a one-line :class:`ConfigError` naming ``where``."""
    if value not in BACKENDS:
        raise ConfigError(f"{where} {value!r}: choose one of {', '.join(BACKENDS)}")
    return str(value)


def missing_packages(backend: str) -> list[str]:
    if backend not in COMPILED:
        return []
    return [m for m in NEEDS[split_backend(backend)[0]] if importlib.util.find_spec(m) is None]


def require_backend(backend: str, where: str = "--backend") -> None:
    """A compiled backend whose packages are absent is refused before any work."""
    missing = missing_packages(backend)
    if missing:
        raise ConfigError(
            f"{where} {backend}: needs the '{missing[0]}' package; "
            "pip install 'mergekit-ir[export]' (or use --backend torch)"
        )


# -- where it pays ------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportCost:
    """When ``auto`` compiles a model state: its pass scores at least ``min_items`` items
    (texts for a bi-encoder or SPLADE, pairs for the others) — or ``min_items_cached`` when the
    export is already in the cache and only has to be loaded.

    Measured on a 2-core AMD EPYC (AVX2), ``benchmarks/scoring_speed.py`` (docs/performance.md,
    "Compiled backends"): exporting all-MiniLM-L6-v2's graph takes ~15-25 s of wall time
    (torch.export tracing, the ONNX optimiser, OpenVINO's conversion), loading a cached one
    ~0.5 s; OpenVINO fp32 saves ~20-35 ms per text against torch fp32 there, so an export
    is won back after ~700-1,000 texts. The count is about the same for larger models of the
    same kind (export time and time per item both grow with the model) and is set with a
    margin: 2,000 items, i.e. a SciFact test pass (300 queries, BM25 top-100: ~20,000
    documents) compiles, a dev sweep point on 50 queries × top-20 (~1,000) does not.
    """

    min_items: int = 2000
    min_items_cached: int = 64


EXPORT_COST = ExportCost()


def pays(items: int | None, cached: bool, cost: ExportCost = EXPORT_COST) -> bool:
    """Whether ``auto`` compiles for a pass of ``items`` items (None: unknown, so no)."""
    if items is None:
        return False
    return items >= (cost.min_items_cached if cached else cost.min_items)


# -- the first-batch check ----------------------------------------------------------------


@dataclass(frozen=True)
class FaithfulnessRule:
    """When a compiled model's first batch counts as the torch fp32 model's.

    - any non-finite output where torch's is finite fails;
    - fp32 (ONNX Runtime, OpenVINO): max |diff| ≤ ``fp32_atol`` × max(1, max |torch|).
      Measured differences are 1e-6-1e-5 (reassociated float sums); an exporter that gets a
      mask wrong is off by ~1e-2 (see :mod:`mergekit_ir.api.export`), which this catches;
    - int8 (dynamic int8 weights and activations): every output row's cosine with torch's
      ≥ ``int8_min_cosine`` (``mergeir export --int8``'s threshold), and the batch's ranking
      (scores: the batch's scores; vectors: each row's dot products with the batch) agrees by
      Kendall τ as :data:`mergekit_ir.scoring.calibration.RULE` asks of bf16 (mean ≥ 0.98,
      each row ≥ 0.85).
    """

    fp32_atol: float = 1e-3
    int8_min_cosine: float = 0.98
    min_mean_tau: float = calibration.RULE.min_mean_tau
    min_row_tau: float = calibration.RULE.min_query_tau

    def accepts(self, f: Faithfulness) -> bool:
        """The verdict on a batch's comparison (:func:`compare`)."""
        if f.nonfinite or not math.isfinite(f.max_abs_diff):
            return False
        if f.precision == "fp32":
            return f.max_abs_diff <= self.fp32_atol * f.scale
        return (
            f.min_cosine >= self.int8_min_cosine
            and f.mean_tau >= self.min_mean_tau
            and f.min_tau >= self.min_row_tau
        )

    @property
    def identity(self) -> str:
        return (
            f"faithful:fp32<={self.fp32_atol:g},int8cos>={self.int8_min_cosine:g},"
            f"tau>={self.min_mean_tau:g}/{self.min_row_tau:g}"
        )


RULE = FaithfulnessRule()


@dataclass(frozen=True)
class Faithfulness:
    passed: bool
    precision: str
    rows: int
    max_abs_diff: float
    scale: float
    min_cosine: float
    mean_tau: float
    min_tau: float
    nonfinite: int = 0

    def summary(self) -> str:
        text = (
            f"max |diff| {self.max_abs_diff:.2e} (scale {self.scale:.3g}), min cosine "
            f"{self.min_cosine:.4f}, Kendall τ mean {self.mean_tau:.3f} / lowest "
            f"{self.min_tau:.3f} over {self.rows} rows"
        )
        return text + (f", {self.nonfinite} non-finite" if self.nonfinite else "")


def _rows(x: Any) -> Any:
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    return x.reshape(len(x), -1) if x.ndim > 1 else x[:, None]


def compare(ref: Any, got: Any, precision: str, rule: FaithfulnessRule = RULE) -> Faithfulness:
    """Apply ``rule`` to torch fp32's outputs ``ref`` and a compiled model's ``got`` (one batch:
    (rows,) scores or (rows, …) vectors)."""
    import numpy as np

    ref, got = _rows(ref), _rows(got)
    if ref.shape != got.shape:
        return Faithfulness(False, precision, len(ref), math.inf, 1.0, 0.0, 0.0, 0.0)
    nonfinite = int(np.sum(np.isfinite(ref) & ~np.isfinite(got)))
    both = np.isfinite(ref) & np.isfinite(got)
    diff = float(np.max(np.abs(ref - got)[both], initial=0.0))
    scale = max(1.0, float(np.max(np.abs(ref)[np.isfinite(ref)], initial=0.0)))
    r, g = np.where(both, ref, 0.0), np.where(both, got, 0.0)
    if r.shape[1] == 1:  # one score per row: the cosine of the column, the batch's ranking
        cos = _cosines(r.T, g.T)
        groups_ref, groups_got = [r[:, 0].tolist()], [g[:, 0].tolist()]
    else:
        cos = _cosines(r, g)
        groups_ref, groups_got = (r @ r.T).tolist(), (g @ g.T).tolist()
    taus = [calibration.kendall_tau(a, b) for a, b in zip(groups_ref, groups_got, strict=True)]
    taus = [t for t, a in zip(taus, groups_ref, strict=True) if len(a) >= 2] or [1.0]
    mean_tau, min_tau = sum(taus) / len(taus), min(taus)
    min_cos = float(np.min(cos)) if len(cos) else 1.0
    stats = Faithfulness(
        False, precision, len(ref), diff, scale, min_cos, mean_tau, min_tau, nonfinite
    )
    return replace(stats, passed=rule.accepts(stats))


def _cosines(a: Any, b: Any) -> Any:
    import numpy as np

    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    # a zero row on both sides agrees (nothing to compare); on one side only it does not
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    return np.where(den > 0, num / np.maximum(den, 1e-300), np.where(both_zero, 1.0, 0.0))


# -- export ---------------------------------------------------------------------------------


def input_order(names: Sequence[str]) -> list[str]:
    """Graph inputs in a fixed order: the model's usual three first, then the rest by name."""
    first = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in names]
    return first + sorted(n for n in names if n not in first)


def export_graph(
    module: Any,
    example: Mapping[str, Any],
    output: str,
    path: Path,
    what: str = "the model",
) -> None:
    """``module(*example.values())`` to ONNX at ``path`` with dynamic batch and sequence axes
    on every input: torch's ``torch.export``-based exporter (``dynamo=True``, opset
    :data:`OPSET`), one file. The TorchScript exporter (``dynamo=False``) traces transformers'
    mask code into constants (logits off by ~1e-2), so it is not used. Refusals are one line:
    :class:`ConfigError` without onnx/onnxscript, :class:`CheckpointError` when torch cannot
    export ``what``."""
    import torch

    names = list(example)
    batch, seq = torch.export.Dim("batch_size"), torch.export.Dim("sequence_length")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.no_grad(), _quiet_exporter():
            warnings.simplefilter("ignore")
            # the module takes *tensors: dynamic_shapes is then one tuple, in input order
            torch.onnx.export(
                module,
                tuple(example[n] for n in names),
                str(path),
                input_names=names,
                output_names=[output],
                dynamic_shapes=(tuple({0: batch, 1: seq} for _ in names),),
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except ImportError as exc:
        raise ConfigError(
            f"ONNX export needs onnx and onnxscript ({exc}); pip install 'mergekit-ir[export]'"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch.export raises many kinds; one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise CheckpointError(
            f"torch.onnx.export failed for {what} ({type(exc).__name__}: {first})"
        ) from None


@contextlib.contextmanager
def _quiet_exporter() -> Any:
    """torch's exporter logs a line per missing optional op library (torchvision) at WARNING."""
    names = ("torch.onnx._internal.exporter._registration", "torch.onnx", "onnx_ir", "onnxscript")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def quantize_int8(src: Path, dst: Path) -> None:
    """ONNX Runtime's dynamic int8 (:data:`INT8_RECIPE`: int8 weights with a scale per output
    channel; activations quantised per batch)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    before = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the quantiser logs its advice to the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(
                str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
            )
    finally:
        logging.disable(before)


def convert_openvino(src: Path, dst: Path) -> None:
    """The ONNX model as OpenVINO IR (``.xml`` + ``.bin``), weights kept in fp32."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(src)), str(dst), compress_to_fp16=False)


def export_openvino(
    module: Any, example: Mapping[str, Any], path: Path, what: str = "the model"
) -> None:
    """``module`` as OpenVINO IR (``.xml`` + ``.bin``, fp32 weights) at ``path``: the program
    ``torch.export`` traces (the same tracer as :func:`export_graph`, batch and length
    dynamic), converted by OpenVINO's PyTorch frontend. Not through ONNX: from the aten graph
    OpenVINO keeps attention as one fused operation, and the same MiniLM batches run 1.1–1.2×
    faster than through the ONNX file (docs/performance.md), as sentence-transformers' own
    OpenVINO export does. Refusals are one line, as :func:`export_graph`'s."""
    import torch

    # the module takes *tensors: dynamic_shapes is then one tuple, in input order
    dims = (tuple({0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC} for _ in example),)
    try:
        import openvino as ov

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.export.export(module, tuple(example.values()), dynamic_shapes=dims)
            model = ov.convert_model(program)
            for port, name in zip(model.inputs, example, strict=True):  # as the ONNX inputs
                port.get_tensor().set_names({name})
            ov.save_model(model, str(path), compress_to_fp16=False)
    except ImportError as exc:
        raise ConfigError(
            f"--backend openvino needs openvino ({exc}); pip install 'mergekit-ir[export]'"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch.export / the frontend raise many kinds
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise CheckpointError(
            f"OpenVINO conversion failed for {what} ({type(exc).__name__}: {first})"
        ) from None


def library_versions(runtime: str) -> dict[str, str]:
    import importlib.metadata as md

    found = {}
    for name in ("torch", "transformers", *NEEDS[runtime]):
        with contextlib.suppress(md.PackageNotFoundError):
            found[name] = md.version(name)
    return found


def weights_digest(modules: Mapping[str, Any]) -> str:
    """BLAKE2b over every parameter and buffer of ``modules`` (name, dtype, shape, bytes): what
    the graph computes with, as it is now — a loaded checkpoint or a point of the sweep."""
    import torch

    h = hashlib.blake2b(digest_size=16)
    for name in sorted(modules):
        for key, t in sorted(modules[name].state_dict(keep_vars=False).items()):
            t = t.detach()
            h.update(f"{name}.{key}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
            if t.dtype == torch.bfloat16:
                t = t.view(torch.int16)
            h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def entry_key(
    scorer_id: str,
    graph: str,
    config: Mapping[str, Any],
    inputs: Sequence[str],
    digest: str,
    runtime: str,
    precision: str,
) -> str:
    """The cache key of one compiled model: what it computes and what runs it."""
    return cache_key(
        ENTRY_VERSION,
        scorer_id,
        graph,
        dict(config),
        list(inputs),
        digest,
        runtime,
        precision,
        INT8_RECIPE if precision == "int8" else None,
        OPSET,
        library_versions(runtime),
    )


@dataclass
class EntryRecord:
    """``compiled.json`` of a cache entry."""

    scorer: str
    graph: str
    runtime: str
    precision: str
    file: str
    inputs: list[str]
    weights: str
    seconds: float  # building this entry (the base export included when it was built here)


def compiled_root(cache_dir: Path | None) -> Path:
    return resolve_cache_root(cache_dir) / "compiled"


def entry_path(root: Path, key: str) -> Path:
    return root / key


def _entry_file(folder: Path, runtime: str, precision: str) -> Path | None:
    """The model file of a complete entry, else None."""
    path = folder / FILES[(runtime, precision)]
    record = folder / RECORD
    if not (path.is_file() and record.is_file()):
        return None
    if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
        return None
    return path


def build_entry(
    root: Path,
    keys: Mapping[tuple[str, str], str],
    runtime: str,
    precision: str,
    export: Callable[[Path], None],
    record: Callable[[str, str, str, float], EntryRecord],
    export_ov: Callable[[Path], None] | None = None,
) -> tuple[Path, bool]:
    """The model file of the ``(runtime, precision)`` entry: from the cache, else built and
    written atomically from the fp32 ONNX base (``export``; itself from the cache when there)
    — or, for OpenVINO fp32 when ``export_ov`` is given, from the torch graph directly (the
    ONNX route if that conversion fails).
    Returns (file, whether it came from the cache)."""
    folder = entry_path(root, keys[(runtime, precision)])
    found = _entry_file(folder, runtime, precision)
    if found is not None:
        return found, True
    started = time.perf_counter()

    def write(folder: Path, runtime: str, precision: str, build: Callable[[Path], None]) -> Path:
        name = FILES[(runtime, precision)]
        with atomic.directory(folder, content_addressed=True) as tmp:
            build(tmp / name)
            rec = record(runtime, precision, name, time.perf_counter() - started)
            (tmp / RECORD).write_text(json.dumps(asdict(rec), indent=1) + "\n")
        return folder / name

    if (runtime, precision) == ("openvino", "fp32") and export_ov is not None:
        try:
            return write(folder, runtime, precision, export_ov), False
        except CheckpointError as exc:
            log.info("%s; converting from the ONNX export instead", exc)
    base_folder = entry_path(root, keys[("onnx", "fp32")])
    base = _entry_file(base_folder, "onnx", "fp32")
    if base is None:
        base = write(base_folder, "onnx", "fp32", export)
    if (runtime, precision) == ("onnx", "fp32"):
        return base, False
    if (runtime, precision) == ("openvino", "fp32"):
        return write(folder, runtime, precision, lambda path: convert_openvino(base, path)), False
    # int8: ONNX Runtime's dynamic int8 model, read by ONNX Runtime or by OpenVINO
    return write(folder, runtime, precision, lambda path: quantize_int8(base, path)), False


# -- running --------------------------------------------------------------------------------


class Session:
    """A compiled model on the CPU: ``run({name: int64 array}) -> float32 array``."""

    def __init__(self, path: Path, runtime: str, threads: int):
        self.runtime = runtime
        if runtime == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.intra_op_num_threads = max(1, threads)
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
            self.inputs = [i.name for i in self._session.get_inputs()]
        else:
            import openvino as ov

            # f32 explicitly: on a CPU with bf16 hardware OpenVINO's default is bf16, and an
            # "fp32" backend must not answer in bf16
            config = {
                "INFERENCE_NUM_THREADS": max(1, threads),
                "INFERENCE_PRECISION_HINT": "f32",
                "PERFORMANCE_HINT": "LATENCY",
            }
            self._compiled = ov.Core().compile_model(str(path), "CPU", config)
            self._output = self._compiled.output(0)
            self.inputs = [p.get_any_name() for p in self._compiled.inputs]

    def run(self, feed: Mapping[str, Any]) -> Any:
        feed = {n: feed[n] for n in self.inputs}
        if self.runtime == "onnx":
            return self._session.run(None, feed)[0]
        return self._compiled(feed)[self._output]


class _Graph:
    """The torch module torch.export traces: a scorer's graph method over positional tensors,
    the scorer's modules registered so that their weights become the graph's initialisers."""

    @staticmethod
    def build(fn: Callable[[dict[str, Any]], Any], names: Sequence[str], modules: Mapping) -> Any:
        import torch

        class Graph(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                for key, module in modules.items():
                    self.add_module(key, module)

            def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
                return fn(dict(zip(names, tensors, strict=True))).float()

        return Graph().eval()


def _example(batch: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The first batch as the export's example, outside inference mode, with at least two
    rows (a dimension of size 1 would be specialised by torch.export, not kept dynamic)."""
    out = {}
    for n in names:
        t = batch[n].detach().cpu().clone()
        if t.shape[0] < 2:
            t = t.repeat(2, *([1] * (t.dim() - 1)))
        out[n] = t
    return out


def scorer_modules(scorer: Any) -> dict[str, Any]:
    """The torch modules a scorer holds (``model``, a bi-encoder's ``dense``…), by attribute."""
    import torch

    return {k: v for k, v in sorted(vars(scorer).items()) if isinstance(v, torch.nn.Module)}


class CompiledForward:
    """One scorer graph for one model state, run by a compiled backend.

    The first batch decides: under ``auto`` (``explicit`` false) the state is compiled only
    where it pays (:func:`pays`, for a pass of ``items`` items); then the compiled model is
    built (or loaded from the cache) and the batch is scored by torch fp32 as well
    (:func:`compare`). From then on batches go to the compiled model — or, if the export or the
    check failed, to torch, after one warning through ``warn``.
    """

    def __init__(
        self,
        scorer: Any,
        graph: str,
        torch_fn: Callable[[dict[str, Any]], Any],
        config: Mapping[str, Any],
        backend: str,
        root: Path,
        warn: Callable[[str], None],
        describe: str,
        *,
        explicit: bool = True,
        items: int | None = None,
        rule: FaithfulnessRule | None = None,
        cost: ExportCost | None = None,
    ):
        self.scorer, self.graph, self.torch_fn = scorer, graph, torch_fn
        self.config, self.backend, self.root = dict(config), backend, root
        self.runtime, self.precision = split_backend(backend)
        self.warn, self.describe = warn, describe
        self.rule = rule if rule is not None else RULE  # read now: a test may replace RULE
        self.cost = cost if cost is not None else EXPORT_COST
        self.explicit, self.items = explicit, items
        self.session: Session | None = None
        #: ``None`` before the first batch; then ``"compiled"``, ``"torch"`` (auto: it does not
        #: pay) or ``"fallback"`` (the export or the first-batch check failed)
        self.used: str | None = None
        self.faithfulness: Faithfulness | None = None
        self.cached: bool | None = None
        self.seconds = 0.0

    def __call__(self, batch: dict[str, Any]) -> Any:
        import torch

        if self.used in ("torch", "fallback"):
            return self.torch_fn(batch)
        names = input_order([k for k, v in batch.items() if isinstance(v, torch.Tensor)])
        feed = {n: batch[n].detach().cpu().numpy() for n in names}
        if self.session is not None:
            return torch.from_numpy(self.session.run(feed))
        if not self.explicit and not self._pays(names):
            self.used = "torch"
            log.info(
                "%s: %s does not pay for a pass of %s items; scoring with torch",
                self.describe,
                self.backend,
                self.items,
            )
            return self.torch_fn(batch)
        ref = self.torch_fn(batch)
        try:
            self.session = self._load(batch, names)
            got = self.session.run(feed)
        except (CheckpointError, ConfigError) as exc:
            return self._fall_back(ref, str(exc))
        except Exception as exc:  # noqa: BLE001 - a runtime's own errors: one line, torch
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            return self._fall_back(ref, f"{type(exc).__name__}: {first}")
        self.faithfulness = compare(ref.float().cpu().numpy(), got, self.precision, self.rule)
        if not self.faithfulness.passed:
            return self._fall_back(
                ref, f"its first batch differs from torch fp32 ({self.faithfulness.summary()})"
            )
        self.used = "compiled"
        log.info(
            "%s: %s agrees with torch fp32 on the first batch (%s)",
            self.describe,
            self.backend,
            self.faithfulness.summary(),
        )
        return torch.from_numpy(got)

    def reuse_keys(self, other: CompiledForward) -> None:
        """Take ``other``'s weights digest (the same state: no second hash of the weights)."""
        if getattr(other, "_key_cache", None) is not None:
            self.digest, self._key_cache = other.digest, other._key_cache

    def _pays(self, names: list[str]) -> bool:
        items = self.items
        if items is None or items < self.cost.min_items_cached:
            return False
        if items >= self.cost.min_items:
            return True
        folder = entry_path(self.root, self._keys(names)[(self.runtime, self.precision)])
        return pays(items, _entry_file(folder, self.runtime, self.precision) is not None, self.cost)

    def _fall_back(self, ref: Any, why: str) -> Any:
        self.used, self.session = "fallback", None
        self.warn(f"{self.describe}: --backend {self.backend} not used ({why}); scored by torch")
        return ref

    @property
    def scorer_id(self) -> str:
        return f"{type(self.scorer).__module__}.{type(self.scorer).__qualname__}"

    def _keys(self, names: list[str]) -> dict[tuple[str, str], str]:
        if getattr(self, "_key_cache", None) is None:
            self.digest = weights_digest(scorer_modules(self.scorer))
            self._key_cache = {
                (rt, pr): entry_key(
                    self.scorer_id, self.graph, self.config, names, self.digest, rt, pr
                )
                for rt, pr in FILES
            }
        return self._key_cache

    def _load(self, batch: Mapping[str, Any], names: list[str]) -> Session:
        import torch

        started = time.perf_counter()
        modules = scorer_modules(self.scorer)
        keys = self._keys(names)
        fn = getattr(self.scorer, self.graph)

        def exporter(target: str, write: Callable[..., None]) -> Callable[[Path], None]:
            """Trace the graph on this batch and write it for ``target`` with ``write``."""

            def build(path: Path) -> None:
                log.info(
                    "%s: exporting its %s graph to %s for --backend %s",
                    self.describe,
                    self.graph,
                    target,
                    self.backend,
                )
                with torch.inference_mode(False):
                    module = _Graph.build(fn, names, modules)
                    write(module, _example(batch, names), path, self.describe)

            return build

        def export_onnx(module: Any, example: Any, path: Path, what: str) -> None:
            export_graph(module, example, "scores", path, what)

        def record(runtime: str, precision: str, file: str, seconds: float) -> EntryRecord:
            return EntryRecord(
                self.scorer_id, self.graph, runtime, precision, file, names, self.digest, seconds
            )

        direct = getattr(self.scorer, "openvino_from_torch", False)
        path, self.cached = build_entry(
            self.root,
            keys,
            self.runtime,
            self.precision,
            exporter("ONNX", export_onnx),
            record,
            exporter("OpenVINO", export_openvino) if direct else None,
        )
        session = Session(path, self.runtime, torch.get_num_threads())
        self.seconds = time.perf_counter() - started
        log.info(
            "%s: %s model %s in %.1fs (%s)",
            self.describe,
            self.backend,
            "loaded from the cache" if self.cached else "built",
            self.seconds,
            path.parent,
        )
        return session
