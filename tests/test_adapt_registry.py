"""A triplet's `domain: {adapt: ...}`: validation names the YAML path; `mergeir run` builds ΘD
once (content-addressed cache), `--dry-run` says it will be built; Θ0 = ΘT is scored once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from mergekit_ir.cli import main
from mergekit_ir.errors import ConfigError
from mergekit_ir.experiments.registry import load_registry


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ADAPT = {
    "corpus": "quickstart-toy",
    "steps": 3,
    "head_warmup": 2,
    "max_length": 32,
    "batch_size": 8,
}


def registry(
    tmp_path: Path, domain, pretrained="quickstart:pretrained", ir="quickstart:ir"
) -> Path:
    triplet = {
        "scorer": {"kind": "bi-encoder", "pooling": "mean", "similarity": "cosine"},
        "ir": ir,
        "domain": domain,
    }
    if pretrained:
        triplet["pretrained"] = pretrained
    raw = {
        "datasets": {"quickstart-toy": {"beir": "quickstart:toy", "test": "test", "dev": "dev"}},
        "triplets": {"t": triplet},
        "experiments": {
            "e": {
                "triplets": ["t"],
                "datasets": ["quickstart-toy"],
                "merge": {"method": "task_arithmetic", "alpha": [0.5, 1.0]},
                "first_stage": {"backend": "bm25s", "k": 20},
            }
        },
    }
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


@pytest.mark.parametrize(
    "adapt, message",
    [
        ({"steps": 3}, r"triplets\.t\.domain\.adapt\.corpus: missing required field"),
        ({**ADAPT, "stepz": 3}, r"triplets\.t\.domain\.adapt\.stepz: unknown field"),
        ({**ADAPT, "steps": "many"}, r"triplets\.t\.domain\.adapt\.steps: expected int"),
        ({**ADAPT, "objective": "nsp"}, r"triplets\.t\.domain\.adapt\.objective: 'nsp'"),
        ({**ADAPT, "base": "theta"}, r"triplets\.t\.domain\.adapt\.base: 'theta'"),
        ({**ADAPT, "epochs": 1}, r"triplets\.t\.domain\.adapt: give steps or epochs"),
        ({**ADAPT, "lora": {"rank": 4}}, r"triplets\.t\.domain\.adapt\.lora\.rank: unknown field"),
    ],
)
def test_adapt_block_errors_name_the_yaml_path(tmp_path, adapt, message):
    with pytest.raises(ConfigError, match=message):
        load_registry(registry(tmp_path, {"adapt": adapt}))


def test_adapt_block_parses_and_needs_a_base(tmp_path):
    reg = load_registry(registry(tmp_path, {"adapt": {**ADAPT, "lora": {"r": 4}}}))
    ref = reg.triplet("t").domains[0]
    assert ref.kind == "adapt" and dict(ref.adapt.lora) == {"r": 4} and not ref.is_model
    assert reg.triplet("t").domain_rows == ()
    with pytest.raises(ConfigError, match=r"triplets\.t\.pretrained: missing required field"):
        load_registry(registry(tmp_path, {"adapt": ADAPT}, pretrained=None))
    ok = load_registry(registry(tmp_path, {"adapt": {**ADAPT, "base": "ir"}}, pretrained=None))
    assert ok.triplet("t").domains[0].adapt.base == "ir"


def _run(reg: Path, tmp_path: Path, *extra: str):
    return CliRunner().invoke(
        main,
        [
            "run",
            "e",
            "--registry",
            str(reg),
            "--out",
            str(tmp_path / "out"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--device",
            "cpu",
            "-q",
            *extra,
        ],
        catch_exceptions=False,
    )


@pytest.mark.slow
def test_run_builds_the_adapt_domain_once_and_reuses_it(tmp_path):
    reg = registry(tmp_path, {"adapt": ADAPT})
    dry = _run(reg, tmp_path, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "will be built: mlm, 3 steps, ≈768 tokens" in dry.output and "ready to run" in dry.output
    first = _run(reg, tmp_path)
    assert first.exit_code == 0, first.output
    assert "building (3 steps" in first.output
    built = list((tmp_path / "cache" / "adapt").iterdir())
    assert len([b for b in built if b.is_dir() and not b.name.endswith(".checkpoint")]) == 1
    card = json.loads((built[0] / "mergekit_ir_adapt.json").read_text())
    assert (
        card["head_warmup_steps"] == 2 and card["steps"] == 3
    )  # quickstart BERTs have no MLM head
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    keys = [r["key"] for r in res["sections"][0]["rows"]]
    assert keys == ["bm25", "pretrained", "domain", "ir", "merged@1", "merged@best"]
    dry = _run(reg, tmp_path, "--dry-run")
    assert "built, in the cache" in dry.output
    again = _run(reg, tmp_path)
    assert again.exit_code == 0 and "cached (" in again.output and "building" not in again.output


@pytest.mark.slow
def test_same_theta0_and_thetat_scores_once_with_an_adapt_domain_from_ir(tmp_path, monkeypatch):
    from mergekit_ir.experiments import runner

    calls = []
    original = runner.TripletRunner.model_ranking

    def counting(self, variant, identity, split, *args, **kwargs):
        calls.append((variant, split.role))
        return original(self, variant, identity, split, *args, **kwargs)

    monkeypatch.setattr(runner.TripletRunner, "model_ranking", counting)
    reg = registry(tmp_path, {"adapt": {**ADAPT, "base": "ir"}}, pretrained="quickstart:ir")
    res = _run(reg, tmp_path)
    assert res.exit_code == 0, res.output
    rows = {
        r["key"]: r
        for r in json.loads((tmp_path / "out" / "results.json").read_text())["sections"][0]["rows"]
    }
    assert rows["pretrained"]["cells"] == rows["ir"]["cells"]
    variants = {v for v, _ in calls}
    assert "pretrained" not in variants and {"ir", "domain"} <= variants, calls
