"""Task vectors τ = ΘD − Θ0, kept lazy so they stream tensor by tensor.

A :class:`TaskVector` is a linear combination of *terms*; each term yields a delta
per canonical tensor key on demand:

- :class:`DiffTerm` — ΘD − Θ0 from two checkpoints;
- :class:`StoredTerm` — a task vector saved to disk (safetensors + metadata);
- :class:`LoraTerm` — a PEFT LoRA adapter: scale·B·A per adapted module, without
  materialising a full model.

``+``, ``-``, scalar ``*`` and negation build new combinations without reading any
weights, so τ_bio + τ_lang costs nothing until it is merged or saved.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import torch

from mergekit_ir.errors import CheckpointError
from mergekit_ir.merging.alignment import NameIndex, base_prefix, canonical, is_head, vocab_case
from mergekit_ir.merging.checkpoint import Rows, TensorSource, _SafetensorsFile
from mergekit_ir.merging.finite import all_finite
from mergekit_ir.merging.safetensors_writer import ShardedWriter, TensorSpec
from mergekit_ir.storage import atomic


class Term(Protocol):
    """One summand of a task vector. ``get(key, rows)`` returns only rows ``[start, stop)``
    of the delta (fp32) when ``rows`` is given, so the engine can merge in row blocks."""

    def keys(self) -> list[str]: ...
    def shape(self, key: str) -> tuple[int, ...] | None: ...
    def get(self, key: str, rows: Rows = None) -> torch.Tensor | None: ...
    def describe(self) -> str: ...


def _floating(src: TensorSource, name: str) -> bool:
    return src.info(name).dtype.is_floating_point


class DiffTerm:
    """ΘD − Θ0 for two checkpoints of one architecture."""

    def __init__(self, domain: TensorSource, pretrained: TensorSource):
        self.domain, self.pretrained = domain, pretrained
        d_cfg, p_cfg = domain.config, pretrained.config
        if (
            d_cfg.get("model_type")
            and p_cfg.get("model_type")
            and d_cfg["model_type"] != p_cfg["model_type"]
        ):
            raise CheckpointError(
                f"ΘD {domain.ref} is a {d_cfg['model_type']} model but Θ0 {pretrained.ref} is a "
                f"{p_cfg['model_type']} model; a triplet needs one architecture"
            )
        self.d_index = NameIndex.build("ΘD", domain.names(), d_cfg)
        self.p_index = NameIndex.build("Θ0", pretrained.names(), p_cfg)
        d_keys, p_keys = set(self.d_index.keys()), set(self.p_index.keys())
        for key in sorted(p_keys - d_keys):
            if not is_head(key) and self.d_index.find(key) is None:
                raise CheckpointError(
                    f"tensor {self.p_index.names[key]} is in Θ0 ({pretrained.ref}) but missing in ΘD "
                    f"({domain.ref}); the checkpoints differ in architecture or one is incomplete"
                )
        for key in sorted(d_keys - p_keys):
            if not is_head(key) and self.p_index.find(key) is None:
                raise CheckpointError(
                    f"tensor {self.d_index.names[key]} is in ΘD ({domain.ref}) but not in Θ0 "
                    f"({pretrained.ref}); the checkpoints differ in architecture"
                )
        self._keys = [
            k
            for k in self.p_index.keys()
            if (dn := self.d_index.find(k)) is not None
            and _floating(pretrained, self.p_index.names[k])
            and _floating(domain, dn)
        ]

    def keys(self) -> list[str]:
        return self._keys

    def _names(self, key: str) -> tuple[str, str] | None:
        p, d = self.p_index.find(key), self.d_index.find(key)
        return (p, d) if p is not None and d is not None else None

    def shape(self, key: str) -> tuple[int, ...] | None:
        names = self._names(key)
        if names is None:
            return None
        ps, ds = self.pretrained.info(names[0]).shape, self.domain.info(names[1]).shape
        if ps == ds:
            return ps
        if vocab_case(key, ps, ds):
            return (min(ps[0], ds[0]), *ps[1:])
        raise CheckpointError(
            f"tensor {names[0]}: shape {ps} in Θ0 but {ds} in ΘD; the models do not match"
        )

    def get(self, key: str, rows: Rows = None) -> torch.Tensor | None:
        shape = self.shape(key)
        if shape is None:
            return None
        p_name, d_name = self._names(key)  # type: ignore[misc]
        if rows is None and self.pretrained.info(p_name).shape != shape:
            rows = (0, shape[0])  # vocabulary case: the rows both models have
        if rows is None and self.domain.info(d_name).shape != shape:
            rows = (0, shape[0])
        p = self.pretrained.get(p_name, rows).float()
        d = self.domain.get(d_name, rows).float()
        return d.sub_(p)

    def describe(self) -> str:
        return f"{self.domain.ref} − {self.pretrained.ref}"


class StoredTerm:
    """A task vector saved by :meth:`TaskVector.save`."""

    def __init__(self, path: Path):
        self.path = path
        files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{path}: no task vector here (expected .safetensors files)")
        self.files = [_SafetensorsFile(f) for f in files]
        self.where = {k: f for f in self.files for k in f.entries}
        self.metadata = self.files[0].metadata
        self.dense = self.metadata.get("dense", "true") == "true"
        if self.metadata.get("format_mergekit_ir") != "task_vector":
            raise CheckpointError(
                f"{path}: not a mergekit-ir task vector (saved with `mergeir task-vector`?)"
            )

    def keys(self) -> list[str]:
        return list(self.where)

    def shape(self, key: str) -> tuple[int, ...] | None:
        return self.where[key].info(key).shape if key in self.where else None

    def get(self, key: str, rows: Rows = None) -> torch.Tensor | None:
        return self.where[key].get(key, rows).float() if key in self.where else None

    def describe(self) -> str:
        m = self.metadata
        return f"stored({self.path.name}: {m.get('domain', '?')} − {m.get('pretrained', '?')})"


class LoraTerm:
    """τ of a PEFT LoRA adapter: scaling·B·A per adapted weight."""

    dense = False  # modules without an adapter have a zero delta

    _NAME = re.compile(
        r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?(?:\.weight)?$"
    )

    def __init__(self, folder: Path):
        from peft import LoraConfig

        self.folder = folder
        try:
            self.config = LoraConfig.from_pretrained(str(folder))
        except Exception as exc:
            raise CheckpointError(f"{folder}: not a PEFT LoRA adapter ({exc})") from None
        if getattr(self.config, "use_dora", False):
            raise CheckpointError(
                f"{folder}: DoRA adapters are not linear task vectors; merge it with peft first"
            )
        weights = folder / "adapter_model.safetensors"
        if weights.is_file():
            sf = _SafetensorsFile(weights)
            tensors = {n: sf.get(n) for n in sf.entries}
        elif (folder / "adapter_model.bin").is_file():
            tensors = torch.load(
                folder / "adapter_model.bin", map_location="cpu", weights_only=True
            )
        else:
            raise CheckpointError(f"{folder}: no adapter_model.safetensors or adapter_model.bin")
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for name, t in tensors.items():
            m = self._NAME.match(name)
            if m:
                pairs.setdefault(m.group("module"), {})[m.group("part")] = t
        modules = list(pairs)
        prefix = base_prefix([f"{m}.weight" for m in modules], {})
        self.deltas_src = {canonical(f"{m}.weight", prefix): (m, pairs[m]) for m in modules}

    def _scaling(self, module: str) -> tuple[float, int]:
        cfg = self.config
        r = _pattern_value(cfg.rank_pattern or {}, module, cfg.r)
        alpha = _pattern_value(cfg.alpha_pattern or {}, module, cfg.lora_alpha)
        return (alpha / math.sqrt(r) if cfg.use_rslora else alpha / r), r

    def keys(self) -> list[str]:
        return list(self.deltas_src)

    def shape(self, key: str) -> tuple[int, ...] | None:
        d = self.get(key)
        return tuple(d.shape) if d is not None else None

    def get(self, key: str, rows: Rows = None) -> torch.Tensor | None:
        if key not in self.deltas_src:
            return None
        module, parts = self.deltas_src[key]
        scale, _ = self._scaling(module)
        r = slice(*rows) if rows is not None else slice(None)
        if "lora_embedding_A" in parts:  # Δ = (B·A)ᵀ: its rows are A's columns
            a, b = parts["lora_embedding_A"].float(), parts["lora_embedding_B"].float()
            return (a[:, r].T @ b.T) * scale
        a, b = parts["lora_A"].float(), parts["lora_B"].float()
        if self.config.fan_in_fan_out:  # Δ = (B·A)ᵀ
            return (a[:, r].T @ b.T) * scale
        return (b[r] @ a) * scale

    def describe(self) -> str:
        return f"lora({self.folder})"


def _pattern_value(patterns: dict[str, float], module: str, default: float) -> float:
    for key, value in patterns.items():
        if (
            module == key
            or re.search(rf"(^|\.){re.escape(key)}$", module)
            or re.fullmatch(key, module)
        ):
            return value
    return default


class TaskVector:
    """Σ c_k·term_k, evaluated per tensor key on demand."""

    def __init__(self, terms: Iterable[tuple[float, Term]]):
        self.terms = list(terms)

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_checkpoints(cls, pretrained: TensorSource, domain: TensorSource) -> TaskVector:
        return cls([(1.0, DiffTerm(domain, pretrained))])

    @classmethod
    def from_lora(cls, folder: str | Path) -> TaskVector:
        return cls([(1.0, LoraTerm(Path(folder)))])

    @classmethod
    def from_reference(
        cls, kind: str, folder: str | Path, pretrained: TensorSource | None = None
    ) -> TaskVector:
        """τ for one domain reference: a ``checkpoint`` (ΘD − Θ0), a ``lora`` adapter or a
        saved ``task_vector``; the one place that knows the three kinds."""
        if kind == "lora":
            return cls.from_lora(folder)
        if kind == "task_vector":
            tv = cls.load(folder)
            if pretrained is not None:
                tv.check_base(pretrained, folder)
            return tv
        if kind != "checkpoint":
            raise ValueError(f"unknown domain reference kind {kind!r}")
        if pretrained is None:
            from mergekit_ir.errors import ConfigError

            raise ConfigError(
                f"{folder}: a full domain checkpoint needs Θ0 (--pretrained, or the triplet's "
                "pretrained:) to form ΘD − Θ0"
            )
        from mergekit_ir.merging.checkpoint import open_checkpoint

        return cls.from_checkpoints(pretrained, open_checkpoint(str(folder)))

    @classmethod
    def load(cls, path: str | Path) -> TaskVector:
        """A saved τ: full precision, or quantized (TVQ/RTVQ, dequantized per tensor on read)."""
        from mergekit_ir.merging import quantized_store

        path = Path(path)
        file = path / quantized_store.FILE if path.is_dir() else path
        if file.is_file():
            sf = _SafetensorsFile(file)
            if quantized_store.is_quantized(sf):
                return cls(quantized_store.quantized_terms(path, sf))
        return cls([(1.0, StoredTerm(path))])

    def check_base(self, pretrained: TensorSource, where: str | Path) -> None:
        """A saved τ records the fingerprint of the Θ0 it was taken against: merging it into a
        triplet with another Θ0 would add a difference that belongs to another model."""
        from mergekit_ir.merging.quantized_store import source_fingerprints

        recorded = source_fingerprints(self)["fingerprint_pretrained"].split(",")
        known = [fp for fp in recorded if fp and fp != "?"]
        if known and any(fp != pretrained.fingerprint() for fp in known):
            raise CheckpointError(
                f"{where}: this τ was taken against another Θ0 than {pretrained.ref} (its "
                "recorded fingerprint differs); rebuild it with `mergeir task-vector "
                "--pretrained` of this triplet's Θ0"
            )

    # -- algebra -----------------------------------------------------------------------------
    def __add__(self, other: TaskVector) -> TaskVector:
        return TaskVector(self.terms + other.terms)

    def __sub__(self, other: TaskVector) -> TaskVector:
        return self + (-other)

    def __mul__(self, c: float) -> TaskVector:
        return TaskVector((c * k, t) for k, t in self.terms)

    __rmul__ = __mul__

    def __neg__(self) -> TaskVector:
        return self * -1.0

    # -- per-tensor access ---------------------------------------------------------------
    @property
    def dense(self) -> bool:
        """Whether every term covers the whole model (a missing tensor is then an error, not zero)."""
        return all(getattr(t, "dense", True) for _, t in self.terms)

    def keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for _, t in self.terms:
            seen.update(dict.fromkeys(t.keys()))
        return list(seen)

    def shape(self, key: str) -> tuple[int, ...] | None:
        shapes = {s for _, t in self.terms if (s := t.shape(key)) is not None}
        if len(shapes) > 1:
            raise CheckpointError(
                f"tensor {key}: task vectors disagree on its shape {sorted(shapes)}"
            )
        return shapes.pop() if shapes else None

    def get(self, key: str, rows: Rows = None) -> torch.Tensor | None:
        """The delta for ``key`` in fp32 (only rows ``[start, stop)`` when given), or None if
        no term covers it (zero delta)."""
        out: torch.Tensor | None = None
        for c, term in self.terms:
            d = term.get(key, rows)
            if d is None:
                continue
            if out is None:
                out = d if c == 1.0 else d.mul_(c)
            else:
                out.add_(d, alpha=c)
        return out

    def describe(self) -> str:
        return " + ".join(f"{c:g}·{t.describe()}" for c, t in self.terms)

    def norm(self) -> float:
        """‖τ‖₂ over every tensor, streamed one tensor at a time (cached: it reads τ whole)."""
        if getattr(self, "_norm", None) is None:
            total = 0.0
            for key in self.keys():
                d = self.get(key)
                if d is not None:
                    total += float(d.double().pow(2).sum())
            self._norm = total**0.5
        return self._norm

    def __repr__(self) -> str:
        return f"TaskVector({self.describe()}; {len(self.keys())} tensors, ‖τ‖ = {self.norm():.4g})"

    def save(
        self,
        path: str | Path,
        metadata: dict[str, str] | None = None,
        overwrite: bool = False,
        dtype: torch.dtype = torch.float32,
        allow_nonfinite: bool = False,
    ) -> Path:
        """Write τ as safetensors (canonical keys) so it can be reused without its models.

        A τ with NaN/Inf (from a broken ΘD or Θ0) is refused unless ``allow_nonfinite``:
        it would silently poison every model merged from it later.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise CheckpointError(f"{path}: exists; pass --overwrite to replace it")
        keys = [k for k in self.keys() if self.shape(k) is not None]
        specs = [TensorSpec(k, self.shape(k), dtype) for k in keys]  # type: ignore[arg-type]
        meta = {
            "format_mergekit_ir": "task_vector",
            "terms": self.describe(),
            "dense": str(self.dense).lower(),
            **(metadata or {}),
        }
        if path.exists() and not path.is_dir():
            raise CheckpointError(f"{path}: exists and is not a folder; choose another path")
        if (
            overwrite
            and path.is_dir()
            and any(path.iterdir())
            and not (path / "task_vector.json").is_file()
        ):
            raise CheckpointError(
                f"{path}: not an earlier saved task vector (no task_vector.json), so "
                "--overwrite will not replace it; remove it yourself or choose another folder"
            )
        try:
            return self._write(path, specs, keys, meta, dtype, overwrite, allow_nonfinite)
        except OSError as exc:
            raise CheckpointError(atomic.os_error_message(exc, path)) from None

    def _write(
        self,
        path: Path,
        specs: list[TensorSpec],
        keys: list[str],
        meta: dict[str, str],
        dtype: torch.dtype,
        overwrite: bool,
        allow_nonfinite: bool,
    ) -> Path:
        with atomic.directory(path, overwrite=overwrite) as tmp:
            with ShardedWriter(tmp, specs, 2**62, meta, basename="task_vector") as w:
                for k in keys:
                    t = self.get(k).to(dtype)  # type: ignore[union-attr]
                    if not allow_nonfinite and not all_finite(t):
                        raise CheckpointError(
                            f"tensor {k}: τ = {self.describe()} has NaN/Inf values; check the "
                            "checkpoints or pass --allow-nonfinite (nothing written)"
                        )
                    w.write(k, t)
            (tmp / "task_vector.json").write_text(json.dumps(meta, indent=2))
        return path
