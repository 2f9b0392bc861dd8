"""RegMean and the statistics contract: hand-computed merges, the input-Gram collector, the
statistics cache (a second merge reuses it, another corpus invalidates it) and the
validation of every new parameter with its YAML path."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from alpha_toy import write_registry
from safetensors.torch import load_file

from mergekit_ir import ConfigError, MergeIRError
from mergekit_ir.merging.statistics import STATISTICS, StatisticsRun, sample_corpus
from mergekit_ir_plugins.merge_methods.regmean import regmean, regmean_linear, shrink
from mergekit_ir_plugins.statistics.input_gram import collect_input_gram, gram_bytes

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [
    "the cell protein gene",
    "cancer treatment tumor patients",
    "study risk heart",
    "brain virus vaccine immune",
    "diet vitamin insulin glucose lung",
    "the gene study",
]


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(20, 4, generator=g, dtype=torch.float64)
    x2 = torch.randn(30, 4, generator=g, dtype=torch.float64)
    w1 = torch.randn(3, 4, generator=g)
    w2 = torch.randn(3, 4, generator=g)
    return x1, x2, w1, w2


def test_regmean_of_two_models_is_least_squares_on_the_stacked_data():
    x1, x2, w1, w2 = _data()
    # ΘT = W1, ΘD = W2, Θ0 = 0 (τT = W1, τ = W2); α = 0.5: equal weights, the paper's RegMean
    out = regmean(
        w1, [w2], tau_t=w1, stats={"input_gram": [x1.T @ x1, x2.T @ x2]}, off_diagonal=1.0
    )
    x = torch.cat([x1, x2])
    y = torch.cat([x1 @ w1.double().T, x2 @ w2.double().T])
    expected = torch.linalg.lstsq(x, y).solution.T
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=1e-6)


def test_off_diagonal_zero_is_a_per_feature_weighted_average():
    w1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    w2 = torch.tensor([[5.0, 6.0], [7.0, 8.0]])
    g1 = torch.tensor([[1.0, 9.0], [9.0, 3.0]])  # off-diagonals dropped at r = 0
    g2 = torch.tensor([[3.0, -9.0], [-9.0, 1.0]])
    out = regmean_linear([w1, w2], [g1, g2], [0.5, 0.5], off_diagonal=0.0)
    # column j: (g1_jj·W1[:, j] + g2_jj·W2[:, j]) / (g1_jj + g2_jj)
    expected = torch.tensor([[(1 + 15) / 4, (6 + 6) / 4], [(3 + 21) / 4, (12 + 8) / 4]])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(
        shrink(g1, 0.25), torch.tensor([[1.0, 2.25], [2.25, 3.0]], dtype=g1.dtype)
    )


def test_alpha_zero_is_theta_t_and_other_tensors_are_averaged():
    x1, x2, w1, w2 = _data(1)
    grams = {"input_gram": [x1.T @ x1, x2.T @ x2]}
    assert torch.equal(regmean(w1, [w2], tau_t=w1, stats=grams, alpha=0.0), w1)
    # a 1-D tensor (bias, LayerNorm): Σ ω_i θ_i / Σ ω_i with ω = [1 − α, α]; Θ0 = ΘT − τT
    t, tau_t, tau = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.5]), torch.tensor([2.0, -2.0])
    d = t - tau_t + tau  # ΘD = Θ0 + τ
    out = regmean(t, [tau], tau_t=tau_t, stats={"input_gram": [None, None]}, alpha=0.25)
    torch.testing.assert_close(out, 0.75 * t + 0.25 * d)
    # a 2-D tensor the text never reached (no Gram): averaged too
    out = regmean(w1, [w2], tau_t=w1, stats={"input_gram": [None, None]}, alpha=0.5)
    torch.testing.assert_close(out, 0.5 * (w1 + w2))


def test_weights_and_shares_weigh_the_gram_matrices():
    x1, x2, w1, w2 = _data(2)
    g1, g2 = x1.T @ x1, x2.T @ x2
    out = regmean(w1, [w2], tau_t=w1, stats={"input_gram": [g1, g2]}, alpha=0.8, off_diagonal=1)
    lhs = 0.2 * g1 + 0.8 * g2
    rhs = 0.2 * g1 @ w1.double().T + 0.8 * g2 @ w2.double().T
    torch.testing.assert_close(out.double(), torch.linalg.solve(lhs, rhs).T, atol=1e-6, rtol=0)


def test_a_gram_of_the_wrong_shape_is_one_line():
    _, _, w1, w2 = _data()
    with pytest.raises(ConfigError, match="Gram matrix is \\(3, 3\\)"):
        regmean(w1, [w2], tau_t=w1, stats={"input_gram": [torch.eye(3), torch.eye(3)]})


def test_input_gram_is_x_transpose_x_over_real_tokens():
    """The collector's Gram equals (1/N)·XᵀX of the inputs it saw, padding left out."""
    from transformers import BertModel

    from mergekit_ir.references.tiny_models import bert_config, word_tokenizer

    tok = word_tokenizer(" ".join(TEXTS).split())
    torch.manual_seed(0)
    model = BertModel(bert_config(len(tok))).eval()
    run = StatisticsRun(model, tok, TEXTS, 16, 4, torch.device("cpu"))
    grams = collect_input_gram(run, {})
    layer = model.encoder.layer[0].attention.self.query
    seen = []
    handle = layer.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    tokens = 0
    with torch.no_grad():
        for text in TEXTS:  # one text at a time: no padding at all
            enc = tok([text], return_tensors="pt")
            model(**{k: v for k, v in enc.items() if k != "special_tokens_mask"})
            tokens += enc["input_ids"].shape[1]
    handle.remove()
    x = torch.cat([s[0] for s in seen]).double()
    expected = x.T @ x / tokens
    got = grams["encoder.layer.0.attention.self.query.weight"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert run.tokens == tokens
    # every linear layer has one, sized in_features²; the bound counts them in fp64
    assert {k for k in grams} == {
        f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    }
    assert gram_bytes(model) == sum(g.numel() * 8 for g in grams.values())
    assert not layer._forward_pre_hooks  # hooks removed


def test_corpus_sample_is_seeded_and_fingerprints_its_texts():
    texts = [f"doc {i}" for i in range(50)]
    a, b = sample_corpus(texts, 10, seed=1), sample_corpus(texts, 10, seed=1)
    assert a == b and len(a.texts) == 10 and a.total == 50
    assert sample_corpus(texts, 10, seed=2).fingerprint != a.fingerprint
    assert sample_corpus(texts[:5], 10).texts == tuple(texts[:5])  # fewer than asked: all
    with pytest.raises(ConfigError, match="no text"):
        sample_corpus(["", "  "], 3)


# -- the statistics cache, through the Python API --------------------------------------------


def _merge(tiny_triplet, out, cache, corpus, **params):
    from mergekit_ir.api.merge import prepare_merge, write_merge

    lines: list[str] = []
    prepared = prepare_merge(
        tiny_triplet["ir"],
        [str(tiny_triplet["domain"])],
        pretrained=tiny_triplet["pretrained"],
        method="regmean",
        params={"statistics": {"texts": 4, "max_length": 16, "batch_size": 2}, **params},
        cache_root=cache,
        corpus=corpus,
    )
    write_merge(prepared, out, progress=False, echo=lines.append, overwrite=True)
    return prepared.job.statistics, lines


def test_a_second_merge_reuses_the_statistics_and_another_corpus_does_not(tiny_triplet, tmp_path):
    cache = tmp_path / "cache"
    first, lines = _merge(tiny_triplet, tmp_path / "a", cache, TEXTS)
    assert (first.hits, first.misses) == (0, 2)  # ΘT and ΘD
    assert any("tokens/s" in line and "ΘD" in line for line in lines)
    again, lines = _merge(tiny_triplet, tmp_path / "b", cache, TEXTS)
    assert (again.hits, again.misses) == (2, 0)
    assert all("cached" in line for line in lines)
    a, b = (
        load_file(tmp_path / "a" / "model.safetensors"),
        load_file(tmp_path / "b" / "model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    other, _ = _merge(tiny_triplet, tmp_path / "c", cache, [t + " cell" for t in TEXTS])
    assert (other.hits, other.misses) == (0, 2)  # a changed corpus: new statistics
    files = sorted((cache / "statistics").glob("*.safetensors"))
    assert len(files) == 4
    # a linear layer merged from Grams differs from the plain average; α = 0 is ΘT
    c = load_file(tmp_path / "c" / "model.safetensors")
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(a[key], c[key])
    _merge(tiny_triplet, tmp_path / "zero", cache, TEXTS, alpha=0.0)
    zero = load_file(tmp_path / "zero" / "model.safetensors")
    ir = load_file(tiny_triplet["ir"] / "model.safetensors")
    assert torch.equal(zero[key], ir[key])
    card = json.loads((tmp_path / "a" / "mergekit_ir.json").read_text())
    assert "statistics corpus" in card["sources"]


def test_a_broken_statistics_file_is_recomputed(tiny_triplet, tmp_path):
    cache = tmp_path / "cache"
    _merge(tiny_triplet, tmp_path / "a", cache, TEXTS)
    victim = sorted((cache / "statistics").glob("*.safetensors"))[0]
    victim.write_bytes(b"not safetensors")
    again, _ = _merge(tiny_triplet, tmp_path / "b", cache, TEXTS)
    assert (again.hits, again.misses) == (1, 1)


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"statistics": {"texts": 0}}, "--param.statistics.texts: 0 is outside [1, 100000]"),
        ({"statistics": {"max_len": 8}}, "--param.statistics.max_len: unknown parameter"),
        ({"statistics": 5}, "--param.statistics: 5 is not a mapping of settings"),
        ({"off_diagonal": 1.5}, "--param.off_diagonal: 1.5 is outside [0, 1]"),
        ({"alpha": 1.2}, "--param.alpha: 1.2 is outside [0, 1]"),
    ],
)
def test_bad_parameters_are_one_line_naming_the_path(tiny_triplet, params, says):
    from mergekit_ir.api.merge import prepare_merge

    with pytest.raises(ConfigError) as err:
        prepare_merge(
            tiny_triplet["ir"],
            [str(tiny_triplet["domain"])],
            pretrained=tiny_triplet["pretrained"],
            method="regmean",
            params=params,
            corpus=TEXTS,
        )
    assert says in str(err.value) and "\n" not in str(err.value)


