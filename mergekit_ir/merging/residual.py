"""RTVQ: several task vectors stored as one shared quantized base plus small quantized offsets.

Kept apart from :mod:`mergekit_ir.merging.quantized_store` (the format, read by
:class:`~mergekit_ir.merging.task_vector.TaskVector`) because writing offsets needs the
task-vector arithmetic: the store sits below ``TaskVector``, this sits above it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mergekit_ir.errors import CheckpointError
from mergekit_ir.merging.quantized_store import (
    SIDE,
    QuantizedTerm,
    QuantSpec,
    save_quantized,
    source_fingerprints,
)
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.storage import atomic


def save_residual(
    vectors: Sequence[tuple[str, Any]],
    out: str | Path,
    base_bits: int = 3,
    spec: QuantSpec | None = None,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
    allow_nonfinite: bool = False,
) -> list[Path]:
    """RTVQ: ``out/base`` (mean τ at ``base_bits``) and ``out/<name>`` offsets at ``spec.bits``."""
    spec = spec or QuantSpec(bits=2)
    out = Path(out)
    if len(vectors) < 2:
        raise CheckpointError("--residual needs at least two domain vectors sharing Θ0")
    names = [n for n, _ in vectors]
    if len(set(names)) != len(names) or "base" in names:
        raise CheckpointError(f"--residual: vector names must be distinct and not 'base': {names}")
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out}: exists; pass --overwrite to replace it")
    if out.exists() and any(out.iterdir()) and not (out / "base" / SIDE).is_file():
        raise CheckpointError(
            f"{out}: not an earlier RTVQ folder, so --overwrite will not replace it; choose another"
        )
    base_id = uuid.uuid4().hex
    n = len(vectors)
    mean = sum((v * (1.0 / n) for _, v in vectors[1:]), vectors[0][1] * (1.0 / n))
    base_spec = QuantSpec(base_bits, spec.group_size, spec.keep_full, spec.keep_full_below)
    try:
        with atomic.directory(out, overwrite=overwrite) as tmp:
            save_quantized(
                mean,
                tmp / "base",
                base_spec,
                {**(metadata or {}), "tvq_role": "rtvq-base", "tvq_id": base_id, "domain": "mean"},
                allow_nonfinite=allow_nonfinite,
            )
            base = TaskVector([(1.0, QuantizedTerm(tmp / "base"))])
            for name, v in vectors:
                meta = {
                    **(metadata or {}),
                    **source_fingerprints(v),
                    "tvq_role": "rtvq-offset",
                    "tvq_base": "../base",
                    "tvq_base_id": base_id,
                    "tvq_base_bits": str(base_bits),
                    "domain": name,
                }
                save_quantized(
                    v - base,
                    tmp / name,
                    spec,
                    meta,
                    allow_nonfinite=allow_nonfinite,
                    reference=base,
                )
    except OSError as exc:
        raise CheckpointError(atomic.os_error_message(exc, out)) from None
    return [out / name for name in names]
