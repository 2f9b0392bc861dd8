"""Per-layer statistics over a text source, for data-aware merge methods.

Some merge methods need more than the weights: RegMean solves, per linear layer, for the
merged weight that best preserves every model's outputs on data, from each model's input
Gram matrix XᵀX; Fisher merging weighs parameters by their importance on data. Such a method
declares the statistics it needs by name (``MergeMethod(statistics=("input_gram",))``) and
receives them per tensor; a **statistic** is a plugin (:class:`StatisticKind`, registered
through ``register_statistics``) that runs one model over batches of text and returns one
tensor per parameter. This module is the engine between the two:

1. **the text source** (:func:`sample_corpus`): a seeded sample of ``texts`` documents of the
   target corpus, each truncated to ``max_length`` tokens (the ``statistics:`` settings of the
   method, :data:`STATISTICS`); its fingerprint hashes the sampled texts themselves;
2. **the models**: index 0 is ΘT, index i is ΘD_i = Θ0 + τ_i — the models the merge function
   rebuilds from ΘT, τT and τ_i (``plugins/merge_methods/triplet.py``), so statistics and
   weights always describe the same models, whatever form the domain input takes (a
   checkpoint, a LoRA adapter, a saved τ). ΘT's architecture is loaded once
   (``AutoModel``, fp32) and each ΘD_i's merged tensors are written into it in turn;
3. **the cache**: one safetensors file per (statistic, model, corpus sample, settings) under
   ``<cache>/statistics/``, keyed by the model's content fingerprint (ΘT's; ΘD_i's from ΘT,
   Θ0 and τ_i), the sample's fingerprint, ``max_length`` and the statistic's name, version
   and parameters. A second merge, an α sweep and a rerun read it back; another corpus,
   another model or another setting computes a new one. ``batch_size`` is not part of the
   key: it changes only the order of floating-point sums;
4. **the merge** (:class:`StatisticsSet`, attached to the :class:`MergeJob`): the engine
   hands the merge function ``stats={name: [ΘT's, ΘD_1's, ...]}`` per tensor, each entry a
   tensor or None (a parameter the text pass never reached), read lazily from the cache
   files — memory during the merge stays at one tensor's statistics.

Memory while gathering is the model (fp32), one batch of activations and the collector's
accumulators, which each statistic bounds and reports (:attr:`StatisticKind.memory`; for
input Gram matrices, Σ over linear layers of in_features² fp64 values).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mergekit_ir.errors import CheckpointError, ConfigError, short_repr
from mergekit_ir.params import Param, check_params

log = logging.getLogger(__name__)

#: Bumped when this engine changes what a statistic file holds (part of every cache key).
STATISTICS_VERSION = "1"


@dataclass(frozen=True)
class SettingsParam(Param):
    """A parameter whose value is a mapping of declared settings (``statistics: {texts: 256}``),
    each checked with its own YAML path (``…merge.statistics.texts: 0 is outside [1, …]``)."""

    fields: tuple[Param, ...] = ()

    def check(self, value: Any, path: str) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            names = ", ".join(p.name for p in self.fields)
            raise ConfigError(f"{path}: {short_repr(value)} is not a mapping of settings ({names})")
        return check_params(self.fields, dict(value), path, f"'{self.name}' settings")

    def check_scalar(self, value: Any, path: str) -> Any:
        return self.check(value, path)

    def describe(self) -> str:
        inner = ", ".join(f"{p.name}={p.default!r}" for p in self.fields)
        return f"{self.name}: {{{inner}}}"


#: The ``statistics:`` settings every data-aware method declares (plugins reuse this one
#: declaration, as the linear methods reuse ``ALPHA``). The engine reads them; the merge
#: function never sees them.
STATISTICS = SettingsParam(
    "statistics",
    dict,
    {"texts": 256, "max_length": 256, "batch_size": 16, "seed": 0},
    "the text pass: documents sampled from the target corpus, tokens kept per document, "
    "documents per forward pass, sampling seed",
    fields=(
        Param("texts", int, 256, "documents sampled from the corpus", min=1, max=100_000),
        Param("max_length", int, 256, "tokens kept per document (truncated)", min=8, max=8192),
        Param("batch_size", int, 16, "documents per forward pass", min=1, max=4096),
        Param("seed", int, 0, "sampling seed"),
    ),
)


@dataclass
class StatisticsRun:
    """What a collector receives: one model and the text to run through it.

    ``model`` is the whole module (its ``named_modules`` and ``state_dict`` names are the
    names results are keyed by), fp32, in eval mode, on ``device``. :meth:`batches` yields the
    tokenised sample batch by batch (``input_ids``, ``attention_mask`` and, when the tokenizer
    makes them, ``token_type_ids``, on ``device``) with a progress bar, and sets
    :attr:`mask` (the current batch's attention mask) before yielding; :meth:`forward` runs one
    batch through the model — for an encoder-decoder model, through its encoder only.
    """

    model: torch.nn.Module
    tokenizer: Any
    texts: Sequence[str]
    max_length: int
    batch_size: int
    device: torch.device
    label: str = ""
    progress: bool = False
    mask: torch.Tensor | None = None
    tokens: int = 0

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        from tqdm.auto import tqdm

        order = sorted(range(len(self.texts)), key=lambda i: len(self.texts[i]))  # less padding
        with tqdm(
            total=len(order), desc=self.label, unit="text", disable=not self.progress, leave=False
        ) as bar:
            for start in range(0, len(order), self.batch_size):
                chunk = [self.texts[i] for i in order[start : start + self.batch_size]]
                enc = self.tokenizer(
                    chunk,
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                batch = {
                    k: v.to(self.device)
                    for k, v in enc.items()
                    if k in ("input_ids", "attention_mask", "token_type_ids")
                }
                self.mask = batch["attention_mask"].bool()
                self.tokens += int(self.mask.sum())
                yield batch
                bar.update(len(chunk))
        self.mask = None

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Any:
        model = self.model
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
            batch = {k: v for k, v in batch.items() if k != "token_type_ids"}
        return model(**batch)


@dataclass(frozen=True)
class StatisticKind:
    """A named statistic gathered per model over a text source.

    ``collect(run, params)`` runs :class:`StatisticsRun`'s batches through ``run.model`` and
    returns ``{parameter name in run.model's state_dict: tensor}`` — only for the parameters
    it has a statistic for. It must keep memory bounded whatever the number of texts
    (accumulate, never keep activations) and leave the model as it found it (remove hooks).
    ``memory(model, params)`` returns the bytes its accumulators take at most, reported
    before the pass. ``version`` is part of the cache key: bump it when ``collect`` changes
    what it returns. ``params`` are the statistic's own parameters (validated like any).
    """

    name: str
    description: str
    collect: Callable[[StatisticsRun, Mapping[str, Any]], dict[str, torch.Tensor]]
    params: tuple[Param, ...] = ()
    memory: Callable[[torch.nn.Module, Mapping[str, Any]], int] | None = None
    version: str = "1"


# -- the text source ------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusSample:
    """The documents a statistics pass reads: a seeded sample of a corpus, with a fingerprint
    of the sampled texts (what the cache keys on) and the corpus's size."""

    name: str
    texts: tuple[str, ...]
    fingerprint: str
    total: int

    def describe(self) -> str:
        return f"{len(self.texts)} of {self.total} documents of {self.name}"


def sample_corpus(
    texts: Sequence[str], n: int, seed: int = 0, name: str = "corpus"
) -> CorpusSample:
    """``n`` non-empty documents of ``texts`` (all of them when there are fewer), drawn with
    ``seed`` and kept in corpus order; the fingerprint hashes the chosen texts."""
    usable = [t for t in texts if t and t.strip()]
    if not usable:
        raise ConfigError(f"corpus {name}: no text (every document is empty)")
    if len(usable) > n:
        picked = sorted(random.Random(f"statistics:{seed}").sample(range(len(usable)), n))
        usable = [usable[i] for i in picked]
    h = hashlib.sha256()
    for t in usable:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return CorpusSample(name, tuple(usable), h.hexdigest()[:16], len(texts))


# -- model identities -----------------------------------------------------------------------


def _term_identity(term: Any, fp_dir: Path | None) -> Any:
    from mergekit_ir.merging.checkpoint import TensorSource
    from mergekit_ir.storage.fingerprint import file_digest, folder_fingerprint

    domain, pretrained = getattr(term, "domain", None), getattr(term, "pretrained", None)
    if isinstance(domain, TensorSource) and isinstance(pretrained, TensorSource):
        return ["diff", domain.fingerprint(fp_dir), pretrained.fingerprint(fp_dir)]
    for attr in ("path", "folder"):
        where = getattr(term, attr, None)
        if isinstance(where, Path):
            if where.is_dir():
                return [attr, folder_fingerprint(where, cache_dir=fp_dir)]
            return [attr, file_digest(where, fp_dir)]
    return ["term", type(term).__name__, term.describe()]


def model_identities(job: Any, plan: Any, fp_dir: Path | None = None) -> list[str]:
    """Content identities of [ΘT, ΘD_1, …]: ΘT's fingerprint; ΘD_i's from ΘT (architecture,
    tokenizer, the tensors copied from it), Θ0, τ_i and which tensors are merged."""
    t = job.ir.fingerprint(fp_dir)
    p = job.pretrained.fingerprint(fp_dir)
    merged = hashlib.sha256(
        "\n".join(sorted(f"{e.key}:{e.rows}" for e in plan.entries if e.action == "merge")).encode()
    ).hexdigest()[:16]
    out = [f"ΘT:{t}"]
    for v in job.vectors:
        terms = [[c, _term_identity(term, fp_dir)] for c, term in v.terms]
        blob = json.dumps([t, p, terms, merged], sort_keys=True, default=str)
        out.append("ΘD:" + hashlib.sha256(blob.encode()).hexdigest()[:16])
    return out


def model_labels(job: Any) -> list[str]:
    return ["ΘT"] + [
        f"ΘD{i + 1}" if len(job.vectors) > 1 else "ΘD" for i in range(len(job.vectors))
    ]


# -- the cache files ------------------------------------------------------------------------


@dataclass
class StoredStatistic:
    """One statistic of one model in the cache: read tensor by tensor."""

    path: Path
    keys: frozenset[str]
    meta: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path) -> StoredStatistic:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return cls(path, frozenset(f.keys()), dict(f.metadata() or {}))

    def get(self, key: str) -> torch.Tensor | None:
        if key not in self.keys:
            return None
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return f.get_tensor(key)


@dataclass
class StatisticsSet:
    """The statistics a merge reads: per model (ΘT, ΘD_1, …), per statistic, a cache file."""

    corpus: CorpusSample
    settings: Mapping[str, Any]
    models: list[dict[str, StoredStatistic]]
    hits: int = 0
    misses: int = 0

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.models[0]) if self.models else ()

    def for_tensor(self, key: str) -> dict[str, list[torch.Tensor | None]]:
        """``{statistic: [ΘT's, ΘD_1's, …]}`` for one tensor (None where a model has none)."""
        return {k: [m[k].get(key) for m in self.models] for k in self.kinds}

    def identity(self) -> list[Any]:
        """What the statistics are made of, for the cache keys of runs of Θ' built from them."""
        return [
            "statistics",
            STATISTICS_VERSION,
            sorted({m[k].meta.get("key", "") for m in self.models for k in m}),
        ]

    def describe(self) -> str:
        return f"{', '.join(self.kinds)} over {self.corpus.describe()} (sample {self.corpus.fingerprint})"


