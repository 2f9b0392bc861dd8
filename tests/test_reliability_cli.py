"""Hostile CLI input to `mergeir merge` / `task-vector`: one line, exit code 2, nothing written."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from mergekit_ir.cli import main

Q = "bert.encoder.layer.0.attention.self.query.weight"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def one_line_error(res, pattern: str) -> None:
    import re

    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert re.search(pattern, lines[0]), lines[0]


def merge_args(t, out, *extra: str) -> list[str]:
    return [
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
    ]


@pytest.mark.parametrize(
    ("alpha", "pattern"),
    [
        ("nan", r"--alpha: nan is not a finite number"),
        (".nan", r"--alpha: nan is not a finite number"),
        ("inf", r"--alpha: inf is not a finite number"),
        ("-.inf", r"--alpha: -inf is not a finite number"),
        ("", r"--alpha '': empty; give a number"),
    ],
)
def test_bad_alpha_refused(tiny_triplet, tmp_path, alpha, pattern):
    res = invoke(*merge_args(tiny_triplet, tmp_path / "m", "--alpha", alpha))
    one_line_error(res, pattern)
    assert not (tmp_path / "m").exists()


def test_weights_for_one_vector(tiny_triplet, tmp_path):
    res = invoke(*merge_args(tiny_triplet, tmp_path / "m", "--param", "weights=[1,2,3]"))
    one_line_error(res, r"--param weights: 3 weight\(s\) given for 1 task vector\(s\)")
    res = invoke(*merge_args(tiny_triplet, tmp_path / "m", "--param", "weights=[.nan]"))
    one_line_error(res, r"--param weights: \[nan\] is not a list of finite numbers")
    assert not (tmp_path / "m").exists()


def test_unknown_device(tiny_triplet, tmp_path):
    res = invoke(*merge_args(tiny_triplet, tmp_path / "m", "--device", "quantum"))
    one_line_error(res, r"--device 'quantum': not a device; use auto, cpu, cuda")


def test_task_vector_from_nan_domain(tiny_triplet, tmp_path):
    broken = tmp_path / "nan"
    shutil.copytree(tiny_triplet["domain"], broken)
    sd = load_file(broken / "model.safetensors")
    sd[Q][0, 0] = float("nan")
    save_file(sd, broken / "model.safetensors", metadata={"format": "pt"})
    args = ["task-vector", "--pretrained", str(tiny_triplet["pretrained"]), "--domain", str(broken)]
    res = invoke(*args, "--out", str(tmp_path / "tau"))
    one_line_error(res, r"tensor encoder\.layer\.0\.attention\.self\.query\.weight: τ = .* NaN/Inf")
    assert not (tmp_path / "tau").exists() and not list(tmp_path.glob(".tau.*"))
    res = invoke(*args, "--out", str(tmp_path / "tau"), "--allow-nonfinite")
    assert res.exit_code == 0 and (tmp_path / "tau").is_dir()
