"""mergekit's other merge methods as plugins, on hand-computed tensors.

linear, model_stock (soups.py); slerp, nuslerp, multislerp, karcher (slerp.py); della,
della_linear (della.py); breadcrumbs_ties, sce (consensus.py); ram, ramplus_tl (ram.py);
nearswap, arcee_fusion (fusion.py). Expected values are worked out by hand from the
formulas in docs/merge-methods.md; tests/test_oracle_mergekit_tensors.py compares the
same functions with mergekit's own.
"""

from __future__ import annotations

import importlib.metadata
import math

import pytest
import torch

from mergekit_ir import ConfigError, MergeMethod, tensor_generator
from mergekit_ir_plugins.merge_methods import consensus as consensus_module
from mergekit_ir_plugins.merge_methods import della as della_module
from mergekit_ir_plugins.merge_methods import fusion as fusion_module
from mergekit_ir_plugins.merge_methods import ram as ram_module
from mergekit_ir_plugins.merge_methods import slerp as slerp_module
from mergekit_ir_plugins.merge_methods import soups as soups_module
from mergekit_ir_plugins.merge_methods.consensus import breadcrumbs_ties, sce
from mergekit_ir_plugins.merge_methods.della import della, della_linear, keep_probabilities
from mergekit_ir_plugins.merge_methods.fusion import arcee_fusion, nearswap
from mergekit_ir_plugins.merge_methods.ram import ram, ramplus_tl
from mergekit_ir_plugins.merge_methods.slerp import karcher, multislerp, nuslerp, slerp
from mergekit_ir_plugins.merge_methods.soups import linear, model_stock
from mergekit_ir_plugins.merge_methods.ties import ties

