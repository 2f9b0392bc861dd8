"""``input_gram``: the input Gram matrix of every ``nn.Linear``, for RegMean.

For a linear layer y = x·Wᵀ + b run over the text sample, G = (1/N)·XᵀX, with X the N × in
matrix of the layer's inputs at every non-padding token (rows of a 2-D input, e.g. a pooler
over [CLS], count as tokens). A forward pre-hook on each ``nn.Linear`` adds the batch's XᵀX
(computed in fp32) to an fp64 accumulator: memory is Σ over linear layers of in_features²
× 8 bytes, whatever the number of texts — 25 MB per layer of a 384-wide MiniLM-L6
(five 384² and one 1536² Grams), 99 MB per BERT-base layer (five 768², one 3072²).

Layers whose input the text pass never reaches (a seq2seq decoder, a classification head
run only on pairs) get no statistic, and the merge method treats their weights as it treats
non-linear parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mergekit_ir import StatisticKind, StatisticsRun, hookimpl


def _linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def gram_bytes(model: torch.nn.Module, params: Mapping[str, Any] | None = None) -> int:
    """The accumulators' size: Σ in_features² fp64 values over the model's linear layers."""
    return sum(m.in_features**2 * 8 for _, m in _linears(model))


def collect_input_gram(run: StatisticsRun, params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``{"<linear>.weight": (1/N)·XᵀX}`` for every linear layer the text reaches."""
    acc: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}
    handles = []

    def hook_for(name: str, in_features: int):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            x = args[0]
            mask = run.mask
            if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
                rows = x[mask]  # the batch's real tokens, padding left out
            else:
                rows = x.reshape(-1, in_features)
            rows = rows.to(torch.float32)
            g = rows.T @ rows
            if name not in acc:
                acc[name] = torch.zeros(
                    in_features, in_features, dtype=torch.float64, device=g.device
                )
                count[name] = 0
            acc[name] += g.double()
            count[name] += rows.shape[0]

        return hook

    try:
        for name, m in _linears(run.model):
            handles.append(m.register_forward_pre_hook(hook_for(name, m.in_features)))
        with torch.inference_mode():
            for batch in run.batches():
                run.forward(batch)
    finally:
        for h in handles:
            h.remove()
    return {f"{name}.weight": acc[name] / count[name] for name in acc if count[name] > 0}


@hookimpl
def register_statistics(register):
    register(
        StatisticKind(
            name="input_gram",
            description="(1/N)·XᵀX of every nn.Linear's inputs over the corpus sample (RegMean)",
            collect=collect_input_gram,
            memory=gram_bytes,
        )
    )
