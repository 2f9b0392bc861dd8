"""What ``mergeir run EXPERIMENT --dry-run`` prints: the resolved experiment, before any work.

A paper experiment downloads tens of GB and runs for hours on a GPU. Checking first where
every checkpoint and dataset will come from (local, already in the hub cache, or still to
download), that every ``ir_datasets`` id exists, and what the protocol will do with them
turns a failed night into a one-second answer. Nothing here loads weights or data.
"""

from __future__ import annotations

from pathlib import Path

from mergekit_ir.experiments import quickstart
from mergekit_ir.experiments.registry import CheckpointRef, DatasetSpec, Experiment, Registry
from mergekit_ir.merging.checkpoint import is_path_ref


def local_beir_folder(
    spec: DatasetSpec, reg: Registry, cache_root: Path, build: bool = True
) -> Path | None:
    """The dataset's BEIR folder when it exists locally (relative paths from the registry's folder).

    ``build=False`` answers for a ``quickstart:`` folder without generating it.
    """
    if not spec.beir:
        return None
    if spec.beir.startswith(quickstart.SCHEME):
        return quickstart.resolve(spec.beir, cache_root) if build else Path(spec.beir)
    folder = Path(spec.beir).expanduser()
    if not folder.is_absolute():
        folder = reg.base_dir / folder
    return folder if folder.is_dir() else None


