"""``adamerging``: block-wise α learnt at test time without labels (AdaMerging for re-rankers).

For each dataset, coefficients c_l of Θ' = ΘT + Σ_l c_l·τ_l are learnt by gradient descent
(:mod:`mergekit_ir.tuning.adamerging`) on

- the entropy of each test query's softmax over its BM25 candidates' scores (the test
  queries, never their judgments), and/or
- a contrastive loss on pseudo-queries (``title``/``ict``/``crop``, as the ``pseudo-queries``
  selector builds them from the corpus) against their source document among BM25 negatives.

The learnt coefficients are a layer-wise α of ``task_arithmetic``; the choice records them
(``diagnostics.coefficients``, plotted per block in ``adamerging.png``). Then the do-no-harm
guard: on held-out pseudo-queries (other documents than the training ones), the experiment's
objective of Θ'(c) is compared with ΘT's by the selectors' bootstrap; unless the gain's lower
bound is above 0, the run says so and keeps ΘT (α = 0). AdaMerging always runs the guard.
"""

from __future__ import annotations

import random

from mergekit_ir import (
    AlphaChoice,
    AlphaSelector,
    ConfigError,
    Dataset,
    LearnQuery,
    LearnSettings,
    Param,
    alpha_label,
    bootstrap,
    hookimpl,
    learn_coefficients,
)

from .pseudo_queries import pseudo_dataset

PARAMS = (
    Param(
        "objective",
        str,
        "both",
        "entropy (test queries) | contrastive (pseudo-queries) | both",
        choices=("entropy", "contrastive", "both"),
    ),
    Param("steps", int, 20, "gradient steps", min=1, max=1000),
    Param("lr", float, 0.05, "Adam learning rate of the coefficients", min=1e-5, max=1.0),
    Param("init", float, 0.3, "starting coefficient (AdaMerging's 0.3)", min=-2.0, max=2.0),
    Param("batch", int, 4, "queries per step and objective", min=1, max=256),
    Param("queries", int, 32, "test queries used (seeded sample)", min=1, max=10_000),
    Param("pseudo", int, 32, "pseudo-queries to learn from", min=1, max=10_000),
    Param("guard_queries", int, 32, "held-out pseudo-queries for the guard", min=2, max=10_000),
    Param("candidates", int, 16, "BM25 candidates per query", min=2, max=1000),
    Param("temperature", float, None, "softmax temperature (default: measured)", min=1e-6, max=1e6),
    Param(
        "granularity",
        str,
        "block",
        "block (a coefficient per transformer block, embeddings, rest) | tensor",
        choices=("block", "tensor"),
    ),
    Param(
        "source",
        str,
        "title",
        "pseudo-queries: title | ict | crop",
        choices=("title", "ict", "crop"),
    ),
    Param("span", int, 10, "crop: words per pseudo-query", min=1),
    Param("seed", int, 0, "sampling seed"),
)


def _top(candidates: dict[str, float], k: int) -> list[str]:
    return [d for d, _ in sorted(candidates.items(), key=lambda x: (-x[1], x[0]))[:k]]


def test_queries(ctx, dname: str, params) -> list[LearnQuery]:
    """A seeded sample of the test queries with their top BM25 candidates (texts only)."""
    ds = ctx.corpus(dname)
    split = ctx.make_split(ds, "adamerging")
    qids = sorted(q for q in ds.queries if len(split.first_stage.get(q, {})) > 1)
    qids = sorted(
        random.Random(f"adamerging:{params['seed']}").sample(
            qids, min(len(qids), params["queries"])
        )
    )
    return [
        LearnQuery(
            ds.queries[q],
            [ds.corpus[d].full_text for d in _top(split.first_stage[q], params["candidates"])],
        )
        for q in qids
    ]


