"""Merge outputs: never over an input, never over unrelated files, one line on a failed write."""

from __future__ import annotations

import errno
import os
import re
import stat
import time

import pytest
from click.testing import CliRunner

from mergekit_ir.cli import main
from mergekit_ir.storage import atomic


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def one_line_error(res, pattern: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert re.search(pattern, lines[0]), lines[0]


def merge(t, out, *extra: str):
    return invoke(
        "merge",
        "--ir",
        str(t["ir"]),
        "--pretrained",
        str(t["pretrained"]),
        "--domain",
        str(t["domain"]),
        "--out",
        str(out),
        "-q",
        *extra,
    )


@pytest.mark.parametrize("out", [".", ".."])
def test_out_dot_refused(tiny_triplet, tmp_path, monkeypatch, out):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    one_line_error(merge(tiny_triplet, out, "--overwrite"), r"is the current folder or one above")
    assert (work / "notes.txt").read_text() == "mine"


def test_overwrite_refuses_a_folder_that_is_not_ours(tiny_triplet, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "cat.jpg").write_bytes(b"\xff\xd8")
    one_line_error(merge(tiny_triplet, out, "--overwrite"), r"photos: not an earlier merge output")
    assert (out / "cat.jpg").is_file()
    (out / "cat.jpg").unlink()
    assert merge(tiny_triplet, out, "--overwrite").exit_code == 0  # empty: fine
    assert (out / "mergekit_ir.json").is_file()
    assert merge(tiny_triplet, out, "--overwrite").exit_code == 0  # ours: fine


def test_out_equal_to_inside_or_above_an_input(tiny_triplet, tmp_path):
    t = tiny_triplet
    one_line_error(merge(t, t["ir"], "--overwrite"), r"is the input folder of ΘT")
    one_line_error(merge(t, t["pretrained"] / "merged"), r"is inside the input folder of Θ0")
    one_line_error(
        merge(t, t["root"], "--overwrite"), r"contains the input folder of ΘT .* would delete"
    )
    assert (t["ir"] / "model.safetensors").is_file() and not (t["pretrained"] / "merged").exists()


@pytest.mark.parametrize(
    ("code", "pattern"),
    [
        (errno.ENOSPC, r"^error: disk full at .*, nothing written"),
        (errno.EROFS, r"cannot write there \(read-only file system\), nothing written"),
        (errno.EACCES, r"cannot write there \(permission denied\), nothing written"),
    ],
)
def test_failed_writes_are_one_line(tiny_triplet, tmp_path, monkeypatch, code, pattern):
    out = tmp_path / "m"
    assert merge(tiny_triplet, out).exit_code == 0
    before = (out / "model.safetensors").read_bytes()
    from mergekit_ir.merging import safetensors_writer

    def failing(self, name, tensor):
        raise OSError(code, os.strerror(code), str(out.parent / "shard"))

    monkeypatch.setattr(safetensors_writer.ShardedWriter, "write_rows", failing)
    one_line_error(merge(tiny_triplet, out, "--overwrite", "--alpha", "0.3"), pattern)
    assert (out / "model.safetensors").read_bytes() == before  # the old output is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent_folder(tiny_triplet, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        one_line_error(merge(tiny_triplet, parent / "m"), r"permission denied\), nothing written")
    finally:
        parent.chmod(0o755)


def test_stale_temporaries_of_ours_are_removed(tiny_triplet, tmp_path):
    host = atomic._HOST
    old = time.time() - 3600
    legacy = tmp_path / ".m.abcd1234.partial"  # an earlier version's, an hour old
    dead = tmp_path / f".m.{host}-999999999.efgh5678.partial"  # its process is gone
    live = tmp_path / f".m.{host}-{os.getppid()}.ijkl9012.partial"  # a writer still running
    fresh_legacy = tmp_path / ".m.mnop3456.partial"  # too recent to judge
    other = tmp_path / ".m.notes.txt"  # not one of ours
    for d in (legacy, dead, live, fresh_legacy):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x" * 100)
    other.write_text("keep")
    os.utime(legacy, (old, old))
    assert merge(tiny_triplet, tmp_path / "m").exit_code == 0
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"m", live.name, fresh_legacy.name, other.name}


def test_stale_tmp_files_are_removed_on_the_next_write(tmp_path):
    target = tmp_path / "runs" / "a.trec"
    target.parent.mkdir()
    stale = target.parent / f".a.trec.{atomic._HOST}-999999999.qrst7890.tmp"
    stale.write_text("half")
    atomic.write_text(target, "done\n")
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.trec"]


def test_outputs_honour_the_umask(tiny_triplet, tmp_path):
    old = os.umask(0o022)
    try:
        assert merge(tiny_triplet, tmp_path / "m").exit_code == 0
        path = atomic.write_text(tmp_path / "results.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o755
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.umask(0o077)
    try:
        path = atomic.write_text(tmp_path / "private.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