def test_registry_statistics_settings_are_checked_with_their_yaml_path(tmp_path, tiny_triplet):
    from mergekit_ir.experiments.registry import load_registry

    reg = tmp_path / "registry.yaml"
    reg.write_text(
        f"""
datasets:
  toy: {{beir: {tmp_path}, test: test}}
triplets:
  t:
    scorer: {{kind: cross-encoder}}
    pretrained: {tiny_triplet["pretrained"]}
    domain: {tiny_triplet["domain"]}
    ir: {tiny_triplet["ir"]}
experiments:
  e:
    triplets: [t]
    datasets: [toy]
    merge: {{method: regmean, alpha: [0.5], statistics: {{texts: 10, batch_size: -1}}}}
"""
    )
    with pytest.raises(
        ConfigError, match=r"^experiments\.e\.merge\.statistics\.batch_size: -1 is outside"
    ):
        load_registry(reg)
    reg.write_text(reg.read_text().replace("batch_size: -1", "batch_size: 4"))
    exp = load_registry(reg).experiment("e")
    assert exp.merge_params["statistics"] == {**STATISTICS.default, "texts": 10, "batch_size": 4}


def test_no_corpus_is_a_clear_error_before_any_work(tiny_triplet, tmp_path):
    from mergekit_ir.api.merge import prepare_merge, write_merge

    prepared = prepare_merge(
        tiny_triplet["ir"],
        [str(tiny_triplet["domain"])],
        pretrained=tiny_triplet["pretrained"],
        method="regmean",
    )
    with pytest.raises(MergeIRError, match="give it a corpus .*--corpus"):
        write_merge(prepared, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="reads no corpus"):
        prepare_merge(
            tiny_triplet["ir"],
            [str(tiny_triplet["domain"])],
            pretrained=tiny_triplet["pretrained"],
            corpus=TEXTS,
        )