def _hub_cached(repo_id: str, revision: str | None) -> bool:
    """True when the hub cache holds the repo (HFValidationError for a malformed id)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "modules.json", "adapter_config.json"):
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(found, str):
            return True
    return False


PROBLEM = ("MISSING", "UNKNOWN")  # how a source string that needs fixing starts


def checkpoint_source(ref: CheckpointRef, reg: Registry) -> str:
    """Where a checkpoint will be read from, without downloading it."""
    if ref.ref.startswith(quickstart.SCHEME):
        return "generated offline (quickstart)"
    from huggingface_hub.errors import HFValidationError

    path = Path(ref.ref).expanduser()
    beside = path if path.is_absolute() else reg.base_dir / path
    for candidate in (beside, path):
        if candidate.is_dir():
            return f"local folder {candidate}"
        if candidate.exists():
            return f"MISSING: {candidate} is a file; give the folder that holds it"
    if is_path_ref(ref.ref):  # the loader's rule: paths are local, "org/name" ids go to the hub
        return f"MISSING: {beside} does not exist"
    try:
        cached = _hub_cached(ref.ref, ref.revision)
    except HFValidationError:
        return f"MISSING: {ref.ref!r} is neither a local folder nor a valid hub id"
    return "hub, in the local cache" if cached else "hub, to download"


def ir_datasets_id(spec: DatasetSpec, split: str) -> str:
    """``beir/scifact`` + ``train[:20%]`` -> ``beir/scifact/train[:20%]``."""
    name, _, rest = split.partition("[")
    return (f"{spec.ir_datasets}/{name}" if name else str(spec.ir_datasets)) + (
        f"[{rest}" if rest else ""
    )


def dataset_source(spec: DatasetSpec, split: str, reg: Registry, cache_root: Path) -> str:
    """Where a split will be read from; flags ids ``ir_datasets`` does not know."""
    if local_beir_folder(spec, reg, cache_root, build=False) is not None:
        where = (
            "generated offline (quickstart)"
            if spec.beir.startswith(quickstart.SCHEME)
            else f"BEIR folder {spec.beir}"
        )
        return f"{split or 'all'} from {where}"
    if not spec.ir_datasets:
        hint = f" ({spec.description})" if spec.description else ""
        return f"MISSING: BEIR folder {spec.beir} not found and no ir_datasets id{hint}"
    import ir_datasets

    ds_id = ir_datasets_id(spec, split)
    base = ds_id.split("[")[0]
    if base not in ir_datasets.registry:
        return f"UNKNOWN ir_datasets id {base!r} (see https://ir-datasets.com)"
    local = f" (BEIR folder {spec.beir} not found)" if spec.beir else ""
    return f"ir_datasets {ds_id}{local}, downloads on first use"


def _grid(exp: Experiment) -> str:
    if all(isinstance(a, int | float) for a in exp.alphas) and len(exp.alphas) > 3:
        return f"{exp.alphas[0]:g} … {exp.alphas[-1]:g} ({len(exp.alphas)} values)"
    return ", ".join(f"{a:g}" if isinstance(a, int | float) else "layer-wise" for a in exp.alphas)


def describe(
    reg: Registry, name: str, datasets: list[str], cache_root: Path, out_dir: Path
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
    sources: list[str] = []
    width = max(len(d) for d in datasets) + 1
    for dname in datasets:
        spec = reg.dataset(dname)
        sources.append(dataset_source(spec, spec.test, reg, cache_root))
        lines.append(f"  {dname:<{width}} test: {sources[-1]}")
        if spec.dev and (exp.tune_alpha or exp.tune_fusion):
            has_dev.append(dname)
            sources.append(dataset_source(spec, spec.dev, reg, cache_root))
            lines.append(f"  {'':<{width}} dev:  {sources[-1]}")
    lines += ["", "triplets:"]
    for tname in exp.triplets:
        t = reg.triplet(tname)
        lines.append(f"  {tname} ({t.scorer})")
        roles = [("Θ0", t.pretrained), *[("ΘD", d) for d in t.domains], ("ΘT", t.ir)]
        for role, ref in roles:
            if ref is not None:
                sources.append(checkpoint_source(ref, reg))
                lines.append(f"    {role} {ref.describe():<58} {sources[-1]}")
    fs = ", ".join(f"{k}={v}" for k, v in sorted(exp.first_stage_params.items()) if v is not None)
    mp = ", ".join(f"{k}={v}" for k, v in exp.merge_params.items() if v is not None)
    without_dev = [d for d in datasets if d not in has_dev]
    if not exp.tune_alpha:
        alpha_rule = "not tuned: Θ' rows use α = 1"
    elif has_dev:
        alpha_rule = f"tuned on the mean dev {exp.objective} of {', '.join(has_dev)}"
        if without_dev:
            alpha_rule += f"; {', '.join(without_dev)}: " + (
                "the tuned α" if exp.transfer_alpha else "α = 1"
            )
    else:
        alpha_rule = "no dev split: α = 1 (zero-shot)"
    if exp.fusion_method == "wsum" and not exp.tune_fusion:
        fusion = f"wsum, {exp.fusion_norm}, λ = {list(exp.fusion_params.get('weights', []))}"
    else:
        fusion = f"{exp.fusion_method}, {exp.fusion_norm}" + (
            f", λ tuned on dev ({', '.join(has_dev)}), else {exp.fusion_params.get('weights', 'defaults')}"
            if exp.tune_fusion
            else ""
        )
    lines += [
        "",
        "protocol:",
        f"  first stage   {exp.first_stage} top {exp.k}" + (f" ({fs})" if fs else ""),
        f"  merge         {exp.method}, α grid {_grid(exp)}, swept in place"
        + (f" ({mp})" if mp else ""),
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
        f"  scoring       batch {exp.batch_size}, dtype {exp.dtype}",
    ]
    reported = [r for r in exp.reported if r.dataset in datasets]
    if reported:
        lines.append(
            f"  reported      {len(reported)} published row(s) to compare with (reported.md)"
        )
    lines += ["", f"outputs: {out_dir}/   cache: {cache_root}"]
    problems = [s for s in sources if s.startswith(PROBLEM)]
    downloads = sum(
        s == "hub, to download" or s.endswith("downloads on first use") for s in sources
    )
    if problems:
        lines.append(f"{len(problems)} problem(s) to fix before running")
    else:
        lines.append(
            "ready to run"
            + (f" ({downloads} download(s): needs network access)" if downloads else "")
        )
    return "\n".join(lines), len(problems)
