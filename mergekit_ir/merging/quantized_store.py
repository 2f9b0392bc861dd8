"""Quantized task vectors on disk: TVQ and residual TVQ (RTVQ), read back per tensor.

A quantized vector is a folder like a saved τ (``task_vector.safetensors`` +
``task_vector.json``), so ``domain: {task_vector: DIR}`` and ``--domain task_vector:DIR``
take it as they are. Each quantized tensor ``K`` is stored as three safetensors
entries ``K::q`` (packed uint8 codes), ``K::scale`` and ``K::zero`` (fp16 per group);
small tensors (1-D biases and norms, fewer than ``keep_full_below`` values, or names
matching ``keep_full``) stay fp16 under ``K``. The header metadata carries the format
version, bits, group size, the per-tensor kinds and shapes, and the fingerprints of
Θ0 and ΘD; the JSON side file adds per-tensor error statistics for ``--info``.

RTVQ (:func:`mergekit_ir.merging.residual.save_residual`) writes ``OUT/base`` — mean τ at ``base_bits`` — and one
``OUT/<name>`` per domain with τ_i − dequant(base) at ``bits``; offsets are computed
against the *dequantized* base, so the base's error is corrected by the offset. A
vector folder names its base (``../base`` and the base's id) and loads as base + offset.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergekit_ir.errors import CheckpointError
from mergekit_ir.merging.checkpoint import Rows, _SafetensorsFile
from mergekit_ir.merging.finite import all_finite
from mergekit_ir.merging.quantize import (
    BITS,
    QuantizedTensor,
    dequantize,
    dequantize_codes,
    layout,
    packed_nbytes,
    quantize,
    unpack,
)
from mergekit_ir.merging.safetensors_writer import ShardedWriter, TensorSpec
from mergekit_ir.storage import atomic

FORMAT_VERSION = "1"
FILE = "task_vector.safetensors"
SIDE = "task_vector.json"


#: Larger groups than any tensor's last dimension buy nothing (a group never spans rows) and
#: a huge value would make the packing buffers huge: 2^16 is past every model's width.
MAX_GROUP_SIZE = 2**16


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize: bits, group size, and which tensors stay fp16."""

    bits: int = 4
    group_size: int = 128
    keep_full: str | None = None
    keep_full_below: int = 4096

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise CheckpointError(f"--bits {self.bits}: choose one of {', '.join(map(str, BITS))}")
        if not 1 <= self.group_size <= MAX_GROUP_SIZE:
            raise CheckpointError(
                f"--group-size {self.group_size}: must be in [1, {MAX_GROUP_SIZE}] "
                "(a group is a run of values along a tensor's last dimension)"
            )
        if self.keep_full:
            try:
                re.compile(self.keep_full)
            except re.error as exc:
                raise CheckpointError(
                    f"--keep-full {self.keep_full!r}: not a regular expression ({exc})"
                ) from None

    def keeps_full(self, key: str, shape: tuple[int, ...]) -> bool:
        return (
            len(shape) < 2
            or math.prod(shape) < self.keep_full_below
            or bool(self.keep_full and re.search(self.keep_full, key))
        )


def _specs(key: str, shape: tuple[int, ...], full: bool, spec: QuantSpec) -> list[TensorSpec]:
    if full:
        return [TensorSpec(key, shape, torch.float16)]
    rows, _, groups = layout(shape, spec.group_size)
    n = packed_nbytes(math.prod(shape), spec.bits)
    return [
        TensorSpec(f"{key}::q", (n,), torch.uint8),
        TensorSpec(f"{key}::scale", (rows, groups), torch.float16),
        TensorSpec(f"{key}::zero", (rows, groups), torch.float16),
    ]


