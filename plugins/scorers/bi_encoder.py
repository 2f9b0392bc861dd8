"""Bi-encoder scorer: embed query and document separately, score by dot or cosine.

Reads sentence-transformers folders (``modules.json``, pooling config, Normalize,
``max_seq_length``, prompts) so a sentence-transformers model scores exactly as
``SentenceTransformer.encode`` would; plain transformers folders work with the
options given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mergekit_ir import (
    CheckpointError,
    Param,
    Ranking,
    Scorer,
    ScorerKind,
    ScoringSettings,
    hookimpl,
    read_model_config,
    run_batches,
    tokenize,
)

PARAMS = (
    Param(
        "pooling",
        str,
        None,
        "token pooling (default: the sentence-transformers config, else mean)",
        choices=("mean", "cls", "max", "lasttoken"),
    ),
    Param(
        "similarity",
        str,
        None,
        "dot or cosine (default: cosine if the model normalises, else dot)",
        choices=("dot", "cosine"),
    ),
    Param(
        "query_prefix",
        str,
        None,
        "text put before each query, e.g. 'query: ' (default: the folder's 'query' prompt, else none)",
    ),
    Param(
        "doc_prefix",
        str,
        None,
        "text put before each document, e.g. 'passage: ' (default: the folder's 'document', "
        "'passage' or 'corpus' prompt, else none)",
    ),
    Param(
        "max_length", int, None, "token limit per text (default: the model's max_seq_length)", min=8
    ),
    Param("query_max_length", int, None, "token limit per query (default: max_length)", min=4),
)


#: The sentence-transformers ``model_type`` (``config_sentence_transformers.json``) each scorer
#: kind reads, for the hint when a folder is given to the wrong kind.
ST_MODEL_KINDS = {
    "SentenceTransformer": "bi-encoder",
    "CrossEncoder": "cross-encoder",
    "SparseEncoder": "splade",
}

#: Modules the bi-encoder applies as ``SentenceTransformer.encode`` does (Dropout: none at eval).
BI_ENCODER_MODULES = ("Transformer", "Pooling", "Dense", "Normalize", "Dropout")


def read_st_modules(path: Path) -> list[tuple[str, Path]] | None:
    """(class name, folder) of each module of a sentence-transformers folder, in order;
    None for a plain transformers folder (no ``modules.json``)."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text())
        return [
            (str(m.get("type", "")).rpartition(".")[2], path / str(m.get("path", "")))
            for m in modules
        ]
    except (json.JSONDecodeError, AttributeError, TypeError) as exc:
        raise CheckpointError(
            f"{modules_file}: not a sentence-transformers module list ({exc})"
        ) from None


def read_st_config(path: Path) -> dict[str, Any]:
    """``config_sentence_transformers.json`` (prompts, model_type, similarity), or {}."""
    cfg = path / "config_sentence_transformers.json"
    if not cfg.is_file():
        return {}
    try:
        raw = json.loads(cfg.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg}: not valid JSON ({exc.msg})") from None
    return raw if isinstance(raw, dict) else {}


def check_st_modules(
    path: Path, modules: list[tuple[str, Path]], kind: str, supported: Sequence[str]
) -> None:
    """Refuse a sentence-transformers module the scorer would skip: its scores would then differ
    from sentence-transformers' own, silently."""
    for name, _ in modules:
        if name not in supported:
            model_type = read_st_config(path).get("model_type")
            other = ST_MODEL_KINDS.get(str(model_type))
            hint = (
                f"it is a {model_type} folder: use scorer kind '{other}'"
                if other and other != kind
                else f"the {kind} scorer applies {', '.join(supported)}"
            )
            raise CheckpointError(
                f"{path}: sentence-transformers module {name} is not supported by the {kind} "
                f"scorer ({hint})"
            )


