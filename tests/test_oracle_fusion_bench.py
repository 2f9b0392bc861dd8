"""Oracle: tsv_m, iso_c, iso_cts and wudi against FusionBench 0.2.33's own implementations.

FusionBench (``fusion-bench==0.2.33``, in the ``oracle`` extra: ``pip install .[oracle]``)
merges task vectors given as state dicts: ``compute_and_sum_svd_mem_reduction`` (TSV-M;
its ``…_lossless`` variant is our ``sv_reduction: 1``), ``iso_c``, ``iso_cts`` and
``wudi_merging``. Its merged model is Θ0 + λ·M; ours at α = 1 must be the same, with
M computed from [τT, w_1·τ_1, …] (FusionBench's per-model scaling before the merge).

FusionBench runs in a child process (``tests/fusion_bench_oracle.py``): importing it takes
seconds and changes process-wide state. Every case is sent in one batch, so the import
is paid once. The module is skipped when fusion-bench is not installed.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mergekit_ir_plugins.merge_methods.task_space import iso_c, iso_cts, tsv_m
from mergekit_ir_plugins.merge_methods.wudi import wudi

# small tensors gain nothing from intra-op threads, and on a shared CPU they cost seconds
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

RUNNER = Path(__file__).with_name("fusion_bench_oracle.py")
OURS = {"tsv_m": tsv_m, "tsv_m_lossless": tsv_m, "iso_c": iso_c, "iso_cts": iso_cts, "wudi": wudi}


def fusion_bench(cases: list[dict], tmp: Path) -> list[dict[str, torch.Tensor]]:
    """FusionBench's merged task vector for each case (one child process for all)."""
    if importlib.util.find_spec("fusion_bench") is None:
        pytest.skip("fusion-bench is not installed (pip install .[oracle])")
    torch.save(cases, tmp / "cases.pt")
    res = subprocess.run(
        [sys.executable, str(RUNNER), str(tmp / "cases.pt"), str(tmp / "results.pt")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp,  # anything FusionBench writes stays in the test's folder
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return torch.load(tmp / "results.pt")


def random_state(shapes: dict[str, tuple[int, ...]], gen: torch.Generator, scale: float):
    return {k: torch.randn(s, generator=gen) * scale for k, s in shapes.items()}


# a weight matrix (SVD / Adam), a bias (the mean rule) and a 3-D tensor (the mean rule)
SHAPES = {"w": (48, 32), "wide": (24, 40), "b": (32,), "conv": (2, 3, 4)}
CASES = [  # (ours, FusionBench's kwargs, our params, domain weights, vector scale)
    ("tsv_m", {}, {}, [1.0], 1.0),
    ("tsv_m", {}, {"scaling_factor": 1.3}, [1.0, 0.5], 1.0),
    ("tsv_m_lossless", {}, {"sv_reduction": 1.0}, [1.0, 2.0], 1.0),
    ("iso_c", {}, {}, [1.0], 1.0),
    ("iso_c", {}, {"scaling_factor": 0.7}, [0.5, 1.0, 1.5], 1.0),
    ("iso_cts", {"common_space_fraction": 0.8}, {}, [1.0], 1.0),
    ("iso_cts", {"common_space_fraction": 0.5}, {"common_space_fraction": 0.5}, [1.0, 0.5], 1.0),
    ("iso_cts", {"common_space_fraction": 1.0}, {"common_space_fraction": 1.0}, [1.0], 1.0),
    # fine-tuning deltas are small: at FusionBench's fixed lr 1e-5 the 300 Adam steps then
    # move M by about as much as the vectors themselves (a real test of the optimiser)
    ("wudi", {"iter_num": 300}, {}, [1.0], 1e-3),
    ("wudi", {"iter_num": 100}, {"iterations": 100, "scaling_factor": 1.5}, [1.0, 0.5], 1e-3),
]


def random_cases() -> tuple[list[tuple], list[dict]]:
    """Inputs (Θ0, τT, [τ_i]) and FusionBench's cases for :data:`CASES`."""
    gen = torch.Generator().manual_seed(0)
    inputs, batch = [], []
    for fn, fb_kwargs, _params, weights, scale in CASES:
        theta_0 = random_state(SHAPES, gen, scale)
        tau_t = random_state(SHAPES, gen, scale)
        taus = [random_state(SHAPES, gen, scale) for _ in weights]
        vectors = [tau_t] + [{k: w * v[k] for k in v} for w, v in zip(weights, taus, strict=True)]
        inputs.append((theta_0, tau_t, taus))
        batch.append({"fn": fn, "vectors": vectors, "kwargs": fb_kwargs})
    return inputs, batch


ZERO_TAU_T = torch.randn(12, 8, generator=torch.Generator().manual_seed(1)) * 1e-3
TINY_RUNS = {  # our method -> (FusionBench's function, its kwargs)
    "tsv_m": ("tsv_m", {}),
    "iso_c": ("iso_c", {}),
    "iso_cts": ("iso_cts", {"common_space_fraction": 0.8}),
    "wudi": ("wudi", {"iter_num": 300}),
}


def tiny_bert_vectors(tiny_triplet) -> tuple[dict, list[dict]]:
    """Θ0 and [τT, τD] over the tiny triplet's floating tensors that all three share."""
    from safetensors.torch import load_file

    files = {
        k: load_file(tiny_triplet[k] / "model.safetensors") for k in ("pretrained", "domain", "ir")
    }
    shared = sorted(set(files["pretrained"]) & set(files["domain"]) & set(files["ir"]))
    shared = [k for k in shared if files["ir"][k].is_floating_point()]
    theta_0 = {k: files["pretrained"][k].float() for k in shared}
    return theta_0, [
        {k: files[m][k].float() - theta_0[k] for k in shared} for m in ("ir", "domain")
    ]


@pytest.fixture(scope="module")
def oracle(tiny_triplet, tmp_path_factory) -> dict[str, list]:
    """Every case of this module through FusionBench in one child process (its import takes
    ~10 s): ``random``, ``zero_wudi`` and ``tiny_bert`` results."""
    _, random_batch = random_cases()
    zero = [{"w": ZERO_TAU_T}, {"w": torch.zeros(12, 8)}]
    _, vectors = tiny_bert_vectors(tiny_triplet)
    tiny = [{"fn": fn, "vectors": vectors, "kwargs": kw} for fn, kw in TINY_RUNS.values()]
    batch = [*random_batch, {"fn": "wudi", "vectors": zero, "kwargs": {}}, *tiny]
    results = fusion_bench(batch, tmp_path_factory.mktemp("fusion_bench"))
    n = len(random_batch)
    return {"random": results[:n], "zero_wudi": results[n : n + 1], "tiny_bert": results[n + 1 :]}


def test_functions_equal_fusion_bench_on_random_tensors(oracle) -> None:
    inputs, _ = random_cases()
    for (fn, _, params, weights, _), (theta_0, tau_t, taus), merged in zip(
        CASES, inputs, oracle["random"], strict=True
    ):
        lam = params.get("scaling_factor", 1.0)
        for key in SHAPES:
            theta_t = theta_0[key] + tau_t[key]
            kwargs = {"tau_t": tau_t[key], "weights": weights, "name": key, **params}
            ours = OURS[fn](theta_t, [v[key] for v in taus], **kwargs)
            expected = theta_0[key] + lam * merged[key]
            # fp32: SVDs and polar factors agree to a few 1e-6 of the largest entry
            tol = 2e-5 * float(expected.abs().max())
            err = float((ours - expected).abs().max())
            assert err <= tol, (fn, params, key, err)
            half = OURS[fn](theta_t, [v[key] for v in taus], **{**kwargs, "alpha": 0.5})
            err = float((half - (theta_t + expected) / 2).abs().max())
            assert err <= tol, (fn, params, key, "alpha 0.5", err)


def test_wudi_zero_task_vector_is_nan_in_fusion_bench_and_left_out_here(oracle) -> None:
    (merged,) = oracle["zero_wudi"]
    assert torch.isnan(merged["w"]).all()
    ours = wudi(ZERO_TAU_T, [torch.zeros(12, 8)], tau_t=ZERO_TAU_T)  # Θ0 = 0
    assert torch.equal(ours, ZERO_TAU_T)  # one task vector left: the sum is already optimal


def test_merged_checkpoint_equals_fusion_bench_on_a_tiny_bert(oracle, tiny_triplet, tmp_path):
    """The whole engine (names, the 2-D/other split per real tensor, writing) against
    FusionBench's state-dict functions on the tiny triplet's shared tensors."""
    from safetensors.torch import load_file

    from mergekit_ir import merge

    theta_0, _ = tiny_bert_vectors(tiny_triplet)
    assert len(theta_0) > 20
    for method, expected in zip(TINY_RUNS, oracle["tiny_bert"], strict=True):
        out = tmp_path / method
        domains = [str(tiny_triplet["domain"])]
        pretrained = tiny_triplet["pretrained"]
        merge(
            tiny_triplet["ir"], domains, out, pretrained=pretrained, method=method, progress=False
        )
        written = load_file(out / "model.safetensors")
        for k in theta_0:
            want = theta_0[k] + expected[k]
            err = float((written[k].float() - want).abs().max())
            assert err <= 2e-5 * max(float(want.abs().max()), 1.0), (method, k, err)
