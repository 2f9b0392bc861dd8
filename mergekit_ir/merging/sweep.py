"""α sweep without reloading: θ ← merge(θT, τ; α) in place on the scorer's model.

ΘT is loaded once by the scorer; the task vector(s) are read once onto the
scoring device. Each new α recomputes the merged tensors on the device and copies
them into the live parameters, so going from α to α' never touches the disk. Works
for every merge method, since it calls the same pure per-tensor function as the
on-disk merge.

The merge always starts from fp32 *masters* of ΘT and τ kept on the scoring device —
never from a bf16/fp16 model's own weights — and its fp32 result is rounded as the
streaming merge writes it (ΘT's checkpoint dtype) and then to the model's dtype, once per
grid point. So Θ'(α) in a bf16 model is exactly a fresh bf16 load of
:func:`~mergekit_ir.merging.engine.merge_to_folder`'s output at the same α. ΘT's masters
come from the live model when it is fp32, else from ΘT's checkpoint (checked against the
live weights). The sweep also tells the scorer's precision check which point the model
holds and writes that point's weights into an fp32 copy of the model
(:mod:`mergekit_ir.scoring.calibration`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch

from mergekit_ir.merging.alignment import MergePlan, NameIndex
from mergekit_ir.merging.engine import (
    _OVERFLOW_FIX,
    MergeJob,
    check_merged,
    check_tau,
    merged_tensor,
    require_finite,
)
from mergekit_ir.scoring.calibration import LOADED, register_weight_state

log = logging.getLogger(__name__)


class SweepSlot(NamedTuple):
    """One merged tensor of the live model: what the sweep recomputes per parameter point."""

    entry: Any  # the merge plan's entry for this tensor
    target: torch.Tensor  # the live parameter (rows of it, for extra vocabulary rows)
    theta_t: torch.Tensor  # ΘT's values in fp32 (the master), kept to restore and to merge from
    taus: list[torch.Tensor]  # τ_i on the scoring device, in fp32
    tau_t: torch.Tensor | None  # ΘT − Θ0 in fp32, for methods that declare needs_ir_vector
    pname: str  # the live model's name of the parameter


def _fp32_master(job: MergeJob, e: Any, live: torch.Tensor) -> torch.Tensor:
    """ΘT's tensor in fp32: the live one if it is fp32, else read from ΘT's checkpoint —
    as long as it rounds to the live weights (the model was loaded from that checkpoint and
    left as loaded); otherwise the live weights, upcast."""
    if live.dtype == torch.float32:
        return live.detach().clone()
    stored = job.ir.get(e.name, (0, e.rows) if e.rows else None)
    stored = stored.to(device=live.device, dtype=torch.float32)
    if stored.shape == live.shape and torch.equal(stored.to(live.dtype), live):
        return stored
    log.warning(
        "α sweep: tensor %s of the live %s model is not ΘT's checkpoint rounded to it; "
        "merging from the live weights (upcast to fp32)",
        e.name,
        str(live.dtype).removeprefix("torch."),
    )
    return live.detach().float()


def _as_written(job: MergeJob, e: Any, merged: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``merged`` (fp32) rounded as ``merge_to_folder`` writes it (ΘT's dtype), then to
    ``dtype`` — what loading the written Θ' in ``dtype`` gives; checked for overflow."""
    written = merged.to(e.dtype)
    check_merged(job, e, merged, written)
    cast = written.to(dtype)
    if cast.dtype != written.dtype and cast.dtype != torch.float32:
        name = str(dtype).removeprefix("torch.")
        require_finite(
            job,
            cast,
            e.name,
            f"the merged value cast to the model's {name} (it overflows the {name} range)",
            _OVERFLOW_FIX,
        )
    return cast


