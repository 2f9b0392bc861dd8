"""The streaming merge engine on tiny real checkpoints: outputs, alignment and bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from mergekit_ir.cli import main
from mergekit_ir.errors import CheckpointError
from mergekit_ir.merging.checkpoint import open_checkpoint
from mergekit_ir.merging.engine import MergeJob, build_plan, merge_to_folder
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.plugin_host import catalog

Q = "encoder.layer.0.attention.self.query.weight"


def job_for(t, alpha=0.5, ir="ir", domain="domain", **kw) -> MergeJob:
    pre = open_checkpoint(str(t["pretrained"]))
    tv = TaskVector.from_checkpoints(
        pre, open_checkpoint(str(t[domain] if isinstance(domain, str) else domain))
    )
    ir_src = open_checkpoint(str(t[ir] if isinstance(ir, str) else ir))
    return MergeJob(
        ir_src,
        [tv],
        catalog().merge_method("task_arithmetic"),
        {"alpha": alpha, "weights": None},
        pretrained=pre,
        **kw,
    )


def expected(t, name_t, name_0, alpha):
    T = load_file(t["ir"] / "model.safetensors")
    P = load_file(t["pretrained"] / "model.safetensors")
    D = load_file(t["domain"] / "model.safetensors")
    return T[name_t] + alpha * (D[name_0] - P[name_0])


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def merge_args(t) -> list[str]:
    """`mergeir merge` arguments naming the tiny triplet's three folders."""
    return ["merge", "--ir", str(t["ir"]), "--pretrained", str(t["pretrained"]),
            "--domain", str(t["domain"])]  # fmt: skip


def test_cli_merge_reloads_with_transformers(tiny_triplet, tmp_path):
    from transformers import AutoModelForSequenceClassification

    t = tiny_triplet
    out = tmp_path / "merged"
    res = run_cli(
        *merge_args(t),
        "--alpha",
        "0.3",
        "--out",
        str(out),
        "-q",
    )
    assert res.exit_code == 0, res.output
    assert "merged" in res.output and "copied from ΘT" in res.output
    model = AutoModelForSequenceClassification.from_pretrained(out)
    sd = model.state_dict()
    exp = expected(t, f"bert.{Q}", f"bert.{Q}", 0.3)
    assert torch.allclose(sd[f"bert.{Q}"], exp, atol=1e-7)
    T = load_file(t["ir"] / "model.safetensors")
    assert torch.equal(sd["classifier.weight"], T["classifier.weight"])  # head copied from ΘT
    assert "cls.predictions.bias" not in load_file(out / "model.safetensors")  # MLM head skipped
    card = (out / "README.md").read_text()
    assert "task_arithmetic" in card and "0.3" in card
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    assert json.loads((out / "mergekit_ir.json").read_text())["params"]["alpha"] == 0.3


def test_alpha_zero_is_theta_t(tiny_triplet, tmp_path):
    merge_to_folder(job_for(tiny_triplet, 0.0), tmp_path / "m", progress=False)
    assert (
        load_file(tmp_path / "m" / "model.safetensors").keys()
        == load_file(tiny_triplet["ir"] / "model.safetensors").keys()
    )
    for k, v in load_file(tiny_triplet["ir"] / "model.safetensors").items():
        assert torch.equal(load_file(tmp_path / "m" / "model.safetensors")[k], v), k


def test_sharded_output_loads(tiny_triplet, tmp_path):
    from transformers import AutoModelForSequenceClassification

    rep = merge_to_folder(
        job_for(tiny_triplet, 0.7), tmp_path / "m", shard_size=20_000, progress=False
    )
    assert rep.shards > 1
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == rep.shards
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    assert torch.allclose(
        model.state_dict()[f"bert.{Q}"],
        expected(tiny_triplet, f"bert.{Q}", f"bert.{Q}", 0.7),
        atol=1e-7,
    )


def test_plan_prefix_heads_and_layernorm_names(tiny_triplet, tmp_path):
    """ΘT without the bert. prefix and with legacy gamma/beta names still aligns."""
    t = tiny_triplet
    legacy = tmp_path / "legacy"
    shutil.copytree(t["ir_base"], legacy)
    sd = load_file(legacy / "model.safetensors")
    renamed = {
        (
            k[:-7] + ".gamma"
            if k.endswith("LayerNorm.weight")
            else k[:-5] + ".beta"
            if k.endswith("LayerNorm.bias")
            else k
        ): v
        for k, v in sd.items()
    }
    save_file(renamed, legacy / "model.safetensors", metadata={"format": "pt"})
    plan = build_plan(job_for(t, ir=legacy))
    actions = {e.name: e.action for e in plan.entries}
    assert actions["embeddings.LayerNorm.gamma"] == "merge"
    assert actions[Q] == "merge"
    assert actions["pooler.dense.weight"] == "copy"
    assert {name for _, name, _ in plan.skipped} >= {"cls.predictions.bias"}
    out = run_cli(
        "merge",
        "--ir",
        str(legacy),
        "--pretrained",
        str(t["pretrained"]),
        "--domain",
        str(t["domain"]),
        "--plan",
    )
    assert "skip" in out.output and "only in ΘT (head)" in out.output


