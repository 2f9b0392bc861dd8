"""Hub-ready cards and `push`: the merge's README.md parses as the hub parses cards; a run's Θ'
carries a model-index of the run's metrics; `push` checks everything up to the upload.

The upload itself needs the network and a token: it is never made here (HfApi is replaced by
a recorder, or offline mode stops it at the first request).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from huggingface_hub import ModelCard

from mergekit_ir.api.hub import plan_push, push, push_command
from mergekit_ir.api.merge import merge, prepare_merge, write_merge
from mergekit_ir.errors import CheckpointError, ConfigError, MergeIRError
from mergekit_ir.results import (
    AlphaAblation,
    AlphaChoice,
    AlphaSelection,
    Cell,
    Results,
    Row,
    Section,
)

ROOT = Path(__file__).resolve().parents[1]
TRIPLET, DATASET, ALPHA = "tiny", "toy", 0.3
METRICS = {"NDCG@10": (0.61234, 0.70001), "P@10": (0.5, 0.55)}  # (alone, fused)


def card_of(folder: Path) -> ModelCard:
    return ModelCard((folder / "README.md").read_text(), ignore_metadata_errors=False)


def hub_cached(folder: Path, cache: Path, repo_id: str) -> Path:
    """``folder`` laid out as huggingface_hub's cache holds a downloaded repo."""
    snapshot = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / "0123abcd"
    shutil.copytree(folder, snapshot)
    return snapshot


def test_a_plain_merge_card_has_hub_metadata_and_no_model_index(tiny_triplet, tmp_path):
    hub = tmp_path / "hub"
    ir = hub_cached(tiny_triplet["ir"], hub, "org/bert-ir")
    pretrained = hub_cached(tiny_triplet["pretrained"], hub, "bert-base-uncased")
    merge(ir, [tiny_triplet["domain"]], tmp_path / "m", pretrained=pretrained,
          params={"alpha": 0.5}, progress=False, cache_dir=tmp_path / "cache")  # fmt: skip
    card = card_of(tmp_path / "m")
    assert card.data.library_name == "transformers"
    assert card.data.tags[:3] == ["mergekit-ir", "merge", "task_arithmetic"]
    assert card.data.base_model == ["org/bert-ir", "bert-base-uncased"]  # ΘD is a local folder
    assert card.data.base_model_relation == "merge"
    assert card.data.eval_results is None and "model-index" not in card.content
    assert "Θ' = merge(ΘT, τ)" in card.text and "AutoModel.from_pretrained" in card.text
    # local inputs only: no base_model at all
    merge(tiny_triplet["ir"], [tiny_triplet["domain"]], tmp_path / "local",
          pretrained=tiny_triplet["pretrained"], params={"alpha": 0.5}, progress=False,
          cache_dir=tmp_path / "cache")  # fmt: skip
    assert "base_model" not in card_of(tmp_path / "local").data.to_dict()


def fake_run(root: Path, *, selector: str | None = None, split: str = "test") -> Path:
    """A finished run's results.json (the shape `mergeir run` writes) and its registry."""
    run = root / "run"
    run.mkdir(parents=True)
    registry = root / "registry.yaml"
    registry.write_text(yaml.safe_dump({"datasets": {DATASET: {"beir": "x", "test": split}}}))

    def cells(which: int) -> dict[str, dict[str, Cell]]:
        return {DATASET: {m: Cell(mean=v[which]) for m, v in METRICS.items()}}

    best = Row(key="merged@best", label=f"Θ' (α={ALPHA})", kind="merged",
               alpha={DATASET: str(ALPHA)}, cells=cells(1),
               unfused={DATASET: {m: v[0] for m, v in METRICS.items()}})  # fmt: skip
    section = Section(TRIPLET, rows=[Row(key="bm25", label="BM25", cells=cells(0)), best],
                      tuned_alpha={DATASET: ALPHA})  # fmt: skip
    results = Results(
        experiment="exp",
        metrics=list(METRICS),
        datasets=[DATASET],
        sections=[section],
        alpha_ablation={TRIPLET: AlphaAblation(split="dev", values={DATASET: {"0.3": 0.7}})},
        fusion={TRIPLET: {"merged@best": {DATASET: {"weights": [0.5, 0.5]}}}},
        manifest={
            "registry": str(registry),
            "experiment": {
                "first_stage": "bm25s",
                "k": 100,
                "fusion_method": "wsum",
                "fusion_norm": "min-max",
            },  # fmt: skip
        },
    )
    if selector:
        choice = AlphaChoice(selector=selector, alpha=str(ALPHA))
        results.alpha_selection = {
            TRIPLET: AlphaSelection(primary=selector, choices={selector: {DATASET: choice}})
        }
    (run / "results.json").write_text(json.dumps(results.to_json()))
    return run