def source_fingerprints(tv: Any) -> dict[str, str]:
    """Fingerprints of the Θ0 and ΘD behind ``tv`` (from checkpoints or a stored τ's metadata)."""
    pre: list[str] = []
    dom: list[str] = []
    for _, term in tv.terms:
        if hasattr(term, "pretrained") and hasattr(term.pretrained, "fingerprint"):
            pre.append(term.pretrained.fingerprint())
            dom.append(term.domain.fingerprint())
        else:
            meta = getattr(term, "metadata", {}) or {}
            pre.append(meta.get("fingerprint_pretrained", "?"))
            dom.append(meta.get("fingerprint_domain", "?"))
    return {"fingerprint_pretrained": ",".join(pre), "fingerprint_domain": ",".join(dom)}


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path}: exists; pass --overwrite to replace it")
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: exists and is not a folder; choose another path")
    if overwrite and path.is_dir() and any(path.iterdir()) and not (path / SIDE).is_file():
        raise CheckpointError(
            f"{path}: not an earlier saved task vector (no {SIDE}), so --overwrite will not "
            "replace it; remove it yourself or choose another folder"
        )


def save_quantized(
    tv: Any,
    path: str | Path,
    spec: QuantSpec,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
    allow_nonfinite: bool = False,
    reference: Any = None,
) -> Path:
    """Quantize ``tv`` (a TaskVector) tensor by tensor into ``path``, atomically.

    ``reference`` (RTVQ: the dequantized base) is added back to measure the error
    relative to the full τ_i rather than to the offset.
    """
    path = Path(path)
    _check_target(path, overwrite)
    keys = [k for k in tv.keys() if tv.shape(k) is not None]
    shapes = {k: tuple(tv.shape(k)) for k in keys}
    full = {k: spec.keeps_full(k, shapes[k]) for k in keys}
    tensors = {k: {"kind": "full" if full[k] else "q", "shape": list(shapes[k])} for k in keys}
    meta = {
        "format_mergekit_ir": "task_vector",
        "terms": tv.describe(),
        "dense": str(tv.dense).lower(),
        "tvq_version": FORMAT_VERSION,
        "tvq_bits": str(spec.bits),
        "tvq_group_size": str(spec.group_size),
        "tvq_tensors": json.dumps(tensors, separators=(",", ":")),
        **(metadata or {}),
    }
    specs = [s for k in keys for s in _specs(k, shapes[k], full[k], spec)]
    errors: dict[str, list[float]] = {}
    try:
        with atomic.directory(path, overwrite=overwrite) as tmp:
            with ShardedWriter(tmp, specs, 2**62, meta, basename="task_vector") as w:
                for k in keys:
                    t = tv.get(k).float()
                    if not allow_nonfinite and not all_finite(t):
                        raise CheckpointError(
                            f"tensor {k}: τ = {tv.describe()} has NaN/Inf values; check the "
                            "checkpoints or pass --allow-nonfinite (nothing written)"
                        )
                    if full[k]:
                        stored = t.half()
                        if not all_finite(stored) and all_finite(t):
                            raise CheckpointError(
                                f"tensor {k}: τ has values beyond the fp16 range (|x| > 65504), "
                                "which a saved τ keeps in fp16; check the checkpoints (nothing "
                                "written)"
                            )
                        w.write(k, stored)
                        approx = stored.float()
                    else:
                        try:
                            q = quantize(t, spec.bits, spec.group_size)
                        except ValueError as exc:
                            raise CheckpointError(
                                f"tensor {k}: {exc}; keep it full with --keep-full"
                            ) from None
                        w.write(f"{k}::q", q.packed)
                        w.write(f"{k}::scale", q.scales)
                        w.write(f"{k}::zero", q.zeros)
                        approx = dequantize(q)
                    err = t - approx
                    whole = t if reference is None else t + reference.get(k).float()
                    norm = whole.norm().item()
                    errors[k] = [
                        err.norm().item() / norm if norm > 0 else 0.0,
                        err.abs().max().item() if err.numel() else 0.0,
                    ]
            side = {k: v for k, v in meta.items() if k != "tvq_tensors"}
            side["tvq_errors"] = errors  # type: ignore[assignment]
            (tmp / SIDE).write_text(json.dumps(side, indent=2))
    except OSError as exc:
        raise CheckpointError(atomic.os_error_message(exc, path)) from None
    return path


