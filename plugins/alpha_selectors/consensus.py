"""``consensus``: α scored on the real, unjudged test queries by agreement with reference rankings.

Pseudo-judgments come from pooling (Soboroff, Nicholas & Cahan, SIGIR 2001, "Ranking retrieval
systems without relevance judgments"; reference lists as in Shtok, Kurland & Carmel, TOIS 2016):
the first stage, ΘT (α = 0) and Θ'(α = 1), each fused as in the experiment, are combined by
reciprocal-rank fusion and their top ``depth`` documents per query count as relevant. Each α is
then scored with the experiment's objective against them. Aslam & Savell (SIGIR 2003) showed
such scores measure closeness to the consensus, not quality: expect this selector to prefer
middle α and read its curve as "how much does Θ'(α) agree with its references".

Score-distribution predictors (NQC, WIG) were not chosen: they compare queries under one
retrieval model, while here the model changes with α and fusion min-max normalises the scores
they rely on.
"""

from __future__ import annotations

from mergekit_ir import AlphaSelector, Dataset, Param, hookimpl


def rrf_top(runs, qid: str, depth: int, k: int) -> dict[str, int]:
    """The ``depth`` best documents of the reciprocal-rank fusion of ``runs`` for one query."""
    fused: dict[str, float] = {}
    for run in runs:
        ranked = sorted(run.get(qid, {}).items(), key=lambda x: (-x[1], x[0]))
        for rank, (did, _) in enumerate(ranked, 1):
            fused[did] = fused.get(did, 0.0) + 1.0 / (k + rank)
    best = sorted(fused.items(), key=lambda x: (-x[1], x[0]))[:depth]
    return {did: 1 for did, _ in best}


def select_consensus(ctx, params):
    out = {}
    for dname in ctx.datasets:
        unjudged = ctx.corpus(dname)
        split = ctx.make_split(unjudged, "test")
        refs = [split.first_stage, ctx.ranking(0.0, split), ctx.ranking(1.0, split)]
        qrels = {
            q: top
            for q in sorted(unjudged.queries)
            if (top := rrf_top(refs, q, params["depth"], params["k"]))
        }
        pseudo = Dataset(
            name=f"{dname}~consensus",
            corpus=unjudged.corpus,
            queries=unjudged.queries,
            qrels=qrels,
            language=unjudged.language,
        )
        flat = all(len(qrels[q]) >= len(split.first_stage.get(q, {})) for q in qrels)
        if flat:
            ctx.echo(
                f"  {ctx.label}: on {dname} depth {params['depth']} covers every first-stage "
                "candidate, so every α agrees fully; lower depth below the first stage's k"
            )
        values, base = ctx.sweep(ctx.make_split(pseudo, "test"))
        out[dname] = ctx.choose(
            {dname: values}, {dname: base}, {"queries": len(qrels), "degenerate": flat, **params}
        )
    return out


@hookimpl
def register_alpha_selectors(register):
    register(
        AlphaSelector(
            name="consensus",
            description="α agreeing best with pooled first-stage, ΘT and Θ'(1) rankings on the "
            "unjudged test queries (no labels)",
            select=select_consensus,
            params=(
                Param("depth", int, 10, "pooled documents counted relevant per query", min=1),
                Param("k", int, 60, "reciprocal-rank fusion constant", min=1),
            ),
        )
    )
