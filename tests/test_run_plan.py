"""`mergeir run --dry-run`: where everything comes from, with no weights or data loaded."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from mergekit_ir.cli import main

ROOT = Path(__file__).resolve().parents[1]

REGISTRY = """
datasets:
  local: {beir: data/local, test: test, dev: dev}
  remote: {ir_datasets: beir/scifact, test: test}
triplets:
  t1:
    scorer: {kind: bi-encoder, pooling: mean}
    pretrained: ./models/base           # a path: ./ says so, else it would be a hub id
    domain: some-org/bio-model
    ir: models/ir
experiments:
  e1:
    triplets: [t1]
    datasets: [local, remote]
    fusion: {tune: true}
"""


BERT_CONFIG = '{"model_type": "bert"}'


def beir_files(folder: Path) -> None:
    """The files a BEIR split needs (the dry run checks they are there)."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n')
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n')
    for split in ("test", "dev"):
        (folder / "qrels" / f"{split}.tsv").write_text("q1\td1\t1\n")


def model_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(BERT_CONFIG)


def dry_run(*args: str):
    return CliRunner().invoke(main, ["run", *args, "--dry-run"])


def test_quickstart_dry_run_builds_nothing(tmp_path):
    res = dry_run("--registry", str(ROOT / "registry.yaml"), "--cache-dir", str(tmp_path / "cache"))
    assert res.exit_code == 0, res.output
    assert (
        "quickstart-tiny (bi-encoder)" in res.output
        and "generated offline (quickstart)" in res.output
    )
    assert res.output.rstrip().endswith("ready to run")
    assert not (tmp_path / "cache").exists()  # nothing generated, nothing cached


def test_dry_run_reports_sources_and_problems(tmp_path, monkeypatch):
    beir_files(tmp_path / "data" / "local")
    model_folder(tmp_path / "models" / "ir")
    reg = tmp_path / "registry.yaml"
    reg.write_text(REGISTRY)
    # a real Hugging Face cache layout for some-org/bio-model, so it counts as cached
    import huggingface_hub.constants as hf_constants

    hub = tmp_path / "hub"
    snap = hub / "models--some-org--bio-model" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(BERT_CONFIG)
    (hub / "models--some-org--bio-model" / "refs").mkdir()
    (hub / "models--some-org--bio-model" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub))

    res = dry_run("e1", "--registry", str(reg), "--cache-dir", str(tmp_path / "cache"))
    lines = res.output.splitlines()
    assert res.exit_code == 2
    assert any("local " in ln and "test: test from BEIR folder data/local" in ln for ln in lines)
    assert any("dev:  dev from BEIR folder data/local" in ln for ln in lines)
    assert any(
        "remote" in ln and "ir_datasets beir/scifact/test, downloads on first use" in ln
        for ln in lines
    )
    assert any(
        "Θ0 ./models/base" in ln and f"MISSING: {tmp_path / 'models' / 'base'} does not exist" in ln
        for ln in lines
    )
    assert any("ΘD some-org/bio-model" in ln and "hub, in the local cache" in ln for ln in lines)
    assert any(
        "ΘT models/ir" in ln and f"local folder {tmp_path / 'models' / 'ir'}" in ln for ln in lines
    )
    assert "  fusion        wsum, min-max, λ tuned on dev (local), else [0.5, 0.5]" in lines
    assert "  α             tuned on the mean dev NDCG@10 of local; remote: α = 1" in lines
    assert (
        "error: e1: 1 problem(s) to fix before running "
        "(lines marked MISSING, UNKNOWN or MISMATCH above)" in lines
    )

    model_folder(tmp_path / "models" / "base")
    res = dry_run(
        "e1", "--registry", str(reg), "--dataset", "local", "--cache-dir", str(tmp_path / "cache")
    )
    assert res.exit_code == 0, res.output
    assert "remote" not in res.output and "ready to run" in res.output


def test_dry_run_flags_unknown_ir_datasets_ids(tmp_path):
    reg = tmp_path / "registry.yaml"
    reg.write_text(REGISTRY.replace("ir_datasets: beir/scifact", "ir_datasets: beir/scifactt"))
    res = dry_run("e1", "--registry", str(reg), "--dataset", "remote")
    assert res.exit_code == 2
    assert "UNKNOWN ir_datasets id 'beir/scifactt/test' (see https://ir-datasets.com)" in res.output


def test_bundled_paper_experiments_name_what_they_download():
    res = dry_run("paper-table1", "--registry", str(ROOT / "registry.yaml"))
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if "ΘT castorini/monot5-base-msmarco" in ln)
    assert "hub, to download (" in line or line.rstrip().endswith("hub, in the local cache")
    assert "reported      104 published row(s)" in res.output
    assert res.output.splitlines()[-1].startswith("ready to run")
    scifact_only = dry_run(
        "paper-table1", "--registry", str(ROOT / "registry.yaml"), "--dataset", "scifact"
    )
    assert (
        "reported      26 published row(s)" in scifact_only.output
    )  # 1 BM25 + 5 models × 5 rows: the other datasets' rows are not in it


def test_dry_run_checkpoint_sources_follow_the_loader_rules(tmp_path):
    beir_files(tmp_path / "data" / "local")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "weights.safetensors").write_bytes(b"")
    reg = tmp_path / "registry.yaml"
    reg.write_text(
        REGISTRY.replace("pretrained: ./models/base", "pretrained: ./models/weights.safetensors")
        .replace("domain: some-org/bio-model", "domain: {lora: some-org/bio-lora}")
        .replace("ir: models/ir", 'ir: "not a/valid id"')
    )
    res = dry_run("e1", "--registry", str(reg), "--dataset", "local")
    lines = res.output.splitlines()
    assert any("Θ0" in ln and "is a file; give the folder that holds it" in ln for ln in lines)
    assert any(
        "ΘD lora:some-org/bio-lora" in ln and "hub, to download" in ln for ln in lines
    )  # as the run does
    assert any(
        "ΘT not a/valid id" in ln and "is neither a local folder nor a valid hub id" in ln
        for ln in lines
    )
    assert res.exit_code == 2 and "error: e1: 2 problem(s)" in res.output


def test_quickstart_is_reachable_beside_an_unrelated_registry(tmp_path, monkeypatch):
    (tmp_path / "registry.yaml").write_text("datasets: {other: {beir: ./other}}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MERGEIR_REGISTRY", raising=False)
    res = CliRunner().invoke(main, ["run", "--dry-run", "--cache-dir", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("quickstart:") and "ready to run" in res.output
