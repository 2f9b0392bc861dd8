"""Oracle: the mergekit-style merge methods against mergekit's own implementations.

Each deterministic method is compared with ``mergekit.merge_methods.api.merge_tensors``
(and ``merge_state_dicts`` on a tiny BERT) to fp32 tolerance, mapping our triplet onto
mergekit's inputs as docs/merge-methods.md says:

- scale methods (breadcrumbs_ties, della*, sce): base Θ0, ΘT with weight 1 and ΘD_i with
  weight α·w_i (sce has no weights: its inputs are Θ0 + α·w_i·τ_i);
- share methods (linear, slerp, nuslerp, multislerp, karcher): ΘT with weight 1 − α and
  ΘD_i with α·w_i (slerp: t = α; karcher: equal weights at α = 0.5);
- toward methods (model_stock, ram, ramplus_tl, nearswap, arcee_fusion): α = 1 is
  mergekit's method, other α interpolate from ΘT to it.

mergekit receives the models exactly as our functions rebuild them (Θ0 = ΘT − τT,
ΘD_i = Θ0 + τ_i), so both sides see the same bits. Random methods (della, della_linear)
are compared exactly at density 1 and with mergekit's ``torch.bernoulli`` fed our draws,
and statistically otherwise. mergekit is optional (``pip install .[oracle]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from mergekit_ir import tensor_generator
from mergekit_ir_plugins.merge_methods.consensus import breadcrumbs_ties, sce
from mergekit_ir_plugins.merge_methods.della import della, della_linear, della_prune
from mergekit_ir_plugins.merge_methods.fusion import arcee_fusion, nearswap
from mergekit_ir_plugins.merge_methods.ram import ram, ramplus_tl
from mergekit_ir_plugins.merge_methods.slerp import karcher, multislerp, nuslerp, slerp
from mergekit_ir_plugins.merge_methods.soups import linear, model_stock

pytestmark = pytest.mark.slow  # importing mergekit takes a few seconds


@pytest.fixture(scope="module")
def mk():
    """mergekit's in-memory API (skips the module when mergekit is not installed)."""
    pytest.importorskip("mergekit", reason="mergekit not installed (pip install .[oracle])")
    from mergekit.merge_methods import api

    return api


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    diff = float((actual.float() - expected.float()).abs().max()) if actual.numel() else 0.0
    assert torch.allclose(actual.float(), expected.float(), atol=atol, rtol=1e-5), diff


@dataclass
class Triplet:
    theta_t: torch.Tensor
    tau_t: torch.Tensor
    taus: list[torch.Tensor]

    @property
    def theta_0(self) -> torch.Tensor:
        return self.theta_t - self.tau_t  # as our functions rebuild it

    @property
    def theta_ds(self) -> list[torch.Tensor]:
        return [self.theta_0 + tau for tau in self.taus]

    def ours(self, fn, **params) -> torch.Tensor:
        return fn(self.theta_t, self.taus, tau_t=self.tau_t, name="w", **params)

    def mergekit(
        self, mk, method: str, parameters=None, base: str | None = "theta_0"
    ) -> torch.Tensor:
        """mergekit's ``method`` on ΘT and the ΘD_i; ``base``: Θ0 (the first input), ΘT or none."""
        models = [self.theta_t, *self.theta_ds]
        if base == "theta_0":
            models = [self.theta_0, *models]
        index = None if base is None else 0
        return mk.merge_tensors(models, method, parameters=parameters, base_index=index)


def randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def make(seed: int, shape=(17, 23), n: int = 2, keep: float = 1.0) -> Triplet:
    """Θ0 ~ N(0, 1), task vectors ~ N(0, 0.3²); ``keep`` < 1 zeroes the rest (sparse)."""
    theta_0 = randn(shape, seed)
    vecs = []
    for i in range(n + 1):
        v = 0.3 * randn(shape, seed + 1 + i)
        if keep < 1:
            v = v * (torch.rand(shape, generator=torch.Generator().manual_seed(99 + i)) < keep)
        vecs.append(v)
    theta_t = theta_0 + vecs[0]
    return Triplet(theta_t, theta_t - theta_0, vecs[1:])


