"""The data-free task-space merges TSV-M, Iso-C, Iso-CTS and WUDI on hand-computed tensors.

Expected values are worked out by hand from the formulas in docs/merge-methods.md
("Task-space merges"); tests/test_oracle_fusion_bench.py compares the same functions with
FusionBench's own implementations.
"""

from __future__ import annotations

import importlib.metadata
import math

import pytest
import torch

from mergekit_ir import ConfigError, MergeMethod
from mergekit_ir.experiments.registry import load_registry
from mergekit_ir_plugins.merge_methods import task_space as task_space_module
from mergekit_ir_plugins.merge_methods import wudi as wudi_module
from mergekit_ir_plugins.merge_methods.spectral import (
    common_space_split,
    iso_c_matrix,
    iso_cts_matrix,
    polar,
    significant,
    tsv_matrix,
)
from mergekit_ir_plugins.merge_methods.task_space import iso_c, iso_cts, tsv_m
from mergekit_ir_plugins.merge_methods.wudi import wudi, wudi_gradient, wudi_matrix

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: threads only cost time

METHODS = {"tsv_m": tsv_m, "iso_c": iso_c, "iso_cts": iso_cts, "wudi": wudi}


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> None:
    """Equal shape, dtype and values (torch.testing.assert_close costs ~1 s on first use)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert torch.allclose(actual, expected, atol=atol, rtol=1e-5), f"\n{actual}\n!=\n{expected}"


def orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed)))
    return q


def low_rank(u: torch.Tensor, s: list[float], v: torch.Tensor) -> torch.Tensor:
    """Σ_j s_j·u_j·v_jᵀ over the given columns of ``u`` and ``v``."""
    return (u * t(s)) @ v.T


# 4×4 task matrices with known SVDs on shared orthonormal bases U, V.
U4, V4 = orthogonal(4, 0), orthogonal(4, 1)


class TestSpectralMath:
    def test_iso_c_2x2_flattens_the_spectrum_to_its_mean(self) -> None:
        # τT + τD = R·diag(3, 1)·Qᵀ: Iso-C gives R·diag(2, 2)·Qᵀ = 2·R·Qᵀ
        r, q = orthogonal(2, 2), orthogonal(2, 3)
        total = low_rank(r, [3.0, 1.0], q)
        tau_t = t([[0.5, -1.0], [2.0, 0.25]])
        merged = iso_c_matrix([tau_t, total - tau_t])
        close(merged, 2.0 * r @ q.T)
        close(torch.linalg.svdvals(merged), t([2.0, 2.0]))

    def test_iso_c_diagonal(self) -> None:
        close(iso_c_matrix([t([[3, 0], [0, 0]]), t([[0, 0], [0, 1]])]), t([[2, 0], [0, 2]]))

    def test_tsv_orthogonal_tasks_is_task_arithmetic_of_the_truncations(self) -> None:
        # τT lives on U[:, :4], V[:, :4] and τD on U[:, 4:], V[:, 4:] of 8×8 bases: the kept
        # singular vectors are already orthonormal, so TSV-M sums the rank-k truncations
        u, v = orthogonal(8, 4), orthogonal(8, 5)
        tau_t = low_rank(u[:, :4], [4, 3, 2, 1], v[:, :4])
        tau_d = low_rank(u[:, 4:], [5, 0.5, 0.2, 0.1], v[:, 4:])
        trunc_t = low_rank(u[:, :2], [4, 3], v[:, :2])
        trunc_d = low_rank(u[:, 4:6], [5, 0.5], v[:, 4:6])
        close(tsv_matrix([tau_t, tau_d], 0.25), trunc_t + trunc_d)  # k = 2 of r = 8
        close(tsv_matrix([tau_t, tau_d]), tau_t + tau_d)  # default 1/N = 1/2: k = 4, all of it

    def test_tsv_decorrelates_overlapping_tasks(self) -> None:
        # τT = 2·e1·e1ᵀ, τD = 2·w·e2ᵀ with w = (e1 + e2)/√2: polar([e1, w]) rotates the two
        # left vectors to the orthonormal pair closest to them, 22.5° either side of w
        e1, e2 = t([1.0, 0.0]), t([0.0, 1.0])
        w = (e1 + e2) / math.sqrt(2)
        tau_t, tau_d = 2 * torch.outer(e1, e1), 2 * torch.outer(w, e2)
        c, s = math.cos(math.pi / 8), math.sin(math.pi / 8)
        a, b = t([c, -s]), t([s, c])  # e1 and w turned apart to 90°
        close(tsv_matrix([tau_t, tau_d], 0.5), 2 * torch.outer(a, e1) + 2 * torch.outer(b, e2))
        assert not torch.allclose(tsv_matrix([tau_t, tau_d], 0.5), tau_t + tau_d)

    def test_tsv_zero_task_vector_keeps_the_truncated_other(self) -> None:
        # a domain model that left a matrix unchanged: its singular vectors are arbitrary
        # and are dropped, so TSV-M is the rank-k truncation of τT
        u, v = orthogonal(6, 6), orthogonal(6, 7)
        tau_t = low_rank(u, [6, 5, 4, 3, 2, 1], v)
        close(tsv_matrix([tau_t, torch.zeros(6, 6)]), low_rank(u[:, :3], [6, 5, 4], v[:, :3]))
        close(tsv_matrix([torch.zeros(6, 6), torch.zeros(6, 6)]), torch.zeros(6, 6))

    def test_tsv_lossless_sums_orthogonalised_full_spectra(self) -> None:
        u, v = orthogonal(4, 8), orthogonal(4, 9)
        tau_t = low_rank(u[:, :2], [3, 1], v[:, :2])
        tau_d = low_rank(u[:, 2:], [2, 0.5], v[:, 2:])
        close(tsv_matrix([tau_t, tau_d], 1.0), tau_t + tau_d)

    def test_common_space_split(self) -> None:
        assert common_space_split(768, 2, 0.8) == (614, 77)  # ⌊614.4⌋, round(154/2) = 77
        assert common_space_split(5, 2, 0.8) == (5, 0)  # round(0.5) = 0 (half to even)
        assert common_space_split(4, 3, 0.5) == (1, 1)  # round(2/3)·3 = 3 specific
        assert common_space_split(3, 2, 0.0) == (1, 1)  # round(1.5)·2 = 4 > 3: round down
        assert common_space_split(10, 2, 1.0) == (10, 0)

    def test_iso_cts_hand_computed(self) -> None:
        # τT = 4·u1v1ᵀ + 3·u2v2ᵀ, τD = 2·u3v3ᵀ + 1·u4v4ᵀ; r = 4, 2 tasks, fraction 0.5:
        # common = 2 → (u1, u2), the sum's top two; τT has nothing outside it, τD's top
        # direction outside it is u3 (2). Kept values 4, 3, 2 → level 9/4 on u1, u2, u3.
        tau_t = low_rank(U4[:, :2], [4, 3], V4[:, :2])
        tau_d = low_rank(U4[:, 2:], [2, 1], V4[:, 2:])
        close(iso_cts_matrix([tau_t, tau_d], 0.5), 2.25 * U4[:, :3] @ V4[:, :3].T)
        # Iso-C flattens all four: (4 + 3 + 2 + 1)/4 = 2.5 on every direction
        close(iso_c_matrix([tau_t, tau_d]), 2.5 * U4 @ V4.T)

    def test_iso_cts_with_the_whole_space_common_is_iso_c(self) -> None:
        g = torch.Generator().manual_seed(3)
        vs = [torch.randn(5, 7, generator=g) for _ in range(3)]
        close(iso_cts_matrix(vs, 1.0), iso_c_matrix(vs))

    def test_polar_and_significant(self) -> None:
        a = t([[3.0, 0.0], [0.0, 0.5], [0.0, 0.0]])
        close(polar(a), t([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        assert significant(t([2.0, 1e-3, 1e-9]), (3, 3)) == 2
        assert significant(t([0.0, 0.0]), (2, 2)) == 0
        assert significant(t([1e-6, 1e-7]), (4, 4), tol=5e-7) == 1


class TestWudiMath:
    def test_one_task_vector_is_a_fixed_point(self) -> None:
        v = t([[1.0, -2.0, 0.5], [0.3, 0.0, 1.0]])
        close(wudi_matrix([v], 50, 1e-2), v)

    def test_orthogonal_row_spaces_do_not_interfere(self) -> None:
        # v1·v2ᵀ = 0: at M = v1 + v2 every (M − v_i)·v_iᵀ is 0, so the sum stays
        v1, v2 = t([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]), t([[0.0, 3.0, -1.0], [0.0, 1.0, 1.0]])
        close(wudi_matrix([v1, v2], 100, 1e-2), v1 + v2)

    def test_converges_to_the_interference_free_merge(self) -> None:
        # v1 = [1, 0], v2 = [1, 1]: L = 0 needs M·v1ᵀ = 1 and M·v2ᵀ = 2, so M* = [1, 1]
        v1, v2 = t([[1.0, 0.0]]), t([[1.0, 1.0]])
        close(wudi_matrix([v1, v2], 0, 1e-3), t([[2.0, 1.0]]))  # 0 iterations: the sum
        close(wudi_matrix([v1, v2], 1000, 1e-2), t([[1.0, 1.0]]), atol=1e-4)

    def test_zero_task_vector_is_left_out(self) -> None:
        v = t([[1.0, 2.0], [0.0, 1.0]])
        out = wudi_matrix([v, torch.zeros(2, 2)], 20, 1e-2)
        close(out, v)  # FusionBench divides by the zero norm and returns NaN
        close(wudi_matrix([torch.zeros(2, 2)] * 2, 20, 1e-2), torch.zeros(2, 2))

    @pytest.mark.parametrize("shape", [(4, 3), (2, 9)])
    def test_both_gradient_routes_are_autograd_gradient(self, shape) -> None:
        g = torch.Generator().manual_seed(5)
        vs = [torch.randn(shape, generator=g) for _ in range(2)]
        merged = torch.randn(shape, generator=g, requires_grad=True)
        loss = sum((((merged - v) @ v.T) ** 2).sum() / torch.linalg.vector_norm(v) ** 2 for v in vs)
        (expected,) = torch.autograd.grad(loss, merged)
        displacement = merged.detach() - vs[0] - vs[1]
        for route in ("gram", "direct"):
            close(wudi_gradient(vs, route)(displacement), expected, atol=1e-4)

    @pytest.mark.slow  # the first torch.optim step imports for seconds
    def test_matches_torch_adam_on_the_autograd_loss(self) -> None:
        g = torch.Generator().manual_seed(6)
        vs = [torch.randn(3, 4, generator=g) * 1e-2 for _ in range(2)]
        param = torch.nn.Parameter(sum(vs).clone())
        opt = torch.optim.Adam([param], lr=1e-4)
        for _ in range(30):
            loss = sum((((param - v) @ v.T) ** 2).sum() / (v**2).sum() for v in vs)
            opt.zero_grad()
            loss.backward()
            opt.step()
        close(wudi_matrix(vs, 30, 1e-4), param.detach(), atol=1e-7)

    def test_runs_under_inference_mode(self) -> None:
        vs = [t([[1.0, 0.5], [0.0, 1.0]]), t([[0.2, 1.0], [1.0, 0.0]])]
        with torch.inference_mode():
            out = wudi_matrix(vs, 5, 1e-3)
        assert torch.isfinite(out).all() and not torch.equal(out, vs[0] + vs[1])


def triplet(shape=(6, 4), n: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    theta_t, tau_t = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    return theta_t, [torch.randn(shape, generator=g) for _ in range(n)], tau_t


MATRIX = {
    "tsv_m": lambda vs: tsv_matrix(vs),
    "iso_c": iso_c_matrix,
    "iso_cts": lambda vs: iso_cts_matrix(vs, 0.8),
    "wudi": lambda vs: wudi_matrix(vs, 300, 1e-5),
}


class TestPipeline:
    @pytest.mark.parametrize("name", sorted(METHODS))
    def test_alpha_one_is_theta_0_plus_scaled_merge(self, name: str) -> None:
        theta_t, taus, tau_t = triplet(n=2)
        weights = [1.0, 0.5]
        vectors = [tau_t, taus[0], 0.5 * taus[1]]
        expected = theta_t - tau_t + 1.5 * MATRIX[name](vectors)
        out = METHODS[name](theta_t, taus, tau_t=tau_t, weights=weights, scaling_factor=1.5)
        close(out, expected)

    @pytest.mark.parametrize("name", sorted(METHODS))
    def test_alpha_moves_from_theta_t(self, name: str) -> None:
        theta_t, taus, tau_t = triplet()
        full = METHODS[name](theta_t, taus, tau_t=tau_t)
        assert torch.equal(METHODS[name](theta_t, taus, tau_t=tau_t, alpha=0.0), theta_t)
        half = METHODS[name](theta_t, taus, tau_t=tau_t, alpha=0.5)
        close(half, (theta_t + full) / 2)

    @pytest.mark.parametrize("name", sorted(METHODS))
    def test_other_tensors_get_the_mean(self, name: str) -> None:
        # biases, LayerNorm (1-D) and 3-D tensors: Θ0 + λ·mean(τT, w·τD)
        for shape in [(5,), (2, 3, 2)]:
            theta_t, taus, tau_t = triplet(shape)
            out = METHODS[name](theta_t, taus, tau_t=tau_t, weights=[2.0], scaling_factor=0.5)
            close(out, theta_t - tau_t + 0.5 * (tau_t + 2.0 * taus[0]) / 2)

    @pytest.mark.parametrize("name", sorted(METHODS))
    def test_dtype_and_missing_tau_t(self, name: str) -> None:
        theta_t, taus, tau_t = triplet()
        out = METHODS[name](theta_t.bfloat16(), [x.bfloat16() for x in taus], tau_t=tau_t)
        assert out.shape == theta_t.shape and out.dtype == torch.bfloat16
        with pytest.raises(ValueError, match=f"{name} needs the IR task vector tau_t"):
            METHODS[name](theta_t, taus, name="enc.weight")
        with pytest.raises(ValueError, match="2 weights given for 1 task vectors"):
            METHODS[name](theta_t, taus, tau_t=tau_t, weights=[1.0, 1.0], name="w")

    def test_direct_callers_get_value_errors(self) -> None:
        theta_t, taus, tau_t = triplet()
        with pytest.raises(ValueError, match="sv_reduction must be in"):
            tsv_m(theta_t, taus, tau_t=tau_t, sv_reduction=0.0)
        with pytest.raises(ValueError, match="common_space_fraction must be in"):
            iso_cts(theta_t, taus, tau_t=tau_t, common_space_fraction=1.5)
        with pytest.raises(ValueError, match="iterations must be"):
            wudi(theta_t, taus, tau_t=tau_t, iterations=-1)

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    @pytest.mark.parametrize("name", sorted(METHODS))
    def test_same_result_on_cuda(self, name: str) -> None:
        theta_t, taus, tau_t = triplet((24, 16), n=2)
        kwargs = {"iterations": 30} if name == "wudi" else {}
        cpu = METHODS[name](theta_t, taus, tau_t=tau_t, **kwargs)
        cuda = [x.cuda() for x in (theta_t, *taus, tau_t)]
        gpu = METHODS[name](cuda[0], cuda[1:-1], tau_t=cuda[-1], **kwargs)
        assert gpu.device.type == "cuda"
        close(gpu.cpu(), cpu, atol=1e-4)


def registered() -> dict[str, MergeMethod]:
    methods: dict[str, MergeMethod] = {}
    for module in (task_space_module, wudi_module):
        module.register_merge_methods(register=lambda m: methods.setdefault(m.name, m))
    return methods


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
"""


