"""From experiment to model: `merge --from-run` and `run --save-best` write the tuned Θ'."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from mergekit_ir.cli import main
from mergekit_ir.evaluation.trec_runs import read_trec

REGISTRY = str(Path(__file__).resolve().parents[1] / "registry.yaml")
pytestmark = pytest.mark.slow


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("from-run")
    res = invoke(
        "run", "--registry", REGISTRY, "--out", str(root / "run"),
        "--cache-dir", str(root / "cache"), "-q", "--save-best", str(root / "best"),
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return root, res.output


def test_from_run_is_bit_identical_to_merge_at_the_tuned_alpha(finished):
    root, output = finished
    (section,) = json.loads((root / "run" / "results.json").read_text())["sections"]
    alpha = section["tuned_alpha"]["quickstart-toy"]
    assert f"saved quickstart-tiny Θ' (α={alpha}" in output
    res = invoke("merge", "--from-run", str(root / "run"), "--out", str(root / "m"), "-q")
    assert res.exit_code == 0, res.output
    env_cache = str(root / "cache")
    by_hand = CliRunner(env={"MERGEIR_CACHE": env_cache}).invoke(
        main,
        ["merge", "quickstart-tiny", "--registry", REGISTRY, "--alpha", repr(alpha),
         "--out", str(root / "hand"), "-q"],
    )  # fmt: skip
    assert by_hand.exit_code == 0, by_hand.output
    ours, hand, best = weights(root / "m"), weights(root / "hand"), weights(root / "best")
    assert ours.keys() == hand.keys() == best.keys()
    assert all(ours[k].equal(hand[k]) and best[k].equal(hand[k]) for k in hand)
    card = json.loads((root / "m" / "mergekit_ir.json").read_text())
    assert json.dumps(card).count(str((root / "run").resolve())) >= 1  # the run is recorded


def test_from_run_errors_are_one_line(finished, tmp_path):
    root, _ = finished
    cases = {
        ("--from-run", str(tmp_path)): "no results.json",
        ("--from-run", str(root / "run"), "--dataset", "nope"): "--dataset 'nope': not in this run",
        ("--from-run", str(root / "run"), "--triplet", "nope"): "--triplet 'nope': not in this run",
        ("--dataset", "x", "quickstart-tiny"): "--dataset goes with --from-run",
    }
    for args, message in cases.items():
        res = invoke("merge", *args, "--out", str(tmp_path / "o"))
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output and "Traceback" not in res.output, res.output


def test_save_best_refuses_an_unrelated_folder_before_the_run(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    res = invoke("run", "--registry", REGISTRY, "--out", str(tmp_path / "run"),
                 "--save-best", str(tmp_path / "mine"), "-q")  # fmt: skip
    assert (
        res.exit_code == 2 and "--save-best" in res.output and "not an earlier merge" in res.output
    )
    assert not (tmp_path / "run").exists() and (tmp_path / "mine" / "notes.txt").is_file()


def test_eval_of_the_runs_trec_files_gives_the_rows_metrics(finished):
    root, _ = finished
    res = json.loads((root / "run" / "results.json").read_text())
    folder = root / "run" / "runs" / "quickstart-tiny" / "quickstart-toy"
    for row in res["sections"][0]["rows"]:
        path = folder / f"{row['key'].replace('@', '_at_')}.trec"
        out = invoke("eval", str(path), "--dataset", "quickstart-toy", "--registry", REGISTRY,
                     "--cache-dir", str(root / "cache"))  # fmt: skip
        assert out.exit_code == 0, out.output
        line = next(x for x in out.output.splitlines() if x.startswith(f"| {path}"))
        shown = [float(v) for v in line.strip(" |").split("|")[1:]]
        cells = row["cells"]["quickstart-toy"]
        want = [cells[m]["mean"] for m in ("P@10", "NDCG@3", "NDCG@10", "MAP@100")]
        assert shown == pytest.approx(want, abs=5e-5), row["key"]


def test_eval_rejects_a_malformed_run_in_one_line(finished, tmp_path):
    root, _ = finished
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1 0.5 tag\nq1 Q0 d2 two\n")
    out = invoke("eval", str(bad), "--dataset", "quickstart-toy", "--registry", REGISTRY,
                 "--cache-dir", str(root / "cache"))  # fmt: skip
    assert out.exit_code == 2 and f"{bad}:2: expected 6 columns" in out.output
    other = tmp_path / "other.trec"
    other.write_text("nope Q0 d1 1 0.5 tag\n")
    out = invoke("eval", str(other), "--dataset", "quickstart-toy", "--registry", REGISTRY,
                 "--cache-dir", str(root / "cache"))  # fmt: skip
    assert out.exit_code == 2 and "none of its 1 queries is in quickstart-toy" in out.output


def test_non_tty_progress_is_one_labelled_line_per_pass(tmp_path):
    res = invoke(
        "run",
        "--registry",
        REGISTRY,
        "--out",
        str(tmp_path / "run"),
        "--cache-dir",
        str(tmp_path / "cache"),
    )  # fmt: skip  (CliRunner: not a TTY)
    assert res.exit_code == 0, res.output
    passes = [ln for ln in res.output.splitlines() if ln.startswith("pass ")]
    assert len(passes) == 16  # 10 α and ΘT on dev + Θ0, ΘD, ΘT, Θ'(α=1), Θ'(tuned) on test
    assert passes[0].startswith("pass 1/16 · Θ' (α=0.1) · quickstart-toy:dev: ")
    assert passes[10].startswith("pass 11/16 · ΘT · quickstart-toy:dev: ")  # the α plot's line
    assert any(p.startswith("pass 13/16 · ΘD · quickstart-toy:test") for p in passes)
    assert "ETA" in passes[0] and "ETA" not in passes[-1]
    progress = res.output.split("# Results")[0]  # the log before the printed report
    assert "%|" not in res.output and len(progress.splitlines()) < 40  # no bar redraws


def test_rerank_one_model_gives_the_runs_theta_t_row(finished, tmp_path):
    root, _ = finished
    res = json.loads((root / "run" / "results.json").read_text())
    ir = next(r for r in res["sections"][0]["rows"] if r["key"] == "ir")
    out = invoke("rerank", "quickstart:ir", "--scorer", "bi-encoder", "--option", "pooling=mean",
                 "--option", "similarity=cosine", "--dataset", "quickstart-toy", "--experiment",
                 "quickstart", "--registry", REGISTRY, "--cache-dir", str(root / "cache"),
                 "--out", str(tmp_path / "rr"), "-q")  # fmt: skip
    assert out.exit_code == 0, out.output
    shown = {
        line.split("|")[1].strip(): [float(v) for v in line.strip(" |").split("|")[1:]]
        for line in out.output.splitlines()
        if line.startswith("| ") and not line.startswith("| row")
    }
    metrics = ("P@10", "NDCG@3", "NDCG@10", "MAP@100")
    fused = [ir["cells"]["quickstart-toy"][m]["mean"] for m in metrics]
    alone = [ir["unfused"]["quickstart-toy"][m] for m in metrics]
    assert shown["fused"] == pytest.approx(fused, abs=5e-5)
    assert shown["model"] == pytest.approx(alone, abs=5e-5)
    assert (tmp_path / "rr" / "quickstart-toy" / "fused.trec").is_file()
    top5 = invoke("rerank", "quickstart:ir", "--scorer", "bi-encoder", "--dataset",
                  "quickstart-toy", "--first-stage", "bm25s", "--k", "5", "--registry", REGISTRY,
                  "--cache-dir", str(root / "cache"), "--out", str(tmp_path / "k5"), "-q")  # fmt: skip
    assert top5.exit_code == 0, top5.output
    fused5 = read_trec(tmp_path / "k5" / "quickstart-toy" / "fused.trec")
    assert max(len(docs) for docs in fused5.values()) == 5
    bad = invoke("rerank", "quickstart:ir", "--scorer", "nope", "--dataset", "quickstart-toy",
                 "--registry", REGISTRY)  # fmt: skip
    assert bad.exit_code == 2 and "--scorer" in bad.output and "Traceback" not in bad.output