def run_merge(triplet: dict[str, Path], run: Path, out: Path, alpha: float = ALPHA) -> Path:
    """What `merge --from-run` / `run --save-best` write: the provenance names the run."""
    prepared = prepare_merge(
        triplet["ir"], [triplet["domain"]], pretrained=triplet["pretrained"],
        params={"alpha": alpha}, cache_root=out.parent / "cache",
        provenance={"triplet": TRIPLET, "ΘT": "ir", "run": str(run), "experiment": "exp",
                    "tuned for": DATASET, "tuned α": json.dumps(ALPHA)},
    )  # fmt: skip
    write_merge(prepared, out, progress=False)
    return out


def test_a_runs_theta_card_carries_the_runs_metrics_as_a_model_index(tiny_triplet, tmp_path):
    out = run_merge(tiny_triplet, fake_run(tmp_path, split="test[:50%]"), tmp_path / "best")
    card = card_of(out)
    results = card.data.eval_results
    assert card.data.model_name == "best" and len(results) == 2 * len(METRICS)
    alone = {r.metric_name: r for r in results[: len(METRICS)]}  # Θ' alone comes first
    fused = {r.metric_name.removesuffix(" (fused with BM25)"): r for r in results[len(METRICS) :]}
    for metric, (a, f) in METRICS.items():
        assert alone[metric].metric_value == round(a, 4)
        assert fused[metric].metric_value == round(f, 4)
        assert fused[metric].metric_name == f"{metric} (fused with BM25)"
        assert fused[metric].metric_type == alone[metric].metric_type
    r = alone["NDCG@10"]
    assert (r.task_type, r.dataset_name, r.dataset_split) == ("text-ranking", DATASET, "test[:50%]")
    assert r.metric_type == "ndcg_at_10" and alone["P@10"].metric_type == "precision_at_10"
    assert r.task_name == "Reranking BM25 top-100"
    assert r.metric_args == {
        "alpha": ALPHA, "alpha_tuning": "dev", "alpha_tuned_on": "dev split, NDCG@10",
        "merge_method": "task_arithmetic", "first_stage": "bm25s", "k": 100,
    }  # fmt: skip
    assert fused["NDCG@10"].metric_args["fusion"] == {
        "method": "wsum", "norm": "min-max", "weights": [0.5, 0.5]
    }  # fmt: skip
    # the hub's own round trip: model-index -> EvalResults -> the same model-index
    again = ModelCard(card.content, ignore_metadata_errors=False)
    assert again.data.to_dict()["model-index"] == card.data.to_dict()["model-index"]
    assert "| toy (test[:50%]) | NDCG@10 | 0.6123 | 0.7000 | 0.3, dev" in card.text


def test_a_label_free_alpha_says_so(tiny_triplet, tmp_path):
    out = run_merge(tiny_triplet, fake_run(tmp_path, selector="pseudo_queries"), tmp_path / "b")
    args = card_of(out).data.eval_results[0].metric_args
    assert args["alpha_tuning"] == "label-free"
    assert args["alpha_tuned_on"] == "α selector pseudo_queries on NDCG@10"


