"""The one output-folder policy every command that writes a folder goes through.

Checked before any work (so a refusal never throws an hour of scoring away), for ``merge``,
``run``, ``adapt``, ``task-vector``, ``rerank --out`` and ``--save-best``:

- the path is writable at all: every name at most 255 bytes, the whole at most ``PATH_MAX``;
  the nearest existing folder writable, on a file system that is not read-only;
- it is never the current folder or one above it, never an input, inside one or above one
  (symlinks resolved), so no command can replace or swallow what it reads;
- an existing folder is replaced only when it is this command's own earlier output (it holds
  the command's marker file) or empty — and, for commands with ``--overwrite``, only with it;
- the bytes the command knows it will write fit in the free space (with a margin).

The write itself is :func:`mergekit_ir.storage.atomic.directory`: a temporary sibling renamed
into place, so the output is the previous complete one or the new complete one, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mergekit_ir.errors import MergeIRError
from mergekit_ir.storage import atomic

NAME_MAX = 255  # bytes per path component on every common Linux/macOS file system
FREE_MARGIN_BYTES = 64 * 2**20  # metadata, cards, plots and the file system's own slack


class OutputError(MergeIRError):
    """An output path that cannot or must not be written (named, with what to do)."""


@dataclass(frozen=True)
class OutputKind:
    """What a command writes: how messages name it and the file that marks its own output.

    ``overwrite_flag`` is the flag that allows replacing an earlier output; ``None`` means a
    rerun replaces its own earlier output without one (as ``mergeir run`` does).
    """

    what: str  # "Θ'", "the run's outputs", "ΘD"
    marker: str  # a file only this command writes, e.g. results.json
    earlier: str  # "merge output", "`mergeir run`"
    flag: str = "--out"
    overwrite_flag: str | None = "--overwrite"
    error: type[MergeIRError] = OutputError  # the class a command's callers already catch


def path_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        return 4096


def check_path_names(path: Path, flag: str = "--out") -> None:
    """Every component at most 255 bytes and the whole path within ``PATH_MAX`` — the OS
    would otherwise refuse (ENAMETOOLONG) after the work, when the output is written."""
    absolute = Path(os.path.abspath(path))
    for part in absolute.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise OutputError(
                f"{flag} {path}: the name {part[:40]!r}… is {len(os.fsencode(part))} bytes; "
                f"file systems allow {NAME_MAX}; choose a shorter name"
            )
    # the temporary sibling is ".NAME.<host>-<pid>.<random>.partial": leave room for it
    limit = path_max(nearest_existing(absolute)) - 100
    if len(os.fsencode(str(absolute))) > limit:
        raise OutputError(
            f"{flag} {path}: the path is {len(os.fsencode(str(absolute)))} bytes; "
            f"this system allows about {limit}; choose a shorter path"
        )


def nearest_existing(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not os.path.exists(p) and p != p.parent:  # no OSError for a name too long
        p = p.parent
    return p


def check_writable(path: Path, flag: str = "--out") -> None:
    """The nearest existing folder accepts new entries (read-only mounts included)."""
    parent = nearest_existing(path if not path.exists() else path.parent)
    if not parent.is_dir():
        raise OutputError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
    read_only = False
    with contextlib.suppress(OSError, AttributeError):  # no statvfs: rely on access()
        read_only = bool(os.statvfs(parent).f_flag & os.ST_RDONLY)
    if read_only or not os.access(parent, os.W_OK | os.X_OK):
        why = "a read-only file system" if read_only else "not writable"
        raise OutputError(f"{flag} {path}: {parent} is {why}; choose another folder")


def check_free_space(path: Path, needed_bytes: int, flag: str = "--out") -> None:
    if needed_bytes <= 0:
        return
    parent = nearest_existing(path)
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        return
    if free < needed_bytes + FREE_MARGIN_BYTES:
        raise OutputError(
            f"{flag} {path}: needs about {_size(needed_bytes)} but {parent} has "
            f"{_size(free)} free; free space or choose another folder"
        )


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_not_an_input(out: Path, inputs: Sequence[tuple[str, Path]], kind: OutputKind) -> None:
    target = out.resolve()
    if atomic.is_cwd_or_above(out):
        raise kind.error(
            f"{kind.flag} {out}: is the current folder or one above it; "
            f"name a new folder for {kind.what}"
        )
    for role, folder in inputs:
        src = Path(folder).resolve()
        if target == src:
            raise kind.error(f"{kind.flag} {out}: is the input folder of {role}; choose another")
        if src in target.parents:
            raise kind.error(
                f"{kind.flag} {out}: is inside the input folder of {role} ({folder}); "
                "choose a folder outside the inputs"
            )
        if target in src.parents:
            raise kind.error(
                f"{kind.flag} {out}: contains the input folder of {role} ({folder}); "
                "replacing it would delete the input — choose another folder"
            )


def check_replaceable(out: Path, kind: OutputKind, overwrite: bool) -> None:
    """An existing ``out`` is replaced only if it is empty or this command's earlier output."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise kind.error(f"{kind.flag} {out}: exists and is not a folder; choose another path")
    ours = not any(out.iterdir()) or (out / kind.marker).is_file()
    if kind.overwrite_flag is None:
        if not ours:
            raise kind.error(
                f"{kind.flag} {out}: exists and is not the output of an earlier {kind.earlier} "
                f"(no {kind.marker}); choose an empty or new folder"
            )
        return
    if not overwrite:
        raise kind.error(f"{out}: output folder exists; pass {kind.overwrite_flag} to replace it")
    if not ours:
        raise kind.error(
            f"{out}: not an earlier {kind.earlier} (no {kind.marker}), so "
            f"{kind.overwrite_flag} will not replace it; remove it yourself or choose another folder"
        )


def check_output(
    out: str | Path,
    kind: OutputKind,
    *,
    inputs: Sequence[tuple[str, Path]] = (),
    overwrite: bool = False,
    needed_bytes: int = 0,
) -> Path:
    """Every check of the policy, in the order a user would fix them; returns ``out``."""
    out = Path(out).expanduser()
    check_path_names(out, kind.flag)
    check_not_an_input(out, inputs, kind)
    check_replaceable(out, kind, overwrite)
    check_writable(out, kind.flag)
    check_free_space(out, needed_bytes, kind.flag)
    return out


def os_error_line(exc: OSError) -> str:
    """One line for an OSError that reached the command line (disk full, read-only, a name
    too long, permission): the file and what to do."""
    where = exc.filename or "the output"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full writing {where}; free space and rerun (finished work is cached)"
    if exc.errno == errno.EROFS:
        return f"{where}: read-only file system; choose another folder"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{where}: permission denied; choose another folder or fix its permissions"
    if exc.errno == errno.ENAMETOOLONG:
        return f"{where}: file name too long; choose a shorter name or folder"
    return f"{where}: {exc.strerror or exc}"