def statistics_key(
    kind: StatisticKind,
    params: Mapping[str, Any],
    model: str,
    sample: CorpusSample,
    settings: Mapping[str, Any],
) -> str:
    """The cache key of one statistic file: statistic (name, version, params), model identity,
    corpus sample and the settings that change the values."""
    from mergekit_ir.storage.cache import cache_key

    return cache_key(
        "statistics",
        STATISTICS_VERSION,
        kind.name,
        kind.version,
        dict(params),
        model,
        sample.fingerprint,
        {"max_length": settings["max_length"]},
    )


def statistics_dir(cache_root: Path) -> Path:
    return Path(cache_root) / "statistics"


# -- gathering ------------------------------------------------------------------------------


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """ΘT loaded as a bare encoder drops its head: transformers' notice about it is noise here."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def load_text_model(folder: Path, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """ΘT's architecture without its head (``AutoModel``), fp32, eval, and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    with _quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"{folder}: no tokenizer for the statistics pass ({exc})"
            ) from None
        model = AutoModel.from_pretrained(folder, dtype=torch.float32)
    if tokenizer.pad_token is None:  # decoder-only models: pad with eos (masked out anyway)
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return model.to(device).eval(), tokenizer


def _write_domain(model: torch.nn.Module, job: Any, plan: Any, i: int) -> int:
    """Write ΘD_i = Θ0 + τ_i into ``model``'s merged tensors (ΘT's elsewhere, as the merge
    function rebuilds it); returns how many tensors were written."""
    from mergekit_ir.merging.alignment import NameIndex

    state = model.state_dict()
    index = NameIndex.build("model", list(state), {"architectures": [type(model).__name__]})
    vector = job.vectors[i]
    seen: set[int] = set()
    n = 0
    with torch.no_grad():
        for e in plan.entries:
            if e.action != "merge":
                continue
            pname = index.find(e.key)
            p_name = job.p_index.find(e.key) if job.p_index is not None else None
            if pname is None or p_name is None:
                continue
            target = state[pname]
            if target.data_ptr() in seen:  # tied weights
                continue
            seen.add(target.data_ptr())
            rows = (0, e.rows) if e.rows else None
            value = job.pretrained.get(p_name, rows).to(torch.float32)
            tau = vector.get(e.key, rows)
            if tau is not None:
                value = value + tau.to(torch.float32)
            dest = target[: e.rows] if e.rows else target
            if dest.shape != value.shape:
                raise CheckpointError(
                    f"statistics pass: tensor {e.name} has shape {tuple(dest.shape)} in ΘT's "
                    f"architecture but {tuple(value.shape)} in Θ0 + τ{i + 1}"
                )
            dest.copy_(value.to(dest.device))
            n += 1
    return n


