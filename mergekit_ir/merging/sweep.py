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
from typing import Any

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


class InPlaceSweep:
    """The live model's merged tensors, switchable between ΘT and Θ'(α) without a reload.

    ``state`` says which weights the model holds now: ``"ir"`` (ΘT) or the α label last
    applied. Use :meth:`merged` to hold Θ'(α) for a block and be back at ΘT after it.
    """

    def __init__(self, model: torch.nn.Module, job: MergeJob, plan: MergePlan):
        state = model.state_dict(keep_vars=True)
        index = NameIndex.build("model", list(state), {"architectures": [type(model).__name__]})
        self.job, self.plan = job, plan
        self.slots: list[
            tuple[Any, torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor | None]
        ] = []
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
                self.slots.append((e, target, theta_t, taus, tau_t))
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
            for e, target, theta_t, taus, tau_t in self.slots:
                out = merged_tensor(
                    self.job,
                    self.plan,
                    e,
                    target.device,
                    theta_t=theta_t.float(),
                    taus=[t.float() for t in taus],
                    tau_t=None if tau_t is None else tau_t.float(),
                    params=full,
                )
                cast = out.to(target.dtype)
                check_merged(self.job, e, out, cast)
                target.copy_(cast)
        self.state = dict(params)

    def restore(self) -> None:
        """Back to ΘT."""
        if self.state == "ir":
            return
        with torch.no_grad():
            for _, target, theta_t, _, _ in self.slots:
                target.copy_(theta_t)
        self.state = "ir"

    @contextmanager
    def merged(self, params: Mapping[str, Any]) -> Iterator[None]:
        """The model holds Θ'(params) inside the block and ΘT after it, even on errors."""
        self.apply(params)
        try:
            yield
        finally:
            self.restore()
