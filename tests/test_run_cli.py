"""`mergeir run` end to end on the embedded quickstart: outputs, resume, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mergekit_ir.cli import main

REGISTRY = str(Path(__file__).resolve().parents[1] / "registry.yaml")
pytestmark = pytest.mark.slow


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def numbers(out: Path) -> dict:
    res = json.loads((out / "results.json").read_text())
    return {
        (s["triplet"], r["key"], d, m): c["mean"]
        for s in res["sections"]
        for r in s["rows"]
        for d, cells in r["cells"].items()
        for m, c in cells.items()
    }


def test_quickstart_outputs(quickstart_run):
    root, output = quickstart_run
    out = root / "out"
    assert "smoke demo" in output and "| BM25 |" in output and "Θ' (α=1)" in output
    assert "stage timings:" in output and f"outputs in {out}" in output
    for f in ("results.md", "results.tex", "results.csv", "results.json", "alpha.md", "alpha.png"):
        assert (out / f).is_file(), f
    res = json.loads((out / "results.json").read_text())
    keys = [r["key"] for r in res["sections"][0]["rows"]]
    assert keys == ["bm25", "pretrained", "domain", "ir", "merged@1", "merged@best"]
    assert set(res["alpha_ablation"]["quickstart-tiny"]["values"]["quickstart-toy"]) == {
        "0.1",
        "0.2",
        "0.3",
        "0.4",
        "0.5",
        "0.6",
        "0.7",
        "0.8",
        "0.9",
        "1",
    }
    m = res["manifest"]
    assert (
        m["packages"]["torch"].startswith("2.13")
        and m["checkpoints"]["quickstart-tiny.ir"]["fingerprint"]
    )
    assert set(m["timings"]) >= {"first stage", "scoring", "fusion", "evaluation"}
    trec = (
        (out / "runs" / "quickstart-tiny" / "quickstart-toy" / "merged_at_1.trec")
        .read_text()
        .splitlines()
    )
    assert len(trec[0].split()) == 6 and trec[0].split()[1] == "Q0"
    # every value is a real metric, not a placeholder
    assert all(0.0 <= v <= 1.0 for v in numbers(out).values())


def test_report_rerenders_byte_for_byte(quickstart_run):
    out = quickstart_run[0] / "out"
    before = {
        f: (out / f).read_bytes()
        for f in ("results.md", "results.tex", "results.csv", "alpha.md", "alpha.png")
    }
    res = invoke("report", str(out))
    assert res.exit_code == 0 and "results.md" in res.output
    for f, data in before.items():
        assert (out / f).read_bytes() == data, f


def test_interrupted_run_resumes_from_cache(tmp_path, monkeypatch, quickstart_run):
    """Kill after the first stage (injected failure), re-run: cached work is not redone, numbers identical."""
    from mergekit_ir.experiments import runner as harness

    cache, out = tmp_path / "cache", tmp_path / "out"
    real = harness.TripletRunner.model_ranking
    calls = {"n": 0}

    def dies_after_three(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(harness.TripletRunner, "model_ranking", dies_after_three)
    res = CliRunner().invoke(
        main, ["run", "--registry", REGISTRY, "--out", str(out), "--cache-dir", str(cache), "-q"]
    )
    assert res.exit_code != 0  # click turns Ctrl-C into "Aborted!"
    assert not (out / "results.json").exists()
    monkeypatch.setattr(harness.TripletRunner, "model_ranking", real)

    events: list = []
    real_load = harness.Cache.load_run

    def spy(self, kind, key, label="", **kw):
        run = real_load(self, kind, key, label, **kw)
        events.append((kind, label, run is not None))
        return run

    monkeypatch.setattr(harness.Cache, "load_run", spy)
    res = invoke("run", "--registry", REGISTRY, "--out", str(out), "--cache-dir", str(cache), "-q")
    assert res.exit_code == 0, res.output
    first_stage = [hit for kind, _, hit in events if kind == "first_stage"]
    model_hits = [label for kind, label, hit in events if kind == "model" and hit]
    assert first_stage and all(first_stage)  # BM25 was not recomputed
    assert len(model_hits) == 3  # exactly the three runs finished before the kill
    assert numbers(out) == numbers(quickstart_run[0] / "out")
    assert "cache: " in res.output


def test_no_cache_recomputes_same_numbers(tmp_path, quickstart_run):
    res = invoke(
        "run",
        "--registry",
        REGISTRY,
        "--out",
        str(tmp_path / "o"),
        "--cache-dir",
        str(quickstart_run[0] / "cache"),
        "--no-cache",
        "-q",
    )
    assert res.exit_code == 0
    assert "cache: 0 hits" in res.output
    assert numbers(tmp_path / "o") == numbers(quickstart_run[0] / "out")


def test_run_errors():
    res = CliRunner().invoke(main, ["run", "nope", "--registry", REGISTRY])
    assert res.exit_code == 2 and "no experiment named 'nope'" in res.output
    res = CliRunner().invoke(
        main, ["run", "quickstart", "--registry", REGISTRY, "--dataset", "scifact"]
    )
    assert res.exit_code == 2 and "--dataset scifact: not in experiment quickstart" in res.output


def test_run_compares_with_reported_cells(tmp_path, quickstart_run):
    """A `reported:` block makes the run write reported.md with ours − reported, and `report` keeps it."""
    root = quickstart_run[0]
    res = json.loads((root / "out" / "results.json").read_text())
    rows = {r["key"]: r for r in res["sections"][0]["rows"]}
    bm25 = rows["bm25"]["cells"]["quickstart-toy"]["NDCG@10"]["mean"]
    merged = rows["merged@1"]["cells"]["quickstart-toy"]["P@10"]["mean"]
    dev = res["alpha_ablation"]["quickstart-tiny"]["values"]["quickstart-toy"]["0.5"]
    anchor = "    metrics: [P@10, NDCG@3, NDCG@10, MAP@100]\n\n  # -- the paper"
    text = Path(REGISTRY).read_text()
    assert anchor in text
    block = (
        "    metrics: [P@10, NDCG@3, NDCG@10, MAP@100]\n    reported:\n"
        f"      - {{dataset: quickstart-toy, row: bm25, NDCG@10: {bm25:.3f}, source: toy}}\n"
        f"      - {{triplet: quickstart-tiny, dataset: quickstart-toy, row: merged@1, P@10: {max(merged - 0.02, 0):.3f}, significant: [P@10]}}\n"
        f"      - {{triplet: quickstart-tiny, dataset: quickstart-toy, row: alpha=0.5, NDCG@10: {dev:.3f}}}\n"
        "\n  # -- the paper"
    )
    reg = tmp_path / "registry.yaml"
    reg.write_text(text.replace(anchor, block))
    out = tmp_path / "out"
    run = invoke(
        "run", "--registry", str(reg), "--out", str(out), "--cache-dir", str(root / "cache"), "-q"
    )
    assert run.exit_code == 0, run.output
    assert (
        "vs reported (reported.md): 3 reported cells compared: " in run.output
        and "reported.md" in run.output
    )
    cells = json.loads((out / "results.json").read_text())["reported"]
    assert [c["row"] for c in cells] == ["bm25", "merged@1", "alpha=0.5"]
    assert cells[0]["ours"] == pytest.approx(bm25) and abs(cells[0]["delta"]) <= 0.0005
    assert cells[1]["delta"] == pytest.approx(merged - round(max(merged - 0.02, 0), 3))
    assert cells[2]["ours"] == pytest.approx(dev)
    ours_mark = rows["merged@1"]["cells"]["quickstart-toy"]["P@10"]["significant"]
    assert cells[1]["significant_reported"] is True and cells[1]["significant_ours"] is ours_mark
    assert cells[2]["significant_ours"] is None  # the dev α sweep has no significance test
    md = (out / "reported.md").read_bytes()
    assert b"`*` marks in this run's 2 cells: paper 1, " in md
    assert invoke("report", str(out)).exit_code == 0
    assert (out / "reported.md").read_bytes() == md


def test_layer_wise_alpha_grid_runs_to_the_report(tmp_path, quickstart_run):
    """Gradient and filter-rule α in the sweep grid: tuned, tabled and re-rendered like scalar α."""
    text = Path(REGISTRY).read_text()
    grid = "alpha: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]}\n    first_stage: {backend: bm25s, k: 100}\n"
    assert grid in text
    reg = tmp_path / "registry.yaml"
    reg.write_text(
        text.replace(
            grid,
            "alpha: [0.5, {gradient: [0.0, 1.0]}, [{filter: attention, value: 0.3}, "
            "{value: 1.0}]]}\n    first_stage: {backend: bm25s, k: 100}\n",
            1,
        )
    )
    out = tmp_path / "out"
    res = invoke(
        "run",
        "--registry",
        str(reg),
        "--out",
        str(out),
        "--cache-dir",
        str(quickstart_run[0] / "cache"),
        "-q",
    )
    assert res.exit_code == 0, res.output
    alpha_md = (out / "alpha.md").read_text()
    rows = [ln.split(" | ")[0] for ln in alpha_md.splitlines() if ln.startswith("| ")][1:]
    assert rows[:3] == [
        "| 0.5",
        "| gradient 0 → 1",
        "| attention: 0.3; else: 1",
    ]  # the YAML's order
    assert "filter" not in alpha_md and "{" not in alpha_md
    assert invoke("report", str(out)).exit_code == 0 and (out / "alpha.md").read_text() == alpha_md


def test_scoring_settings_are_part_of_the_cache_key(tmp_path, quickstart_run):
    """A bf16 run after an fp32 one reuses only the first stage, never the fp32 model runs."""
    cache = str(quickstart_run[0] / "cache")
    res = invoke(
        "run", "--registry", REGISTRY, "--out", str(tmp_path / "bf16"), "--cache-dir", cache,
        "--dtype", "bf16", "-q",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "cache: 2 hits" in res.output  # the test and dev first-stage runs
    m = json.loads((tmp_path / "bf16" / "results.json").read_text())["manifest"]
    assert m["scoring"] == {"device": "cpu", "dtype": "bfloat16", "batch_size": 32}


def test_a_bad_device_fails_before_any_work_and_writes_nothing(tmp_path, quickstart_run):
    out = tmp_path / "o"
    for device in ("cuda:9", "quantum"):
        res = CliRunner().invoke(
            main,
            ["run", "--registry", REGISTRY, "--out", str(out), "--device", device,
             "--cache-dir", str(quickstart_run[0] / "cache"), "-q"],
        )  # fmt: skip
        last = res.output.strip().splitlines()[-1]
        assert (
            res.exit_code == 2
            and last.startswith("error: --device")
            and "Traceback" not in res.output
        )
        assert not out.exists()


def test_out_folder_that_is_not_a_run_is_refused_untouched(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    res = CliRunner().invoke(main, ["run", "--registry", REGISTRY, "--out", str(out), "-q"])
    assert res.exit_code == 2 and "is not the output of an earlier `mergeir run`" in res.output
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_dry_run_estimate_counts_the_runs_own_candidates(quickstart_run):
    """--estimate's pairs and documents are exactly what the run re-ranked (its bm25.trec)."""
    from mergekit_ir.evaluation.trec_runs import read_trec

    root, _ = quickstart_run
    res = invoke(
        "run", "--registry", REGISTRY, "--cache-dir", str(root / "cache"), "--dry-run",
        "--estimate", "--out", str(root / "never"),
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    bm25 = read_trec(root / "out" / "runs" / "quickstart-tiny" / "quickstart-toy" / "bm25.trec")
    pairs = sum(len(r) for r in bm25.values())
    docs = len({d for r in bm25.values() for d in r})
    assert f"quickstart-toy:test  {len(bm25)} queries, {pairs:,} pairs, {docs:,} documents" in (
        res.output
    )
    assert "quickstart-tiny: " in res.output and " documents/s (bi-encoder" in res.output
    assert "probes of a few batches" in res.output and not (root / "never").exists()


def test_estimate_samples_whole_queries_up_to_the_target():
    from mergekit_ir.experiments.estimate import _sample, split_work

    run = {"q2": {"a": 1.0, "b": 0.5}, "q1": {"a": 2.0, "c": 1.0}, "q3": {"d": 1.0}}
    assert split_work(run).__dict__ == {"queries": 3, "pairs": 5, "documents": 4}
    assert list(_sample(run, "pair", 3)) == ["q1", "q2"]  # 2 + 2 pairs reach 3
    assert list(_sample(run, "document", 3)) == ["q1", "q2"]  # a, c, then b
    assert list(_sample(run, "document", 99)) == ["q1", "q2", "q3"]


def test_dry_run_estimate_on_two_datasets(tmp_path):
    """Each split gets its own exact line; two test splits and one dev split here."""
    reg = tmp_path / "registry.yaml"
    reg.write_text(
        "datasets:\n"
        "  a: {beir: 'quickstart:toy', test: test, dev: dev}\n"
        "  b: {beir: 'quickstart:toy', test: 'test[:10]'}\n"
        "triplets:\n  t:\n"
        "    scorer: {kind: bi-encoder, pooling: mean, similarity: cosine}\n"
        "    pretrained: 'quickstart:pretrained'\n    domain: 'quickstart:domain'\n"
        "    ir: 'quickstart:ir'\n"
        "experiments:\n  e:\n    triplets: [t]\n    datasets: [a, b]\n"
        "    merge: {method: task_arithmetic, alpha: [0.5, 1.0]}\n    first_stage: {k: 7}\n"
    )
    res = invoke("run", "e", "--registry", str(reg), "--cache-dir", str(tmp_path / "c"),
                 "--dry-run", "--estimate")  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = {
        ln.split()[0]: ln
        for ln in res.output.splitlines()
        if ln.startswith("  a:") or ln.startswith("  b:")
    }
    assert set(lines) == {"a:test", "a:dev", "b:test"}, res.output
    assert "10 queries, 70 pairs" in lines["b:test"]  # k = 7 candidates for each of 10 queries
    assert (
        "t                    ≤ 13 passes (6 baselines, 1 ΘT on dev, 2 α grid on dev, 4 Θ' on test)"
        in res.output
    )
    assert "t: " in res.output and "probes of a few batches" in res.output