def st_max_length(path: Path, transformer_path: Path, tokenizer: Any) -> int | None:
    """A sentence-transformers folder's max_seq_length: ``sentence_bert_config.json``, else
    (sentence-transformers >= 6 keeps it there) the tokenizer's ``model_max_length``."""
    for cfg in (transformer_path / "sentence_bert_config.json", path / "sentence_bert_config.json"):
        if cfg.is_file():
            value = json.loads(cfg.read_text()).get("max_seq_length")
            if isinstance(value, int):
                return value
            break
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < 1_000_000 else None


def read_sentence_transformers(path: Path) -> dict[str, Any]:
    """Pooling, normalisation and length settings of a sentence-transformers folder."""
    info: dict[str, Any] = {
        "transformer_path": path,
        "pooling": None,
        "normalize": False,
        "max_length": None,
        "prompts": {},
    }
    modules = read_st_modules(path)
    info["is_st"] = modules is not None
    if modules is None:
        return info
    check_st_modules(path, modules, "bi-encoder", BI_ENCODER_MODULES)
    for kind, mpath in modules:
        if kind == "Transformer":
            info["transformer_path"] = mpath
            cfg = mpath / "sentence_bert_config.json"
            if not cfg.is_file():
                cfg = path / "sentence_bert_config.json"
            if cfg.is_file():
                info["max_length"] = json.loads(cfg.read_text()).get("max_seq_length")
        elif kind == "Pooling":
            cfg = json.loads((mpath / "config.json").read_text())
            info["pooling"] = _pooling_mode(cfg)
            info["include_prompt"] = cfg.get("include_prompt", True)
        elif kind == "Dense":
            info.setdefault("dense", []).append(mpath)
        elif kind == "Normalize":
            info["normalize"] = True
    info["prompts"] = read_st_config(path).get("prompts") or {}
    return info


_POOLING_NAMES = {"mean": "mean", "cls": "cls", "max": "max", "lasttoken": "lasttoken"}
_LEGACY_POOLING = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_lasttoken", "lasttoken"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
)


def _pooling_mode(cfg: Mapping[str, Any]) -> str | list[str] | None:
    """The pooling of a sentence-transformers Pooling config (v6 ``pooling_mode`` or legacy flags)."""
    mode = cfg.get("pooling_mode")
    if mode is None:
        modes = [name for key, name in _LEGACY_POOLING if cfg.get(key)]
        mode = modes or None
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    return mode


