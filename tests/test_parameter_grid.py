"""Any numeric merge parameter can be swept with α: `merge: {alpha: [...], density: [...]}`."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mergekit_ir.errors import ConfigError
from mergekit_ir.experiments.dry_run import count_passes
from mergekit_ir.experiments.registry import load_registry
from mergekit_ir.merging.checkpoint import open_checkpoint
from mergekit_ir.merging.engine import MergeJob, build_plan, merge_to_folder
from mergekit_ir.merging.sweep import InPlaceSweep
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.plugin_host import catalog
from mergekit_ir.results import alpha_display, alpha_label, grid_point, point_params

REGISTRY = """
datasets:
  toy: {beir: "quickstart:toy", test: test, dev: dev}
triplets:
  t:
    scorer: {kind: bi-encoder}
    pretrained: quickstart:pretrained
    domain: quickstart:domain
    ir: quickstart:ir
experiments:
  e:
    triplets: [t]
    datasets: [toy]
    merge: MERGE
TUNING
"""


def registry(tmp_path, merge: str, tuning: str = ""):
    path = tmp_path / "r.yaml"
    path.write_text(REGISTRY.replace("MERGE", merge).replace("TUNING", tuning))
    return load_registry(path)


def test_a_list_of_values_is_a_grid_dimension(tmp_path):
    reg = registry(tmp_path, "{method: ties, alpha: [0.5, 1.0], density: [0.3, 0.7]}")
    exp = reg.experiment("e")
    assert exp.grid == (("density", (0.3, 0.7)),)
    assert [point_params(p) for p in exp.alphas] == [
        {"alpha": 0.5, "density": 0.3},
        {"alpha": 0.5, "density": 0.7},
        {"alpha": 1.0, "density": 0.3},
        {"alpha": 1.0, "density": 0.7},
    ]
    assert "density" not in exp.merge_params  # swept, not fixed
    assert alpha_display(alpha_label(exp.alphas[1])) == "α=0.5, density=0.7"
    counts = count_passes(reg, exp, "t", ["toy"], ["toy"])
    assert counts["α grid on dev"] == 4  # the dry run prices every point


def test_one_value_stays_a_fixed_parameter_and_rules_stay_layer_wise(tmp_path):
    exp = registry(tmp_path, "{method: ties, alpha: [0.5], density: [0.3]}").experiment("e")
    assert exp.grid == () and exp.merge_params["density"] == 0.3 and exp.alphas == (0.5,)
    rules = "[{filter: attention, value: 0.3}, {value: 0.6}]"
    exp = registry(tmp_path, f"{{method: ties, alpha: [1.0], density: {rules}}}").experiment("e")
    assert exp.grid == () and isinstance(exp.merge_params["density"], list)


@pytest.mark.parametrize(
    ("merge", "tuning", "message"),
    [
        ("{method: ties, density: [0.3, 2.0]}", "", r"e\.merge\.density\[1\]: 2 is outside"),
        ("{method: ties, density: [0.3, 0.3]}", "", r"e\.merge\.density: a value is listed twice"),
        (
            "{method: ties, density: [0.3, 0.7]}",
            "    tuning: {alpha: {selector: pseudo-queries}}",
            r"e\.tuning\.alpha: α selectors choose α alone, and merge also sweeps density",
        ),
    ],
)
def test_grid_errors_name_the_yaml_path(tmp_path, merge, tuning, message):
    with pytest.raises(ConfigError, match=message):
        registry(tmp_path, merge, tuning)


def test_a_grid_point_in_place_equals_the_streamed_merge(tiny_triplet, tmp_path):
    """The sweep applies a grid point's parameters exactly as a merge to disk writes them."""
    mm = catalog().merge_method("ties")
    pre = open_checkpoint(str(tiny_triplet["pretrained"]))
    ir = open_checkpoint(str(tiny_triplet["ir"]))
    params = {p.name: p.default for p in mm.params}
    job = MergeJob(
        ir,
        [TaskVector.from_checkpoints(pre, open_checkpoint(str(tiny_triplet["domain"])))],
        mm,
        params,
        pretrained=pre,
    )
    plan = build_plan(job)
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_triplet["ir"]).eval()
    sweep = InPlaceSweep(model, job, plan)
    point = grid_point({"alpha": 0.7, "density": 0.3})
    sweep.apply(point_params(point))
    job.params = {**params, **point_params(point)}
    merge_to_folder(job, tmp_path / "m", progress=False, plan=plan)
    written = load_file(tmp_path / "m" / "model.safetensors")
    live = model.state_dict()
    assert set(written) <= set(live)
    for n, t in written.items():
        assert torch.equal(live[n], t), n  # bit for bit
