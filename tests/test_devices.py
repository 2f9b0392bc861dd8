"""``--device cuda:0,cuda:1`` / ``cuda:all``: a pass split in order over one scorer copy per
device. No GPU here: parsing and its errors, the split order, and ``cpu,cpu`` copies scoring
as one scorer does (to float rounding: each copy batches its own part, so a cross-encoder's
padding differs, ~1e-9) — also through the in-place α sweep, which changes the first copy and
must reach the other."""

from __future__ import annotations

import pytest
import torch
from alpha_toy import write_registry

from mergekit_ir.errors import MergeIRError
from mergekit_ir.merging.checkpoint import open_checkpoint
from mergekit_ir.merging.engine import MergeJob, build_plan
from mergekit_ir.merging.sweep import InPlaceSweep
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.plugin_host import catalog
from mergekit_ir.scoring.devices import (
    SpreadScorer,
    device_identity,
    gather,
    is_device_list,
    load_on_devices,
    parse_devices,
    split_in_order,
)
from mergekit_ir.scoring.scorer import ScoringSettings

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = ScoringSettings(device="cpu", dtype="fp32", batch_size=2, show_progress=False)
QUERIES = {"q1": "cancer tumor", "q2": "heart risk", "q3": "virus vaccine", "q4": "diet"}
DOCS = {
    "d1": "the tumor cell study",
    "d2": "heart patients risk study",
    "d3": "immune vaccine virus",
    "d4": "the vitamin diet insulin glucose lung",
    "d5": "protein gene",
}
CANDIDATES = {
    "q1": {"d1": 1.0, "d2": 0.5, "d5": 0.1},
    "q2": {"d2": 1.0, "d4": 0.2},
    "q3": {"d3": 1.0, "d1": 0.3, "d2": 0.2, "d4": 0.1},
    "q4": {"d4": 1.0},
}


# -- parsing ----------------------------------------------------------------------------------------
def test_one_device_stays_as_it_is():
    assert parse_devices("cpu") == ("cpu",) and parse_devices("auto") == ("auto",)
    assert not is_device_list("cuda:1") and is_device_list("cuda:all") and is_device_list("a,b")


def test_cpu_copies_are_a_list():
    assert parse_devices("cpu,cpu") == ("cpu", "cpu") and parse_devices(" cpu , cpu ") == (
        "cpu",
        "cpu",
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA messages")
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cuda:all", r"^--device cuda:all: CUDA is not available on this machine; use --device"),
        ("cuda:0,cuda:1", r"^--device cuda:0,cuda:1: cuda:0: CUDA is not available"),
        ("cpu,cuda", r"^--device cpu,cuda: cuda: CUDA is not available"),
        ("tpu,cpu", r"^--device tpu,cpu: tpu: not a device; use auto, cpu, cuda"),
        ("cpu,,cpu", r"^--device cpu,,cpu: an empty device in the list"),
        ("auto,cpu", r"^--device auto,cpu: auto cannot be part of a list"),
        ("cpu,cuda:all", r"^--device cpu,cuda:all: cuda:all cannot be part of a list"),
    ],
)
def test_device_list_errors_are_one_line_naming_the_flag(spec, message):
    with pytest.raises(MergeIRError, match=message):
        parse_devices(spec)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_duplicates_and_mixed_kinds_are_errors():  # pragma: no cover - GPU machines
    with pytest.raises(MergeIRError, match="names cuda:0 again"):
        parse_devices("cuda:0,cuda")
    with pytest.raises(MergeIRError, match="mixes device kinds"):
        parse_devices("cpu,cuda:0")
    assert parse_devices("cuda:all") == tuple(f"cuda:{i}" for i in range(torch.cuda.device_count()))


def test_the_runner_and_the_flag_check_lists_before_any_work(tmp_path):
    """`mergeir run --device …` fails with one line before the first stage runs."""
    from click.testing import CliRunner

    from mergekit_ir.cli import main

    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", "quickstart", "--device", "cpu,,cpu", "--out", str(out)])
    assert res.exit_code != 0
    assert res.output.strip().splitlines()[-1] == (
        "error: --device cpu,,cpu: an empty device in the list; write e.g. cuda:0,cuda:1"
    )
    assert not out.exists()


# -- splitting ----------------------------------------------------------------------------------
def test_split_in_order_is_contiguous_balanced_and_never_empty():
    assert split_in_order([1] * 10, 2) == [range(0, 5), range(5, 10)]
    assert split_in_order([1] * 10, 3) == [range(0, 3), range(3, 7), range(7, 10)]
    assert split_in_order([8, 1, 1, 1, 1, 1, 1, 1, 1], 2) == [range(0, 1), range(1, 9)]
    assert split_in_order([1, 1], 4) == [range(0, 1), range(1, 2)]  # fewer items than parts
    assert split_in_order([], 2) == []
    for weights in ([3, 1, 4, 1, 5, 9, 2, 6], [100] + [1] * 50, [1] * 7):
        for parts in (1, 2, 3, 5):
            ranges = split_in_order(weights, parts)
            assert gather([list(r) for r in ranges]) == list(range(len(weights)))
            assert all(len(r) for r in ranges) and len(ranges) == min(parts, len(weights))


