"""``dev``: α tuned on the labelled dev split(s), the paper's protocol and the default.

The curve is the mean over dev splits of each split's mean objective (ties to the earlier α),
exactly the rule the runner applied before selectors existed, so results do not change.

A dataset without a dev split (and without ``tuning.transfer`` from one that has it) keeps the
zero-shot α = 1, as without a selector. With ``guard: true`` that is said, not done silently:
the guard has no gain to check there, so the run prints one warning line and the selection
records the dataset's α = 1 with ``diagnostics.no_dev_split`` and a ``note``
(docs/alpha-selection.md, "The guard without a dev split").
"""

from __future__ import annotations

from mergekit_ir import AlphaChoice, AlphaSelector, alpha_label, hookimpl

#: α where ``dev`` has nothing to choose on: the paper's zero-shot α
ZERO_SHOT = 1.0


def select_dev(ctx, params):
    devs = {d: s for d in ctx.datasets if (s := ctx.dev(d)) is not None}
    out = {}
    if devs:
        values, base = {}, {}
        for dname, split in devs.items():
            values[dname], base[dname] = ctx.sweep(split)
        choice = ctx.choose(
            values, base, {"dev_queries": {d: len(b) for d, b in base.items()}, "uses_labels": True}
        )
        out = {d: choice for d in ctx.datasets if d in devs or ctx.transfer}
    missing = [d for d in ctx.datasets if d not in out]
    if ctx.guard and missing:
        note = (
            "no dev split: the guard had no gain to check, so α = 1 (zero-shot) as without a "
            "selector; give the dataset a dev split, set tuning.transfer: true, or use a "
            "label-free selector (pseudo-queries, consensus) with guard: true"
        )
        ctx.echo(f"  warning: {ctx.label} on {', '.join(missing)}: {note}")
        for d in missing:
            out[d] = AlphaChoice(
                selector=ctx.label,
                alpha=alpha_label(ZERO_SHOT),
                diagnostics={"no_dev_split": True, "uses_labels": True, "note": note},
            )
    return {d: out[d] for d in ctx.datasets if d in out}


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