class QuantizedTerm:
    """A quantized task vector (or an RTVQ base or offset), dequantized per tensor on read."""

    def __init__(self, path: Path, sf: _SafetensorsFile | None = None):
        self.path = path
        file = path if path.is_file() else path / FILE
        if not file.is_file():
            raise CheckpointError(f"{path}: no {FILE} here; is this a quantized task vector?")
        self.file = sf or _SafetensorsFile(file)
        m = self.metadata = self.file.metadata
        where = f"{file}"
        if m.get("format_mergekit_ir") != "task_vector":
            raise CheckpointError(f"{where}: not a mergekit-ir task vector")
        version = m.get("tvq_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{where}: quantized task vector format version {version!r}, this mergekit-ir "
                f"reads version {FORMAT_VERSION}; upgrade mergekit-ir or re-quantize it"
            )
        try:
            self.bits = int(m["tvq_bits"])
            self.group_size = int(m["tvq_group_size"])
            tensors = json.loads(m["tvq_tensors"])
            self.tensors = {k: (v["kind"], tuple(v["shape"])) for k, v in tensors.items()}
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(
                f"{where}: broken quantization metadata ({type(exc).__name__}: {exc}); re-quantize it"
            ) from None
        if self.bits not in BITS or self.group_size < 1:
            raise CheckpointError(
                f"{where}: bits {self.bits} / group size {self.group_size} unsupported"
            )
        self.dense = m.get("dense", "true") == "true"
        for k, (kind, shape) in self.tensors.items():
            names = [k] if kind == "full" else [f"{k}::{p}" for p in ("q", "scale", "zero")]
            for n in names:
                if n not in self.file.entries:
                    raise CheckpointError(
                        f"{where}: tensor {n} is missing; the file is corrupt, re-quantize it"
                    )
            if kind != "full":
                got = self.file.entries[f"{k}::q"][1]
                want = (packed_nbytes(math.prod(shape), self.bits),)
                if got != want:
                    raise CheckpointError(
                        f"{where}: tensor {k} has {got[0]} code bytes, expected {want[0]} for shape "
                        f"{shape} at {self.bits} bits; the file is corrupt, re-quantize it"
                    )

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str) -> tuple[int, ...] | None:
        return self.tensors[key][1] if key in self.tensors else None

    def get(self, key: str, rows: Rows = None) -> torch.Tensor | None:
        if key not in self.tensors:
            return None
        kind, shape = self.tensors[key]
        if kind == "full":
            return self.file.get(key, rows).float()
        if rows is None or len(shape) < 2:
            codes, scale, zero = (self.file.get(f"{key}::{p}") for p in ("q", "scale", "zero"))
            whole = dequantize(
                QuantizedTensor(codes, scale, zero, shape, self.bits, self.group_size)
            )
            return whole if rows is None else whole[rows[0] : rows[1]]
        return self._rows(key, shape, rows)

    def _rows(self, key: str, shape: tuple[int, ...], rows: tuple[int, int]) -> torch.Tensor:
        """Dequantize rows ``[start, stop)`` only: their codes are one contiguous bit range.

        Eight codes fill exactly ``bits`` bytes, so reading from the byte where the last
        multiple of eight codes before the first wanted code starts keeps the packing
        aligned; the few extra leading codes are dropped after unpacking.
        """
        start, stop = rows
        inner = shape[1:]
        rows_per, _, groups = layout(inner, self.group_size)
        per_row = math.prod(inner)  # values of one first-dimension row
        first, last = start * per_row, stop * per_row
        aligned = first // 8 * 8
        packed = self.file.read(
            f"{key}::q",
            aligned * self.bits // 8,
            aligned * self.bits // 8 + packed_nbytes(last - aligned, self.bits),
        )
        codes = unpack(packed, self.bits, last - aligned, torch.float32)[first - aligned :]
        g = rows_per * groups  # scale/zero entries of one first-dimension row
        scale = self.file.read(f"{key}::scale", start * g, stop * g)
        zero = self.file.read(f"{key}::zero", start * g, stop * g)
        return dequantize_codes(codes, scale, zero, (stop - start, *inner), self.group_size)

    def describe(self) -> str:
        m = self.metadata
        role = m.get("tvq_role", "tvq")
        return f"{role}{self.bits}({self.path.name}: {m.get('domain', '?')} − {m.get('pretrained', '?')})"