def test_no_model_index_when_the_run_is_not_this_merges(tiny_triplet, tmp_path, caplog):
    run = fake_run(tmp_path)
    out = run_merge(tiny_triplet, run, tmp_path / "other-alpha", alpha=0.7)
    assert card_of(out).data.eval_results is None
    assert "is not this merge's" in caplog.text
    (run / "results.json").unlink()  # the run is gone: the card is written without it
    assert card_of(run_merge(tiny_triplet, run, tmp_path / "gone")).data.eval_results is None


# -- push -----------------------------------------------------------------------------


class Recorder:
    """Stands in for huggingface_hub.HfApi: records the calls, uploads nothing."""

    calls: list[tuple[str, dict]] = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kw):
        Recorder.calls.append(("create_repo", {"repo_id": repo_id, "token": self.token, **kw}))
        return type("RepoUrl", (), {"repo_id": repo_id, "url": f"https://hf.co/{repo_id}"})()

    def upload_folder(self, **kw):
        Recorder.calls.append(("upload_folder", kw))
        return type("Commit", (), {"commit_url": f"https://hf.co/{kw['repo_id']}/commit/1"})()


@pytest.fixture
def run_theta(tiny_triplet, tmp_path) -> Path:
    out = run_merge(tiny_triplet, fake_run(tmp_path), tmp_path / "best")
    (out / ".cache").mkdir()
    (out / ".cache" / "upload.lock").write_text("")  # hidden: never uploaded
    return out