class TestShare:
    @pytest.mark.parametrize("normalize", [True, False])
    @pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
    def test_linear(self, mk, alpha: float, normalize: bool) -> None:
        tr = make(0)
        ours = tr.ours(linear, alpha=alpha, weights=[1.0, 2.0], normalize=normalize)
        theirs = tr.mergekit(
            mk,
            "linear",
            {"weight": [1 - alpha, alpha, 2 * alpha], "normalize": normalize},
            base=None,
        )
        close(ours, theirs)

    @pytest.mark.parametrize("alpha", [0.2, 0.5, 0.9])
    @pytest.mark.parametrize("near", [False, True])
    def test_slerp(self, mk, alpha: float, near: bool) -> None:
        tr = make(10, n=1)
        if near:  # |cos| > 0.9995: mergekit's lerp branch
            tr.taus = [tr.tau_t + 0.001 * randn(tr.tau_t.shape, 5)]
        ours = tr.ours(slerp, alpha=alpha)
        theirs = tr.mergekit(mk, "slerp", {"t": alpha}, base="theta_t")
        close(ours, theirs)

    @pytest.mark.parametrize("shape", [(17, 23), (31,), (3, 4, 5)])
    @pytest.mark.parametrize(
        ("flatten", "row_wise"), [(True, False), (False, False), (False, True)]
    )
    @pytest.mark.parametrize("alpha", [0.3, 0.7])
    def test_nuslerp(self, mk, alpha: float, flatten: bool, row_wise: bool, shape) -> None:
        tr = make(20, shape=shape, n=1)
        ours = tr.ours(nuslerp, alpha=alpha, nuslerp_flatten=flatten, nuslerp_row_wise=row_wise)
        theirs = tr.mergekit(
            mk,
            "nuslerp",
            {
                "weight": [1 - alpha, alpha],
                "nuslerp_flatten": flatten,
                "nuslerp_row_wise": row_wise,
            },
        )
        close(ours, theirs)

    @pytest.mark.parametrize("normalize_weights", [True, False])
    @pytest.mark.parametrize("alpha", [0.25, 0.6])
    @pytest.mark.parametrize("n", [1, 2])
    def test_multislerp(self, mk, alpha: float, normalize_weights: bool, n: int) -> None:
        tr = make(30, n=n)
        ws = [1.0, 0.5][:n]
        ours = tr.ours(multislerp, alpha=alpha, weights=ws, normalize_weights=normalize_weights)
        theirs = tr.mergekit(
            mk,
            "multislerp",
            {
                "weight": [1 - alpha, *(alpha * w for w in ws)],
                "normalize_weights": normalize_weights,
            },
        )
        close(ours, theirs)

    @pytest.mark.parametrize(("max_iter", "tol"), [(10, 1e-5), (3, 1e-3)])
    @pytest.mark.parametrize("n", [1, 2])
    def test_karcher_equal_weights(self, mk, n: int, max_iter: int, tol: float) -> None:
        tr = make(40, n=n)
        ours = tr.ours(karcher, alpha=0.5, max_iter=max_iter, tol=tol)
        theirs = tr.mergekit(mk, "karcher", {"max_iter": max_iter, "tol": tol}, base=None)
        close(ours, theirs)

    @pytest.mark.parametrize("alpha", [0.1, 0.35, 0.8])
    def test_karcher_weighted(self, mk, alpha: float) -> None:
        # mergekit's method weights equally; its karcher_merge_tensors takes weights
        from mergekit.merge_methods.karcher import karcher_merge_tensors

        tr = make(41)
        ws = [1 - alpha, alpha * 2.0, alpha * 1.0]
        ws = [w / sum(ws) for w in ws]
        ours = tr.ours(karcher, alpha=alpha, weights=[2.0, 1.0])
        close(ours, karcher_merge_tensors([tr.theta_t, *tr.theta_ds], ws))