class InPlaceSweep:
    """The live model's merged tensors, switchable between ΘT and Θ'(α) without a reload.

    ``state`` says which weights the model holds now: ``"ir"`` (ΘT) or the α label last
    applied. Use :meth:`merged` to hold Θ'(α) for a block and be back at ΘT after it.
    """

    def __init__(self, model: torch.nn.Module, job: MergeJob, plan: MergePlan):
        state = model.state_dict(keep_vars=True)
        index = NameIndex.build("model", list(state), {"architectures": [type(model).__name__]})
        self.job, self.plan = job, plan
        self.slots: list[SweepSlot] = []
        seen: set[int] = set()
        missing = []
        with torch.no_grad():
            for e in plan.entries:
                if e.action != "merge":
                    continue
                pname = index.find(e.key)
                if pname is None:
                    missing.append(e.name)
                    continue
                param = state[pname]
                if param.data_ptr() in seen:  # tied weights: update once
                    continue
                seen.add(param.data_ptr())
                rows = e.rows
                target = param.data[:rows] if rows else param.data
                device = target.device
                theta_t = _fp32_master(job, e, target)
                require_finite(
                    job,
                    theta_t,
                    e.name,
                    f"ΘT ({job.ir.ref})",
                    "the checkpoint is broken; re-download it or pass --allow-nonfinite",
                )
                taus = []
                for i, v in enumerate(job.vectors):
                    d = v.get(e.key)
                    d = torch.zeros(target.shape) if d is None else (d[:rows] if rows else d)
                    d = d.to(device=device, dtype=torch.float32)
                    check_tau(job, d, e.name, i)
                    taus.append(d)
                tau_t = None
                if job.method.needs_ir_vector:
                    p = job.pretrained.get(job.p_index.find(e.key)).float()  # type: ignore[union-attr]
                    tau_t = theta_t - (p[:rows] if rows else p).to(device)
                self.slots.append(SweepSlot(e, target, theta_t, taus, tau_t, pname))
        self.state: Any = LOADED
        register_weight_state(model, self)
        if missing:
            log.info(
                "α sweep: %d merged tensors are not used by the scorer's model (e.g. %s)",
                len(missing),
                missing[0],
            )

    def _merged(self, slot: SweepSlot, params: Mapping[str, Any]) -> torch.Tensor:
        """Θ'(params) of one slot in fp32, from the fp32 masters."""
        return merged_tensor(
            self.job,
            self.plan,
            slot.entry,
            slot.target.device,
            theta_t=slot.theta_t,
            taus=slot.taus,
            tau_t=slot.tau_t,
            params={**self.job.params, **params},
        )

    def apply(self, params: Mapping[str, Any]) -> None:
        """Set the model's weights to Θ'(params)."""
        with torch.no_grad():
            for slot in self.slots:
                out = self._merged(slot, params)
                slot.target.copy_(_as_written(self.job, slot.entry, out, slot.target.dtype))
        self.state = dict(params)

    def restore(self) -> None:
        """Back to ΘT."""
        if self.state == LOADED:
            return
        with torch.no_grad():
            for slot in self.slots:
                slot.target.copy_(slot.theta_t)  # rounds the master as loading ΘT does
        self.state = LOADED

    # -- what the scorer's precision check asks (scoring.calibration.WeightState) -----------

    def state_token(self) -> str:
        """The point the model holds: ``"ir"`` (ΘT), else its parameters as sorted JSON."""
        if self.state == LOADED:
            return LOADED
        return json.dumps(self.state, sort_keys=True, default=str)

    def write_state(self, model: torch.nn.Module) -> None:
        """Write the current point's merged tensors into ``model`` (another instance of the
        live model's architecture, e.g. in fp32), rounded as a fresh load of the merged
        checkpoint in ``model``'s dtype would be."""
        state = model.state_dict(keep_vars=True)
        with torch.no_grad():
            for slot in self.slots:
                param = state[slot.pname]
                rows = slot.entry.rows
                target = param.data[:rows] if rows else param.data
                if self.state == LOADED:
                    target.copy_(slot.theta_t.to(target.device))
                    continue
                out = self._merged(slot, self.state)
                target.copy_(_as_written(self.job, slot.entry, out, target.dtype).to(target.device))

    @contextmanager
    def merged(self, params: Mapping[str, Any]) -> Iterator[None]:
        """The model holds Θ'(params) inside the block and ΘT after it, even on errors."""
        self.apply(params)
        try:
            yield
        finally:
            self.restore()