def test_device_identity_only_marks_several_devices():
    assert device_identity(["cpu"]) == {} and device_identity(["cuda:0", "cuda:1"]) == {
        "devices": 2
    }


# -- copies score as one ----------------------------------------------------------------------------
def _load(kind, folder):
    def load(settings):
        torch.manual_seed(0)
        return kind.load(folder, {}, settings)

    return load


@pytest.mark.parametrize(("kind", "ir"), [("cross-encoder", "ir"), ("bi-encoder", "ir_base")])
def test_cpu_copies_score_as_one_scorer(tiny_triplet, kind, ir):
    scorer_kind = catalog().scorer(kind)
    one = load_on_devices(_load(scorer_kind, tiny_triplet[ir]), SETTINGS, ["cpu"])
    two = load_on_devices(_load(scorer_kind, tiny_triplet[ir]), SETTINGS, ["cpu", "cpu"])
    assert isinstance(two, SpreadScorer) and two.devices == ["cpu", "cpu"]
    assert two.model is two.copies[0].model and two.settings.show_progress is False
    want = one.rerank(QUERIES, CANDIDATES, DOCS)
    got = two.rerank(QUERIES, CANDIDATES, DOCS)
    assert list(got) == list(want) == sorted(CANDIDATES)  # gathered in query order
    assert _close(got, want)
    pairs = [(QUERIES[q], DOCS[d]) for q in sorted(CANDIDATES) for d in sorted(CANDIDATES[q])]
    assert two.score_pairs(pairs) == pytest.approx(one.score_pairs(pairs), abs=1e-6)
    assert two.score_pairs(pairs[:1]) == pytest.approx(one.score_pairs(pairs[:1]), abs=1e-6)


def _close(got, want) -> bool:
    return all(
        set(got[q]) == set(want[q]) and all(abs(got[q][d] - want[q][d]) < 1e-6 for d in want[q])
        for q in want
    )


def test_the_sweep_reaches_every_copy(tiny_triplet):
    """Θ'(α) applied in place on the first copy scores on both copies as on one scorer."""
    cat = catalog()
    kind, method = cat.scorer("cross-encoder"), cat.merge_method("task_arithmetic")
    pre = open_checkpoint(str(tiny_triplet["pretrained"]))

    def job():
        dom = open_checkpoint(str(tiny_triplet["domain"]))
        params = {p.name: p.default for p in method.params}
        return MergeJob(
            open_checkpoint(str(tiny_triplet["ir"])),
            [TaskVector.from_checkpoints(pre, dom)],
            method,
            params,
            pretrained=pre,
        )

    one = load_on_devices(_load(kind, tiny_triplet["ir"]), SETTINGS, ["cpu"])
    two = load_on_devices(_load(kind, tiny_triplet["ir"]), SETTINGS, ["cpu", "cpu"])
    j1, j2 = job(), job()
    s1 = InPlaceSweep(one.model, j1, build_plan(j1))
    s2 = InPlaceSweep(two.model, j2, build_plan(j2))
    loaded = two.rerank(QUERIES, CANDIDATES, DOCS)
    for alpha in (0.5, 1.0):
        with s1.merged({"alpha": alpha}), s2.merged({"alpha": alpha}):
            want = one.rerank(QUERIES, CANDIDATES, DOCS)
            got = two.rerank(QUERIES, CANDIDATES, DOCS)
        assert _close(got, want) and not _close(got, loaded), alpha
    # back at ΘT on every copy (the second copy's part of the queries included)
    assert _close(two.rerank(QUERIES, CANDIDATES, DOCS), loaded)
    second = two.copies[1].model.state_dict()
    for key, value in two.copies[0].model.state_dict().items():
        assert torch.equal(value, second[key]), key


@pytest.mark.slow
def test_a_run_on_two_cpu_copies_tunes_as_one(tmp_path):
    """The planted toy triplet (tests/alpha_toy.py: only α = 0.5 ranks right) on ``cpu,cpu``."""
    import json

    from click.testing import CliRunner

    from mergekit_ir.cli import main

    reg = write_registry(tmp_path, "{}")
    out = tmp_path / "out"
    args = ["run", "toy", "--registry", str(reg), "--out", str(out), "--cache-dir",
            str(tmp_path / "cache"), "--device", "cpu,cpu", "-q"]  # fmt: skip
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    raw = json.loads((out / "results.json").read_text())
    assert raw["alpha_ablation"]["toy-planted"]["best"] == "0.5"
    assert raw["manifest"]["devices"] == ["cpu", "cpu"] and raw["manifest"]["device"] == "cpu"
