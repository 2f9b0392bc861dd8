"""The merge-method plugin type.

A merge method is a pure function on tensors, called once per tensor name::

    merge(theta_t, taus, *, tau_t=None, name="", **params) -> Tensor

- ``theta_t``: the IR model ΘT's tensor (fp32, on the merge device);
- ``taus``: one task vector per domain model, τ_i = ΘD_i − Θ0 (same shape, fp32);
- ``tau_t``: ΘT − Θ0, given only to methods declaring ``needs_ir_vector=True``
  (TIES/DARE treat the IR fine-tune as one more task vector, as mergekit does);
- ``name``: the tensor's name, so stochastic methods can seed per tensor;
- ``params``: the method's declared parameters, already resolved to scalars for
  this tensor (layer-wise values are resolved by the engine);
- ``stats``: given only to *data-aware* methods, which declare ``statistics=(...)``: per
  statistic name, one tensor (or None) per model — ΘT first, then ΘD_i = Θ0 + τ_i — gathered
  over the target corpus before the merge (:mod:`mergekit_ir.merging.statistics`). Such a
  method also declares the shared ``STATISTICS`` parameter (the text pass's settings, which
  the engine reads and does not pass on).

It returns Θ' for that tensor. Keep it free of I/O: the engine streams tensors in
and out, and the α sweep calls it on tensors that live on the scoring device.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mergekit_ir.errors import ConfigError, short_repr
from mergekit_ir.params import Param

MergeFn = Callable[..., torch.Tensor]

# Parameters every linear combination shares; plugins reuse these declarations.
ALPHA = Param(
    "alpha",
    float,
    1.0,
    "scale of the domain task vector(s): Θ' = ΘT + α·Σ w_i·τ_i (negative subtracts)",
    min=-2.0,
    max=2.0,
    per_tensor=True,
)
WEIGHTS = Param(
    "weights",
    list,
    None,
    "per-domain-vector weights w_i (default: 1 for each)",
)


@dataclass(frozen=True)
class MergeMethod:
    """A named merge method and its declared parameters."""

    name: str
    description: str
    merge: MergeFn
    params: tuple[Param, ...] = ()
    needs_ir_vector: bool = False
    elementwise: bool = False
    """Each output value depends only on the inputs at its own position (and the tensor's
    parameters): the engine may then merge a tensor in row blocks, which keeps every
    input of a block in the CPU caches. Methods using whole-tensor statistics (top-k,
    norms, random masks drawn per tensor) leave it False."""
    statistics: tuple[str, ...] = ()
    """Names of the statistics (``register_statistics`` plugins, e.g. ``input_gram``) this
    method merges from: the engine gathers them per model over a text source, caches them,
    and passes ``stats=`` per tensor. Empty for data-free methods."""

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


def check_alpha(method: MergeMethod, value: Any, where: str) -> Any:
    """One α value (a number, or layer-wise rules) checked against the method's declaration;
    the one check for the registry's grid and ``mergeir merge --alpha``."""
    param = method.param("alpha")
    if param is None:
        raise ConfigError(f"{where}: '{method.name}' declares no 'alpha' parameter")
    if value is None:
        raise ConfigError(f"{where}: empty value; give a number such as 0.5")
    return param.check(value, where)


def check_alpha_grid(method: MergeMethod, values: Any, where: str) -> tuple[Any, ...]:
    """An α grid: one value or a list of them (a list of filter rules is one layer-wise value),
    each checked by :func:`check_alpha`, errors naming ``where[i]``."""
    if method.param("alpha") is None:
        raise ConfigError(f"{where}: '{method.name}' declares no 'alpha' parameter to sweep")
    if not isinstance(values, list) or (
        values and all(isinstance(a, Mapping) and "filter" in a for a in values)
    ):
        values = [values]
    if not values:
        raise ConfigError(f"{where}: the α grid is empty; give at least one value, e.g. [0.5]")
    return tuple(check_alpha(method, a, f"{where}[{i}]") for i, a in enumerate(values))


def domain_weights(weights: Sequence[float] | None, n: int, name: str = "") -> list[float]:
    """Per-vector weights, defaulting to 1 each; checks the count matches."""
    if weights is None:
        return [1.0] * n
    if len(weights) != n:
        raise ValueError(f"{name}: {len(weights)} weights given for {n} task vectors")
    return [float(w) for w in weights]


def check_weights(weights: Any, n: int, path: str) -> None:
    """Per-vector weights are one finite number per task vector (checked before any work)."""
    if weights is None:
        return
    if not isinstance(weights, list | tuple) or not all(
        isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) for w in weights
    ):
        raise ConfigError(
            f"{path}: {short_repr(weights)} is not a list of finite numbers; give one per task vector, e.g. [1.0]"
        )
    if len(weights) != n:
        raise ConfigError(
            f"{path}: {len(weights)} weight(s) given for {n} task vector(s); give one per domain"
        )


def tensor_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded from (seed, tensor name): reproducible across runs and devices.

    Draw random numbers on the CPU with it and move them to the tensor's device;
    GPU generators give different streams per device type.
    """
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF)
    return gen
