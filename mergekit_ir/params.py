"""Declared plugin parameters and their values.

A plugin declares each parameter (name, type, default, allowed range) so a config
can be checked before any weights are loaded. A value for a per-tensor parameter
may be layer-wise:

- a scalar: the same everywhere;
- ``{"gradient": [v0, v1, ...]}``: interpolated linearly from the first layer to the last;
- a list of ``{"filter": <regex on tensor name>, "value": v}`` rules: the first match wins
  (a rule without ``filter`` matches everything).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mergekit_ir.errors import ConfigError, key_label, short_repr

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers?|block|h|blocks)\.(\d+)\.")


@dataclass(frozen=True)
class Param:
    """One parameter a plugin accepts."""

    name: str
    type: type = float
    default: Any = None
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    per_tensor: bool = False  # may be given layer-wise (gradient or filter rules)
    required: bool = False

    def describe(self) -> str:
        """A short human-readable signature, e.g. ``alpha: float = 1.0 in [-2, 2]``."""
        text = f"{self.name}: {self.type.__name__}"
        if not self.required:
            text += f" = {self.default!r}"
        if self.min is not None or self.max is not None:
            lo = "-inf" if self.min is None else _fmt(self.min)
            hi = "inf" if self.max is None else _fmt(self.max)
            text += f" in [{lo}, {hi}]"
        if self.choices:
            text += " one of " + "|".join(map(str, self.choices))
        if self.per_tensor:
            text += " (layer-wise)"
        return text

    def check_scalar(self, value: Any, path: str) -> Any:
        """Coerce and range-check one scalar; raise a ConfigError naming ``path``."""
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type is float and isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if self.type is int and isinstance(value, str) and value.lstrip("-").isdigit():
            value = int(value)
        if self.type is bool and isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if value is None and not self.required:
            return None
        if not isinstance(value, self.type) or (self.type is not bool and isinstance(value, bool)):
            raise ConfigError(
                f"{path}: {short_repr(value)} is not a {self.type.__name__} (parameter {self.describe()})"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                f"{path}: {_fmt(value)} is not a finite number (parameter {self.describe()})"
            )
        if self.choices is not None and value not in self.choices:
            raise ConfigError(
                f"{path}: {short_repr(value)} is not one of {', '.join(map(str, self.choices))}"
            )
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            lo = "-inf" if self.min is None else _fmt(self.min)
            hi = "inf" if self.max is None else _fmt(self.max)
            raise ConfigError(f"{path}: {_fmt(value)} is outside [{lo}, {hi}]")
        return value

    def check(self, value: Any, path: str) -> Any:
        """Check a scalar or, for per-tensor parameters, a layer-wise value."""
        if isinstance(value, Mapping) and "gradient" in value:
            self._require_per_tensor(path)
            extra = set(value) - {"gradient"}
            if extra:
                raise ConfigError(f"{path}: unknown key(s) {sorted(extra)} beside 'gradient'")
            points = value["gradient"]
            if not isinstance(points, list) or len(points) < 2:
                raise ConfigError(f"{path}.gradient: give a list of at least two values")
            return {
                "gradient": [
                    self.check_scalar(v, f"{path}.gradient[{i}]") for i, v in enumerate(points)
                ]
            }
        if isinstance(value, list) and value and all(isinstance(r, Mapping) for r in value):
            self._require_per_tensor(path)
            rules = []
            for i, rule in enumerate(value):
                extra = set(rule) - {"filter", "value"}
                if extra or "value" not in rule:
                    raise ConfigError(
                        f"{path}[{i}]: a rule is {{filter: <regex>, value: <{self.type.__name__}>}}"
                    )
                pattern = rule.get("filter", "")
                try:
                    re.compile(pattern)
                except TypeError:
                    raise ConfigError(
                        f"{path}[{i}].filter: expected a regex string, got {short_repr(pattern)}"
                    ) from None
                except re.error as exc:
                    raise ConfigError(
                        f"{path}[{i}].filter: bad regex {short_repr(pattern)} ({exc})"
                    ) from None
                rules.append(
                    {
                        "filter": pattern,
                        "value": self.check_scalar(rule["value"], f"{path}[{i}].value"),
                    }
                )
            return rules
        return self.check_scalar(value, path)

    def _require_per_tensor(self, path: str) -> None:
        if not self.per_tensor:
            raise ConfigError(
                f"{path}: parameter '{self.name}' takes one value, not a layer-wise spec"
            )


def _fmt(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def check_params(
    declared: Sequence[Param], given: Mapping[str, Any], path: str, owner: str
) -> dict[str, Any]:
    """Validate ``given`` against ``declared`` and fill defaults."""
    by_name = {p.name: p for p in declared}
    unknown = [k for k in given if k not in by_name]
    if unknown:
        known = ", ".join(by_name) or "none"
        raise ConfigError(
            f"{path}.{key_label(unknown[0])}: unknown parameter for {owner} (it takes: {known})"
        )
    out: dict[str, Any] = {}
    for p in declared:
        if p.name in given:
            out[p.name] = p.check(given[p.name], f"{path}.{p.name}")
        elif p.required:
            raise ConfigError(f"{path}.{p.name}: required parameter of {owner} is missing")
        else:
            out[p.name] = p.default
    return out


def layer_index(tensor_name: str) -> int | None:
    """The transformer block a tensor belongs to, if its name says."""
    m = _LAYER_INDEX.search(tensor_name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class TensorPosition:
    """Where a tensor sits in its model, for layer-wise parameter values."""

    name: str
    layer: int | None = None
    num_layers: int = 1


def resolve(value: Any, pos: TensorPosition) -> Any:
    """The scalar a (possibly layer-wise) value takes for one tensor."""
    if isinstance(value, Mapping) and "gradient" in value:
        points = value["gradient"]
        if pos.layer is None:
            # Embeddings sit before the first block, heads and final norms after the last.
            t = 0.0 if "embed" in pos.name or "shared" in pos.name else 1.0
        else:
            t = pos.layer / max(pos.num_layers - 1, 1)
        x = t * (len(points) - 1)
        i = min(int(x), len(points) - 2)
        frac = x - i
        return points[i] * (1 - frac) + points[i + 1] * frac
    if isinstance(value, list) and value and all(isinstance(r, Mapping) for r in value):
        for rule in value:
            if re.search(rule.get("filter", ""), pos.name):
                return rule["value"]
        raise ConfigError(
            f"tensor {pos.name}: no layer-wise rule matches; add a last rule without 'filter'"
        )
    return value


def resolve_all(values: Mapping[str, Any], pos: TensorPosition) -> dict[str, Any]:
    return {k: resolve(v, pos) for k, v in values.items()}