def load_dense(folder: Path) -> torch.nn.Module:
    """A sentence-transformers ``Dense`` module (linear + activation) after pooling."""
    import importlib

    cfg = json.loads((folder / "config.json").read_text())
    linear = torch.nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg.get("bias", True))
    weights = folder / "model.safetensors"
    if weights.is_file():
        from safetensors.torch import load_file

        state = load_file(weights)
    else:
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    module_name, _, cls_name = cfg.get(
        "activation_function", "torch.nn.modules.linear.Identity"
    ).rpartition(".")
    if not module_name.startswith("torch.nn"):
        raise CheckpointError(f"{folder}: Dense activation {cls_name!r} is not a torch.nn module")
    activation = getattr(importlib.import_module(module_name), cls_name)()
    return torch.nn.Sequential(linear, activation)


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    mask_f = mask.unsqueeze(-1).to(hidden.dtype)
    if how == "cls":
        return hidden[:, 0]
    if how == "max":
        return hidden.masked_fill(mask_f == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    if how == "lasttoken":
        last = mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    summed = (hidden * mask_f).sum(dim=1)
    return summed / mask_f.sum(dim=1).clamp(min=1e-9)


class BiEncoder(Scorer):
    openvino_from_torch = True  # measured faster than the ONNX route: Scorer.openvino_from_torch
    #: OpenVINO fp32 (converted from the torch program) scored all-MiniLM-L6-v2's documents
    #: 1.18–1.25× faster than torch fp32 in two idle runs on a 2-core AVX2 CPU, exactly (max
    #: |diff| ≤ 2e-7), an export of ~9–10 s won back after ~1,100 documents
    #: (docs/performance.md, "OpenVINO from the torch program"); ``auto`` compiles only
    #: passes of ``EXPORT_COST.min_items`` or more, and stays torch without openvino
    auto_backend = "openvino"
    cost_unit = "document"  # documents are encoded once per pass, then dot products

    def __init__(self, path: Path, options: Mapping[str, Any], settings: ScoringSettings):
        super().__init__(settings)
        st = read_sentence_transformers(path)
        self.pooling = options.get("pooling") or st["pooling"] or "mean"
        if not isinstance(self.pooling, str) or self.pooling not in _POOLING_NAMES:
            raise CheckpointError(
                f"{path}: pooling {self.pooling!r} of the sentence-transformers config is not supported "
                f"by the bi-encoder scorer (supported: {', '.join(_POOLING_NAMES)}); set scorer option pooling"
            )
        self.normalize = st["normalize"]
        self.similarity = options.get("similarity") or ("cosine" if self.normalize else "dot")
        prompts = st["prompts"]
        # As SentenceTransformer.encode_query / encode_document pick their prompts.
        self.query_prefix = _option_or(options.get("query_prefix"), prompts.get("query"))
        self.doc_prefix = _option_or(
            options.get("doc_prefix"),
            next(
                (
                    prompts[k]
                    for k in ("document", "passage", "corpus")
                    if prompts.get(k) is not None
                ),
                None,
            ),
        )
        if not st.get("include_prompt", True) and (self.query_prefix or self.doc_prefix):
            raise CheckpointError(
                f"{path}: pooling with include_prompt=false is not supported by the bi-encoder scorer; "
                "set scorer options query_prefix/doc_prefix to ''"
            )
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(st["transformer_path"])
        self.model = self.load_pretrained(AutoModel, st["transformer_path"])
        limit = getattr(self.model.config, "max_position_embeddings", 512)
        # sentence-transformers >= 6 keeps max_seq_length as the tokenizer's model_max_length.
        st_limit = st["max_length"]
        if st_limit is None and st["is_st"] and self.tokenizer.model_max_length < 1_000_000:
            st_limit = min(self.tokenizer.model_max_length, limit)
        self.max_length = options.get("max_length") or st_limit or min(limit, 512)
        # Dense layers after pooling (e.g. msmarco-distilbert-base-dot-prod-v3's 2_Dense): ΘT's own,
        # never merged, kept outside self.model.
        self.dense = torch.nn.Sequential(*(load_dense(d) for d in st.get("dense", [])))
        self.dense.to(device=self.device, dtype=self.dtype).eval()
        self.query_max_length = min(
            options.get("query_max_length") or self.max_length, self.max_length
        )

    def encode(
        self,
        texts: Sequence[str],
        desc: str = "encoding",
        max_length: int | None = None,
        name: str = "texts",
    ) -> torch.Tensor:
        """One embedding per text (fp32, CPU), normalised when the model or similarity asks."""
        self.warn_empty(texts, name)
        enc = tokenize(
            self.tokenizer, texts, None, max_length or self.max_length, self.truncation, name=name
        )
        forward = self.backend_forward("embed", config=self.graph_config(), items=len(texts))
        with self.progress(len(texts), desc, unit="text") as bar:
            return run_batches(
                self.tokenizer, enc, self.settings.batch_size, self.device, forward, bar
            )

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One batch's embeddings: the graph a compiled backend exports (``--backend``)."""
        hidden = self.model(**batch).last_hidden_state
        emb = self.dense(pool(hidden, batch["attention_mask"], self.pooling)).float()
        if self.normalize or self.similarity == "cosine":
            emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
        return emb

    def graph_config(self) -> dict[str, Any]:
        return {"pooling": self.pooling, "normalize": self.normalize, "similarity": self.similarity}

    def encode_queries(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encode(
            [self.query_prefix + t for t in texts], "queries", self.query_max_length, "queries"
        )

    def encode_documents(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encode(
            [self.doc_prefix + t for t in texts], "documents", self.max_length, "documents"
        )

    def rerank(
        self, queries: Mapping[str, str], candidates: Ranking, docs: Mapping[str, str]
    ) -> Ranking:
        qids = sorted(candidates)
        dids = sorted({d for q in qids for d in candidates[q]})
        q_emb = self.encode_queries([queries[q] for q in qids])
        d_emb = self.encode_documents([docs[d] for d in dids])
        self.log_truncation()
        row = {d: i for i, d in enumerate(dids)}
        run: Ranking = {}
        for qi, qid in enumerate(qids):
            idx = torch.tensor([row[d] for d in sorted(candidates[qid])], dtype=torch.long)
            scores = d_emb[idx] @ q_emb[qi]
            run[qid] = {
                d: float(s) for d, s in zip(sorted(candidates[qid]), scores.tolist(), strict=True)
            }
        return run

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Each distinct query and document is embedded once."""
        q_texts = list(dict.fromkeys(p[0] for p in pairs))
        d_texts = list(dict.fromkeys(p[1] for p in pairs))
        q_emb = self.encode_queries(q_texts)
        d_emb = self.encode_documents(d_texts)
        self.log_truncation()
        if not pairs:
            return []
        q_row = {t: i for i, t in enumerate(q_texts)}
        d_row = {t: i for i, t in enumerate(d_texts)}
        qi = torch.tensor([q_row[p[0]] for p in pairs], dtype=torch.long)
        di = torch.tensor([d_row[p[1]] for p in pairs], dtype=torch.long)
        return (q_emb[qi] * d_emb[di]).sum(-1).tolist()

    def differentiable_scores(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """The scores of :meth:`score_pairs` with autograd on (AdaMerging): each distinct
        query and document embedded once, in one padded forward each."""
        q_texts = list(dict.fromkeys(p[0] for p in pairs))
        d_texts = list(dict.fromkeys(p[1] for p in pairs))

        def embed(texts: list[str], max_length: int) -> torch.Tensor:
            batch = padded_batch(self.tokenizer, texts, max_length, self.device)
            hidden = self.model(**batch).last_hidden_state
            emb = self.dense(pool(hidden, batch["attention_mask"], self.pooling)).float()
            if self.normalize or self.similarity == "cosine":
                emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
            return emb

        q_emb = embed([self.query_prefix + t for t in q_texts], self.query_max_length)
        d_emb = embed([self.doc_prefix + t for t in d_texts], self.max_length)
        return pair_dots(pairs, q_texts, q_emb, d_texts, d_emb)


def padded_batch(tokenizer: Any, texts: list[str], max_length: int, device: Any) -> dict:
    """One padded batch of the model's inputs on ``device`` (a differentiable forward)."""
    enc = tokenizer(
        texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
    )
    keep = ("input_ids", "attention_mask", "token_type_ids")
    return {k: v.to(device) for k, v in enc.items() if k in keep}


def pair_dots(
    pairs: Sequence[tuple[str, str]],
    q_texts: list[str],
    q_vecs: torch.Tensor,
    d_texts: list[str],
    d_vecs: torch.Tensor,
) -> torch.Tensor:
    """One dot product per (query, document) pair, from the vectors of the distinct texts
    (row i of ``q_vecs`` is ``q_texts[i]``): bi-encoders and SPLADE score pairs this way."""
    q_row = {t: i for i, t in enumerate(q_texts)}
    d_row = {t: i for i, t in enumerate(d_texts)}
    qi = torch.tensor([q_row[p[0]] for p in pairs], dtype=torch.long, device=q_vecs.device)
    di = torch.tensor([d_row[p[1]] for p in pairs], dtype=torch.long, device=d_vecs.device)
    return (q_vecs[qi] * d_vecs[di]).sum(-1)


def _option_or(value: str | None, default: str | None) -> str:
    return value if value is not None else (default or "")


def check(path: Path) -> None:
    st = read_sentence_transformers(path)
    read_model_config(
        st["transformer_path"], "bi-encoder", "a transformers or sentence-transformers folder"
    )


@hookimpl
def register_scorers(register):
    register(
        ScorerKind(
            name="bi-encoder",
            description="embed query and document separately (mean/CLS pooling), dot or cosine; reads sentence-transformers folders",
            load=BiEncoder,
            params=PARAMS,
            check=check,
        )
    )