def is_quantized(sf: _SafetensorsFile) -> bool:
    return "tvq_version" in sf.metadata


def quantized_terms(path: Path, sf: _SafetensorsFile) -> list[tuple[float, Any]]:
    """The terms of a quantized vector folder: itself, plus its RTVQ base when it has one."""
    term = QuantizedTerm(path, sf)
    base_rel = term.metadata.get("tvq_base")
    if not base_rel:
        return [(1.0, term)]
    folder = path if path.is_dir() else path.parent
    base_path = (folder / base_rel).resolve()
    if not (base_path / FILE).is_file():
        raise CheckpointError(
            f"{path}: its residual base {base_rel} ({base_path}) is missing; keep the RTVQ "
            "folder together or re-quantize"
        )
    base = QuantizedTerm(base_path)
    if base.metadata.get("tvq_id") != term.metadata.get("tvq_base_id"):
        raise CheckpointError(
            f"{path}: its residual base {base_path} was replaced by another one (id mismatch); "
            "re-quantize the vectors together"
        )
    return [(1.0, base), (1.0, term)]


def info(path: str | Path) -> str:
    """A readable summary of a stored (quantized) task vector: bits, bytes, per-tensor error."""
    path = Path(path)
    file = path if path.is_file() else path / FILE
    if not file.is_file():
        raise CheckpointError(f"{path}: no {FILE} here; is this a saved task vector?")
    sf = _SafetensorsFile(file)
    if not is_quantized(sf):
        n = sum(math.prod(sf.entries[k][1]) for k in sf.entries)
        return f"{path}: full-precision task vector, {len(sf.entries)} tensors, {n} values, {file.stat().st_size / 1e6:.2f} MB"
    terms = quantized_terms(path, sf)
    lines = []
    numel = sum(math.prod(s) for _, s in terms[-1][1].tensors.values())
    total = sum(t.file.path.stat().st_size for _, t in terms)
    own = file.stat().st_size
    for _, t in terms:
        m = t.metadata
        kinds = [k for k, _ in t.tensors.values()]
        lines.append(
            f"{t.path}: {m.get('tvq_role', 'tvq')} {t.bits}-bit, group size {t.group_size}, "
            f"{kinds.count('q')} quantized + {kinds.count('full')} fp16 tensors, "
            f"{t.file.path.stat().st_size / 1e6:.3f} MB, format v{m.get('tvq_version')}"
        )
    lines.append(
        f"size: {own / 1e6:.3f} MB ({8 * own / numel:.2f} bits/value"
        + (
            f"; with base {total / 1e6:.3f} MB, {8 * total / numel:.2f} bits/value"
            if len(terms) > 1
            else ""
        )
        + f") vs {4 * numel / 1e6:.3f} MB fp32 ({own / (4 * numel):.1%})"
    )
    m = terms[-1][1].metadata
    lines.append(
        f"sources: Θ0 {m.get('pretrained', '?')} [{m.get('fingerprint_pretrained', '?')}], "
        f"ΘD {m.get('domain', '?')} [{m.get('fingerprint_domain', '?')}]"
    )
    side = (path if path.is_dir() else path.parent) / SIDE
    try:
        errors = json.loads(side.read_text()).get("tvq_errors", {})
    except (OSError, ValueError):
        errors = {}
    if errors:
        kinds = terms[-1][1].tensors
        # fp16 tensors' errors (~1e-4) would hide the quantized ones' in one median
        groups = {
            kind: sorted(v[0] for k, v in errors.items() if kinds.get(k, ("q",))[0] == kind)
            for kind in ("q", "full")
        }
        summary = "; ".join(
            f"{label}: median {rel[len(rel) // 2]:.4f}, max {rel[-1]:.4f} over {len(rel)}"
            for label, rel in (("quantized", groups["q"]), ("fp16", groups["full"]))
            if rel
        )
        worst = sorted(errors.items(), key=lambda kv: -kv[1][0])[:5]
        lines.append(f"relative error ‖τ − τ̂‖/‖τ‖ per tensor — {summary}; worst:")
        lines += [f"  {k}: {v[0]:.4f} (max |err| {v[1]:.3g})" for k, v in worst]
    return "\n".join(lines)
