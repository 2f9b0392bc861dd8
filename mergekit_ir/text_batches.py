"""Tokenise once, then feed the model length-sorted, padded batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from .scoring import TruncationStats, length_sorted_batches


def tokenize(tokenizer: Any, first: Sequence[str], second: Sequence[str] | None, max_length: int,
             stats: TruncationStats | None = None, truncation: bool | str = True) -> dict[str, list]:
    """Tokenise texts (or text pairs) once without padding, counting truncations."""
    args = (list(first),) if second is None else (list(first), list(second))
    enc = tokenizer(*args, truncation=truncation, max_length=max_length, padding=False)
    if stats is not None:
        full = tokenizer(*args, truncation=False, padding=False, verbose=False)
        stats.add([len(ids) for ids in full["input_ids"]], max_length)
    return dict(enc)


def padded_batches(tokenizer: Any, encoded: dict[str, list], batch_size: int,
                   device: torch.device) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """(indices, model inputs) per batch, longest inputs first."""
    lengths = [len(ids) for ids in encoded["input_ids"]]
    for idx in length_sorted_batches(lengths, batch_size):
        features = {k: [v[i] for i in idx] for k, v in encoded.items()}
        batch = tokenizer.pad(features, return_tensors="pt")
        yield idx, {k: v.to(device) for k, v in batch.items()}


def run_batches(tokenizer: Any, encoded: dict[str, list], batch_size: int, device: torch.device,
                fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], progress: Any = None) -> torch.Tensor:
    """Apply ``fn`` to every batch; results come back in input order (fp32, CPU)."""
    n = len(encoded["input_ids"])
    out: torch.Tensor | None = None
    with torch.inference_mode():
        for idx, batch in padded_batches(tokenizer, encoded, batch_size, device):
            res = fn(batch).float().cpu()
            if out is None:
                out = torch.empty((n, *res.shape[1:]), dtype=torch.float32)
            out[idx] = res
            if progress is not None:
                progress.update(len(idx))
    return out if out is not None else torch.empty(0)
