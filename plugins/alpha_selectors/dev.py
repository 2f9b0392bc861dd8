"""``dev``: α tuned on the labelled dev split(s), the paper's protocol and the default.

The curve is the mean over dev splits of each split's mean objective (ties to the earlier α),
exactly the rule the runner applied before selectors existed, so results do not change.
"""

from __future__ import annotations

from mergekit_ir import AlphaSelector, hookimpl


def select_dev(ctx, params):
    devs = {d: s for d in ctx.datasets if (s := ctx.dev(d)) is not None}
    if not devs:
        return {}
    values, base = {}, {}
    for dname, split in devs.items():
        values[dname], base[dname] = ctx.sweep(split)
    choice = ctx.choose(
        values, base, {"dev_queries": {d: len(b) for d, b in base.items()}, "uses_labels": True}
    )
    return {d: choice for d in ctx.datasets if d in devs or ctx.transfer}


@hookimpl
def register_alpha_selectors(register):
    register(
        AlphaSelector(
            name="dev",
            description="α with the best mean dev objective (needs judged dev queries)",
            select=select_dev,
            uses_labels=True,
        )
    )
