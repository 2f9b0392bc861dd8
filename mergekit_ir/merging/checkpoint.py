"""Lazy, per-tensor access to checkpoints: `TensorSource`.

A checkpoint reference is a local folder or a Hugging Face hub id (optionally
pinned to a revision). Weights are read one tensor at a time:

- safetensors (single or sharded through ``*.index.json``): the header is checked
  with ``safetensors.safe_open``; tensor bytes are then read with positioned reads
  (``os.pread``) rather than a memory map, so touching a tensor does not leave
  its pages in the process's resident set — peak memory stays at a few tensors
  however large the model;
- legacy ``pytorch_model.bin``: ``torch.load(mmap=True, weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from mergekit_ir.errors import CheckpointError
from mergekit_ir.references.checkpoints import resolve_checkpoint

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
Rows = tuple[int, int] | None
"""A range ``[start, stop)`` along a tensor's first dimension (None: the whole tensor)."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


_OPEN_LOCK = threading.Lock()


class _SafetensorsFile:
    """One .safetensors file read tensor by tensor with positioned reads."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with safe_open(str(path), framework="pt") as f:  # validates header and sizes
                names = list(f.keys())
        except (SafetensorError, OSError, Exception) as exc:
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({exc}); the file is corrupt or truncated — re-download it"
            ) from None
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        self.data_start = 8 + n
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name in names:
            e = header[name]
            begin, end = e["data_offsets"]
            self.entries[name] = (e["dtype"], tuple(e["shape"]), begin, end)
        size = path.stat().st_size
        if any(self.data_start + e[3] > size for e in self.entries.values()):
            raise CheckpointError(
                f"{path}: truncated (tensor data runs past the end of the file); re-download it"
            )
        self.metadata = header.get("__metadata__") or {}
        self._handle: int | None = None

    def info(self, name: str) -> TensorInfo:
        code, shape, _, _ = self.entries[name]
        if code not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name} has unsupported dtype {code}")
        return TensorInfo(shape, SAFETENSORS_DTYPES[code], self.path)

    def get(self, name: str, rows: Rows = None) -> torch.Tensor:
        """The tensor, or only its rows ``[start, stop)`` along the first dimension."""
        code, shape, begin, end = self.entries[name]
        dtype = SAFETENSORS_DTYPES[code]
        if rows is None:
            return self.read(name, 0, (end - begin) // dtype.itemsize).reshape(shape)
        start, stop = rows
        row = math.prod(shape[1:])
        return self.read(name, start * row, stop * row).reshape(stop - start, *shape[1:])

    def read(self, name: str, first: int, last: int) -> torch.Tensor:
        """Elements ``[first, last)`` of the tensor's flat data, as a 1-D tensor of its dtype.

        One positioned read straight into the new tensor's (uninitialised) storage: no
        zero-fill pass, no copy, and no memory map whose pages would stay resident.
        """
        code, _, begin, end = self.entries[name]
        dtype = SAFETENSORS_DTYPES[code]
        size = dtype.itemsize
        lo, hi = begin + first * size, begin + last * size
        if not begin <= lo <= hi <= end:
            raise CheckpointError(
                f"{self.path}: tensor {name} has {(end - begin) // size} values, "
                f"elements [{first}, {last}) requested"
            )
        buf = torch.empty(hi - lo, dtype=torch.uint8)
        if hi > lo:
            view, off = memoryview(buf.numpy()), 0
            fd = self._fd()
            while off < len(view):
                got = os.preadv(fd, [view[off:]], self.data_start + lo + off)
                if got <= 0:
                    raise CheckpointError(
                        f"{self.path}: unexpected end of file reading tensor {name}"
                    )
                off += got
        return buf.view(dtype)

    def _fd(self) -> int:
        """One read-only descriptor per file for its lifetime (positioned reads share it,
        from any thread: the merge engine reads blocks in parallel)."""
        if self._handle is None:
            with _OPEN_LOCK:
                if self._handle is None:
                    self._handle = os.open(self.path, os.O_RDONLY)
        return self._handle

    def __del__(self) -> None:
        fd = getattr(self, "_handle", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __getstate__(self) -> dict[str, Any]:  # descriptors do not travel to other processes
        return {**self.__dict__, "_handle": None}


class TensorSource:
    """The tensors of one checkpoint folder, opened lazily."""

    def __init__(self, folder: str | Path, ref: str | None = None, revision: str | None = None):
        self.folder = Path(folder)
        self.ref = ref or str(folder)
        self.revision = revision
        self._files: dict[str, _SafetensorsFile] = {}
        self._bin: dict[str, dict[str, torch.Tensor]] = {}
        self._where: dict[str, str] = {}
        self._infos: dict[str, TensorInfo] = {}
        self._index()

    def _index(self) -> None:
        folder = self.folder
        st_index = folder / "model.safetensors.index.json"
        bin_index = folder / "pytorch_model.bin.index.json"
        if (folder / "model.safetensors").is_file():
            files = {"model.safetensors": None}
        elif st_index.is_file() or bin_index.is_file():
            idx_path = st_index if st_index.is_file() else bin_index
            try:
                weight_map = json.loads(idx_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise CheckpointError(
                    f"{idx_path}: broken shard index ({exc}); re-download the checkpoint"
                ) from None
            files = {f: None for f in dict.fromkeys(weight_map.values())}
        elif (folder / "pytorch_model.bin").is_file():
            files = {"pytorch_model.bin": None}
        else:
            other = sorted(p.name for p in folder.glob("*.safetensors"))
            if len(other) == 1:
                files = {other[0]: None}
            else:
                raise CheckpointError(
                    f"{folder}: no model weights (looked for {', '.join(WEIGHT_FILES)}); "
                    "is this the right folder?"
                )
        for fname in files:
            path = folder / fname
            if path.is_symlink() and not path.exists():
                raise CheckpointError(
                    f"{path}: a symbolic link to {os.readlink(path)}, which does not exist; "
                    "re-download the checkpoint or fix the link"
                )
            if not path.is_file():
                raise CheckpointError(
                    f"{path}: shard listed in the index is missing; re-download the checkpoint"
                )
            if fname.endswith(".safetensors"):
                sf = _SafetensorsFile(path)
                self._files[fname] = sf
                for name in sf.entries:
                    self._where[name] = fname
                    self._infos[name] = sf.info(name)
            else:
                try:
                    sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
                except Exception:
                    raise CheckpointError(
                        f"{path}: not a safe tensor archive (torch refuses it with "
                        "weights_only=True: a legacy or malicious pickle, or a corrupt file), and "
                        "mergeir never unpickles code; convert it to safetensors where you trust it"
                    ) from None
                self._bin[fname] = sd
                for name, t in sd.items():
                    self._where[name] = fname
                    self._infos[name] = TensorInfo(tuple(t.shape), t.dtype, path)

    # -- the per-tensor interface ------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, name: str) -> bool:
        return name in self._infos

    def info(self, name: str) -> TensorInfo:
        return self._infos[name]

    def get(self, name: str, rows: Rows = None) -> torch.Tensor:
        """One tensor (a fresh copy), or only its rows ``[start, stop)``."""
        fname = self._where[name]
        if fname in self._files:
            return self._files[fname].get(name, rows)
        t = self._bin[fname][name]
        return (t if rows is None else t[rows[0] : rows[1]]).clone()

    @property
    def config(self) -> dict[str, Any]:
        path = self.folder / "config.json"
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: not valid JSON ({exc.msg})") from None

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self._infos.values())

    def fingerprint(self, cache_dir: Path | None = None) -> str:
        """A content hash of the checkpoint: the weight files it reads and its side files.

        Side files (config, tokenizer, sentence-transformers modules) change scores too.
        Top-level weight files it does not read (a ``pytorch_model.bin`` beside the
        safetensors) are left out, and so are sub-folder weights over 64 MiB (ONNX and
        similar exports; sentence-transformers heads are far smaller). Digests are
        cached (in ``cache_dir``, default ``<cache>/fingerprints``), so only the first call
        reads the bytes.
        """
        from mergekit_ir.storage.fingerprint import files_fingerprint, folder_files

        used = set(self._where.values())
        files = []
        for rel, path in folder_files(self.folder):
            is_weight = rel.endswith(WEIGHT_SUFFIXES)
            if is_weight and "/" not in rel and rel not in used:
                continue
            if is_weight and "/" in rel and path.stat().st_size > 64 * 2**20:
                continue
            files.append((rel, path))
        return files_fingerprint(files, salt="checkpoint", cache_dir=cache_dir)


def open_checkpoint(
    ref: str,
    revision: str | None = None,
    base_dir: Path | None = None,
    cache_root: Path | None = None,
) -> TensorSource:
    """A :class:`TensorSource` for a folder, hub id or quickstart item (resolved by
    :func:`mergekit_ir.references.checkpoints.resolve_checkpoint`)."""
    folder = resolve_checkpoint(ref, revision, base_dir, cache_root)
    weights_folder = sentence_transformers_weights(folder)
    return TensorSource(weights_folder, ref=ref, revision=revision)


def sentence_transformers_weights(folder: Path) -> Path:
    """Older sentence-transformers folders keep the transformer in a sub-folder."""
    if any((folder / f).is_file() for f in WEIGHT_FILES):
        return folder
    modules = folder / "modules.json"
    if modules.is_file():
        for m in json.loads(modules.read_text()):
            if m.get("type", "").endswith("Transformer") and m.get("path"):
                return folder / m["path"]
    return folder