def gather_statistics(
    job: Any,
    plan: Any,
    kinds: Mapping[str, tuple[StatisticKind, Mapping[str, Any]]],
    sample: CorpusSample,
    settings: Mapping[str, Any],
    cache_root: Path,
    *,
    device: str | torch.device = "cpu",
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
    reuse: bool = True,
) -> StatisticsSet:
    """Every statistic in ``kinds`` (name -> (kind, its params)) for ΘT and each ΘD_i over
    ``sample``, from the cache where it is there, else computed once and cached.

    ``reuse=False`` recomputes (``--no-cache``) but still writes the files: the merge reads
    them from there. ΘT's architecture is loaded only when something is missing.
    """
    from safetensors.torch import save

    from mergekit_ir.storage import atomic

    say = echo or (lambda line: log.info("%s", line))
    if job.pretrained is None:
        raise CheckpointError(
            f"merge method '{job.method.name}' gathers statistics of ΘD_i = Θ0 + τ_i: give the "
            "triplet a 'pretrained' checkpoint (Θ0)"
        )
    settings = STATISTICS.check(dict(settings), "statistics")
    fp_dir = Path(cache_root) / "fingerprints"
    identities = model_identities(job, plan, fp_dir)
    labels = model_labels(job)
    root = statistics_dir(cache_root)
    wanted: list[dict[str, Path]] = []
    missing: list[tuple[int, str, Path, str]] = []
    for m, identity in enumerate(identities):
        files = {}
        for name, (kind, params) in kinds.items():
            key = statistics_key(kind, params, identity, sample, settings)
            path = root / f"{key}.safetensors"
            files[name] = path
            if not (reuse and _readable(path)):
                missing.append((m, name, path, key))
        wanted.append(files)
    hits = sum(len(f) for f in wanted) - len(missing)
    for m, files in enumerate(wanted):
        for name, path in files.items():
            if all(path != p for _, _, p, _ in missing):
                say(f"  statistics {name} · {labels[m]} · {sample.name}: cached ({path.name})")
    if missing:
        dev = torch.device(device)
        model, tokenizer = load_text_model(job.ir.folder, dev)
        current = 0  # the model holds ΘT as loaded
        for m, name, path, key in missing:
            if m != current:
                _write_domain(model, job, plan, m - 1)
                current = m
            kind, params = kinds[name]
            bound = kind.memory(model, params) if kind.memory else None
            run = StatisticsRun(
                model,
                tokenizer,
                sample.texts,
                settings["max_length"],
                settings["batch_size"],
                dev,
                label=f"statistics {name} · {labels[m]}",
                progress=progress,
            )
            started = time.perf_counter()
            found = kind.collect(run, params)
            seconds = time.perf_counter() - started
            stored = _keyed_by_plan(model, plan, found)
            meta = {
                "format_mergekit_ir": "statistics",
                "key": key,
                "statistic": name,
                "model": identities[m],
                "corpus": sample.name,
                "corpus_sample": sample.fingerprint,
                "texts": str(len(sample.texts)),
                "tokens": str(run.tokens),
                "seconds": f"{seconds:.3f}",
                "settings": json.dumps(dict(settings), sort_keys=True),
                "accumulator_bytes": str(bound or 0),
            }
            atomic.write_bytes(path, save(stored, metadata=meta))
            rate = run.tokens / seconds if seconds > 0 else float("inf")
            mem = f", accumulators ≤ {bound / 1e6:.1f} MB" if bound else ""
            say(
                f"  statistics {name} · {labels[m]} · {sample.name}: {len(sample.texts)} texts, "
                f"{run.tokens:,} tokens in {seconds:.1f}s ({rate:,.0f} tokens/s), "
                f"{len(stored)} tensors{mem}"
            )
        del model
    models = [
        {name: StoredStatistic.open(path) for name, path in files.items()} for files in wanted
    ]
    return StatisticsSet(sample, dict(settings), models, hits=hits, misses=len(missing))


