"""α sweep without reloading: θ ← merge(θT, τ; α) in place on the scorer's model.

ΘT is loaded once by the scorer; the task vector(s) are read once onto the
scoring device in the model's dtype. Each new α recomputes the merged tensors on
the device (fp32 arithmetic, cast back) and copies them into the live parameters,
so going from α to α' never touches the disk. Works for every merge method, since
it calls the same pure per-tensor function as the on-disk merge.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch

from mergekit_ir.merging.alignment import MergePlan, NameIndex
from mergekit_ir.merging.engine import (
    MergeJob,
    check_merged,
    check_tau,
    merged_tensor,
    require_finite,
)

log = logging.getLogger(__name__)


class SweepSlot(NamedTuple):
    """One merged tensor of the live model: what the sweep recomputes per parameter point."""

    entry: Any  # the merge plan's entry for this tensor
    target: torch.Tensor  # the live parameter (rows of it, for extra vocabulary rows)
    theta_t: torch.Tensor  # ΘT's values, kept to restore and to merge from
    taus: list[torch.Tensor]  # τ_i on the scoring device, in the model's dtype
    tau_t: torch.Tensor | None  # ΘT − Θ0, for methods that declare needs_ir_vector


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
                device, dtype = target.device, target.dtype
                theta_t = target.detach().clone()
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
                    d = d.to(device=device, dtype=dtype)
                    check_tau(job, d, e.name, i)
                    taus.append(d)
                tau_t = None
                if job.method.needs_ir_vector:
                    p = job.pretrained.get(job.p_index.find(e.key)).float()  # type: ignore[union-attr]
                    tau_t = (theta_t.float() - (p[:rows] if rows else p).to(device)).to(dtype)
                self.slots.append(SweepSlot(e, target, theta_t, taus, tau_t))
        self.state: Any = "ir"
        if missing:
            log.info(
                "α sweep: %d merged tensors are not used by the scorer's model (e.g. %s)",
                len(missing),
                missing[0],
            )

    def apply(self, params: Mapping[str, Any]) -> None:
        """Set the model's weights to Θ'(params)."""
        full = {**self.job.params, **params}
        with torch.no_grad():
            for slot in self.slots:
                out = merged_tensor(
                    self.job,
                    self.plan,
                    slot.entry,
                    slot.target.device,
                    theta_t=slot.theta_t.float(),
                    taus=[t.float() for t in slot.taus],
                    tau_t=None if slot.tau_t is None else slot.tau_t.float(),
                    params=full,
                )
                cast = out.to(slot.target.dtype)
                check_merged(self.job, slot.entry, out, cast)
                slot.target.copy_(cast)
        self.state = dict(params)

    def restore(self) -> None:
        """Back to ΘT."""
        if self.state == "ir":
            return
        with torch.no_grad():
            for slot in self.slots:
                slot.target.copy_(slot.theta_t)
        self.state = "ir"

    @contextmanager
    def merged(self, params: Mapping[str, Any]) -> Iterator[None]:
        """The model holds Θ'(params) inside the block and ΘT after it, even on errors."""
        self.apply(params)
        try:
            yield
        finally:
            self.restore()