class TestToward:
    @pytest.mark.parametrize("filter_wise", [False, True])
    @pytest.mark.parametrize("n", [1, 2])
    def test_model_stock(self, mk, n: int, filter_wise: bool) -> None:
        for shape in ((17, 23), (29,)):
            tr = make(50, shape=shape, n=n)
            theirs = tr.mergekit(mk, "model_stock", {"filter_wise": filter_wise})
            close(tr.ours(model_stock, filter_wise=filter_wise), theirs)
            expected = tr.theta_t + 0.4 * (theirs - tr.theta_t)
            close(tr.ours(model_stock, alpha=0.4, filter_wise=filter_wise), expected)

    @pytest.mark.parametrize("epsilon", [1e-5, 0.2])
    @pytest.mark.parametrize("keep", [0.3, 1.0])
    def test_ram(self, mk, keep: float, epsilon: float) -> None:
        tr = make(60, keep=keep)
        theirs = tr.mergekit(mk, "ram", {"epsilon": epsilon})
        close(tr.ours(ram, epsilon=epsilon), theirs)
        close(tr.ours(ram, alpha=0.3, epsilon=epsilon), tr.theta_t + 0.3 * (theirs - tr.theta_t))

    @pytest.mark.parametrize(("r", "rho_max"), [(0.1, 0.2), (0.5, 1.0), (2.0, 0.05)])
    @pytest.mark.parametrize("keep", [0.3, 0.7])
    def test_ramplus_tl(self, mk, keep: float, r: float, rho_max: float) -> None:
        tr = make(61, keep=keep)
        # mergekit's 'alpha' is our rho_max
        theirs = tr.mergekit(mk, "ramplus_tl", {"r": r, "alpha": rho_max})
        close(tr.ours(ramplus_tl, r=r, rho_max=rho_max), theirs)
        expected = tr.theta_t + 0.6 * (theirs - tr.theta_t)
        close(tr.ours(ramplus_tl, alpha=0.6, r=r, rho_max=rho_max), expected)

    @pytest.mark.parametrize("t", [1e-4, 0.1, 1.0])
    def test_nearswap(self, mk, t: float) -> None:
        tr = make(70, n=1)
        theirs = tr.mergekit(mk, "nearswap", {"t": t}, base="theta_t")
        close(tr.ours(nearswap, t=t), theirs)
        close(tr.ours(nearswap, t=t, alpha=0.5), tr.theta_t + 0.5 * (theirs - tr.theta_t))

    @pytest.mark.parametrize("shape", [(17, 23), (64,), (4, 5, 6), (300, 200)])
    def test_arcee_fusion(self, mk, shape) -> None:
        tr = make(80, shape=shape, n=1)
        theirs = tr.mergekit(mk, "arcee_fusion", base="theta_t")
        ours = tr.ours(arcee_fusion)
        close(ours, theirs)
        assert 0 < int((ours != tr.theta_t).sum()) < ours.numel()  # a real selection
        close(tr.ours(arcee_fusion, alpha=0.3), tr.theta_t + 0.3 * (theirs - tr.theta_t))