def pseudo_splits(ctx, dname: str, params):
    """(training pseudo-queries with their candidates, the held-out guard split): one set of
    pseudo-queries built from the corpus, its first ``guard_queries`` kept for the guard."""
    n_guard, n_train = params["guard_queries"], params["pseudo"]
    built = pseudo_dataset(
        ctx.corpus(dname),
        {
            "source": params["source"],
            "n": n_guard + n_train,
            "seed": params["seed"],
            "span": params["span"],
        },
        ctx.cache_dir,
    )
    order = sorted(built.queries, key=lambda q: int(q[2:]))  # pq0, pq1, … (the build order)
    guard_ids, train_ids = order[:n_guard], order[n_guard:]
    if len(guard_ids) < 2:
        return [], None
    guard = Dataset(
        f"{built.name}~guard",
        built.corpus,
        {q: built.queries[q] for q in guard_ids},
        {q: built.qrels[q] for q in guard_ids},
        built.language,
        built.source,
    )
    train: list[LearnQuery] = []
    if train_ids:
        train_ds = Dataset(
            f"{built.name}~train",
            built.corpus,
            {q: built.queries[q] for q in train_ids},
            {q: built.qrels[q] for q in train_ids},
            built.language,
            built.source,
        )
        split = ctx.make_split(train_ds, "adamerging-train")
        for q in train_ids:
            source = next(iter(built.qrels[q]))
            negatives = [
                d for d in _top(split.first_stage.get(q, {}), params["candidates"]) if d != source
            ]
            docs = [source, *negatives[: params["candidates"] - 1]]
            if len(docs) > 1:
                train.append(
                    LearnQuery(built.queries[q], [built.corpus[d].full_text for d in docs], 0)
                )
    return train, ctx.make_split(guard, "adamerging-guard")


def select_adamerging(ctx, params):
    if ctx.merge_access is None:
        raise ConfigError("adamerging needs the triplet's live model; run it in `mergeir run`")
    settings = LearnSettings(
        steps=params["steps"],
        batch_queries=params["batch"],
        lr=params["lr"],
        init=params["init"],
        objective=params["objective"],
        temperature=params["temperature"],
        granularity=params["granularity"],
        seed=params["seed"],
    )
    out = {}
    for dname in ctx.datasets:
        tests = test_queries(ctx, dname, params) if settings.objective != "contrastive" else []
        train, guard = pseudo_splits(ctx, dname, params)
        if guard is None:
            ctx.echo(
                f"  {ctx.label}: {dname} gives too few {params['source']} pseudo-queries for the guard; α = 1"
            )
            continue
        ctx.echo(
            f"  {ctx.label} on {dname}: learning {settings.granularity}-wise coefficients, "
            f"{settings.steps} steps × {settings.batch_queries} queries ({settings.objective}; "
            f"{len(tests)} test queries, {len(train)} pseudo-queries, {len(guard.dataset.queries)} held out)"
        )
        result = learn_coefficients(ctx.merge_access(), tests, train, settings, ctx.echo)
        label = alpha_label(result.alpha)
        learned = ctx.score(result.alpha, guard)
        base = ctx.score(0.0, guard)
        boot = bootstrap(
            {dname: {label: learned}},
            {dname: base},
            [label],
            label,
            {},
            samples=ctx.samples,
            confidence=ctx.confidence,
            seed=ctx.seed,
        )
        lo, hi = boot.gain_interval
        guarded = not lo > 0
        if guarded:
            ctx.echo(
                f"  {ctx.label} on {dname}: the learnt merge is not better than ΘT with "
                f"{ctx.confidence:.0%} confidence on {len(base)} held-out pseudo-queries (gain "
                f"{boot.gain:+.4f} [{lo:+.4f}, {hi:+.4f}]): keeping ΘT"
            )
        mean = lambda xs: sum(xs.values()) / len(xs) if xs else 0.0  # noqa: E731
        out[dname] = AlphaChoice(
            selector=ctx.label,
            alpha=alpha_label(0.0) if guarded else label,
            curve={alpha_label(0.0): round(mean(base), 6), label: round(mean(learned), 6)},
            interval=None,
            gain=round(boot.gain, 6),
            gain_interval=(round(lo, 6), round(hi, 6)),
            guarded=guarded,
            raw_alpha=label,
            stability=None,
            diagnostics={
                "coefficients": {k: round(v, 6) for k, v in result.coefficients.items()},
                "groups": list(result.coefficients),  # their order (results.json sorts keys)
                "init": settings.init,
                "granularity": settings.granularity,
                "objective": settings.objective,
                "steps": settings.steps,
                "batch": settings.batch_queries,
                "lr": settings.lr,
                "temperature": round(result.temperature, 6),
                "losses": result.losses,
                "test_queries": len(tests),
                "pseudo_queries": len(train),
                "guard_queries": len(base),
                "seconds": round(result.seconds, 3),
                "source": params["source"],
            },
        )
    return out


@hookimpl
def register_alpha_selectors(register):
    register(
        AlphaSelector(
            name="adamerging",
            description="block-wise α learnt on the test queries' candidates and pseudo-queries "
            "(entropy / contrastive; AdaMerging), guarded against ΘT on held-out pseudo-queries",
            select=select_adamerging,
            params=PARAMS,
        )
    )
