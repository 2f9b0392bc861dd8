"""Sparse merge methods (TIES, DARE, magnitude pruning, Breadcrumbs) on hand-computed tensors.

Expected values are written out by hand from the formulas in docs/merge-methods.md;
the slow oracle class compares the same helpers with mergekit's and PEFT's own code.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import pathlib
import types

import pytest
import torch

from mergekit_ir import ConfigError, MergeMethod, tensor_generator
from mergekit_ir_plugins.merge_methods import breadcrumbs as breadcrumbs_module
from mergekit_ir_plugins.merge_methods import dare as dare_module
from mergekit_ir_plugins.merge_methods import magnitude_prune as magnitude_prune_module
from mergekit_ir_plugins.merge_methods import ties as ties_module
from mergekit_ir_plugins.merge_methods.breadcrumbs import breadcrumbs
from mergekit_ir_plugins.merge_methods.dare import dare_linear, dare_ties
from mergekit_ir_plugins.merge_methods.magnitude_prune import magnitude_prune
from mergekit_ir_plugins.merge_methods.sparsify import (
    density_param,
    elect_sign,
    rank_window_mask,
    trim_magnitude,
    trim_outliers,
)
from mergekit_ir_plugins.merge_methods.ties import ties

SPARSE_METHODS = {
    "ties": ties,
    "dare_ties": dare_ties,
    "dare_linear": dare_linear,
    "magnitude_prune": magnitude_prune,
    "breadcrumbs": breadcrumbs,
}


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal shape, dtype and values to 1e-6 (torch.testing.assert_close costs ~1 s on first use)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert torch.allclose(actual, expected, atol=1e-6, rtol=1e-6), f"\n{actual}\n!=\n{expected}"


# Θ0 = 1 everywhere; τT and τD have distinct magnitudes around the density-0.5 cut
# (9 entries keep 4: no tie at the boundary).
THETA_0 = torch.ones(3, 3)
TAU_T = t([[3, -1, 0.5], [-2, 4, -0.2], [1, -3, 0.1]])
TAU_D = t([[1, 2, 0.3], [5, -0.5, 0.6], [-4, 0.2, -0.7]])
THETA_T = THETA_0 + TAU_T
# trim(τT) = [[3,0,0],[-2,4,0],[0,-3,0]]; trim(τD) = [[1,2,0],[5,0,0],[-4,0,0]]


class TestTies:
    def test_hand_computed(self) -> None:
        # α = 0.5: d_T = trim(τT), d_D = 0.5·trim(τD) = [[.5,1,0],[2.5,0,0],[-2,0,0]]
        # Σ = [[3.5,1,0],[.5,4,0],[-2,-3,0]] -> elected [[+,+,+],[+,+,+],[-,-,+]]
        # τT's -2 at (1,0) disagrees and is dropped; the rest agree.
        out = ties(THETA_T, [TAU_D], tau_t=TAU_T, alpha=0.5, density=0.5)
        close(out, t([[4.5, 2, 1], [3.5, 5, 1], [-1, -2, 1]]))

    def test_normalize_divides_by_agreeing_weights(self) -> None:
        # Same agreement; divide by Σ|W| of agreeing vectors: (0,0) 3.5/1.5, D-only
        # entries by 0.5, T-only entries by 1, empty entries stay 0.
        out = ties(THETA_T, [TAU_D], tau_t=TAU_T, alpha=0.5, density=0.5, normalize=True)
        close(out, t([[1 + 3.5 / 1.5, 3, 1], [6, 5, 1], [-3, -2, 1]]))

    def test_normalize_with_negative_alpha_uses_absolute_weights(self) -> None:
        # d_T = [2, 1], d_D = -1·[-1, 3] = [1, -3]; Σ = [3, -2] -> [+, -]
        # agree: T [yes, no], D [yes, yes]; mixed = [3, -3]; Σ|W| = [2, 1]
        theta_0 = torch.tensor([0.5, 0.5])
        tau_t = torch.tensor([2.0, 1.0])
        out = ties(
            theta_0 + tau_t,
            [torch.tensor([-1.0, 3.0])],
            tau_t=tau_t,
            alpha=-1.0,
            density=1.0,
            normalize=True,
        )
        close(out, torch.tensor([0.5 + 1.5, 0.5 - 3.0]))

    def test_alpha_zero_is_trimmed_ir_model(self) -> None:
        # The domain vector has weight 0, so only trim(τT) remains on top of Θ0.
        out = ties(THETA_T, [TAU_D], tau_t=TAU_T, alpha=0.0, density=0.5)
        close(out, t([[4, 1, 1], [-1, 5, 1], [1, -2, 1]]))
        other = ties(THETA_T, [-3 * TAU_D], tau_t=TAU_T, alpha=0.0, density=0.5)
        close(other, out)

    def test_alpha_zero_density_one_is_theta_t(self) -> None:
        close(ties(THETA_T, [TAU_D], tau_t=TAU_T, alpha=0.0, density=1.0), THETA_T)

    def test_density_one_without_conflict_is_task_arithmetic(self) -> None:
        tau_d = t([[1, -2, 0.5], [-1, 1, -1], [2, -1, 0]])  # same signs as τT (or 0)
        out = ties(THETA_T, [tau_d], tau_t=TAU_T, alpha=0.5, density=1.0)
        close(out, THETA_T + 0.5 * tau_d)

    def test_weights_scale_domain_vectors(self) -> None:
        # density 1, 1-D, Θ0 = 0: d_T = [1, 1], d_1 = 0.5·2·[1, -4] = [1, -4],
        # d_2 = 0.5·1·[-1, -1] = [-.5, -.5]; Σ = [1.5, -3.5] -> [+, -]
        # agree: T [y, n], 1 [y, y], 2 [n, y] -> [1 + 1, -4 - .5]
        out = ties(
            torch.tensor([1.0, 1.0]),
            [torch.tensor([1.0, -4.0]), torch.tensor([-1.0, -1.0])],
            tau_t=torch.tensor([1.0, 1.0]),
            alpha=0.5,
            weights=[2.0, 1.0],
            density=1.0,
        )
        close(out, torch.tensor([2.0, -4.5]))

    def test_no_domain_vectors(self) -> None:
        out = ties(THETA_T, [], tau_t=TAU_T, density=0.5)
        close(out, t([[4, 1, 1], [-1, 5, 1], [1, -2, 1]]))

    def test_preserves_shape_and_dtype(self) -> None:
        theta = torch.zeros(2, 3, 4)
        out = ties(theta, [torch.ones(2, 3, 4)], tau_t=torch.ones(2, 3, 4), density=0.3)
        assert out.shape == theta.shape and out.dtype == torch.float32


class TestMagnitudePrune:
    def test_hand_computed(self) -> None:
        # Θ0 + trim(τT) + 0.5·trim(τD): no sign election, so (1,0) is -2 + 2.5
        out = magnitude_prune(THETA_T, [TAU_D], tau_t=TAU_T, alpha=0.5, density=0.5)
        close(out, t([[4.5, 2, 1], [1.5, 5, 1], [-1, -2, 1]]))

    def test_density_one_is_task_arithmetic(self) -> None:
        out = magnitude_prune(THETA_T, [TAU_D], tau_t=TAU_T, alpha=-0.5, density=1.0)
        close(out, THETA_T - 0.5 * TAU_D)

    def test_alpha_zero(self) -> None:
        out = magnitude_prune(THETA_T, [TAU_D], tau_t=TAU_T, alpha=0.0, density=0.5)
        close(out, t([[4, 1, 1], [-1, 5, 1], [1, -2, 1]]))


class TestBreadcrumbs:
    THETA_0 = torch.full((3, 3), 2.0)
    TAU_T = t([[0.1, -0.2, 0.3], [-0.4, 0.5, -0.6], [0.7, -0.8, 0.9]])
    TAU_D = t([[-9, 1, -2], [3, -4, 5], [-6, 7, -8]])

    def test_hand_computed(self) -> None:
        # n = 9, density 0.5 -> keep 4; gamma 0.12 -> drop the top 1, the bottom 4.
        # crumbs(τT) = [[0,0,0],[0,.5,-.6],[.7,-.8,0]], crumbs(τD) = [[0,0,0],[0,0,5],[-6,7,-8]]
        out = breadcrumbs(
            self.THETA_0 + self.TAU_T,
            [self.TAU_D],
            tau_t=self.TAU_T,
            alpha=0.5,
            density=0.5,
            gamma=0.12,
        )
        close(out, t([[2, 2, 2], [2, 2.5, 3.9], [-0.3, 4.7, -2]]))

    def test_density_takes_precedence_over_gamma(self) -> None:
        # density 0.9 keeps 8 of 9, so gamma 0.5 can only drop the single largest.
        kept = trim_outliers(self.TAU_D, density=0.9, gamma=0.5)
        close(kept, t([[0, 1, -2], [3, -4, 5], [-6, 7, -8]]))

    def test_gamma_zero_is_magnitude_trim(self) -> None:
        close(trim_outliers(self.TAU_D, 0.5, 0.0), trim_magnitude(self.TAU_D, 0.5))

    def test_density_one_is_task_arithmetic(self) -> None:
        theta_t = self.THETA_0 + self.TAU_T
        out = breadcrumbs(
            theta_t, [self.TAU_D], tau_t=self.TAU_T, alpha=0.25, density=1.0, gamma=0.3
        )
        close(out, theta_t + 0.25 * self.TAU_D)

    def test_alpha_zero(self) -> None:
        out = breadcrumbs(
            self.THETA_0 + self.TAU_T,
            [self.TAU_D],
            tau_t=self.TAU_T,
            alpha=0.0,
            density=0.5,
            gamma=0.12,
        )
        close(out, t([[2, 2, 2], [2, 2.5, 1.4], [2.7, 1.2, 2]]))


class TestDare:
    def test_density_one_is_deterministic_ties_and_linear(self) -> None:
        # No drop, no rescale: dare_ties = ties(density 1), dare_linear = task arithmetic.
        # α = 0.5: Σ = τT + 0.5·τD = [[3.5,0,.65],[.5,3.75,.1],[-1,-2.9,-.25]], so the
        # elected signs are [[+,+,+],[+,+,+],[-,-,-]] ((0,1) is a tie at 0 -> +).
        # Dropped as disagreeing: τT at (0,1),(1,0),(1,2),(2,0),(2,2); 0.5·τD at (1,1),(2,1).
        out = dare_ties(THETA_T, [TAU_D], tau_t=TAU_T, alpha=0.5, density=1.0, seed=3)
        close(out, THETA_0 + t([[3.5, 1, 0.65], [2.5, 4, 0.3], [-2, -3, -0.35]]))
        lin = dare_linear(THETA_T, [TAU_D], tau_t=TAU_T, alpha=0.5, density=1.0, seed=3)
        close(lin, THETA_T + 0.5 * TAU_D)

    def test_alpha_zero_density_one_is_theta_t(self) -> None:
        for fn in (dare_ties, dare_linear):
            close(fn(THETA_T, [TAU_D], tau_t=TAU_T, alpha=0.0, density=1.0), THETA_T)

    def test_kept_entries_rescaled_by_inverse_density(self) -> None:
        # One vector, α = 0: each entry is Θ0 (dropped) or Θ0 + τT/0.25 (kept).
        tau = torch.arange(1.0, 65.0).reshape(8, 8)
        out = dare_linear(tau + 1, [], tau_t=tau, density=0.25, seed=7, name="w")
        delta = out - 1
        kept = delta != 0
        close(delta[kept], tau[kept] * 4)
        assert 0 < int(kept.sum()) < 64

    def test_mask_is_the_documented_cpu_draw(self) -> None:
        # Masks come from tensor_generator(seed, name) on the CPU: τT first, then τ1.
        gen = tensor_generator(11, "layer.0.weight")
        mask_t = torch.rand((4, 4), generator=gen) < 0.5
        mask_d = torch.rand((4, 4), generator=gen) < 0.5
        tau_t, tau_d = torch.ones(4, 4), torch.full((4, 4), 3.0)
        out = dare_linear(
            tau_t, [tau_d], tau_t=tau_t, alpha=0.1, density=0.5, seed=11, name="layer.0.weight"
        )
        close(out, mask_t * 2.0 + mask_d * 0.6)

    def test_reproducible_and_seed_dependent(self) -> None:
        g = torch.Generator().manual_seed(0)
        theta, tau_t, tau_d = (torch.randn(16, 16, generator=g) for _ in range(3))
        for fn in (dare_ties, dare_linear):
            a = fn(theta, [tau_d], tau_t=tau_t, density=0.3, seed=1, name="x")
            b = fn(theta, [tau_d], tau_t=tau_t, density=0.3, seed=1, name="x")
            c = fn(theta, [tau_d], tau_t=tau_t, density=0.3, seed=2, name="x")
            d = fn(theta, [tau_d], tau_t=tau_t, density=0.3, seed=1, name="y")
            assert torch.equal(a, b)
            assert not torch.equal(a, c)
            assert not torch.equal(a, d)

    def test_masks_do_not_depend_on_alpha(self) -> None:
        # With τD = 0 the result is Θ0 + dare(τT) for any α: same draw every call.
        tau_t = torch.arange(1.0, 26.0).reshape(5, 5)
        outs = [
            dare_ties(tau_t, [torch.zeros(5, 5)], tau_t=tau_t, alpha=a, density=0.4, name="n")
            for a in (0.0, 0.3, 1.0)
        ]
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])

    def test_keep_fraction_and_unbiased(self) -> None:
        # p = 0.7 dropped; the rescaled result keeps the mean (E[dare(v)] = v).
        v = torch.ones(200, 200)
        out = dare_linear(v, [], tau_t=v, density=0.3, seed=0, name="big")
        assert abs(float((out != 0).float().mean()) - 0.3) < 0.01
        assert abs(float(out.mean()) - 1.0) < 0.04

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    def test_same_masks_on_cuda(self) -> None:
        g = torch.Generator().manual_seed(1)
        theta, tau_t, tau_d = (torch.randn(32, 32, generator=g) for _ in range(3))
        for fn in (dare_ties, dare_linear):
            cpu = fn(theta, [tau_d], tau_t=tau_t, density=0.4, seed=5, name="z")
            gpu = fn(
                theta.cuda(), [tau_d.cuda()], tau_t=tau_t.cuda(), density=0.4, seed=5, name="z"
            )
            close(gpu.cpu(), cpu)


class TestSparsifyHelpers:
    def test_magnitude_ties_broken_by_index(self) -> None:
        # k = 2 of [1, -1, 1, .5]: the stable ascending sort ranks index 0 lowest of the
        # equal magnitudes, so the later two are kept.
        close(
            trim_magnitude(torch.tensor([1.0, -1.0, 1.0, 0.5]), 0.5),
            torch.tensor([0.0, -1.0, 1.0, 0.0]),
        )

    def test_rank_window_matches_stable_sort_with_many_ties(self) -> None:
        # The kthvalue-based selection must pick exactly the entries a stable sort
        # would, including when ties straddle both cuts (integers in [-3, 3]).
        g = torch.Generator().manual_seed(0)
        for _ in range(200):
            n = int(torch.randint(1, 30, (1,), generator=g))
            x = torch.randint(-3, 4, (n,), generator=g).float()
            lo, hi = (int(v) for v in torch.randint(0, n + 1, (2,), generator=g))
            expected = torch.zeros(n, dtype=torch.bool)
            expected[torch.argsort(x.abs(), stable=True)[lo:hi]] = True
            assert torch.equal(rank_window_mask(x, lo, hi), expected), (x, lo, hi)

    def test_tiny_density_keeps_one_entry(self) -> None:
        close(trim_magnitude(TAU_T, 0.01), t([[0, 0, 0], [0, 4, 0], [0, 0, 0]]))

    def test_density_one_is_identity(self) -> None:
        close(trim_magnitude(TAU_T, 1.0), TAU_T)
        close(trim_outliers(TAU_T, 1.0, 0.5), TAU_T)

    def test_elect_sign(self) -> None:
        stacked = torch.stack(
            [torch.tensor([2.0, -1.0, 0.0, 1.0]), torch.tensor([-1.0, 3.0, 0.0, -1.0])]
        )
        # Σ = [1, 2, 0, 0] -> all +: agreeing are the positive entries only.
        expected = torch.tensor([[True, False, False, True], [False, True, False, False]])
        assert torch.equal(elect_sign(stacked), expected)


class TestErrorsAndRegistration:
    @pytest.mark.parametrize("method", sorted(SPARSE_METHODS))
    def test_missing_tau_t(self, method: str) -> None:
        with pytest.raises(ValueError, match=f"{method} needs the IR task vector tau_t"):
            SPARSE_METHODS[method](THETA_T, [TAU_D], name="enc.weight")

    @pytest.mark.parametrize("method", sorted(SPARSE_METHODS))
    @pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
    def test_bad_density(self, method: str, density: float) -> None:
        with pytest.raises(ValueError, match="density must be in \\(0, 1\\]"):
            SPARSE_METHODS[method](THETA_T, [TAU_D], tau_t=TAU_T, density=density)

    def test_global_topk_rejected(self) -> None:
        with pytest.raises(ValueError, match="per-tensor"):
            ties(THETA_T, [TAU_D], tau_t=TAU_T, topk="global")

    def test_weight_count_checked(self) -> None:
        with pytest.raises(ValueError, match="2 weights given for 1 task vectors"):
            dare_linear(THETA_T, [TAU_D], tau_t=TAU_T, weights=[1.0, 2.0], name="w")

    def test_density_param_lower_bound_is_exclusive(self) -> None:
        p = density_param(0.5)
        assert p.check(1, "m.density") == 1.0
        assert p.check({"gradient": [0.2, 1.0]}, "m.density") == {"gradient": [0.2, 1.0]}
        with pytest.raises(ConfigError, match="greater than 0"):
            p.check(0.0, "m.density")
        with pytest.raises(ConfigError, match="outside"):
            p.check(1.2, "m.density")
        assert "in (0, 1]" in p.describe()

    def test_registered(self) -> None:
        # Call each module's hook directly (loading the whole catalog imports every
        # scorer backend) and check the entry points that make them visible.
        methods: dict[str, MergeMethod] = {}
        for module in (ties_module, dare_module, magnitude_prune_module, breadcrumbs_module):
            module.register_merge_methods(register=lambda m: methods.setdefault(m.name, m))
            group = importlib.metadata.entry_points(group="mergekit_ir")
            assert module.__name__ in {ep.value for ep in group}
        assert set(methods) == set(SPARSE_METHODS)
        for name in SPARSE_METHODS:
            method = methods[name]
            assert method.merge is SPARSE_METHODS[name]
            assert method.needs_ir_vector
            assert {"alpha", "weights", "density"} <= {p.name for p in method.params}
        assert methods["ties"].param("topk").choices == ("tensor",)
        assert methods["dare_ties"].param("seed").type is int


def peft_merge_utils() -> types.ModuleType:
    """PEFT's merge_utils.py loaded on its own (it needs only torch).

    ``import peft.utils.merge_utils`` runs peft/__init__, which imports transformers
    (several seconds); the file itself is self-contained.
    """
    spec = importlib.util.find_spec("peft")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("peft is not installed")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "utils" / "merge_utils.py"
    file_spec = importlib.util.spec_from_file_location("peft_merge_utils", path)
    assert file_spec is not None and file_spec.loader is not None
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


@pytest.mark.slow
class TestOracles:
    """Compare with mergekit's (and PEFT's) own functions on random tensors.

    Intended differences, not tested for equality: DARE masks (mergekit draws with the
    global torch RNG on the tensor's device) and DARE's rescale (mergekit matches the
    L1 norm, we divide by density), normalize with negative weights (we divide by
    Σ|W|), and PEFT's sign election on unweighted vectors with a count divisor.
    """

    @staticmethod
    def randn(*shape: int, seed: int) -> torch.Tensor:
        return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))

    def mergekit_merge(self, method, theta_0, theta_t, theta_ds, ws, **params) -> torch.Tensor:
        from mergekit.merge_methods.base import TensorGroup

        ids = ["base", "ir"] + [f"d{i}" for i in range(len(theta_ds))]
        group = TensorGroup.from_tensors(
            [theta_0, theta_t, *theta_ds], ids=ids, base_index=0, name="x"
        )
        weight = dict(zip(ids[1:], [1.0, *ws], strict=True))
        (out,) = method([group], parameters={"weight": weight, **params})
        return out

    def inputs(self, seed: int, shape: tuple[int, ...] = (17, 23)):
        theta_0 = self.randn(*shape, seed=seed)
        theta_t = theta_0 + self.randn(*shape, seed=seed + 1)
        theta_ds = [theta_0 + self.randn(*shape, seed=seed + 2 + i) for i in range(2)]
        return theta_0, theta_t, theta_ds

    @pytest.mark.parametrize("density", [0.01, 0.1, 0.33, 0.5, 0.77, 0.99, 1.0])
    def test_magnitude_matches_mergekit(self, density: float) -> None:
        sparsify = pytest.importorskip("mergekit.sparsify")
        for shape, seed in (((7, 13), 0), ((64,), 1), ((3, 4, 5), 2)):
            x = self.randn(*shape, seed=seed)
            close(trim_magnitude(x, density), sparsify.magnitude(x, density))

    @pytest.mark.parametrize(
        ("density", "gamma"), [(0.5, 0.01), (0.9, 0.05), (0.3, 0.2), (0.8, 0.5)]
    )
    def test_outliers_match_mergekit(self, density: float, gamma: float) -> None:
        sparsify = pytest.importorskip("mergekit.sparsify")
        x = self.randn(11, 19, seed=3)
        close(
            trim_outliers(x, density, gamma), sparsify.magnitude_outliers(x, density, gamma=gamma)
        )

    def test_sign_election_matches_mergekit(self) -> None:
        gta = pytest.importorskip("mergekit.merge_methods.generalized_task_arithmetic")
        stacked = torch.stack([trim_magnitude(self.randn(9, 9, seed=s), 0.4) for s in range(3)])
        stacked[1] *= 0.3
        assert torch.equal(elect_sign(stacked), gta.get_mask(stacked, method="sum"))

    @pytest.mark.parametrize("normalize", [False, True])
    @pytest.mark.parametrize("alpha", [0.0, 0.3, 1.7])
    def test_ties_matches_mergekit(self, alpha: float, normalize: bool) -> None:
        registry = pytest.importorskip("mergekit.merge_methods.registry")
        theta_0, theta_t, theta_ds = self.inputs(10)
        ws = [1.0, 0.5]
        ours = ties(
            theta_t,
            [d - theta_0 for d in theta_ds],
            tau_t=theta_t - theta_0,
            alpha=alpha,
            weights=ws,
            density=0.4,
            normalize=normalize,
        )
        theirs = self.mergekit_merge(
            registry.get("ties"),
            theta_0,
            theta_t,
            theta_ds,
            [alpha * w for w in ws],
            density=0.4,
            normalize=normalize,
        )
        close(ours, theirs)

    @pytest.mark.parametrize("alpha", [0.0, 0.6, -0.8])
    def test_breadcrumbs_matches_mergekit(self, alpha: float) -> None:
        registry = pytest.importorskip("mergekit.merge_methods.registry")
        theta_0, theta_t, theta_ds = self.inputs(20)
        ours = breadcrumbs(
            theta_t,
            [d - theta_0 for d in theta_ds],
            tau_t=theta_t - theta_0,
            alpha=alpha,
            density=0.7,
            gamma=0.05,
        )
        theirs = self.mergekit_merge(
            registry.get("breadcrumbs"),
            theta_0,
            theta_t,
            theta_ds,
            [alpha, alpha],
            density=0.7,
            gamma=0.05,
        )
        close(ours, theirs)

    @pytest.mark.parametrize("alpha", [0.4, -1.2])
    def test_magnitude_prune_matches_mergekit_gta(self, alpha: float) -> None:
        gta = pytest.importorskip("mergekit.merge_methods.generalized_task_arithmetic")
        from mergekit.sparsify import SparsificationMethod

        method = gta.GeneralizedTaskArithmeticMerge(
            consensus_method=None,
            sparsification_method=SparsificationMethod.magnitude,
            default_normalize=False,
            default_rescale=False,
            method_name="magnitude_prune",
            method_pretty_name=None,
            method_reference_url=None,
        )
        theta_0, theta_t, theta_ds = self.inputs(30)
        ours = magnitude_prune(
            theta_t,
            [d - theta_0 for d in theta_ds],
            tau_t=theta_t - theta_0,
            alpha=alpha,
            weights=[2.0, 1.0],
            density=0.25,
        )
        theirs = self.mergekit_merge(
            method, theta_0, theta_t, theta_ds, [2 * alpha, alpha], density=0.25
        )
        close(ours, theirs)

    @pytest.mark.parametrize("name", ["dare_ties", "dare_linear"])
    def test_dare_density_one_matches_mergekit(self, name: str) -> None:
        registry = pytest.importorskip("mergekit.merge_methods.registry")
        theta_0, theta_t, theta_ds = self.inputs(40)
        ours = SPARSE_METHODS[name](
            theta_t,
            [d - theta_0 for d in theta_ds],
            tau_t=theta_t - theta_0,
            alpha=0.7,
            density=1.0,
        )
        theirs = self.mergekit_merge(
            registry.get(name), theta_0, theta_t, theta_ds, [0.7, 0.7], density=1.0
        )
        close(ours, theirs)

    def test_dare_statistics_match_mergekit(self) -> None:
        # Same keep rate; mergekit rescales to the exact L1 norm, we by 1/density, which
        # matches that norm in expectation (here within 2 %).
        sparsify = pytest.importorskip("mergekit.sparsify")
        x = self.randn(300, 300, seed=50)
        ours = dare_linear(torch.zeros_like(x), [], tau_t=x, density=0.2, seed=0, name="s") + x
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            theirs = sparsify.bernoulli(x, 0.2, rescale_norm=sparsify.RescaleNorm.l1)
        keep_ours = float((ours != 0).float().mean())
        keep_theirs = float((theirs != 0).float().mean())
        assert abs(keep_ours - 0.2) < 0.01 and abs(keep_theirs - 0.2) < 0.01
        l1 = float(x.abs().sum())
        assert abs(float(ours.abs().sum()) / l1 - 1) < 0.02
        assert abs(float(theirs.abs().sum()) / l1 - 1) < 1e-4
        kept = theirs != 0
        factor = float((theirs[kept] / x[kept]).mean())
        assert abs(factor * 0.2 - 1) < 0.02  # mergekit's factor ≈ our 1/density

    def test_ties_matches_peft_with_unit_weights(self) -> None:
        # PEFT elects on unweighted vectors and divides by the agreeing count; with unit
        # weights that equals our normalize=True.
        merge_utils = peft_merge_utils()
        theta_0, theta_t, theta_ds = self.inputs(60)
        vectors = [theta_t - theta_0] + [d - theta_0 for d in theta_ds]
        ours = ties(theta_t, vectors[1:], tau_t=vectors[0], alpha=1.0, density=0.3, normalize=True)
        theirs = merge_utils.ties(vectors, torch.ones(3), density=0.3)
        close(ours - theta_0, theirs)
        for v in vectors:
            close(trim_magnitude(v, 0.3), merge_utils.magnitude_based_pruning(v, 0.3))
