"""The ``local`` executor: every triplet job in this process, one after another (the default)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mergekit_ir import ExecutorKind, hookimpl


def create(params: Mapping[str, Any]):
    from mergekit_ir import InProcessExecutor  # lazy: the runner loads only when a run starts

    return InProcessExecutor()


@hookimpl
def register_executors(register):
    register(
        ExecutorKind(
            name="local",
            description="every triplet in this process, one after another (default)",
            create=create,
        )
    )
