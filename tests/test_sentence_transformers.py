"""sentence-transformers in, sentence-transformers out: Θ' of a bi-encoder, cross-encoder or
SPLADE triplet of sentence-transformers folders loads with SentenceTransformer, CrossEncoder or
SparseEncoder and scores as our scorer does (1e-5, fp32); modules are honoured, sub-module
(Dense) weights are ΘT's; docs/sentence-transformers.md's snippets run.
"""

from __future__ import annotations

import json
import random
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mergekit_ir
from mergekit_ir.errors import CheckpointError
from mergekit_ir.params import check_params
from mergekit_ir.plugin_host import catalog
from mergekit_ir.references.tiny_models import save_bert, word_tokenizer
from mergekit_ir.scoring.scorer import ScoringSettings
from tiny_checkpoints import WORDS

st = pytest.importorskip("sentence_transformers", minversion="5.0")

DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "sentence-transformers.md"
TOL = 1e-5
ALPHA = 0.5
_rng = random.Random(3)
_VOCAB = [w for w in WORDS if w.isalpha()]
QUERIES = ["what is the role of protein in cancer", "drug effects", "how does gene expression"]
DOCS = [" ".join(_rng.choice(_VOCAB) for _ in range(n)) for n in (3, 45, 7, 1, 20)]
PAIRS = [(q, d) for q in QUERIES for d in DOCS]
Q_ = "bert.encoder.layer.0.attention.self.query.weight"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU they cost seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _st_modules():
    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer import modules
    except ImportError:
        from sentence_transformers import models as modules
    return modules


def _sparse_modules():
    try:  # sentence-transformers >= 6
        from sentence_transformers.sparse_encoder import modules
    except ImportError:
        from sentence_transformers.sparse_encoder import models as modules
    return modules


def _mlm_transformer(folder: Path, legacy: bool, max_seq_length: int):
    m = _sparse_modules()
    if not legacy:
        try:  # >= 5.4: a fill-mask Transformer
            return m.Transformer(
                str(folder), transformer_task="fill-mask", max_seq_length=max_seq_length
            )
        except TypeError:
            pass
    return m.MLMTransformer(str(folder), max_seq_length=max_seq_length)


def _family(root: Path, head: str) -> dict[str, Path]:
    """Three related tiny BERTs, as a real triplet is: Θ0, and ΘD, ΘT = Θ0 + noise."""
    tok = word_tokenizer(WORDS)
    pre = save_bert(root / f"raw-{head}-pretrained", tok, 0, head=head)
    state = load_file(pre / "model.safetensors")
    dom = save_bert(root / f"raw-{head}-domain", tok, 1, head=head, base_state=state, noise=0.02)
    ir = save_bert(root / f"raw-{head}-ir", tok, 2, head=head, base_state=state, noise=0.02)
    return {"pretrained": pre, "domain": dom, "ir": ir}


def build_models(root: Path) -> dict[str, Path]:
    """st-/ce-/sp-{pretrained,domain,ir}: three sentence-transformers folders of each kind."""
    from sentence_transformers import CrossEncoder, SentenceTransformer, SparseEncoder

    stm = _st_modules()
    out: dict[str, Path] = {}
    for i, (role, bert) in enumerate(_family(root, "base").items()):
        transformer = stm.Transformer(str(bert), max_seq_length=24)
        dim = (
            getattr(transformer, "get_embedding_dimension", None)
            or transformer.get_word_embedding_dimension
        )()
        torch.manual_seed(10 + i)  # each role its own Dense: Θ' must keep ΘT's
        dense = stm.Dense(dim, 16, activation_function=torch.nn.Tanh())
        modules = [transformer, stm.Pooling(dim, "mean"), dense, stm.Normalize()]
        out[f"st-{role}"] = root / f"st-{role}"
        SentenceTransformer(modules=modules, device="cpu").save(str(out[f"st-{role}"]))
    for role, bert in _family(root, "classifier").items():
        out[f"ce-{role}"] = root / f"ce-{role}"
        CrossEncoder(str(bert), max_length=32, device="cpu").save(str(out[f"ce-{role}"]))
    sm = _sparse_modules()
    for role, bert in _family(root, "mlm").items():
        out[f"sp-{role}"] = root / f"sp-{role}"
        modules = [
            _mlm_transformer(bert, legacy=role == "ir", max_seq_length=32),
            sm.SpladePooling("max"),
        ]
        SparseEncoder(modules=modules, device="cpu").save(str(out[f"sp-{role}"]))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return build_models(tmp_path_factory.mktemp("st-models"))


