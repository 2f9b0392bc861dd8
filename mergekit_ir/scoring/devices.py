"""Several devices within one pass: ``--device cuda:0,cuda:1`` or ``--device cuda:all``.

One model copy per device (:class:`SpreadScorer`); a pass's queries are split in order into
contiguous parts of about equal work (:func:`split_in_order`, weighed by candidates), each part
is re-ranked by one copy in its own thread, and the parts are gathered back in order — the
run is the one a single device gives, with each copy's batches cut from its own part. The
in-place α sweep changes the first copy's weights (the one it was built on); before every call
the other copies take that copy's current weights (:meth:`SpreadScorer.sync`, a
device-to-device copy per grid point, no merge recomputed), and they answer the precision
check with the same weight state, so a calibrated ``--dtype auto`` decides per copy for the
same point.

``cpu,cpu`` is accepted (two copies on the CPU, sharing its cores: no faster, but the same
splitting — how the test suite checks it without a GPU); a CUDA or MPS device named twice is
an error, and so is mixing device kinds (their precisions differ).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Any

import torch

from mergekit_ir.errors import MergeIRError
from mergekit_ir.ranking import Ranking
from mergekit_ir.scoring import calibration
from mergekit_ir.scoring.scorer import Scorer, ScoringSettings, resolve_device

ALL_CUDA = "cuda:all"


def is_device_list(spec: str) -> bool:
    """Whether ``--device`` names several devices (a comma list, or ``cuda:all``)."""
    return "," in spec or spec.strip() == ALL_CUDA


def parse_devices(spec: str, flag: str = "--device") -> tuple[str, ...]:
    """The devices ``spec`` names, each checked (one line naming ``flag`` and the spec
    otherwise): a single device stays as it is (``auto`` included); ``cuda:all`` is every
    CUDA device; a comma list is those devices, in order."""
    spec = str(spec).strip()
    if not is_device_list(spec):
        resolve_device(spec)  # one device: its own checks and message
        return (spec,)
    if spec == ALL_CUDA:
        if not torch.cuda.is_available():
            raise MergeIRError(
                f"{flag} {spec}: CUDA is not available on this machine; use {flag} auto or cpu"
            )
        return tuple(f"cuda:{i}" for i in range(torch.cuda.device_count()))
    items = [item.strip() for item in spec.split(",")]
    if any(not item for item in items):
        raise MergeIRError(f"{flag} {spec}: an empty device in the list; write e.g. cuda:0,cuda:1")
    seen: dict[str, str] = {}
    kinds = set()
    for item in items:
        if item in ("auto", ALL_CUDA):
            raise MergeIRError(
                f"{flag} {spec}: {item} cannot be part of a list; name the devices, e.g. "
                "cuda:0,cuda:1 (or give cuda:all alone)"
            )
        try:
            dev = resolve_device(item)
        except MergeIRError as exc:
            reason = str(exc)
            for said in (f"--device {item}: ", f"--device {item!r}: "):
                reason = reason.removeprefix(said)
            raise MergeIRError(f"{flag} {spec}: {item}: {reason}") from None
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        kinds.add(dev.type)
        key = str(dev)
        if key in seen and dev.type != "cpu":
            raise MergeIRError(
                f"{flag} {spec}: {item} names {key} again (as {seen[key]}); give each device once"
            )
        seen.setdefault(key, item)
    if len(kinds) > 1:
        raise MergeIRError(
            f"{flag} {spec}: mixes device kinds ({', '.join(sorted(kinds))}); split a pass over "
            "devices of one kind (their precisions differ)"
        )
    return tuple(items)


def split_in_order(weights: Sequence[float], parts: int) -> list[range]:
    """Contiguous index ranges, in order, one per part, of about equal total weight (the
    first parts take the larger share of a remainder); none empty, so fewer ranges than
    ``parts`` when there are fewer items."""
    n = len(weights)
    parts = max(1, min(parts, n))
    if n == 0:
        return []
    total = float(sum(weights))
    out, start, acc = [], 0, 0.0
    for i in range(parts - 1):
        target = total * (i + 1) / parts
        end = start + 1  # at least one item per range
        acc += weights[start]
        # leave at least one item for each range still to come
        while end < n - (parts - 1 - i) and acc + weights[end] / 2 <= target:
            acc += weights[end]
            end += 1
        out.append(range(start, end))
        start = end
    out.append(range(start, n))
    return out


def gather(parts: Sequence[Sequence[Any]]) -> list[Any]:
    """Per-part results back in input order (the parts are contiguous and in order)."""
    return [x for part in parts for x in part]


class SpreadScorer:
    """One scorer per device, used as one: ``rerank`` and ``score_pairs`` split their input
    in order over the copies and gather the results in order; every other attribute is the
    first copy's (``model`` — what the in-place sweep updates —, ``settings``, ``cost_unit``)."""

    def __init__(self, copies: Sequence[Scorer]):
        if not copies:
            raise ValueError("no scorer copies")
        self.copies = list(copies)
        self.primary = self.copies[0]
        self._synced: list[str | None] = [None] * len(self.copies)
        self._pool = ThreadPoolExecutor(len(self.copies), thread_name_prefix="mergeir-device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.primary, name)

    @property
    def devices(self) -> list[str]:
        return [str(c.device) for c in self.copies]

    @property
    def warnings(self) -> list[str]:
        """Every copy's warnings, each once, in first-seen order."""
        return list(dict.fromkeys(w for c in self.copies for w in c.warnings))

    @contextmanager
    def labelled(self, label: str) -> Iterator[None]:
        with ExitStack() as stack:
            for c in self.copies:
                stack.enter_context(c.labelled(label))
            yield

    def sync(self) -> None:
        """Give every other copy the first copy's current weights (the sweep's point), and the
        same weight state for the precision check."""
        provider = calibration.weight_state(self.primary.model)
        token = self.primary.weight_state()
        for i, copy in enumerate(self.copies[1:], 1):
            if provider is not None and calibration.weight_state(copy.model) is not provider:
                calibration.register_weight_state(copy.model, provider)
                self._synced[i] = None
            if self._synced[i] == token:
                continue
            if token != calibration.LOADED or self._synced[i] is not None:
                # the copy was loaded as ΘT: only a changed point needs the weights copied
                src = self.primary.model.state_dict()
                with torch.no_grad():
                    for key, value in copy.model.state_dict().items():
                        value.copy_(src[key].to(value.device))
            self._synced[i] = token

    def _map(self, fn: Callable[[Scorer, Any], Any], parts: Sequence[Any]) -> list[Any]:
        if len(parts) == 1:
            return [fn(self.primary, parts[0])]
        futures = [self._pool.submit(fn, c, p) for c, p in zip(self.copies, parts, strict=False)]
        return [f.result() for f in futures]

    def rerank(
        self, queries: Mapping[str, str], candidates: Ranking, docs: Mapping[str, str]
    ) -> Ranking:
        self.sync()
        qids = sorted(candidates)
        ranges = split_in_order([max(1, len(candidates[q])) for q in qids], len(self.copies))
        parts = []
        for r in ranges:
            part = {qids[i]: candidates[qids[i]] for i in r}
            wanted = {d for ranked in part.values() for d in ranked}
            parts.append(
                (
                    {q: queries[q] for q in part},
                    part,
                    {d: t for d, t in docs.items() if d in wanted},
                )
            )
        if not parts:
            return self.primary.rerank(queries, candidates, docs)
        runs = self._map(lambda c, p: c.rerank(*p), parts)
        out: Ranking = {}
        for run in runs:
            out.update(run)
        return out

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        self.sync()
        pairs = list(pairs)
        ranges = split_in_order([1] * len(pairs), len(self.copies))
        if not ranges:
            return self.primary.score_pairs(pairs)
        return gather(
            self._map(lambda c, p: c.score_pairs(p), [pairs[r.start : r.stop] for r in ranges])
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def load_on_devices(
    load: Callable[[ScoringSettings], Scorer], settings: ScoringSettings, devices: Sequence[str]
) -> Scorer | SpreadScorer:
    """``load(settings)`` on one device, or a :class:`SpreadScorer` of one copy per device
    (``settings`` with each device; progress bars from the first copy only). ``load`` is called
    once per device and must build the same model each time (the runner seeds it)."""
    if len(devices) <= 1:
        return load(settings if not devices else replace(settings, device=devices[0]))
    copies = [
        load(replace(settings, device=d, show_progress=settings.show_progress and i == 0))
        for i, d in enumerate(devices)
    ]
    return SpreadScorer(copies)


def device_identity(devices: Sequence[str]) -> dict[str, Any]:
    """What a split pass adds to a model run's cache key: the number of copies (each copy
    batches its own part, so batch composition — which the batch size keys too — differs);
    nothing for one device, so single-device keys stay as they were."""
    return {"devices": len(devices)} if len(devices) > 1 else {}
