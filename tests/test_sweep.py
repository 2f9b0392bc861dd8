"""The in-place α sweep scores exactly like merging to disk and loading fresh."""

from __future__ import annotations

import pytest

from mergekit_ir.merging.checkpoint import open_checkpoint
from mergekit_ir.merging.engine import MergeJob, build_plan, merge_to_folder
from mergekit_ir.merging.sweep import InPlaceSweep
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.plugin_host import catalog
from mergekit_ir.scoring.scorer import ScoringSettings

PAIRS = [
    ("cancer tumor", "the tumor cell study"),
    ("heart risk", "heart patients risk study"),
    ("virus vaccine", "immune vaccine virus"),
    ("diet", "the vitamin diet insulin glucose lung"),
]
SETTINGS = ScoringSettings(device="cpu", dtype="fp32", batch_size=2, show_progress=False)


@pytest.mark.parametrize(
    ("kind", "ir", "method", "extra"),
    [
        ("bi-encoder", "ir_base", "task_arithmetic", {}),
        ("cross-encoder", "ir", "task_arithmetic", {}),
        ("cross-encoder", "ir", "ties", {"density": 0.5}),
    ],
)
def test_inplace_equals_disk(tiny_triplet, tmp_path, kind, ir, method, extra):
    cat = catalog()
    scorer_kind = cat.scorer(kind)
    mm = cat.merge_method(method)
    pre = open_checkpoint(str(tiny_triplet["pretrained"]))
    ir_src = open_checkpoint(str(tiny_triplet[ir]))
    params = {p.name: p.default for p in mm.params} | extra
    job = MergeJob(
        ir_src,
        [TaskVector.from_checkpoints(pre, open_checkpoint(str(tiny_triplet["domain"])))],
        mm,
        params,
        pretrained=pre,
    )
    plan = build_plan(job)
    scorer = scorer_kind.load(tiny_triplet[ir], {}, SETTINGS)
    sweep = InPlaceSweep(scorer.model, job, plan)
    for alpha in (0.0, 0.3, 1.0):
        sweep.apply({"alpha": alpha})
        live = scorer.score_pairs(PAIRS)
        out = tmp_path / f"{method}-{alpha}"
        job.params = {**params, "alpha": alpha}
        merge_to_folder(job, out, progress=False, plan=plan)
        fresh = scorer_kind.load(out, {}, SETTINGS).score_pairs(PAIRS)
        assert live == pytest.approx(fresh, abs=1e-5), alpha
    sweep.restore()
    assert scorer.score_pairs(PAIRS) == pytest.approx(
        scorer_kind.load(tiny_triplet[ir], {}, SETTINGS).score_pairs(PAIRS), abs=1e-6
    )