def registry(tmp_path, merge: str):
    path = tmp_path / "r.yaml"
    path.write_text(REGISTRY.replace("MERGE", merge))
    return load_registry(path)


class TestRegistrationAndParams:
    def test_registered(self) -> None:
        methods = registered()
        assert set(methods) == set(METHODS)
        group = {ep.value for ep in importlib.metadata.entry_points(group="mergekit_ir")}
        assert {task_space_module.__name__, wudi_module.__name__} <= group
        for name, method in methods.items():
            assert method.merge is METHODS[name]
            assert method.needs_ir_vector and not method.elementwise
            alpha = method.params[0]
            assert (alpha.name, alpha.min, alpha.max, alpha.default) == ("alpha", 0, 1, 1.0)
            assert method.param("scaling_factor").default == 1.0
            assert method.description

    def test_defaults(self) -> None:
        methods = registered()
        assert methods["tsv_m"].param("sv_reduction").default is None  # 1/N
        assert methods["iso_cts"].param("common_space_fraction").default == 0.8
        assert methods["wudi"].param("iterations").default == 300
        assert methods["wudi"].param("lr").default == 1e-5

    @pytest.mark.parametrize(
        ("merge", "message"),
        [
            (
                "{method: tsv_m, alpha: [0.5, 1.5]}",
                r"e\.merge\.alpha\[1\]: 1\.5 is outside \[0, 1\]",
            ),
            (
                "{method: tsv_m, sv_reduction: 0}",
                r"e\.merge\.sv_reduction: 0 must be greater than 0",
            ),
            (
                "{method: tsv_m, sv_reduction: [0.25, 1.5]}",
                r"e\.merge\.sv_reduction\[1\]: 1\.5 is outside \[0, 1\]",
            ),
            (
                "{method: iso_cts, common_space_fraction: 1.2}",
                r"e\.merge\.common_space_fraction: 1\.2 is outside \[0, 1\]",
            ),
            ("{method: iso_c, scaling_factor: -1}", r"e\.merge\.scaling_factor: -1 is outside"),
            (
                "{method: iso_c, scaling_factor: .nan}",
                r"e\.merge\.scaling_factor: nan is not a finite",
            ),
            (
                "{method: wudi, iterations: -3}",
                r"e\.merge\.iterations: -3 is outside \[0, 100000\]",
            ),
            ("{method: wudi, iterations: 2.5}", r"e\.merge\.iterations: 2\.5 is not a int"),
            ("{method: wudi, lr: -0.1}", r"e\.merge\.lr: -0\.1 is outside \[0, 1\]"),
            (
                "{method: wudi, rank: 3}",
                r"e\.merge\.rank: unknown parameter for merge method 'wudi'",
            ),
            ("{method: iso_c, weights: [1, 2]}", r"e\.merge\.weights: 2 weight\(s\) given for 1"),
            (
                "{method: iso_c, common_space_fraction: 0.5}",
                r"e\.merge\.common_space_fraction: unknown parameter for merge method 'iso_c'",
            ),
        ],
    )
    def test_config_errors_name_the_yaml_path(self, tmp_path, merge: str, message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            registry(tmp_path, merge)

    def test_every_numeric_parameter_is_a_grid_dimension(self, tmp_path) -> None:
        for merge, grid in [
            ("{method: tsv_m, alpha: [1.0], sv_reduction: [0.25, 0.5]}", ("sv_reduction", 2)),
            (
                "{method: iso_c, alpha: [1.0], scaling_factor: [1.0, 1.5, 2.0]}",
                ("scaling_factor", 3),
            ),
            (
                "{method: iso_cts, alpha: [1.0], common_space_fraction: [0.6, 0.8]}",
                ("common_space_fraction", 2),
            ),
            ("{method: wudi, alpha: [1.0], iterations: [100, 300]}", ("iterations", 2)),
            ("{method: wudi, alpha: [1.0], lr: [1.0e-5, 1.0e-4]}", ("lr", 2)),
        ]:
            exp = registry(tmp_path, merge).experiment("e")
            assert [(n, len(v)) for n, v in exp.grid] == [grid], merge

    def test_layer_wise_values(self, tmp_path) -> None:
        merge = "{method: wudi, iterations: [{filter: embeddings, value: 0}, {value: 300}]}"
        exp = registry(tmp_path, merge).experiment("e")
        assert exp.merge_params["iterations"][0] == {"filter": "embeddings", "value": 0}
        gradient = {"gradient": [0.5, 1.0]}
        assert registered()["iso_c"].param("scaling_factor").check(gradient, "a") == gradient


@pytest.mark.parametrize(
    ("method", "point"),
    [
        ("tsv_m", {"alpha": 0.7, "sv_reduction": 0.25}),
        ("iso_cts", {"alpha": 0.5, "common_space_fraction": 0.6}),
        ("wudi", {"alpha": 1.0, "iterations": 20, "lr": 1e-3}),
    ],
)
def test_a_grid_point_in_place_equals_the_streamed_merge(tiny_triplet, tmp_path, method, point):
    """The α sweep applies a grid point of these methods exactly as a merge to disk writes it."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from mergekit_ir.merging.checkpoint import open_checkpoint
    from mergekit_ir.merging.engine import MergeJob, build_plan, merge_to_folder
    from mergekit_ir.merging.sweep import InPlaceSweep
    from mergekit_ir.merging.task_vector import TaskVector
    from mergekit_ir.plugin_host import catalog
    from mergekit_ir.results import grid_point, point_params

    mm = catalog().merge_method(method)
    pre = open_checkpoint(str(tiny_triplet["pretrained"]))
    vector = TaskVector.from_checkpoints(pre, open_checkpoint(str(tiny_triplet["domain"])))
    params = {p.name: p.default for p in mm.params}
    job = MergeJob(open_checkpoint(str(tiny_triplet["ir"])), [vector], mm, params, pretrained=pre)
    plan = build_plan(job)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_triplet["ir"]).eval()
    sweep = InPlaceSweep(model, job, plan)
    sweep.apply(point_params(grid_point(point)))
    job.params = {**params, **point}
    merge_to_folder(job, tmp_path / "m", progress=False, plan=plan)
    written = load_file(tmp_path / "m" / "model.safetensors")
    live = model.state_dict()
    theta_t = load_file(tiny_triplet["ir"] / "model.safetensors")
    assert any(not torch.equal(written[n], theta_t[n]) for n in written)  # it merged
    for n, tensor in written.items():
        assert torch.equal(live[n], tensor), n  # bit for bit


REGISTRY_RUN = """
datasets:
  toy: {beir: "quickstart:toy", test: test, dev: dev}
triplets:
  quickstart-tiny:
    scorer: {kind: bi-encoder, pooling: mean, similarity: cosine}
    pretrained: quickstart:pretrained
    domain: quickstart:domain
    ir: quickstart:ir
experiments:
"""


@pytest.mark.slow
def test_registry_experiments_run_each_method(tmp_path) -> None:
    """`mergeir run` with each method (and a swept parameter) on the quickstart-tiny triplet:
    a report with finite merged rows."""
    import json

    from click.testing import CliRunner

    from mergekit_ir.cli import main

    merges = {
        "tsv_m": "{method: tsv_m, alpha: [1.0], sv_reduction: [0.25, 0.5]}",
        "iso_c": "{method: iso_c, alpha: [0.5, 1.0], scaling_factor: 1.5}",
        "iso_cts": "{method: iso_cts, alpha: [1.0], common_space_fraction: 0.6}",
        "wudi": "{method: wudi, alpha: [1.0], iterations: 50}",
    }
    text = REGISTRY_RUN + "".join(
        f"  e-{m}:\n    triplets: [quickstart-tiny]\n    datasets: [toy]\n    merge: {spec}\n"
        "    first_stage: {backend: bm25s, k: 20}\n    metrics: [NDCG@10]\n"
        for m, spec in merges.items()
    )
    (tmp_path / "r.yaml").write_text(text)
    cache = tmp_path / "cache"
    for m in merges:
        out = tmp_path / m
        args = ["run", f"e-{m}", "--registry", str(tmp_path / "r.yaml"), "--out", str(out)]
        res = CliRunner().invoke(main, [*args, "--cache-dir", str(cache), "-q"])
        assert res.exit_code == 0, (m, res.output, repr(res.exception))
        report = json.loads((out / "results.json").read_text())
        (section,) = report["sections"]
        merged = [r for r in section["rows"] if r["key"].startswith("merged")]
        assert merged, m
        for row in merged:
            for cells in row["cells"].values():
                assert all(math.isfinite(c["mean"]) for c in cells.values()), (m, row["key"])


def test_matrices_too_small_to_keep_a_direction() -> None:
    # 2×32 (token-type embeddings) at sv_reduction 0.25: k = ⌊0.5⌋ = 0, nothing is kept
    vs = [torch.ones(2, 32), torch.ones(2, 32)]
    close(tsv_matrix(vs, 0.25), torch.zeros(2, 32))
    # Iso-CTS with r = 2, fraction 0: no common space, one direction per task; the rows
    # (3, 4) and (0, 0, 1) are orthogonal, so M = mean(5, 1)·(their unit directions)
    v1, v2 = torch.zeros(2, 4), torch.zeros(2, 4)
    v1[0, :2] = t([3.0, 4.0])
    v2[1, 2] = 1.0
    close(iso_cts_matrix([v1, v2], 0.0), 3.0 * t([[0.6, 0.8, 0, 0], [0, 0, 1, 0]]))
