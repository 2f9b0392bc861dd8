"""What ``mergeir run EXPERIMENT --dry-run`` prints: the resolved experiment, before any work.

A paper experiment downloads tens of GB and runs for hours on a GPU. Checking first where
every checkpoint and dataset will come from (local, already in the hub cache, or still to
download), that every ``ir_datasets`` id exists, and what the protocol will do with them
turns a failed night into a one-second answer. Nothing here loads weights or data.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mergekit_ir.errors import CheckpointError, MergeIRError
from mergekit_ir.experiments.registry import Experiment, Registry
from mergekit_ir.experiments.sources import locate_dataset, registry_corpora, resolve_ref
from mergekit_ir.plugin_host import catalog
from mergekit_ir.references.checkpoints import (
    HUB_PATTERNS,
    Location,
    hub_offline,
    locate_checkpoint,
)
from mergekit_ir.results import alpha_label, point_params
from mergekit_ir.scoring.scorer import ScorerKind
from mergekit_ir.tuning.search import expected_cost
from mergekit_ir.tuning.search import passes as search_passes


def _grid(exp: Experiment) -> str:
    if exp.grid:  # α × other parameters: say the dimensions, not every point
        alphas = list(dict.fromkeys(alpha_label(point_params(a)["alpha"]) for a in exp.alphas))
        dims = [f"α ∈ {{{', '.join(alphas)}}}"]
        dims += [f"{n} ∈ {{{', '.join(f'{v:g}' for v in vs)}}}" for n, vs in exp.grid]
        return f"{' × '.join(dims)} ({len(exp.alphas)} points)"
    if all(isinstance(a, int | float) for a in exp.alphas) and len(exp.alphas) > 3:
        return f"{exp.alphas[0]:g} … {exp.alphas[-1]:g} ({len(exp.alphas)} values)"
    return ", ".join(f"{a:g}" if isinstance(a, int | float) else "layer-wise" for a in exp.alphas)


def fits_scorer(
    loc: Location, kind: ScorerKind, role: str = "ΘT", strict: bool = False
) -> Location:
    """A local checkpoint whose config does not fit the scorer kind is a problem now (reading
    ``config.json`` is cheap), not a failure after the first stage has run; the same rule as
    the run (:func:`scorer_caveat`)."""
    if not (loc.ok and loc.path is not None):
        return loc
    try:
        if kind.check:
            kind.check(loc.path)
        note = scorer_caveat(kind, loc.path, role, strict)
    except MergeIRError as exc:
        return Location("problem", loc.path, problem=f"MISMATCH: {exc}")
    if note:
        return Location(loc.kind, loc.path, f"{loc.detail}; WARNING: {note}")
    return loc


def scorer_caveat(kind: ScorerKind, folder: Path, role: str, strict: bool) -> str | None:
    """The one rule for a scorer's caveat (e.g. no trained head), for the run and the dry run:
    ΘT with one is refused (the IR model must be a working scorer), so is any row under
    ``--strict``; otherwise the caveat is returned, to be reported."""
    note = kind.caveat(folder) if kind.caveat else None
    if note and (role == "ΘT" or strict):
        why = "ΘT must be a working scorer" if role == "ΘT" else "refusing under --strict"
        raise CheckpointError(f"{note}; {why}")
    return note


def count_passes(
    reg: Registry,
    exp: Experiment,
    tname: str,
    datasets: list[str],
    has_dev: list[str],
    partial: bool = False,
) -> dict[str, int]:
    """Model passes one triplet costs: each a re-ranking of one split's candidates.

    Baselines (Θ0, each ΘD checkpoint, ΘT) score every test split; a Θ0 or ΘD that is ΘT's
    own folder is not scored again. The α grid scores every dev split (when α is tuned), with
    ΘT as its reference, and Θ'(α=1) and Θ'(tuned α) every test split (the latter reuses
    α=1's when it is the choice); tuning λ scores every row on the dev splits as well.

    A ``tuning.search: halving`` sweep scores query subsets: its entry is priced in full
    passes (the share of the grid's query × model evaluations its schedule spends, rounded
    up), or with ``partial`` counts the passes themselves, each over a subset (the runner's
    ``pass n/N`` counter).
    """
    t = reg.triplet(tname)
    same_as_ir = lambda ref: ref is not None and ref.ref == t.ir.ref  # noqa: E731
    baselines = 1 + (t.pretrained is not None and not same_as_ir(t.pretrained))
    baselines += sum(1 for d in t.domains if d.is_model and not same_as_ir(d))
    counts = {"baselines": baselines * len(datasets)}
    merged = 1 if exp.mergekit_recipe is not None else 2  # a recipe's Θ' is one row
    if exp.tune_fusion:  # λ on dev: every row is scored on the dev splits too
        counts["baselines on dev (λ)"] = baselines * len(has_dev)
        counts["Θ' on dev (λ)"] = merged * len(has_dev)
    elif exp.tune_alpha:  # ΘT on dev: the α plot's reference line
        counts["ΘT on dev"] = len(has_dev)
    if exp.tune_alpha and exp.search.method != "grid":
        n = len(exp.alphas)
        share = expected_cost(n, exp.search)
        key = f"α search on dev ({exp.search.method}: ≈ {share:.0%} of the grid's {n} passes)"
        per_split = search_passes(n, exp.search) if partial else math.ceil(share * n - 1e-9)
        counts[key] = per_split * len(has_dev)
    else:
        counts["α grid on dev"] = len(exp.alphas) * len(has_dev) if exp.tune_alpha else 0
    counts["Θ' on test"] = merged * len(datasets)
    if exp.alpha_selectors:
        # label-free selectors score the grid on a split of their own per dataset (the dev
        # selector reuses the dev sweep); the selection report's test curve scores the grid
        # with α = 0 and 1 on every test split (an upper bound: ΘT and α = 1 are reused)
        own = sum(1 for s in exp.alpha_selectors if s.name != "dev")
        counts["selectors' α grid"] = own * len(exp.alphas) * len(datasets)
        grid = dict.fromkeys([*exp.alphas, 0.0, 1.0])  # as select_alpha builds its test curve
        counts["test curve (selection report)"] = len(grid) * len(datasets)
    return counts


def work_lines(
    reg: Registry, exp: Experiment, datasets: list[str], has_dev: list[str]
) -> list[str]:
    out, total = [], 0
    for tname in exp.triplets:
        counts = count_passes(reg, exp, tname, datasets, has_dev)
        n = sum(counts.values())
        total += n
        parts = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
        out.append(f"  {tname:<20} ≤ {n} passes ({parts})")
    per = f"each ≤ queries × {exp.k} query–document pairs"
    out.append(f"  {'total':<20} ≤ {total} passes, {per}; identical weights score once")
    return out


def _adapt_location(reg: Registry, t: Any, ref: Any, cache_root: Path) -> Location:
    """An ``adapt:`` ΘD: cached, or to be built (with its estimated steps and tokens)."""
    from mergekit_ir.adaptation.domain import plan_domain
    from mergekit_ir.errors import MergeIRError

    base_ref = t.pretrained if ref.adapt.base == "pretrained" else t.ir
    loc = locate_checkpoint(base_ref.ref, base_ref.revision, reg.base_dir)
    if loc.kind not in ("local", "quickstart"):
        if not loc.ok:
            return loc
        return Location("adapt", detail=f"will be built from {base_ref.ref} once it is downloaded")
    try:
        base = resolve_ref(base_ref, reg.base_dir, cache_root)
        plan = plan_domain(ref.adapt, base, registry_corpora(reg, cache_root), cache_root)
    except MergeIRError as exc:
        return Location("problem", problem=f"CANNOT BUILD: {exc}")
    if plan.cached:
        return Location("adapt", plan.folder, f"built, in the cache ({plan.objective})")
    return Location(
        "adapt",
        detail=f"will be built: {plan.objective}, {plan.steps} steps, ≈{plan.tokens:,} tokens",
    )


def download_size(files: list[tuple[str, int | None]], patterns: list[str]) -> int | None:
    """Bytes a snapshot download fetches: the files matching ``patterns`` (None: a size unknown)."""
    from fnmatch import fnmatch

    sizes = [size for name, size in files if any(fnmatch(name, pat) for pat in patterns)]
    return None if any(size is None for size in sizes) else sum(s for s in sizes if s)


def _hub_download(ref: str, revision: str | None) -> Location:
    """A hub checkpoint still to download, with its size and gating when the hub says so.

    One metadata call with a short timeout; offline (or with ``HF_HUB_OFFLINE``) the size is
    unknown and the line says so — the dry run never waits on the network for long.
    """
    if hub_offline():
        return Location(
            "hub-download", detail="hub, to download (HF_HUB_OFFLINE is set: size unknown)"
        )
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(ref, revision=revision, files_metadata=True, timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure only means "size unknown"
        return Location(
            "hub-download",
            detail=f"hub, to download (size unknown: no answer from the hub, {type(exc).__name__})",
        )
    size = download_size([(f.rfilename, f.size) for f in info.siblings or []], HUB_PATTERNS)
    gated = f", gated ({info.gated}: accept its terms and log in first)" if info.gated else ""
    what = "size unknown" if size is None else f"{size / 1e9:.2f} GB"
    return Location("hub-download", detail=f"hub, to download: {what}{gated}")


def _recipe_lines(reg: Registry, exp: Experiment) -> tuple[str, list[Location]]:
    """The merge line of a ``merge: {mergekit: recipe.yml}`` experiment: what the recipe
    resolves to (``mergeir merge --plan``'s first lines) and where each of its models is."""
    from mergekit_ir.experiments.recipe import describe_recipe

    recipe = exp.mergekit_recipe
    assert recipe is not None
    head, *rest = describe_recipe(recipe)
    lines = [f"  merge         {head}, merged once (written to the cache), not swept"]
    lines += [f"               {line.strip()}" for line in rest]
    sources = []
    for m in recipe.inputs():
        loc = locate_checkpoint(m.ref, m.revision, reg.base_dir)
        if loc.kind == "hub-download":
            loc = _hub_download(m.ref, m.revision)
        sources.append(loc)
        lines.append(f"               {m.where} {m.text:<44} {loc.describe()}")
    return "\n".join(lines), sources


def describe(
    reg: Registry,
    name: str,
    datasets: list[str],
    cache_root: Path,
    out_dir: Path,
    strict: bool = False,
) -> tuple[str, int]:
    """The experiment as ``mergeir run`` will execute it, and how many sources need fixing.

    Sources that need fixing read ``MISSING …`` or ``UNKNOWN …`` in the text.
    """
    exp = reg.experiment(name)
    lines = [
        f"{name}: {len(exp.triplets)} triplet(s) × {len(datasets)} dataset(s)"
        + (f" — {exp.description}" if exp.description else ""),
        "",
        "datasets:",
    ]
    has_dev: list[str] = []
    sources: list[Location] = []
    width = max(len(d) for d in datasets) + 1
    for dname in datasets:
        spec = reg.dataset(dname)
        sources.append(locate_dataset(spec, spec.test, reg.base_dir))
        lines.append(f"  {dname:<{width}} test: {sources[-1].describe()}")
        if spec.dev and (exp.tune_alpha or exp.tune_fusion):
            has_dev.append(dname)
            sources.append(locate_dataset(spec, spec.dev, reg.base_dir))
            lines.append(f"  {'':<{width}} dev:  {sources[-1].describe()}")
    lines += ["", "triplets:"]
    for tname in exp.triplets:
        t = reg.triplet(tname)
        lines.append(f"  {tname} ({t.scorer})")
        kind = catalog().scorer(t.scorer, f"triplets.{tname}.scorer.kind")
        roles = [("Θ0", t.pretrained), *[("ΘD", d) for d in t.domains], ("ΘT", t.ir)]
        for role, ref in roles:
            if ref is not None:
                if ref.kind == "adapt":
                    loc = _adapt_location(reg, t, ref, cache_root)
                else:
                    loc = locate_checkpoint(ref.ref, ref.revision, reg.base_dir)
                    if loc.kind == "hub-download":
                        loc = _hub_download(ref.ref, ref.revision)
                    if role == "ΘT" or ref.kind == "checkpoint":
                        loc = fits_scorer(loc, kind, role, strict)
                sources.append(loc)
                lines.append(f"    {role} {ref.describe():<58} {sources[-1].describe()}")
    fs = ", ".join(f"{k}={v}" for k, v in sorted(exp.first_stage_params.items()) if v is not None)
    mp = ", ".join(f"{k}={v}" for k, v in exp.merge_params.items() if v is not None)
    without_dev = [d for d in datasets if d not in has_dev]
    if not exp.tune_alpha:
        alpha_rule = "not tuned: Θ' rows use α = 1"
    elif has_dev:
        alpha_rule = f"tuned on the mean dev {exp.objective} of {', '.join(has_dev)}"
        if exp.search.method != "grid":
            alpha_rule += f", by {exp.search.describe()}"
        if without_dev:
            alpha_rule += f"; {', '.join(without_dev)}: " + (
                "the tuned α" if exp.transfer_alpha else "α = 1"
            )
    else:
        alpha_rule = "no dev split: α = 1 (zero-shot)"
    if exp.mergekit_recipe is not None:
        alpha_rule = "none: Θ' is the recipe's merge (no α to tune)"
    if exp.alpha_selectors:
        first, *rest = exp.alpha_selectors
        alpha_rule = f"chosen by selector {first.label}" + (
            f" (compared: {', '.join(s.label for s in rest)})" if rest else ""
        )
    if exp.fusion_method == "wsum" and not exp.tune_fusion:
        fusion = f"wsum, {exp.fusion_norm}, λ = {list(exp.fusion_params.get('weights', []))}"
    else:
        fusion = f"{exp.fusion_method}, {exp.fusion_norm}" + (
            f", λ tuned on dev ({', '.join(has_dev)}), else {exp.fusion_params.get('weights', 'defaults')}"
            if exp.tune_fusion
            else ""
        )
    merge_line = f"  merge         {exp.method}, α grid {_grid(exp)}, swept in place" + (
        f" ({mp})" if mp else ""
    )
    if exp.mergekit_recipe is not None:
        merge_line, recipe_sources = _recipe_lines(reg, exp)
        sources += recipe_sources
    lines += [
        "",
        "protocol:",
        f"  first stage   {exp.first_stage} top {exp.k}" + (f" ({fs})" if fs else ""),
        merge_line,
        f"  α             {alpha_rule}",
        f"  fusion        {fusion}",
        f"  metrics       {', '.join(exp.metrics)}"
        + (" (queries BM25 retrieved anything for)" if exp.eval_queries == "retrieved" else ""),
        f"  significance  {exp.significance_test}, p < {exp.max_p:g}, correction {exp.correction}"
        + (
            f" (m = {exp.comparisons})"
            if exp.comparisons and exp.correction == "bonferroni"
            else ""
        ),
        f"  scoring       batch {exp.batch_size}, dtype {exp.dtype}, backend {exp.backend}",
    ]
    reported = [r for r in exp.reported if r.dataset in datasets]
    if reported:
        lines.append(
            f"  reported      {len(reported)} published row(s) to compare with (reported.md)"
        )
    lines += ["", "work (model passes over BM25 candidates; cache hits skip theirs):"]
    lines += work_lines(reg, exp, datasets, has_dev)
    lines += ["", f"outputs: {out_dir}/   cache: {cache_root}"]
    problems = [s for s in sources if not s.ok]
    downloads = sum(s.downloads for s in sources)
    if problems:
        lines.append(f"{len(problems)} problem(s) to fix before running")
    else:
        lines.append(
            "ready to run"
            + (f" ({downloads} download(s): needs network access)" if downloads else "")
        )
    return "\n".join(lines), len(problems)