class TestScale:
    @pytest.mark.parametrize("normalize", [False, True])
    @pytest.mark.parametrize("alpha", [0.0, 0.6, 1.3])
    def test_breadcrumbs_ties(self, mk, alpha: float, normalize: bool) -> None:
        tr = make(90)
        ours = tr.ours(
            breadcrumbs_ties,
            alpha=alpha,
            weights=[1.0, 0.5],
            density=0.7,
            gamma=0.05,
            normalize=normalize,
        )
        theirs = tr.mergekit(
            mk,
            "breadcrumbs_ties",
            {
                "weight": [1.0, alpha, 0.5 * alpha],
                "density": 0.7,
                "gamma": 0.05,
                "normalize": normalize,
            },
        )
        close(ours, theirs)

    @pytest.mark.parametrize("select_topk", [1.0, 0.3])
    @pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 1.5])
    def test_sce(self, mk, alpha: float, select_topk: float) -> None:
        tr = make(100)
        ws = [1.0, 0.5]
        ours = tr.ours(sce, alpha=alpha, weights=ws, select_topk=select_topk)
        scaled = [tr.theta_0 + alpha * w * tau for w, tau in zip(ws, tr.taus, strict=True)]
        theirs = mk.merge_tensors(
            [tr.theta_0, tr.theta_t, *scaled],
            "sce",
            parameters={"select_topk": select_topk},
            base_index=0,
        )
        close(ours, theirs)

    def test_sce_small_vectors_documented_divergence(self, mk) -> None:
        # mergekit switches to equal weights when Σ mean squares < 1e-6; we keep the
        # mean-square weights, so scaling every task vector scales our merged vector.
        big = make(101)
        big.taus[1] = 3 * big.taus[1]  # unequal mean squares, so the weights matter
        small = Triplet(big.tau_t * 1e-4, big.tau_t * 1e-4, [tau * 1e-4 for tau in big.taus])
        ours = small.ours(sce)  # Θ0 = 0: the merged task vector itself
        close(ours, (big.ours(sce) - big.theta_0) * 1e-4, atol=1e-9)
        theirs = small.mergekit(mk, "sce")
        assert not torch.allclose(ours, theirs, atol=1e-9)

    @pytest.mark.parametrize("normalize", [False, True])
    def test_della_density_one(self, mk, normalize: bool) -> None:
        tr = make(110)
        for fn, name in ((della, "della"), (della_linear, "della_linear")):
            params = {"normalize": normalize} if name == "della" else {}
            ours = tr.ours(fn, alpha=0.7, density=1.0, **params)
            theirs = tr.mergekit(
                mk, name, {"weight": [1.0, 0.7, 0.7], "density": 1.0, "normalize": normalize}
            )
            if name == "della" or not normalize:
                close(ours, theirs)

    @pytest.mark.parametrize("shape", [(17, 23), (40,), (3, 7, 5)])
    @pytest.mark.parametrize("name", ["della", "della_linear"])
    def test_della_same_draws(self, mk, monkeypatch, name: str, shape) -> None:
        # mergekit draws its masks with torch.bernoulli(p); fed our draws (one per vector,
        # τT first, from tensor_generator(seed, name)), it must give our result exactly.
        tr = make(120, shape=shape)
        gen = tensor_generator(4, "w")
        monkeypatch.setattr(
            torch,
            "bernoulli",
            lambda p: (torch.rand(p.shape, generator=gen) < p).to(p.dtype),
        )
        fn = della if name == "della" else della_linear
        extra = {"normalize": True} if name == "della" else {}
        ours = tr.ours(fn, alpha=0.8, density=0.4, epsilon=0.2, seed=4, rescale=False, **extra)
        theirs = tr.mergekit(
            mk,
            name,
            {"weight": [1.0, 0.8, 0.8], "density": 0.4, "epsilon": 0.2, "rescale": False, **extra},
        )
        close(ours, theirs)

    def test_della_statistics_match_mergekit(self) -> None:
        # Same keep probability by magnitude rank within each row; mergekit rescales to
        # the tensor's L1 norm, we by 1/p per entry, which matches it in expectation.
        from mergekit.sparsify import RescaleNorm, della_magprune

        x = randn((300, 300), 130)
        ours = della_prune(x, 0.5, 0.2, tensor_generator(0, "s"), rescale=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            theirs = della_magprune(x, 0.5, 0.2, rescale_norm=RescaleNorm.l1)
        rank = x.abs().argsort(dim=1).argsort(dim=1)
        for out in (ours, theirs):
            kept = out != 0
            assert abs(float(kept.float().mean()) - 0.5) < 0.01
            assert abs(float(kept[rank < 30].float().mean()) - 0.3 - 0.02) < 0.02
            assert abs(float(kept[rank >= 270].float().mean()) - 0.7 + 0.02) < 0.02
        l1 = float(x.abs().sum())
        assert abs(float(theirs.abs().sum()) / l1 - 1) < 1e-4
        assert abs(float(ours.abs().sum()) / l1 - 1) < 0.02


# ---------------------------------------------------------------- tiny BERT state dicts


@pytest.fixture(scope="module")
def bert(mk):
    """Θ0 a random tiny BertModel; ΘT dense noise, ΘD_1/ΘD_2 half-sparse noise (for RAM)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=24,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = transformers.BertModel(cfg).state_dict()
    theta_0 = {k: v.detach().clone() for k, v in state.items() if v.is_floating_point()}
    g = torch.Generator().manual_seed(1)

    def noise(v: torch.Tensor, keep: float) -> torch.Tensor:
        return 0.05 * torch.randn(v.shape, generator=g) * (torch.rand(v.shape, generator=g) < keep)

    tau_t = {k: noise(v, 1.0) for k, v in theta_0.items()}
    taus = [{k: noise(v, 0.5) for k, v in theta_0.items()} for _ in range(2)]
    theta_t = {k: theta_0[k] + tau_t[k] for k in theta_0}
    tau_t = {k: theta_t[k] - theta_0[k] for k in theta_0}  # what the engine passes
    base = {k: theta_t[k] - tau_t[k] for k in theta_0}  # Θ0 as our functions rebuild it
    ds = [{k: base[k] + tau[k] for k in theta_0} for tau in taus]
    return theta_t, tau_t, taus, base, ds


# name: (our function, our params, mergekit's inputs (b = Θ0, t = ΘT, d0/d1 = ΘD_1/ΘD_2),
#        mergekit's base, mergekit's params)
BERT_CASES = {
    "linear": (linear, {"alpha": 0.3}, "t d0", None, {"weight": [0.7, 0.3]}),
    "slerp": (slerp, {"alpha": 0.3}, "t d0", "t", {"t": 0.3}),
    "nuslerp": (nuslerp, {"alpha": 0.3}, "b t d0", "b", {"weight": [0.7, 0.3]}),
    "multislerp": (multislerp, {"alpha": 0.3}, "b t d0 d1", "b", {"weight": [0.7, 0.3, 0.3]}),
    "karcher": (karcher, {"alpha": 0.5}, "t d0 d1", None, {}),
    "model_stock": (model_stock, {}, "b t d0 d1", "b", {}),
    "breadcrumbs_ties": (
        breadcrumbs_ties,
        {"alpha": 0.6, "density": 0.7, "gamma": 0.05},
        "b t d0 d1",
        "b",
        {"weight": [1.0, 0.6, 0.6], "density": 0.7, "gamma": 0.05},
    ),
    "sce": (sce, {"alpha": 1.0, "select_topk": 0.5}, "b t d0 d1", "b", {"select_topk": 0.5}),
    "ram": (ram, {}, "b t d0 d1", "b", {}),
    "ramplus_tl": (
        ramplus_tl,
        {"r": 0.5, "rho_max": 1.0},
        "b t d0 d1",
        "b",
        {"r": 0.5, "alpha": 1.0},
    ),
    "nearswap": (nearswap, {"t": 0.01}, "t d0", "t", {"t": 0.01}),
    "arcee_fusion": (arcee_fusion, {}, "t d0", "t", {}),
    "della": (
        della,
        {"alpha": 0.6, "density": 1.0},
        "b t d0 d1",
        "b",
        {"weight": [1.0, 0.6, 0.6], "density": 1.0, "normalize": False},
    ),
}


@pytest.mark.parametrize("name", sorted(BERT_CASES))
def test_tiny_bert_state_dict(mk, bert, name: str) -> None:
    theta_t, tau_t, taus, base, ds = bert
    fn, params, inputs, base_id, mk_params = BERT_CASES[name]
    models = {"b": base, "t": theta_t, "d0": ds[0], "d1": ds[1]}
    ids = inputs.split()
    n_domains = sum(i.startswith("d") for i in ids)
    theirs = mk.merge_state_dicts(
        {i: models[i] for i in ids}, name, parameters=mk_params, base=base_id
    )
    assert set(theirs) == set(theta_t)
    for key in theta_t:
        ours = fn(
            theta_t[key],
            [tau[key] for tau in taus[:n_domains]],
            tau_t=tau_t[key],
            name=key,
            **params,
        )
        close(ours, theirs[key])