def test_vocab_rows_and_integer_buffers(tiny_triplet, tmp_path):
    t = tiny_triplet
    big = tmp_path / "big"
    shutil.copytree(t["ir"], big)
    sd = load_file(big / "model.safetensors")
    emb = "bert.embeddings.word_embeddings.weight"
    extra = torch.randn(3, sd[emb].shape[1])
    sd[emb] = torch.cat([sd[emb], extra])
    sd["bert.embeddings.position_ids"] = torch.arange(128).unsqueeze(0)
    save_file(sd, big / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((big / "config.json").read_text())
    cfg["vocab_size"] += 3
    (big / "config.json").write_text(json.dumps(cfg))
    job = job_for(t, 1.0, ir=big)
    plan = build_plan(job)
    by_name = {e.name: e for e in plan.entries}
    assert by_name[emb].action == "merge" and by_name[emb].rows == sd[emb].shape[0] - 3
    assert by_name["bert.embeddings.position_ids"].action == "copy"
    merge_to_folder(job, tmp_path / "m", progress=False, plan=plan)
    out = load_file(tmp_path / "m" / "model.safetensors")
    assert torch.equal(out[emb][-3:], extra)
    assert torch.equal(out["bert.embeddings.position_ids"], sd["bert.embeddings.position_ids"])
    n = sd[emb].shape[0] - 3
    P, D = (
        load_file(t["pretrained"] / "model.safetensors"),
        load_file(t["domain"] / "model.safetensors"),
    )
    assert torch.allclose(out[emb][:n], sd[emb][:n] + D[emb] - P[emb], atol=1e-7)


def test_bin_input(tiny_triplet, tmp_path):
    t = tiny_triplet
    legacy = tmp_path / "bin_domain"
    shutil.copytree(t["domain"], legacy)
    sd = load_file(legacy / "model.safetensors")
    (legacy / "model.safetensors").unlink()
    torch.save(sd, legacy / "pytorch_model.bin")
    merge_to_folder(job_for(t, 0.5, domain=legacy), tmp_path / "m", progress=False)
    out = load_file(tmp_path / "m" / "model.safetensors")
    assert torch.allclose(out[f"bert.{Q}"], expected(t, f"bert.{Q}", f"bert.{Q}", 0.5), atol=1e-7)


# -- bad input --------------------------------------------------------------------------------------
def test_different_architectures(tiny_triplet, tmp_path):
    t = tiny_triplet
    other = tmp_path / "roberta"
    shutil.copytree(t["domain"], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "roberta"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError, match=r"ΘD .* is a roberta model but Θ0 .* is a bert model"
    ):
        job_for(t, domain=other)


def test_tensor_missing_in_domain(tiny_triplet, tmp_path):
    t = tiny_triplet
    broken = tmp_path / "missing"
    shutil.copytree(t["domain"], broken)
    sd = load_file(broken / "model.safetensors")
    del sd[f"bert.{Q}"]
    save_file(sd, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"tensor bert\.{Q} is in Θ0 .* but missing in ΘD"):
        job_for(t, domain=broken)


def test_shape_mismatch_names_tensor(tiny_triplet, tmp_path):
    t = tiny_triplet
    broken = tmp_path / "shape"
    shutil.copytree(t["domain"], broken)
    sd = load_file(broken / "model.safetensors")
    sd[f"bert.{Q}"] = torch.zeros(32, 31)
    save_file(sd, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        CheckpointError, match=rf"tensor bert\.{Q}: shape \(32, 32\) in Θ0 but \(32, 31\) in ΘD"
    ):
        build_plan(job_for(t, domain=broken))


def test_nan_in_task_vector(tiny_triplet, tmp_path):
    t = tiny_triplet
    broken = tmp_path / "nan"
    shutil.copytree(t["domain"], broken)
    sd = load_file(broken / "model.safetensors")
    sd[f"bert.{Q}"][0, 0] = float("nan")
    save_file(sd, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        CheckpointError, match=rf"tensor bert\.{Q}: task vector τ1 .* NaN/Inf .* --allow-nonfinite"
    ):
        merge_to_folder(job_for(t, domain=broken), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert not list(tmp_path.glob(".out.*"))
    merge_to_folder(
        job_for(t, domain=broken, allow_nonfinite=True), tmp_path / "out", progress=False
    )
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(tiny_triplet, tmp_path, damage):
    broken = tmp_path / "corrupt"
    shutil.copytree(tiny_triplet["domain"], broken)
    f = broken / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 10)
    with pytest.raises(
        CheckpointError, match=r"corrupt.safetensors.*(corrupt or truncated|truncated)"
    ):
        open_checkpoint(str(broken))


def test_output_exists_refused_unless_overwrite(tiny_triplet, tmp_path):
    t = tiny_triplet
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    args = [
        *merge_args(t),
        "--out",
        str(out),
        "-q",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "output folder exists; pass --overwrite" in res.output
    assert (out / "keep.txt").read_text() == "precious"
    res = CliRunner().invoke(main, [*args, "--overwrite"])  # not ours: never replaced
    assert res.exit_code == 2 and "not an earlier merge output (no mergekit_ir.json)" in res.output
    assert (out / "keep.txt").read_text() == "precious"
    (out / "keep.txt").unlink()
    assert run_cli(*args).exit_code == 0 or run_cli(*args, "--overwrite").exit_code == 0
    assert run_cli(*args, "--overwrite").exit_code == 0  # an earlier merge output: replaced
    assert (out / "model.safetensors").is_file()


def test_interrupted_write_leaves_nothing(tiny_triplet, tmp_path, monkeypatch):
    """A failure mid-write (disk full, kill) leaves neither a partial model nor temp files."""
    from mergekit_ir.merging import safetensors_writer

    calls = {"n": 0}
    real = safetensors_writer.ShardedWriter.write_rows

    def failing(self, name, tensor):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        return real(self, name, tensor)

    monkeypatch.setattr(safetensors_writer.ShardedWriter, "write_rows", failing)
    with pytest.raises(CheckpointError, match=r"^disk full at .*m, nothing written; free space"):
        merge_to_folder(job_for(tiny_triplet), tmp_path / "m", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_folder_and_weights(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        open_checkpoint(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty: no model weights"):
        open_checkpoint(str(tmp_path / "empty"))


@pytest.mark.parametrize(
    "arch",
    [
        "BertForMaskedLM",
        "BertModel",
        "DistilBertForSequenceClassification",
        "RobertaForMaskedLM",
        "XLMRobertaModel",
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "T5ForConditionalGeneration",
        "MT5ForConditionalGeneration",
        "GPT2LMHeadModel",
        "ElectraForPreTraining",
        "DebertaV2ForSequenceClassification",
    ],
)
def test_family_prefix_table_matches_transformers(arch):
    import transformers

    from mergekit_ir.merging.alignment import architecture_prefix

    assert architecture_prefix(arch) == getattr(transformers, arch).base_model_prefix


def test_python_api_example_in_docs_runs_and_equals_the_cli(tmp_path, monkeypatch):
    """docs/merging.md's Python example, as written, gives the same weights as `mergeir merge`."""
    import re
    from pathlib import Path

    from click.testing import CliRunner
    from safetensors.torch import load_file

    from mergekit_ir.cli import main

    doc = (Path(__file__).resolve().parents[1] / "docs" / "merging.md").read_text()
    code = re.search(r"<!-- python-api-example -->\n```python\n(.*?)```", doc, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MERGEIR_CACHE", str(tmp_path / "cache"))
    exec(code, {})
    res = CliRunner().invoke(
        main, ["merge", "quickstart-tiny", "--alpha", "0.5", "--out", "cli", "-q"]
    )
    assert res.exit_code == 0, res.output
    api, cli = load_file("merged-tiny/model.safetensors"), load_file("cli/model.safetensors")
    assert api.keys() == cli.keys() and all(torch.equal(api[k], cli[k]) for k in api)


def test_plan_shows_layer_wise_alpha_per_tensor(tiny_triplet):
    """`merge --plan` prints the α each tensor gets, as the merge resolves it."""
    t = tiny_triplet
    out = run_cli(
        *merge_args(t),
        "--alpha",
        "[{filter: attention, value: 0.3}, {value: 1}]",
        "--plan",
    )
    rows = {ln.split()[1]: ln for ln in out.output.splitlines() if ln.startswith("merge")}
    assert rows["bert.encoder.layer.0.attention.self.query.weight"].endswith("alpha=0.3")
    assert rows["bert.encoder.layer.1.output.dense.weight"].endswith("alpha=1")