@pytest.fixture
def no_hub(monkeypatch):
    """Any real hub call fails the test."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("the hub was contacted")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refuse)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", refuse)


def test_a_dry_run_lists_the_files_and_the_validated_card(run_theta, no_hub):
    answer = push(run_theta, "me/tiny-merged", private=True, dry_run=True)
    lines = answer.splitlines()
    assert (
        lines[0].startswith("would upload 6 files")
        and "https://huggingface.co/me/tiny-merged" in lines[0]
    )
    assert "(private when created)" in lines[0]
    listed = [line.split()[0] for line in lines[1:7]]
    assert listed == sorted(["README.md", "config.json", "mergekit_ir.json", "model.safetensors",
                             "tokenizer.json", "tokenizer_config.json"])  # fmt: skip
    assert ".cache/upload.lock" not in answer
    assert (
        "model card: valid for the hub" in answer
        and "model-index 'best': 4 results on toy" in answer
    )
    assert "model-index:" in answer and "ndcg_at_10" in answer


def test_push_sends_exactly_the_listed_files(run_theta, monkeypatch):
    import huggingface_hub

    Recorder.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", Recorder)
    url = push(run_theta, "me/tiny-merged", private=True, token="hf_x")
    assert url == "https://hf.co/me/tiny-merged/commit/1"
    (create, kw1), (upload, kw2) = Recorder.calls
    assert create == "create_repo" and kw1["private"] is True and kw1["exist_ok"] is True
    assert kw1["token"] == "hf_x"
    files = [p for p, _ in plan_push(run_theta, "me/tiny-merged").files]
    assert upload == "upload_folder" and kw2["allow_patterns"] == files
    assert Path(kw2["folder_path"]) == run_theta and kw2["repo_id"] == "me/tiny-merged"


def test_a_failed_upload_is_one_line(run_theta, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no request leaves
    with pytest.raises(MergeIRError) as err:
        push(run_theta, "me/tiny-merged", token="hf_not_a_real_token")
    message = str(err.value)
    assert "\n" not in message and "the upload failed" in message and "HF_TOKEN" in message


def test_what_push_refuses_before_any_upload(run_theta, tmp_path, no_hub):
    with pytest.raises(ConfigError, match="not a hub repo id"):
        push(run_theta, "me/two/slashes", dry_run=True)
    with pytest.raises(ConfigError, match="not a hub repo id"):
        push(run_theta, "bad repo name", dry_run=True)
    with pytest.raises(ConfigError, match="not a folder"):
        push(tmp_path / "nope", "me/x", dry_run=True)
    broken = tmp_path / "broken"
    shutil.copytree(run_theta, broken)
    card = (broken / "README.md").read_text()
    (broken / "README.md").write_text(card.replace("type: text-ranking", "kind: text-ranking", 1))
    with pytest.raises(CheckpointError, match="not valid for the hub") as err:
        push(broken, "me/x", dry_run=True)
    assert "\n" not in str(err.value)
    (broken / "README.md").write_text("---\ntags: [unclosed\n---\n")
    with pytest.raises(CheckpointError, match="not valid for the hub"):
        push(broken, "me/x", dry_run=True)
    (broken / "README.md").unlink()
    with pytest.raises(CheckpointError, match="no model card"):
        push(broken, "me/x")
    (broken / "README.md").write_text(card)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model weights"):
        push(broken, "me/x", dry_run=True)


def test_push_command(run_theta, monkeypatch, no_hub):
    runner = CliRunner()
    res = runner.invoke(push_command, [str(run_theta), "me/tiny-merged", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("would upload 6 files") and "(public when created)" in res.output
    res = runner.invoke(push_command, [str(run_theta), "me/two/slashes", "--dry-run"])
    assert res.exit_code == 2 and res.output.startswith(
        "error: 'me/two/slashes': not a hub repo id"
    )
    assert len(res.output.strip().splitlines()) == 1
    import huggingface_hub

    Recorder.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", Recorder)
    res = runner.invoke(push_command, [str(run_theta), "me/tiny-merged", "--private"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"uploaded {run_theta} to https://hf.co/me/tiny-merged/commit/1"
    assert Recorder.calls[0][1]["private"] is True
    assert "--dry-run" in runner.invoke(push_command, ["--help"]).output


# -- the real thing: a quickstart run's --save-best and --from-run ----------------------


@pytest.mark.slow
def test_save_best_and_from_run_write_the_runs_metrics(tmp_path):
    from mergekit_ir.cli import main

    registry = str(ROOT / "registry.yaml")
    res = CliRunner().invoke(main, ["run", "--registry", registry, "--out", str(tmp_path / "run"),
                                    "--cache-dir", str(tmp_path / "cache"), "-q",
                                    "--save-best", str(tmp_path / "best")])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["merge", "--from-run", str(tmp_path / "run"),
                                    "--out", str(tmp_path / "from-run"), "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    raw = json.loads((tmp_path / "run" / "results.json").read_text())
    (section,) = raw["sections"]
    best = next(r for r in section["rows"] if r["key"] == "merged@best")
    (dataset,) = section["tuned_alpha"]
    for folder in ("best", "from-run"):
        card = card_of(tmp_path / folder)
        got = {r.metric_name: r for r in card.data.eval_results}
        assert {r.task_name for r in card.data.eval_results} == {"Reranking BM25 top-100"}
        for metric in raw["metrics"]:
            alone, fused = got[metric], got[f"{metric} (fused with BM25)"]
            assert alone.metric_value == round(best["unfused"][dataset][metric], 4)
            assert fused.metric_value == round(best["cells"][dataset][metric]["mean"], 4)
            assert alone.metric_args["alpha"] == section["tuned_alpha"][dataset]
            assert alone.metric_args["alpha_tuning"] == "dev"
            assert alone.dataset_name == dataset and alone.dataset_split == "test"
    assert "would upload" in push(tmp_path / "best", "me/quickstart-merged", dry_run=True)


def test_the_docs_model_index_example_is_a_valid_card():
    import re

    page = (ROOT / "docs" / "merging.md").read_text()
    example = re.search(r"```yaml\n(model-index:.*?)```", page, re.S).group(1)
    card = ModelCard(f"---\n{example}---\n", ignore_metadata_errors=False)
    names = [r.metric_name for r in card.data.eval_results]
    assert names == ["NDCG@10", "NDCG@10 (fused with BM25)"]
