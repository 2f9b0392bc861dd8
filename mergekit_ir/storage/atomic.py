"""Atomic outputs: write to a temporary sibling, then rename.

An interrupted or failed write leaves the previous file (or nothing) behind, never
a half-written one. Temporaries are named ``.NAME.<host>-<pid>.<random>.partial``
(folders) and ``.NAME.<host>-<pid>.<random>.tmp`` (files), so the next write of
``NAME`` can tell its own stale leftovers — from a process on this host that is gone,
or older than a day — from a concurrent writer's, and removes them.

Files and folders get the permissions the umask allows (``mkstemp``/``mkdtemp``
alone would make them private, 0600/0700, which breaks sharing on a cluster).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mergekit_ir.errors import MergeIRError

STALE_AFTER_S = 24 * 3600  # a temporary of another host (or an unknown writer) older than this
LEGACY_STALE_AFTER_S = 600  # temporaries of earlier versions carry no pid: judged by age alone
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
_TEMP = re.compile(r"^(?:(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.)?[a-z0-9_]{8}\.(?:partial|tmp)$")
_OLD = re.compile(r"^old-(?P<pid>\d+)$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tag() -> str:
    return f"{_HOST}-{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(rest: str, mtime: float) -> bool:
    age = time.time() - mtime
    m = _OLD.match(rest)
    if m:
        return not _alive(int(m.group("pid"))) or age > STALE_AFTER_S
    m = _TEMP.match(rest)
    if m is None:
        return False  # not one of ours
    if m.group("pid") is None:
        return age > LEGACY_STALE_AFTER_S
    if m.group("host") == _HOST:
        pid = int(m.group("pid"))
        return pid != os.getpid() and not _alive(pid)
    return age > STALE_AFTER_S


def clean_stale(path: str | Path) -> list[Path]:
    """Remove leftover temporaries of earlier, interrupted writes of ``path``; return them."""
    path = Path(path)
    prefix = f".{path.name}."
    removed: list[Path] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        try:
            stale = _is_stale(entry.name[len(prefix) :], entry.stat(follow_symlinks=False).st_mtime)
        except OSError:
            continue
        if not stale:
            continue
        target = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(target, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                target.unlink()
        removed.append(target)
    return removed


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_tag()}", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def is_cwd_or_above(path: Path) -> bool:
    """``.``, ``..`` and the like: replacing such a folder would take the caller's work with it."""
    here = Path.cwd().resolve()
    target = path.resolve()
    return target == here or target in here.parents


@contextlib.contextmanager
def directory(
    path: str | Path, overwrite: bool = False, content_addressed: bool = False
) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it becomes ``path``.

    With ``overwrite`` an existing ``path`` is replaced only once the new one is complete.
    With ``content_addressed`` (``path`` is named by a digest of what it holds, as cache
    entries are) a folder another process put at ``path`` first is as good as ours: it is
    kept and ours is dropped, so two runs filling one cold cache never collide (with
    ``overwrite`` too, an existing folder is replaced, but one landing during our rename wins).
    """
    path = Path(path)
    if is_cwd_or_above(path) or not path.resolve().name:
        raise MergeIRError(
            f"{path}: refusing to write over the current folder or one above it; "
            "name a new folder for the output"
        )
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{path.name}.{_tag()}", suffix=".partial", dir=path.parent)
    )
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        _shareable(tmp)
        if content_addressed and not overwrite and path.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if path.exists():
            if not overwrite:
                raise FileExistsError(path)
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            _rename_into_place(tmp, path, content_addressed)
            shutil.rmtree(old, ignore_errors=True)
        else:
            _rename_into_place(tmp, path, content_addressed)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _rename_into_place(tmp: Path, path: Path, content_addressed: bool) -> None:
    try:
        os.replace(tmp, path)
    except OSError as exc:
        # another writer's folder landed between our check and the rename: for a
        # content-addressed entry it holds what ours holds, so it stays
        if not (content_addressed and exc.errno in (errno.ENOTEMPTY, errno.EEXIST)):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _shareable(folder: Path) -> None:
    """Files a library wrote private (0600, as some writers' temporaries are) get the
    permissions the umask allows, like every other file of the output."""
    mode = 0o666 & ~_umask()
    for p in folder.rglob("*"):
        with contextlib.suppress(OSError):
            st = p.lstat()
            if p.is_file() and not p.is_symlink() and st.st_mode & 0o077 == 0 and mode & 0o077:
                os.chmod(p, (st.st_mode & 0o100) | mode)


def os_error_message(exc: OSError, target: Path) -> str:
    """One line for a failed write of ``target``: disk full, not writable, or the OS's words."""
    where = exc.filename or target
    kept = f" ({target} is as it was)" if Path(target).exists() else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full at {where}, nothing written{kept}; free space and rerun"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
        return f"{where}: cannot write there ({why}), nothing written{kept}; choose another folder"
    return f"{where}: cannot write {target} ({exc.strerror or exc}), nothing written{kept}"