def test_cli_merge_takes_a_corpus_file(tiny_triplet, tmp_path):
    from click.testing import CliRunner

    from mergekit_ir.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    args = [
        "merge",
        "--ir",
        str(tiny_triplet["ir"]),
        "--pretrained",
        str(tiny_triplet["pretrained"]),
        "--domain",
        str(tiny_triplet["domain"]),
        "--method",
        "regmean",
        "--alpha",
        "0.5",
        "--param",
        "statistics={texts: 3, max_length: 16}",
        "--out",
        str(tmp_path / "out"),
        "-q",
    ]
    env = {"MERGEIR_CACHE": str(tmp_path / "cache")}
    missing = CliRunner().invoke(main, args, env=env)
    assert missing.exit_code != 0 and "--corpus" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    done = CliRunner().invoke(main, [*args, "--corpus", str(corpus)], env=env)
    assert done.exit_code == 0, done.output
    assert (tmp_path / "out" / "model.safetensors").is_file()
    shutil.rmtree(tmp_path / "out")
    no_file = CliRunner().invoke(main, [*args, "--corpus", str(tmp_path / "nope.txt")], env=env)
    assert no_file.exit_code != 0 and "nope.txt" in no_file.output


@pytest.mark.slow
def test_a_run_gathers_statistics_per_corpus_and_merge_from_run_reuses_them(tmp_path):
    """`mergeir run` with regmean: one statistics pass per model over the dataset's corpus,
    before its Θ' is scored; `merge --from-run` then reads the same statistics back."""
    from click.testing import CliRunner

    from mergekit_ir.cli import main

    reg = write_registry(tmp_path, "{alpha: true}")
    reg.write_text(
        reg.read_text().replace(
            "merge: {method: task_arithmetic, alpha: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]}",
            "merge: {method: regmean, alpha: [0.5], statistics: {texts: 8, max_length: 16}}",
        )
    )
    cache = tmp_path / "cache"
    out = tmp_path / "out"
    run = CliRunner().invoke(
        main,
        ["run", "toy", "--registry", str(reg), "--out", str(out), "--cache-dir", str(cache), "-q"],
        catch_exceptions=False,
    )
    assert run.exit_code == 0, run.output
    lines = [ln for ln in run.output.splitlines() if "statistics input_gram ·" in ln]
    assert len(lines) == 2 and "8 texts" in lines[0]  # ΘT and ΘD, once (test and dev share it)
    assert len(list((cache / "statistics").glob("*.safetensors"))) == 2
    written = CliRunner().invoke(
        main,
        ["merge", "--from-run", str(out), "--out", str(tmp_path / "best"), "-q"],
        env={"MERGEIR_CACHE": str(cache)},
        catch_exceptions=False,
    )
    assert written.exit_code == 0, written.output
    assert written.output.count("cached") == 2