def _readable(path: Path) -> bool:
    """A complete statistics file (written atomically; a broken one is recomputed)."""
    if not path.is_file():
        return False
    try:
        StoredStatistic.open(path)
    except Exception:  # not safetensors, truncated by hand: recompute it
        log.warning("statistics file %s is unreadable; recomputing", path)
        return False
    return True


def _keyed_by_plan(
    model: torch.nn.Module, plan: Any, found: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The collector's results (by ``model``'s parameter names) under the merge plan's keys,
    fp32, contiguous on the CPU; parameters the merge does not merge are dropped."""
    from mergekit_ir.merging.alignment import NameIndex

    names = list(model.state_dict())
    index = NameIndex.build("model", names, {"architectures": [type(model).__name__]})
    by_name = {}
    for e in plan.entries:
        if e.action == "merge" and (pname := index.find(e.key)) is not None:
            by_name.setdefault(pname, e.key)
    out = {}
    for pname, t in found.items():
        key = by_name.get(pname)
        if key is None:
            continue
        if not torch.isfinite(t).all():
            raise CheckpointError(
                f"statistics pass: the statistic of {pname} has NaN/Inf values; the model "
                "overflows on this corpus (check the checkpoints)"
            )
        out[key] = t.detach().to("cpu", torch.float32).contiguous()
    return out


def missing_statistics(method: Any) -> CheckpointError:
    """The error of a data-aware merge started without its statistics."""
    return CheckpointError(
        f"merge method '{method.name}' merges from statistics over a text source "
        f"({', '.join(method.statistics)}); give it a corpus (`mergeir merge --corpus DATASET|FILE`) "
        "or run it in `mergeir run`, which uses each dataset's corpus"
    )
