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
from transformers import AutoModel, AutoTokenizer

from mergekit_ir import Param, Run, Scorer, ScorerKind, ScoringSettings, hookimpl
from mergekit_ir.errors import CheckpointError
from mergekit_ir.text_batches import run_batches, tokenize

PARAMS = (
    Param("pooling", str, None, "token pooling (default: the sentence-transformers config, else mean)",
          choices=("mean", "cls", "max", "lasttoken")),
    Param("similarity", str, None, "dot or cosine (default: cosine if the model normalises, else dot)",
          choices=("dot", "cosine")),
    Param("query_prefix", str, "", "text put before each query (e.g. 'query: ')"),
    Param("doc_prefix", str, "", "text put before each document (e.g. 'passage: ')"),
    Param("max_length", int, None, "token limit per text (default: the model's max_seq_length)", min=8),
)


def read_sentence_transformers(path: Path) -> dict[str, Any]:
    """Pooling, normalisation and length settings of a sentence-transformers folder."""
    info: dict[str, Any] = {"transformer_path": path, "pooling": None, "normalize": False,
                            "max_length": None, "prompts": {}}
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return info
    try:
        modules = json.loads(modules_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{modules_file}: not valid JSON ({exc.msg})") from None
    for m in modules:
        kind = m.get("type", "")
        mpath = path / m.get("path", "")
        if kind.endswith("Transformer"):
            info["transformer_path"] = mpath
            cfg = mpath / "sentence_bert_config.json"
            if not cfg.is_file():
                cfg = path / "sentence_bert_config.json"
            if cfg.is_file():
                info["max_length"] = json.loads(cfg.read_text()).get("max_seq_length")
        elif kind.endswith("Pooling"):
            cfg = json.loads((mpath / "config.json").read_text())
            for mode, name in (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                               ("pooling_mode_max_tokens", "max"), ("pooling_mode_lasttoken", "lasttoken")):
                if cfg.get(mode):
                    info["pooling"] = name
                    break
        elif kind.endswith("Normalize"):
            info["normalize"] = True
    st_cfg = path / "config_sentence_transformers.json"
    if st_cfg.is_file():
        info["prompts"] = json.loads(st_cfg.read_text()).get("prompts") or {}
    return info


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
    def __init__(self, path: Path, options: Mapping[str, Any], settings: ScoringSettings):
        super().__init__(settings)
        st = read_sentence_transformers(path)
        self.pooling = options.get("pooling") or st["pooling"] or "mean"
        self.normalize = st["normalize"]
        self.similarity = options.get("similarity") or ("cosine" if self.normalize else "dot")
        self.query_prefix = options.get("query_prefix") or ""
        self.doc_prefix = options.get("doc_prefix") or ""
        self.tokenizer = AutoTokenizer.from_pretrained(st["transformer_path"])
        self.model = AutoModel.from_pretrained(st["transformer_path"], dtype=self.dtype)
        self.model.to(self.device).eval()
        limit = getattr(self.model.config, "max_position_embeddings", 512)
        self.max_length = options.get("max_length") or st["max_length"] or min(limit, 512)

    def encode(self, texts: Sequence[str], desc: str = "encoding") -> torch.Tensor:
        enc = tokenize(self.tokenizer, texts, None, self.max_length, self.truncation)

        def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            hidden = self.model(**batch).last_hidden_state
            emb = pool(hidden, batch["attention_mask"], self.pooling).float()
            if self.normalize or self.similarity == "cosine":
                emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
            return emb

        with self.progress(len(texts), desc) as bar:
            return run_batches(self.tokenizer, enc, self.settings.batch_size, self.device, forward, bar)

    def rerank(self, queries: Mapping[str, str], candidates: Run, docs: Mapping[str, str]) -> Run:
        qids = sorted(candidates)
        dids = sorted({d for q in qids for d in candidates[q]})
        q_emb = self.encode([self.query_prefix + queries[q] for q in qids], "queries")
        d_emb = self.encode([self.doc_prefix + docs[d] for d in dids], "documents")
        row = {d: i for i, d in enumerate(dids)}
        run: Run = {}
        for qi, qid in enumerate(qids):
            idx = torch.tensor([row[d] for d in sorted(candidates[qid])], dtype=torch.long)
            scores = d_emb[idx] @ q_emb[qi]
            run[qid] = {d: float(s) for d, s in zip(sorted(candidates[qid]), scores.tolist(), strict=True)}
        return run

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        q = self.encode([self.query_prefix + p[0] for p in pairs], "queries")
        d = self.encode([self.doc_prefix + p[1] for p in pairs], "documents")
        return (q * d).sum(-1).tolist()


def check(path: Path) -> None:
    st = read_sentence_transformers(path)
    if not (Path(st["transformer_path"]) / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json; a bi-encoder needs a transformers or sentence-transformers folder")


@hookimpl
def register_scorers(register):
    register(ScorerKind(
        name="bi-encoder",
        description="embed query and document separately (mean/CLS pooling), dot or cosine; reads sentence-transformers folders",
        load=BiEncoder,
        params=PARAMS,
        check=check,
    ))