def test_the_documented_statistic_plugin_registers_and_collects(tmp_path):
    """docs/merge-methods.md's third-party statistic runs as written: it registers through the
    plugin host and returns, per linear layer, the mean |x| of the inputs it saw."""
    import re
    import types
    from pathlib import Path

    from transformers import BertModel

    from mergekit_ir.plugin_host import collect, make_plugin_manager, register_plugin
    from mergekit_ir.references.tiny_models import bert_config, word_tokenizer

    doc = (Path(__file__).resolve().parents[1] / "docs" / "merge-methods.md").read_text()
    code = re.search(r"<!-- statistic-plugin-example -->\n```python\n(.*?)```", doc, re.S).group(1)
    plugin = types.ModuleType("abs_mean_plugin")
    exec(code, plugin.__dict__)
    pm = make_plugin_manager(load_entrypoints=False)
    register_plugin(pm, plugin, "abs_mean_plugin")
    kind = collect(pm).statistic("abs_mean")
    tok = word_tokenizer(" ".join(TEXTS).split())
    torch.manual_seed(0)
    model = BertModel(bert_config(len(tok))).eval()
    run = StatisticsRun(model, tok, TEXTS[:1], 16, 1, torch.device("cpu"))
    got = kind.collect(run, {})
    seen = []
    layer = model.encoder.layer[1].output.dense
    handle = layer.register_forward_pre_hook(lambda m, a: seen.append(a[0][0]))
    with torch.no_grad():
        enc = tok(TEXTS[:1], return_tensors="pt")
        model(**{k: v for k, v in enc.items() if k != "special_tokens_mask"})
    handle.remove()
    expected = seen[0].abs().mean(dim=0).double()
    torch.testing.assert_close(got["encoder.layer.1.output.dense.weight"], expected)
    assert kind.memory(model, {}) == sum(
        m.in_features * 8 for m in model.modules() if isinstance(m, torch.nn.Linear)
    )
