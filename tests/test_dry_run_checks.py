"""`mergeir run --dry-run` catches what the run would, and prices the work."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from mergekit_ir.cli import main
from mergekit_ir.experiments.dry_run import count_passes
from mergekit_ir.experiments.registry import load_registry

REGISTRY = str(Path(__file__).resolve().parents[1] / "registry.yaml")


def beir(folder: Path, splits=("test", "dev")) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "a b"}\n')
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n')
    for s in splits:
        (folder / "qrels" / f"{s}.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return folder


def registry(tmp_path: Path, datasets: str, scorer: str, model: Path) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text(
        f"datasets:\n{datasets}"
        f"triplets:\n  t:\n    scorer: {{kind: {scorer}}}\n"
        f"    pretrained: {model}\n    domain: {model}\n    ir: {model}\n"
        "experiments:\n  e: {triplets: [t], datasets: [a, b]}\n"
    )
    return path


def dry_run(reg: Path):
    return CliRunner().invoke(main, ["run", "e", "--registry", str(reg), "--dry-run"])


def test_dry_run_flags_split_names_incomplete_folders_and_scorer_mismatch(tmp_path, tiny_triplet):
    a, b = beir(tmp_path / "a"), beir(tmp_path / "b", splits=())
    datasets = (
        f"  a: {{beir: {a}, test: 'tset[:30]', dev: 'dev[:1]'}}\n  b: {{beir: {b}, test: test}}\n"
    )
    res = dry_run(registry(tmp_path, datasets, "monot5", tiny_triplet["ir"]))
    assert res.exit_code == 2, res.output
    assert "qrels/tset.tsv (splits there: dev, test)" in res.output
    assert f"MISSING in BEIR folder {b}: qrels/test.tsv (splits there: none)" in res.output
    assert res.output.count("MISMATCH: ") == 3 and "is not seq2seq" in res.output
    assert "5 problem(s) to fix" in res.output and "Traceback" not in res.output


def test_dry_run_is_ready_when_all_fits(tmp_path, tiny_triplet):
    a, b = beir(tmp_path / "a"), beir(tmp_path / "b")
    datasets = f"  a: {{beir: {a}, test: test, dev: dev}}\n  b: {{beir: {b}, test: test}}\n"
    res = dry_run(registry(tmp_path, datasets, "cross-encoder", tiny_triplet["ir"]))
    assert res.exit_code == 0, res.output
    assert "ready to run" in res.output
    # Θ0, ΘD are ΘT's own folder: ΘT is the one baseline (×2 tests, and on a's dev as the α
    # plot's reference); 10 α on a's dev; 2 Θ' × 2 tests
    assert (
        "t                    ≤ 17 passes (2 baselines, 1 ΘT on dev, 10 α grid on dev, 4 Θ' on test)"
        in res.output
    )


def test_pass_counts_on_the_quickstart():
    reg = load_registry(REGISTRY)
    exp = reg.experiment("quickstart")
    counts = count_passes(reg, exp, "quickstart-tiny", ["quickstart-toy"], ["quickstart-toy"])
    assert counts == {"baselines": 3, "ΘT on dev": 1, "α grid on dev": 10, "Θ' on test": 2}
    res = CliRunner().invoke(main, ["run", "--registry", REGISTRY, "--dry-run"])
    assert "quickstart-tiny      ≤ 16 passes" in res.output


def test_offline_hub_errors_say_hf_hub_offline_is_set(monkeypatch):
    import pytest

    from mergekit_ir.errors import CheckpointError
    from mergekit_ir.references.checkpoints import resolve_checkpoint

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set"):
        resolve_checkpoint("some-org/surely-not-cached-model-xyz")


def test_download_size_counts_what_a_snapshot_fetches():
    from mergekit_ir.experiments.dry_run import download_size
    from mergekit_ir.references.checkpoints import HUB_PATTERNS

    files = [("config.json", 600), ("model.safetensors", 10**9), ("flax_model.msgpack", 10**9)]
    assert download_size(files, HUB_PATTERNS) == 10**9 + 600  # no flax weights
    assert download_size([*files, ("vocab.txt", None)], HUB_PATTERNS) is None


def test_hub_downloads_say_when_the_size_is_unknown(monkeypatch):
    from mergekit_ir.experiments.dry_run import _hub_download

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loc = _hub_download("org/never-downloaded", None)
    assert loc.downloads and "HF_HUB_OFFLINE is set: size unknown" in loc.describe()


def test_pass_counts_include_the_selectors_and_their_test_curve():
    """The plan counts what the run does with selectors, so `pass N/total` never overflows."""
    reg = load_registry(REGISTRY)
    exp = reg.experiment("quickstart-select")
    counts = count_passes(reg, exp, "quickstart-tiny", ["quickstart-toy"], ["quickstart-toy"])
    own = sum(1 for s in exp.alpha_selectors if s.name != "dev")
    assert counts["selectors' α grid"] == own * len(exp.alphas)
    assert counts["test curve (selection report)"] == len(dict.fromkeys([*exp.alphas, 0.0, 1.0]))


def test_the_dry_run_applies_the_runs_scorer_rule(tmp_path, tiny_triplet):
    """A cross-encoder ΘT without a classification head: MISMATCH up front (the run refuses
    it too); Θ0/ΘD without one: a WARNING line, and MISMATCH under --strict."""
    reg = tmp_path / "r.yaml"
    reg.write_text(
        "datasets:\n  toy: {beir: 'quickstart:toy', test: test}\n"
        f"triplets:\n  t: {{scorer: {{kind: cross-encoder}}, pretrained: {tiny_triplet['pretrained']}, "
        f"domain: {tiny_triplet['domain']}, ir: IR}}\n"
        "experiments:\n  e: {triplets: [t], datasets: [toy]}\n"
    )
    text = reg.read_text()
    reg.write_text(text.replace("IR", str(tiny_triplet["ir"])))
    res = CliRunner().invoke(main, ["run", "e", "--registry", str(reg), "--dry-run"])
    assert res.exit_code == 0 and "WARNING:" in res.output and "(--strict" not in res.output, (
        res.output
    )
    strict = CliRunner().invoke(main, ["run", "e", "--registry", str(reg), "--dry-run", "--strict"])
    assert (
        strict.exit_code == 2
        and "MISMATCH" in strict.output
        and "refusing under --strict" in strict.output
    )
    reg.write_text(text.replace("IR", str(tiny_triplet["pretrained"])))  # an MLM folder as ΘT
    res = CliRunner().invoke(main, ["run", "e", "--registry", str(reg), "--dry-run"])
    assert res.exit_code == 2 and "ΘT must be a working scorer" in res.output, res.output
