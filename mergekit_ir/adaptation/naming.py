"""How adaptation's messages name a setting: the CLI flag of ``mergeir adapt`` or, for a
registry ``adapt:`` block, its YAML path — one rule, so a registry user is never told to
change a flag they did not pass."""

from __future__ import annotations

from typing import Any


def setting_name(name: str, where: str | None = None) -> str:
    """How a message names a setting: the CLI flag (``--max-length``) or, for a registry
    ``adapt:`` block at YAML path ``where``, its key (``triplets.t.domain.adapt.max_length``)."""
    return f"{where}.{name}" if where else "--" + name.replace("_", "-")


def setting_text(name: str, value: Any, where: str | None = None) -> str:
    """A setting with its value as the user wrote it: ``--max-length 512`` or
    ``triplets.t.domain.adapt.max_length: 512``."""
    return f"{where}.{name}: {value}" if where else f"{setting_name(name)} {value}"
