"""Oracle: our merges agree with mergekit's `mergekit-yaml` on the same tiny triplet.

mergekit is an optional dependency (`pip install .[oracle]`); without it these tests skip.
The triplet is three BertForSequenceClassification checkpoints, as mergekit needs one
architecture. Task arithmetic: base_model = Θ0, ΘT weight 1, ΘD weight α (mergekit computes
Θ0 + τT + α·τD = ΘT + α·τD). TIES: ours treats τT as a task vector too, as mergekit does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from conftest import WORDS
from mergekit_ir.cli import main

pytestmark = pytest.mark.slow


ALPHAS = (0.3, 1.0, -0.5)


def recipes(pre, dom, ir) -> dict[str, dict]:
    """mergekit's configurations: task arithmetic per α (base Θ0, ΘT weight 1, ΘD weight α)
    and TIES (density 0.5 on both, ΘD weight 0.7, no normalisation)."""
    out = {
        f"ta{alpha}": {
            "merge_method": "task_arithmetic",
            "base_model": str(pre),
            "dtype": "float32",
            "models": [
                {"model": str(ir), "parameters": {"weight": 1.0}},
                {"model": str(dom), "parameters": {"weight": alpha}},
            ],
        }
        for alpha in ALPHAS
    }
    out["ties"] = {
        "merge_method": "ties",
        "base_model": str(pre),
        "dtype": "float32",
        "parameters": {"normalize": False},
        "models": [
            {"model": str(ir), "parameters": {"weight": 1.0, "density": 0.5}},
            {"model": str(dom), "parameters": {"weight": 0.7, "density": 0.5}},
        ],
    }
    return out


MERGEKIT_YAML = """
import sys
from mergekit.scripts.run_yaml import main  # the `mergekit-yaml` command

args = sys.argv[1:]
for config, out in zip(args[::2], args[1::2]):
    main([config, out, "--no-lazy-unpickle", "--allow-crimes"], standalone_mode=False)
"""


@pytest.fixture(scope="module")
def cls_triplet(tmp_path_factory):
    """The triplet, and mergekit-yaml's merge of every recipe (one process for all four: its
    import costs seconds)."""
    pytest.importorskip("mergekit", reason="mergekit not installed (pip install .[oracle])")
    if shutil.which("mergekit-yaml") is None:
        pytest.skip("mergekit-yaml not on PATH")
    from mergekit_ir.references.tiny_models import save_bert, word_tokenizer

    root = tmp_path_factory.mktemp("oracle")
    tok = word_tokenizer(WORDS)
    pre = save_bert(root / "pretrained", tok, 0, head="classifier")
    state = load_file(pre / "model.safetensors")
    dom = save_bert(root / "domain", tok, 1, head="classifier", base_state=state, noise=0.05)
    ir = save_bert(root / "ir", tok, 2, head="classifier", base_state=state, noise=0.05)
    args = []
    for name, config in recipes(pre, dom, ir).items():
        cfg = root / f"{name}.yml"
        cfg.write_text(yaml.safe_dump(config))
        args += [str(cfg), str(root / f"mk-{name}")]
    res = subprocess.run(
        [sys.executable, "-c", MERGEKIT_YAML, *args], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return root, pre, dom, ir


def mergekit(root, name) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted((root / f"mk-{name}").glob("*.safetensors")):
        tensors.update(load_file(f))
    assert tensors, name
    return tensors


def ours(root, name, pre, dom, ir, *args) -> dict[str, torch.Tensor]:
    out = root / f"ours-{name}"
    res = CliRunner().invoke(
        main,
        [
            "merge",
            "--ir",
            str(ir),
            "--pretrained",
            str(pre),
            "--domain",
            str(dom),
            "--out",
            str(out),
            "-q",
            *args,
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    return load_file(out / "model.safetensors")


def compare(a: dict, b: dict, skip=("classifier",)) -> int:
    checked = 0
    for k, v in b.items():
        if k.startswith(skip) or not v.is_floating_point():
            continue
        assert k in a, k
        assert torch.allclose(a[k].float(), v.float(), atol=1e-6, rtol=0), (
            k,
            (a[k] - v).abs().max(),
        )
        checked += 1
    return checked


@pytest.mark.parametrize("alpha", ALPHAS)
def test_task_arithmetic_matches_mergekit(cls_triplet, alpha):
    root, pre, dom, ir = cls_triplet
    mk = mergekit(root, f"ta{alpha}")
    ou = ours(root, f"ta{alpha}", pre, dom, ir, "--alpha", str(alpha))
    # classifier heads are merged by mergekit as well; ours too, since Θ0 and ΘD have them here
    assert compare(ou, mk, skip=()) >= 30


def test_ties_matches_mergekit(cls_triplet):
    root, pre, dom, ir = cls_triplet
    mk = mergekit(root, "ties")
    ou = ours(
        root,
        "ties",
        pre,
        dom,
        ir,
        "--method",
        "ties",
        "--alpha",
        "0.7",
        "--param",
        "density=0.5",
        "--param",
        "normalize=false",
    )
    assert compare(ou, mk, skip=()) >= 30
