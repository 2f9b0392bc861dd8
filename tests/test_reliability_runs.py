"""A run's output folder after a failure, and the warnings a run must carry into its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mergekit_ir.cli import main
from mergekit_ir.experiments import runner as runner_module
from mergekit_ir.reports import render

REGISTRY = str(Path(__file__).resolve().parents[1] / "registry.yaml")
pytestmark = pytest.mark.slow


class Injected(RuntimeError):
    """The failure a test plants at one stage of a run."""


def run(out: Path, cache: Path, *extra: str, registry: str = REGISTRY, env=None):
    return CliRunner().invoke(
        main,
        ["run", *extra, "--registry", registry, "--out", str(out), "--cache-dir", str(cache), "-q"],
        env=env,
    )


def snapshot(folder: Path) -> dict[str, bytes] | None:
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def fail(*_args, **_kwargs):
    raise Injected("injected failure")


STAGES = {
    "prepare_splits": (runner_module.ExperimentRun, "prepare_splits"),
    "tune_alpha": (runner_module.ExperimentRun, "tune_alpha"),
    "model_rankings": (runner_module.ExperimentRun, "model_rankings"),
    "build_section": (runner_module.ExperimentRun, "build_section"),
    "write_trec": (runner_module, "write_trec"),
    "write_reports": (render, "write_reports"),
}


def fail_on_second_call(original):
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # after the first file of its kind is written
            raise Injected("injected failure")
        return original(*args, **kwargs)

    return wrapper


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory) -> Path:
    """One cache for every stage: the failures, not the scoring, are under test."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_failure_at_any_stage_leaves_no_output_or_the_previous_run(
    tmp_path, monkeypatch, stage, warm_cache
):
    owner, name = STAGES[stage]
    out, cache = tmp_path / "out", warm_cache
    with monkeypatch.context() as m:  # no earlier run: the failure leaves nothing at --out
        m.setattr(owner, name, fail if stage != "write_trec" else fail_on_second_call(fail))
        res = run(out, cache)
        assert isinstance(res.exception, Injected), res.output
    assert snapshot(out) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporaries
    assert run(out, cache).exit_code == 0
    before = snapshot(out)
    assert before and "results.json" in before
    with monkeypatch.context() as m:  # an earlier complete run: it survives whole
        original = getattr(owner, name)
        m.setattr(owner, name, fail_on_second_call(original) if stage == "write_trec" else fail)
        res = run(out, cache)
        assert isinstance(res.exception, Injected), res.output
    assert snapshot(out) == before
    assert run(out, cache).exit_code == 0  # and the next run completes from the cache
    assert json.loads((out / "results.json").read_bytes())["sections"]


CROSS_ENCODER_REGISTRY = """
datasets:
  toy: {beir: "quickstart:toy", test: test, dev: dev}
triplets:
  tiny-cross:
    scorer: {kind: cross-encoder}
    pretrained: {pretrained}
    domain: {domain}
    ir: {ir}
experiments:
  cross:
    triplets: [tiny-cross]
    datasets: [toy]
    merge: {method: task_arithmetic, alpha: [0.5, 1.0]}
    first_stage: {backend: bm25s, k: 20}
"""


def test_random_head_warnings_reach_the_report_warm_or_cold_and_strict_refuses(
    tmp_path, tiny_triplet
):
    reg = tmp_path / "registry.yaml"
    reg.write_text(
        CROSS_ENCODER_REGISTRY.replace("{pretrained}", str(tiny_triplet["pretrained"]))
        .replace("{domain}", str(tiny_triplet["domain"]))
        .replace("{ir}", str(tiny_triplet["ir"]))
    )
    out, cache = tmp_path / "out", tmp_path / "cache"
    home = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "MERGEIR_CACHE": None}
    for attempt in ("cold", "warm"):
        res = run(out, cache, "cross", registry=str(reg), env=home)
        assert res.exit_code == 0, (res.output, repr(res.exception))
        (section,) = json.loads((out / "results.json").read_text())["sections"]
        notes = section["notes"]
        assert len(notes) == 2, (attempt, notes)  # Θ0 and ΘD are MLM folders: no trained head
        assert any(str(tiny_triplet["pretrained"]) in n for n in notes)
        assert any(str(tiny_triplet["domain"]) in n for n in notes)
        assert all("scores are meaningless" in n for n in notes)
        md = (out / "results.md").read_text()
        assert "Warnings (rows to read with care):" in md and notes[0] in md
    assert (cache / "fingerprints").is_dir()
    assert not (tmp_path / "xdg" / "mergekit_ir").exists()  # --cache-dir holds it all
    res = run(tmp_path / "strict", tmp_path / "cache2", "cross", "--strict", registry=str(reg))
    assert res.exit_code == 2, res.output
    assert "under --strict" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "strict").exists()