def settings() -> ScoringSettings:
    return ScoringSettings(device="cpu", dtype="fp32", batch_size=4, show_progress=False)


def ours(kind: str, path: Path, **options):
    sk = catalog().scorer(kind)
    sk.check(path)
    return sk.load(path, check_params(sk.params, options, "scorer", kind), settings())


def merged(models: dict[str, Path], prefix: str, out: Path) -> Path:
    mergekit_ir.merge(
        models[f"{prefix}-ir"],
        [models[f"{prefix}-domain"]],
        out,
        pretrained=models[f"{prefix}-pretrained"],
        params={"alpha": ALPHA},
        progress=False,
        cache_dir=out.parent / "cache",
    )
    return out


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().cpu(), b.float().cpu()
    assert a.shape == b.shape
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    assert diff <= TOL, diff
    return diff


def test_bi_encoder_triplet_round_trips_through_sentence_transformer(models, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = merged(models, "st", tmp_path / "st-merged")
    model = SentenceTransformer(str(out), device="cpu")
    scorer = ours("bi-encoder", out)
    q = model.encode_query(QUERIES, convert_to_tensor=True, batch_size=4)
    d = model.encode_document(DOCS, convert_to_tensor=True, batch_size=4)
    close(q, scorer.encode_queries(QUERIES))
    close(d, scorer.encode_documents(DOCS))
    close(model.similarity(q, d).flatten(), torch.tensor(scorer.score_pairs(PAIRS)))
    assert scorer.truncation.fields["documents"][1] >= 1  # the 45-word document was cut at 24
    # the transformer is merged: Θ' = ΘT + α (ΘD − Θ0) ...
    t, p, dm = (
        load_file(models[f"st-{r}"] / "model.safetensors") for r in ("ir", "pretrained", "domain")
    )
    key = next(k for k in t if k.endswith("encoder.layer.0.attention.self.query.weight"))
    got = load_file(out / "model.safetensors")[key]
    torch.testing.assert_close(got, t[key] + ALPHA * (dm[key] - p[key]), atol=1e-6, rtol=0)
    # ... and the Dense projection is ΘT's, bit for bit, though Θ0 and ΘD have their own
    dense = {
        r: load_file(models[f"st-{r}"] / "2_Dense" / "model.safetensors")
        for r in ("ir", "pretrained", "domain")
    }
    out_dense = load_file(out / "2_Dense" / "model.safetensors")
    assert out_dense.keys() == dense["ir"].keys()
    assert all(out_dense[k].equal(dense["ir"][k]) for k in out_dense)
    assert not any(out_dense[k].equal(dense["domain"][k]) for k in out_dense)
    assert json.loads((out / "modules.json").read_text()) == json.loads(
        (models["st-ir"] / "modules.json").read_text()
    )


def test_cross_encoder_triplet_round_trips_through_cross_encoder(models, tmp_path):
    from sentence_transformers import CrossEncoder

    out = merged(models, "ce", tmp_path / "ce-merged")
    model = CrossEncoder(str(out), device="cpu")
    scorer = ours("cross-encoder", out)
    assert scorer.max_length == 32  # the CrossEncoder's max_length, not our default 512
    logits = model.predict(
        PAIRS, activation_fn=torch.nn.Identity(), convert_to_tensor=True, batch_size=4
    )
    got = torch.tensor(scorer.score_pairs(PAIRS))
    close(logits, got)
    assert scorer.truncation.truncated > 0  # the 45-word document was cut
    probs = model.predict(PAIRS, convert_to_tensor=True, batch_size=4)  # sigmoid: same ranking
    assert torch.equal(probs.cpu().argsort(), got.argsort())
    t, p, dm = (
        load_file(models[f"ce-{r}"] / "model.safetensors") for r in ("ir", "pretrained", "domain")
    )
    head = load_file(out / "model.safetensors")["classifier.weight"]  # Θ0/ΘD have heads: merged
    torch.testing.assert_close(
        head,
        t["classifier.weight"] + ALPHA * (dm["classifier.weight"] - p["classifier.weight"]),
        atol=1e-6,
        rtol=0,
    )


def test_sparse_encoder_triplet_round_trips_through_sparse_encoder(models, tmp_path):
    from sentence_transformers import SparseEncoder

    out = merged(models, "sp", tmp_path / "sp-merged")
    assert "MLMTransformer" in (out / "modules.json").read_text()  # ΘT's legacy module name
    model = SparseEncoder(str(out), device="cpu")
    scorer = ours("splade", out)
    assert (scorer.max_length, scorer.query_max_length) == (32, 32)
    q = model.encode_query(QUERIES, convert_to_tensor=True, batch_size=4).to_dense()
    d = model.encode_document(DOCS, convert_to_tensor=True, batch_size=4).to_dense()
    close(q, scorer.encode_queries(QUERIES))
    close(d, scorer.encode_documents(DOCS))
    close(model.similarity(q, d).flatten(), torch.tensor(scorer.score_pairs(PAIRS)))
    key = "cls.predictions.transform.dense.weight"  # the MLM head scores: it is merged
    t, p, dm = (
        load_file(models[f"sp-{r}"] / "model.safetensors") for r in ("ir", "pretrained", "domain")
    )
    torch.testing.assert_close(
        load_file(out / "model.safetensors")[key],
        t[key] + ALPHA * (dm[key] - p[key]),
        atol=1e-6,
        rtol=0,
    )


def test_splade_pooling_activation_and_prompts_are_honoured(models, tmp_path):
    from sentence_transformers import SparseEncoder

    sm = _sparse_modules()
    for pooling, activation in (("sum", "relu"), ("max", "log1p_relu"), ("sum", "log1p_relu")):
        folder = tmp_path / f"sp-{pooling}-{activation}"
        modules = [
            _mlm_transformer(models["sp-ir"], legacy=False, max_seq_length=32),
            sm.SpladePooling(pooling, activation_function=activation),
        ]
        prompts = {"query": "query : ", "document": "passage : "}
        SparseEncoder(modules=modules, prompts=prompts, device="cpu").save(str(folder))
        model = SparseEncoder(str(folder), device="cpu")
        scorer = ours("splade", folder)
        assert (scorer.pooling, scorer.activation) == (pooling, activation)
        assert (scorer.query_prefix, scorer.doc_prefix) == ("query : ", "passage : ")
        q = model.encode_query(QUERIES, convert_to_tensor=True).to_dense()
        d = model.encode_document(DOCS, convert_to_tensor=True).to_dense()
        close(q, scorer.encode_queries(QUERIES))
        close(d, scorer.encode_documents(DOCS))


def _with_module(src: Path, dst: Path, type_name: str) -> Path:
    shutil.copytree(src, dst)
    modules = json.loads((dst / "modules.json").read_text())
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": "", "type": type_name})
    (dst / "modules.json").write_text(json.dumps(modules))
    return dst


def test_modules_a_scorer_would_skip_are_refused_in_one_line(models, tmp_path):
    cases = [
        (
            "bi-encoder",
            _with_module(
                models["st-ir"], tmp_path / "ln", "sentence_transformers.models.LayerNorm"
            ),
            "module LayerNorm is not supported by the bi-encoder",
        ),
        ("bi-encoder", models["sp-ir"], "use scorer kind 'splade'"),
        (
            "cross-encoder",
            _with_module(
                models["ce-ir"],
                tmp_path / "ls",
                "sentence_transformers.cross_encoder.modules.logit_score.LogitScore",
            ),
            "module LogitScore is not supported by the cross-encoder",
        ),
        (
            "splade",
            _with_module(
                models["sp-ir"], tmp_path / "rt", "sentence_transformers.base.modules.router.Router"
            ),
            "module Router is not supported by the splade",
        ),
    ]
    for kind, folder, message in cases:
        with pytest.raises(CheckpointError, match=re.escape(message)) as err:
            catalog().scorer(kind).check(folder)
        assert "\n" not in str(err.value)


def test_a_bi_encoder_folder_still_reads_as_the_transformer_for_other_kinds(models):
    """A sentence-transformers bi-encoder as Θ0 of a SPLADE or cross-encoder triplet: its
    transformer is read (with the usual missing-head warning), not refused."""
    folder = models["st-pretrained"]
    catalog().scorer("splade").check(folder)
    catalog().scorer("cross-encoder").check(folder)


def test_the_card_of_a_sentence_transformers_output_says_which_kind(models, tmp_path):
    """library_name, pipeline_tag and tags of the hub's sentence-transformers cards; the
    copied sub-module weights named (docs/merging.md#publishing, tests/test_model_card.py)."""
    from huggingface_hub import ModelCard

    expected = {
        "st": ("sentence-similarity", "sentence-similarity", "SentenceTransformer("),
        "ce": ("text-ranking", "cross-encoder", "CrossEncoder("),
        "sp": ("feature-extraction", "sparse-encoder", "SparseEncoder("),
    }
    for prefix, (pipeline, tag, loads) in expected.items():
        out = merged(models, prefix, tmp_path / f"{prefix}-merged")
        card = ModelCard((out / "README.md").read_text(), ignore_metadata_errors=False)
        assert card.data.library_name == "sentence-transformers"
        assert card.data.pipeline_tag == pipeline
        assert {"mergekit-ir", "merge", "sentence-transformers", tag} <= set(card.data.tags)
        assert loads in card.text
        copied = "copied as they are (not merged): `2_Dense/model.safetensors`"
        assert (copied in card.text) == (prefix == "st")


# -- the docs page's snippets ------------------------------------------------------------


def snippets(page: Path) -> list[tuple[str, str]]:
    """(language, code) of every ```python / ```bash block, in page order."""
    return re.findall(r"```(python|bash)\n(.*?)```", page.read_text(), re.S)


@pytest.mark.slow
def test_the_docs_snippets_run(models, tmp_path, monkeypatch):
    """Every snippet of docs/sentence-transformers.md, in order, on tiny stand-ins of the
    folders it names, with quickstart-toy for scifact (no download); then the claims it makes."""
    from click.testing import CliRunner

    from mergekit_ir.cli import main

    work = tmp_path / "work"
    work.mkdir()
    for name, folder in models.items():
        shutil.copytree(folder, work / name)
    monkeypatch.chdir(work)
    monkeypatch.setenv("MERGEIR_CACHE", str(tmp_path / "cache"))
    found = snippets(DOCS_PAGE)
    assert [lang for lang, _ in found].count("python") >= 4
    have_mergekit = True
    try:
        import mergekit  # noqa: F401  (SentenceTransformer.merge needs it)
    except ImportError:
        have_mergekit = False
    for lang, code in found:
        needs_mergekit = "SentenceTransformer.merge(" in code or "st-merged-by-st" in code
        if needs_mergekit and not have_mergekit:
            continue
        if lang == "python":
            exec(compile(code, f"{DOCS_PAGE.name} snippet", "exec"), {"__name__": "__docs__"})
            continue
        for line in code.strip().splitlines():
            # scifact is a download: the offline demo collection stands in for it
            line = line.replace("--dataset scifact", "--dataset quickstart-toy")
            args = shlex.split(line.split("#")[0])
            assert args[0] == "mergeir", line
            res = CliRunner().invoke(main, [*args[1:], "-q"])
            assert res.exit_code == 0, (line, res.output)
    # the CLI and the Python API write the same Θ'
    api, cli = (
        load_file(work / "st-merged" / "model.safetensors"),
        load_file(work / "st-merged-cli" / "model.safetensors"),
    )
    assert all(api[k].equal(cli[k]) for k in api)
    assert (work / "st-finetuned" / "modules.json").is_file()
    if have_mergekit:  # SentenceTransformer.merge's task arithmetic is ours on the transformer
        by_st = load_file(work / "st-merged-by-st" / "model.safetensors")
        assert by_st.keys() == api.keys()
        assert max(float((by_st[k].float() - api[k].float()).abs().max()) for k in api) < 1e-6
        dense_st = load_file(work / "st-merged-by-st" / "2_Dense" / "model.safetensors")
        dense_ours = load_file(work / "st-merged" / "2_Dense" / "model.safetensors")
        assert not dense_st["linear.weight"].equal(dense_ours["linear.weight"])  # it merges Dense
