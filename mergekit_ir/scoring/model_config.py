"""Reading a checkpoint's ``config.json`` for a scorer's ``check()``: cheap, and one-line errors.

Every scorer kind first asks "is this folder a model of my architecture?" before any weights
load; this is the shared first half of that question.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mergekit_ir.errors import CheckpointError


def read_model_config(
    path: str | Path, kind: str, needs: str = "a transformers model folder"
) -> Any:
    """The folder's transformers config; a :class:`CheckpointError` naming the folder otherwise.

    ``kind`` is the scorer kind asking (for the message) and ``needs`` says what it needs,
    e.g. ``"a T5/mT5-style seq2seq folder"``.
    """
    from transformers import AutoConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json; scorer kind '{kind}' needs {needs}")
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a transformers checkpoint ({exc})") from None