MODULES = (
    soups_module,
    slerp_module,
    della_module,
    consensus_module,
    ram_module,
    fusion_module,
)
METHODS = {
    "linear": linear,
    "model_stock": model_stock,
    "slerp": slerp,
    "nuslerp": nuslerp,
    "multislerp": multislerp,
    "karcher": karcher,
    "della": della,
    "della_linear": della_linear,
    "breadcrumbs_ties": breadcrumbs_ties,
    "sce": sce,
    "ram": ram,
    "ramplus_tl": ramplus_tl,
    "nearswap": nearswap,
    "arcee_fusion": arcee_fusion,
}
SCALE_METHODS = {"della", "della_linear", "breadcrumbs_ties", "sce"}  # α in [-2, 2]
ELEMENTWISE = {"linear", "nearswap", "ram"}
# α = 0 gives ΘT exactly (della and breadcrumbs_ties give Θ0 + sparse(τT) instead)
ALPHA_ZERO_IS_IR = set(METHODS) - {"della", "della_linear", "breadcrumbs_ties"}
R2 = math.sqrt(0.5)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-6) -> None:
    """Equal shape, dtype and values (torch.testing.assert_close costs ~1 s on first use)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert torch.allclose(actual, expected, atol=atol, rtol=1e-6), f"\n{actual}\n!=\n{expected}"


def triplet(theta_0, theta_t, *theta_ds):
    """(ΘT, [τ_i], τT) as the engine passes them, from models given by value."""
    theta_0, theta_t = t(theta_0), t(theta_t)
    return theta_t, [t(d) - theta_0 for d in theta_ds], theta_t - theta_0


def run(fn, theta_0, theta_t, *theta_ds, **params) -> torch.Tensor:
    theta, taus, tau_t = triplet(theta_0, theta_t, *theta_ds)
    return fn(theta, taus, tau_t=tau_t, **params)


def registered() -> dict[str, MergeMethod]:
    methods: dict[str, MergeMethod] = {}
    for module in MODULES:
        module.register_merge_methods(register=lambda m: methods.setdefault(m.name, m))
    return methods


class TestLinear:
    def test_one_domain_is_interpolation(self) -> None:
        # 0.75·[3, 1] + 0.25·[1, 5]
        close(run(linear, [1, 1], [3, 1], [1, 5], alpha=0.25), t([2.5, 2.0]))

    def test_soup_weights(self) -> None:
        # c = [1 − .5, .5·1, .5·3] = [.5, .5, 1.5]: Σ c·Θ = [.5, 4.5], Σ c = 2.5
        args = ([1, 1], [3, 1], [1, 5], [-1, 1])
        close(run(linear, *args, alpha=0.5, weights=[1.0, 3.0]), t([0.2, 1.8]))
        close(run(linear, *args, alpha=0.5, weights=[1.0, 3.0], normalize=False), t([0.5, 4.5]))

    def test_ends(self) -> None:
        close(run(linear, [1, 1], [3, 1], [1, 5], alpha=0.0), t([3, 1]))
        close(run(linear, [1, 1], [3, 1], [1, 5], alpha=1.0), t([1, 5]))
        close(run(linear, [1, 1], [3, 1], [1, 5], [5, 1], alpha=1.0), t([3, 3]))

    def test_weights_summing_to_zero(self) -> None:
        with pytest.raises(ValueError, match="sum to 0") as info:
            run(linear, [1, 1], [3, 1], [1, 5], [0, 0], alpha=1.0, weights=[1.0, -1.0])
        assert isinstance(info.value, ConfigError)  # the CLI prints it as one line


class TestSlerp:
    THETA_0 = [5.0, -3.0]  # nonzero: ΘD is rebuilt as ΘT − τT + τD

    def test_orthogonal_unit_vectors_midpoint(self) -> None:
        close(run(slerp, self.THETA_0, [1, 0], [0, 1], alpha=0.5), t([R2, R2]))

    def test_orthogonal_third(self) -> None:
        # θ = π/2: coefficients sin(π/3), sin(π/6)
        out = run(slerp, self.THETA_0, [1, 0], [0, 1], alpha=1 / 3)
        close(out, t([math.sqrt(3) / 2, 0.5]))

    def test_unequal_norms(self) -> None:
        # slerp of the raw tensors: √½·[2, 0] + √½·[0, 1]
        close(run(slerp, self.THETA_0, [2, 0], [0, 1], alpha=0.5), t([2 * R2, R2]))

    def test_flattens_matrices(self) -> None:
        out = run(slerp, [[0, 0], [0, 0]], [[1, 0], [0, 0]], [[0, 0], [0, 1]], alpha=0.5)
        close(out, t([[R2, 0], [0, R2]]))

    def test_nearly_parallel_is_lerp(self) -> None:
        out = run(slerp, self.THETA_0, [1, 0], [2, 0.001], alpha=0.25)
        close(out, t([1.25, 0.00025]))

    def test_ends(self) -> None:
        close(run(slerp, self.THETA_0, [1, 2], [-3, 1], alpha=0.0), t([1, 2]))
        close(run(slerp, self.THETA_0, [1, 2], [-3, 1], alpha=1.0), t([-3, 1]), atol=1e-5)

    def test_one_domain_only(self) -> None:
        with pytest.raises(ValueError, match="exactly one domain model, got 2") as info:
            run(slerp, [0, 0], [1, 0], [0, 1], [1, 1], alpha=0.5)
        assert isinstance(info.value, ConfigError)


class TestNuslerp:
    def test_task_vectors_about_theta_0(self) -> None:
        # Θ0 + slerp(e1, e2) at 0.5
        close(run(nuslerp, [1, 1], [2, 1], [1, 2], alpha=0.5), t([1 + R2, 1 + R2]))

    # τT = [[1, 0], [1, 0]], τD = [[0, 1], [1, 0]], Θ0 = 0
    ARGS = ([[0, 0], [0, 0]], [[1, 0], [1, 0]], [[0, 1], [1, 0]])

    def test_flattened(self) -> None:
        # cos = 1/2, θ = π/3: both coefficients sin(π/6)/sin(π/3) = 1/√3
        out = run(nuslerp, *self.ARGS, alpha=0.5)
        close(out, t([[1, 1], [2, 0]]) / math.sqrt(3))

    def test_rows(self) -> None:
        # row 0 orthogonal -> slerp; row 1 colinear -> lerp
        out = run(nuslerp, *self.ARGS, alpha=0.5, nuslerp_flatten=False)
        close(out, t([[R2, R2], [1, 0]]))

    def test_columns(self) -> None:
        # col 0: [1, 1] and [0, 1], θ = π/4, coefficient s = sin(π/8)/sin(π/4) each;
        # col 1: [0, 0] (unit 0, cos 0, θ = π/2) and [1, 0] -> √½·[1, 0]
        s = math.sin(math.pi / 8) / math.sin(math.pi / 4)
        out = run(nuslerp, *self.ARGS, alpha=0.5, nuslerp_flatten=False, nuslerp_row_wise=True)
        close(out, t([[s, R2], [2 * s, 0]]))

    def test_ends(self) -> None:
        close(run(nuslerp, [1, 1], [2, 3], [0, 5], alpha=0.0), t([2, 3]))
        close(run(nuslerp, [1, 1], [2, 3], [0, 5], alpha=1.0), t([0, 5]), atol=1e-5)


class TestMultislerp:
    def test_two_orthogonal_is_slerp_midpoint(self) -> None:
        close(run(multislerp, [1, 1], [2, 1], [1, 2], alpha=0.5), t([1 + R2, 1 + R2]))

    def test_three_orthonormal(self) -> None:
        # weights [.5, .5, .5] -> 1/3 each: the tangent vectors cancel
        r3 = 1 / math.sqrt(3)
        out = run(multislerp, [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], alpha=0.5)
        close(out, t([r3, r3, r3]))
        raw = run(
            multislerp,
            [0, 0, 0],
            [1, 0, 0],
            [0, 1, 0],
            [0, 0, 1],
            alpha=0.5,
            normalize_weights=False,
        )
        close(raw, t([r3, r3, r3]) * 1.5)  # scaled by Σ w·|τ| = 1.5

    def test_alpha_zero(self) -> None:
        close(run(multislerp, [1, 1], [2, 3], [0, 5], alpha=0.0), t([2, 3]), atol=1e-6)

    def test_antipodal_pair_is_lerp(self) -> None:
        close(run(multislerp, [1, 1], [2, 1], [0, 1], alpha=0.5), t([1, 1]))

    def test_cancelling_directions_rejected(self) -> None:
        with pytest.raises(ValueError, match="weighted mean direction"):
            run(multislerp, [0, 0], [1, 0], [-1, 0], [0, 0], alpha=0.5)


class TestKarcher:
    def test_midpoint_scaled_by_mean_norm(self) -> None:
        # direction (e1 + e2)/√2, norm 0.5·2 + 0.5·4 = 3
        out = run(karcher, [1, 1], [2, 0], [0, 4], alpha=0.5)
        close(out, t([3 * R2, 3 * R2]), atol=1e-5)

    def test_weighted_geodesic_point(self) -> None:
        # weights .75/.25 on e1, e2: the point 22.5° from e1
        out = run(karcher, [1, 1], [1, 0], [0, 1], alpha=0.25)
        close(out, t([math.cos(math.pi / 8), math.sin(math.pi / 8)]), atol=1e-5)

    def test_three_models(self) -> None:
        r3 = 1 / math.sqrt(3)
        out = run(karcher, [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], alpha=0.5)
        close(out, t([r3, r3, r3]), atol=1e-5)

    def test_ends(self) -> None:
        close(run(karcher, [1, 1], [2, 3], [0, 5], alpha=0.0), t([2, 3]), atol=1e-5)
        close(run(karcher, [1, 1], [2, 3], [0, 5], alpha=1.0), t([0, 5]), atol=1e-5)


class TestModelStock:
    THETA_0 = [1.0, 1.0]
    TAU_D = [0.5, math.sqrt(3) / 2]  # 60° from τT = e1

    def test_t_from_a_known_angle(self) -> None:
        # cos θ = 1/2, N = 2: t = 2·½/(1 + ½) = 2/3; mean offset [.75, √3/4]
        theta_d = [1 + self.TAU_D[0], 1 + self.TAU_D[1]]
        out = run(model_stock, self.THETA_0, [2, 1], theta_d)
        close(out, t([1.5, 1 + math.sqrt(3) / 6]))
        half = run(model_stock, self.THETA_0, [2, 1], theta_d, alpha=0.5)
        close(half, (t([2, 1]) + t([1.5, 1 + math.sqrt(3) / 6])) / 2)

    def test_three_models(self) -> None:
        # pairwise cos 1/2, N = 3: t = 1.5/2 = 0.75; mean offset [2/3, 2/3, 2/3]
        out = run(model_stock, [0, 0, 0], [1, 1, 0], [1, 0, 1], [0, 1, 1])
        close(out, t([0.5, 0.5, 0.5]))

    def test_orthogonal_and_antipodal_give_theta_0(self) -> None:
        close(run(model_stock, [1, 1], [2, 1], [1, 2]), t([1, 1]))  # cos 0 -> t = 0
        close(run(model_stock, [1, 1], [2, 1], [0, 1]), t([1, 1]))  # 1 + cos = 0: singular

    def test_filter_wise(self) -> None:
        # rows: [1,0]·[0,1] -> t = 0; [1,0]·[1,0] -> cos 1, t = 1
        args = ([[0, 0], [0, 0]], [[1, 0], [1, 0]], [[0, 1], [1, 0]])
        close(run(model_stock, *args, filter_wise=True), t([[0, 0], [1, 0]]))
        # whole tensor: cos = 1/2 -> t = 2/3, mean offset [[.5, .5], [1, 0]]
        close(run(model_stock, *args), t([[1 / 3, 1 / 3], [2 / 3, 0]]))

    def test_needs_a_domain(self) -> None:
        with pytest.raises(ValueError, match="at least one domain"):
            model_stock(t([1.0]), [], tau_t=t([1.0]))


class TestNearswap:
    # ΘD − ΘT = [.05, .2, 1, −.4]; t = .1 -> w = [1, .5, .1, .25] -> w·d = [.05, .1, .1, −.1]
    ARGS = ([0, 0, 0, 0], [0, 0, 0, 1], [0.05, 0.2, 1.0, 0.6])

    def test_hand_computed(self) -> None:
        close(run(nearswap, *self.ARGS, t=0.1), t([0.05, 0.1, 0.1, 0.9]))
        close(run(nearswap, *self.ARGS, t=0.1, alpha=0.5), t([0.025, 0.05, 0.05, 0.95]))

    def test_t_zero_and_alpha_zero_keep_theta_t(self) -> None:
        close(run(nearswap, *self.ARGS, t=0.0), t([0, 0, 0, 1]))
        close(run(nearswap, *self.ARGS, t=0.1, alpha=0.0), t([0, 0, 0, 1]))


class TestArceeFusion:
    # ΘT = 0, ΘD − ΘT = [1..7, 100]: importance = k·|d| (one row, one KL k > 0); sorted,
    # the floor-index quartiles are 2k, 4k, 6k: threshold 4k + 1.5·4k = 10k.
    THETA_0 = [-1.0] * 8
    THETA_T = [0.0] * 8
    THETA_D = [1, 2, 3, 4, 5, 6, 7, 100]

    def test_only_the_outlier_change_is_taken(self) -> None:
        out = run(arcee_fusion, self.THETA_0, self.THETA_T, self.THETA_D)
        close(out, t([0] * 7 + [100]))
        half = run(arcee_fusion, self.THETA_0, self.THETA_T, self.THETA_D, alpha=0.5)
        close(half, t([0] * 7 + [50]))

    def test_identical_models(self) -> None:
        close(run(arcee_fusion, [0, 0, 0], [1, 2, 3], [1, 2, 3]), t([1, 2, 3]))


class TestRam:
    # Θ0 = 1; τT = [1, 0, 2, 0], τD = [3, 4, 0, 1e-6] (below epsilon: not a contributor)
    ARGS = ([1, 1, 1, 1], [2, 1, 3, 1], [4, 5, 1, 1 + 1e-6])

    def test_unique_kept_shared_averaged(self) -> None:
        close(run(ram, *self.ARGS), t([3, 5, 3, 1]))  # Θ0 + [(1 + 3)/2, 4, 2, 0]
        close(run(ram, *self.ARGS, alpha=0.5), t([2.5, 3, 3, 1]))

    def test_epsilon(self) -> None:
        # epsilon 1.5: τT's 1 no longer counts, τD's 3 is unique at position 0
        close(run(ram, *self.ARGS, epsilon=1.5), t([4, 5, 3, 1]))

    def test_ramplus_boosts_unique_entries(self) -> None:
        # τT = [1, 1, 2, 0, 0]: shared 1, unique 2 -> ρ = .5; τD = [3, 0, 0, 4, 0]: ρ = 1
        args = ([0] * 5, [1, 1, 2, 0, 0], [3, 0, 0, 4, 0])
        # r = .5, rho_max = 1: λT = 1.25, λD = 1.5
        close(run(ramplus_tl, *args, r=0.5, rho_max=1.0), t([2, 1.25, 2.5, 6, 0]))
        # defaults r = .1, rho_max = .2: both ρ capped at .2, λ = 1.02
        close(run(ramplus_tl, *args), t([2, 1.02, 2.04, 4.08, 0]))


class TestSce:
    # Θ0 = 1, τT = [2, −1, 1, 0], τD = [4, 2, 0, 0]. Mean squares 1.5 and 5 -> λ = 3/13, 10/13.
    # Elected signs all + (Σ = [6, 1, 1, 0]); τT's −1 is erased.
    ARGS = ([1, 1, 1, 1], [3, 0, 2, 1], [5, 3, 1, 1])

    def test_hand_computed(self) -> None:
        # [(2·3 + 4·10)/13, 2, 1, 0]
        close(run(sce, *self.ARGS), 1 + t([46 / 13, 2, 1, 0]))

    def test_select_topk(self) -> None:
        # variances [1, 2.25, .25, 0]: 3 nonzero, keep ⌊1.5⌋ = 1 (position 1);
        # then τT's −1 disagrees with the elected +: only τD's 2 remains
        close(run(sce, *self.ARGS, select_topk=0.5), 1 + t([0, 2, 0, 0]))

    def test_alpha_scales_the_domain_vector(self) -> None:
        half = run(sce, *self.ARGS, alpha=0.5)
        close(half, run(sce, [1, 1, 1, 1], [3, 0, 2, 1], [3, 2, 1, 1]))
        close(run(sce, *self.ARGS, alpha=0.0), t([3, 0, 2, 1]))

    def test_scale_invariant_for_small_vectors(self) -> None:
        # mergekit falls back to equal weights when Σ mean squares < 1e-6; we do not
        _, taus, tau_t = triplet(*self.ARGS)
        small = sce(tau_t * 1e-4, [taus[0] * 1e-4], tau_t=tau_t * 1e-4)  # Θ0 = 0
        close(small, t([46 / 13, 2, 1, 0]) * 1e-4, atol=1e-9)


class TestBreadcrumbsTies:
    THETA_0 = torch.full((3, 3), 2.0)
    TAU_T = t([[0.1, -0.2, 0.3], [-0.4, 0.5, -0.6], [0.7, -0.8, 0.9]])
    TAU_D = t([[-9, 1, -2], [3, -4, 5], [-6, 7, -8]])

    def merge(self, **params) -> torch.Tensor:
        return breadcrumbs_ties(
            self.THETA_0 + self.TAU_T,
            [self.TAU_D],
            tau_t=self.TAU_T,
            density=0.5,
            gamma=0.12,
            **params,
        )

    def test_hand_computed(self) -> None:
        # crumbs(τT) = [[0,0,0],[0,.5,−.6],[.7,−.8,0]], .5·crumbs(τD) = [[0,0,0],[0,0,2.5],
        # [−3,3.5,−4]]; Σ elects [[+,+,+],[+,+,+],[−,+,−]]: τT keeps only its .5
        close(self.merge(alpha=0.5), t([[2, 2, 2], [2, 2.5, 4.5], [-1, 5.5, -2]]))

    def test_normalize(self) -> None:
        # divide by Σ|W| of agreeing vectors: τT's entry by 1, τD's by .5
        close(self.merge(alpha=0.5, normalize=True), t([[2, 2, 2], [2, 2.5, 7], [-4, 9, -6]]))

    def test_density_one_gamma_zero_is_ties(self) -> None:
        theta = self.THETA_0 + self.TAU_T
        out = breadcrumbs_ties(theta, [self.TAU_D], tau_t=self.TAU_T, density=1.0, gamma=0.0)
        close(out, ties(theta, [self.TAU_D], tau_t=self.TAU_T, density=1.0))


class TestDella:
    ROW = t([0.1, -0.5, 0.3, 2.0, -1.0])

    def test_keep_probabilities_by_rank(self) -> None:
        # ranks by |v| [0, 2, 1, 4, 3] of 4 -> p = .3 + .4·rank/4
        close(keep_probabilities(self.ROW, 0.5, 0.2), t([[0.3, 0.5, 0.4, 0.7, 0.6]]))
        rows = t([[3, 1, 2], [-1, -3, 2]])  # ranked per row
        close(keep_probabilities(rows, 0.5, 0.1), t([[0.6, 0.4, 0.5], [0.4, 0.6, 0.5]]))

    def test_mask_is_the_documented_cpu_draw(self) -> None:
        # One draw per vector from tensor_generator(seed, name), τT first; kept where the
        # draw < p, rescaled by 1/p.
        tau_t, tau_d = self.ROW, -2 * self.ROW
        gen = tensor_generator(3, "enc.w")
        p = keep_probabilities(self.ROW, 0.5, 0.2)[0]
        keep_t = torch.rand(1, 5, generator=gen)[0] < p
        keep_d = torch.rand(1, 5, generator=gen)[0] < p
        expected = keep_t * tau_t / p + 0.5 * keep_d * tau_d / p
        params = dict(tau_t=tau_t, alpha=0.5, density=0.5, epsilon=0.2, seed=3, name="enc.w")
        out = della_linear(tau_t + 1, [tau_d], **params)
        close(out - 1, expected)
        unscaled = della_linear(tau_t + 1, [tau_d], **params, rescale=False)
        close(unscaled - 1, keep_t * tau_t + 0.5 * keep_d * tau_d)

    def test_density_one_is_deterministic(self) -> None:
        g = torch.Generator().manual_seed(0)
        theta, tau_t, tau_d = (torch.randn(4, 5, generator=g) for _ in range(3))
        out = della(theta, [tau_d], tau_t=tau_t, alpha=0.7, density=1.0)
        close(out, ties(theta, [tau_d], tau_t=tau_t, alpha=0.7, density=1.0))
        lin = della_linear(theta, [tau_d], tau_t=tau_t, alpha=0.7, density=1.0)
        close(lin, theta + 0.7 * tau_d, atol=1e-5)

    def test_keep_rates_and_unbiased(self) -> None:
        # 200 rows of a random permutation of 1..200: column c of the rank order is kept
        # with p = .4 + .4·rank/199 (ε = .2); mean keep .6; E[della(v)] = v.
        g = torch.Generator().manual_seed(1)
        v = torch.stack([torch.randperm(200, generator=g) + 1.0 for _ in range(200)])
        out = della_linear(v, [], tau_t=v, density=0.6, epsilon=0.2, seed=0, name="big")
        kept = out != 0
        assert abs(float(kept.float().mean()) - 0.6) < 0.01
        assert abs(float(kept[v <= 20].float().mean()) - 0.42) < 0.03  # ranks 0-19
        assert abs(float(kept[v > 180].float().mean()) - 0.78) < 0.03  # ranks 180-199
        assert abs(float(out.sum() / v.sum()) - 1.0) < 0.02

    def test_reproducible_seeded_and_alpha_free(self) -> None:
        g = torch.Generator().manual_seed(2)
        theta, tau_t = (torch.randn(8, 8, generator=g) for _ in range(2))
        for fn in (della, della_linear):
            a = fn(theta, [torch.zeros(8, 8)], tau_t=tau_t, seed=1, name="x")
            assert torch.equal(a, fn(theta, [torch.zeros(8, 8)], tau_t=tau_t, seed=1, name="x"))
            assert not torch.equal(a, fn(theta, [torch.zeros(8, 8)], tau_t=tau_t, seed=2, name="x"))
            assert not torch.equal(a, fn(theta, [torch.zeros(8, 8)], tau_t=tau_t, seed=1, name="y"))
            other_alpha = fn(theta, [torch.zeros(8, 8)], tau_t=tau_t, alpha=0.3, seed=1, name="x")
            assert torch.equal(a, other_alpha)

    @pytest.mark.parametrize(("density", "epsilon"), [(0.5, 0.5), (0.9, 0.15), (0.1, 0.1)])
    def test_density_epsilon_window(self, density: float, epsilon: float) -> None:
        with pytest.raises(ValueError, match="density ± epsilon must lie in"):
            della(self.ROW, [self.ROW], tau_t=self.ROW, density=density, epsilon=epsilon)
        # density 1 keeps everything whatever epsilon is
        della(self.ROW, [self.ROW], tau_t=self.ROW, density=1.0, epsilon=epsilon)


class TestAllMethods:
    @staticmethod
    def inputs(shape=(3, 4), n: int = 1, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        theta_t, tau_t = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        return theta_t, [torch.randn(shape, generator=g) for _ in range(n)], tau_t

    @pytest.mark.parametrize("name", sorted(METHODS))
    def test_shape_dtype_and_missing_tau_t(self, name: str) -> None:
        theta_t, taus, tau_t = self.inputs()
        out = METHODS[name](theta_t.bfloat16(), [x.bfloat16() for x in taus], tau_t=tau_t)
        assert out.shape == theta_t.shape and out.dtype == torch.bfloat16
        with pytest.raises(ValueError, match=f"{name} needs the IR task vector tau_t"):
            METHODS[name](theta_t, taus, name="enc.weight")

    @pytest.mark.parametrize("name", sorted(ALPHA_ZERO_IS_IR))
    def test_alpha_zero_is_theta_t(self, name: str) -> None:
        theta_t, taus, tau_t = self.inputs()
        close(METHODS[name](theta_t, taus, tau_t=tau_t, alpha=0.0), theta_t, atol=1e-5)

    @pytest.mark.parametrize("name", sorted(ELEMENTWISE))
    def test_elementwise_row_blocks(self, name: str) -> None:
        theta_t, taus, tau_t = self.inputs((6, 5), n=2 if name != "nearswap" else 1)
        whole = METHODS[name](theta_t, taus, tau_t=tau_t, alpha=0.4)
        block = METHODS[name](theta_t[2:5], [x[2:5] for x in taus], tau_t=tau_t[2:5], alpha=0.4)
        close(block, whole[2:5])

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    @pytest.mark.parametrize("name", sorted(METHODS))
    def test_same_result_on_cuda(self, name: str) -> None:
        # della's masks are drawn on the CPU, so they are the same on every device
        theta_t, taus, tau_t = self.inputs((16, 12))
        cpu = METHODS[name](theta_t, taus, tau_t=tau_t, name="z")
        cuda = [x.cuda() for x in (theta_t, *taus, tau_t)]
        gpu = METHODS[name](cuda[0], cuda[1:-1], tau_t=cuda[-1], name="z")
        assert gpu.device.type == "cuda"
        close(gpu.cpu(), cpu, atol=1e-5)


class TestRegistrationAndParams:
    def test_registered(self) -> None:
        methods = registered()
        assert set(methods) == set(METHODS)
        group = {ep.value for ep in importlib.metadata.entry_points(group="mergekit_ir")}
        assert {m.__name__ for m in MODULES} <= group
        for name, method in methods.items():
            assert method.merge is METHODS[name]
            assert method.needs_ir_vector
            assert method.params[0].name == "alpha"
            assert method.params[0].per_tensor
            bounds = (-2.0, 2.0) if name in SCALE_METHODS else (0.0, 1.0)
            assert (method.params[0].min, method.params[0].max) == bounds, name
            assert method.elementwise == (name in ELEMENTWISE), name
            assert method.description

    @pytest.mark.parametrize(
        ("method", "param", "value", "message"),
        [
            ("slerp", "alpha", 1.5, "outside \\[0, 1\\]"),
            ("linear", "alpha", -0.1, "outside \\[0, 1\\]"),
            ("sce", "alpha", 2.5, "outside \\[-2, 2\\]"),
            ("sce", "select_topk", 1.2, "outside \\[0, 1\\]"),
            ("della", "epsilon", 0.6, "outside \\[0, 0.5\\]"),
            ("della", "density", 0.0, "greater than 0"),
            ("della", "seed", 1.5, "is not a int"),
            ("breadcrumbs_ties", "gamma", 1.1, "outside"),
            ("breadcrumbs_ties", "topk", "global", "not one of tensor"),
            ("karcher", "max_iter", 0, "outside \\[1, inf\\]"),
            ("nearswap", "t", -1.0, "outside \\[0, inf\\]"),
            ("ramplus_tl", "r", -0.5, "outside"),
            ("ramplus_tl", "rho_max", -1.0, "outside"),
            ("nuslerp", "nuslerp_flatten", "maybe", "is not a bool"),
        ],
    )
    def test_param_validation(self, method: str, param: str, value, message: str) -> None:
        p = registered()[method].param(param)
        assert p is not None
        with pytest.raises(ConfigError, match=message):
            p.check(value, f"{method}.{param}")

    def test_layer_wise_alpha_and_defaults(self) -> None:
        methods = registered()
        gradient = {"gradient": [0.0, 1.0]}
        assert methods["slerp"].param("alpha").check(gradient, "a") == gradient
        assert methods["nearswap"].param("t").default == 1e-4
        assert methods["ramplus_tl"].param("rho_max").default == 0.2
        assert methods["della"].param("epsilon").default == 0.15
        assert methods["model_stock"].param("alpha").default == 1.0
        assert methods["linear"].param("alpha").default == 0.5


@pytest.mark.slow
def test_cli_merges_with_every_new_method(tiny_triplet, tmp_path) -> None:
    """`mergeir plugins` lists them; `mergeir merge --method M` writes Θ' for each."""
    from click.testing import CliRunner
    from safetensors.torch import load_file

    from mergekit_ir.cli import main

    listed = CliRunner().invoke(main, ["plugins"], catch_exceptions=False)
    assert listed.exit_code == 0, listed.output
    for name in METHODS:
        assert f"  {name} " in listed.output, name
    roles = ("ir", "pretrained", "domain")
    files = {k: load_file(tiny_triplet[k] / "model.safetensors") for k in roles}
    models = [arg for k in roles for arg in (f"--{k}", str(tiny_triplet[k]))]
    for name in sorted(METHODS):
        out = tmp_path / name
        args = ["merge", *models, "--method", name, "--alpha", "0.5", "--out", str(out), "-q"]
        res = CliRunner().invoke(main, args, catch_exceptions=False)
        assert res.exit_code == 0, (name, res.output)
        merged = load_file(out / "model.safetensors")
        assert all(torch.isfinite(v).all() for v in merged.values() if v.is_floating_point())
        if name == "slerp":
            key = next(k for k in merged if k.endswith("layer.0.attention.self.query.weight"))
            theta_t, theta_0 = files["ir"][key].float(), files["pretrained"][key].float()
            tau_d = files["domain"][key].float() - theta_0
            expected = slerp(theta_t, [tau_d], tau_t=theta_t - theta_0, alpha=0.5)
            close(merged[key].float(), expected, atol=1e-6)
