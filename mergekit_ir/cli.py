"""The ``mergeir`` command line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from mergekit_ir.errors import ConfigError, MergeIRError, short_repr
from mergekit_ir.scoring.scorer import DTYPES


class _Group(click.Group):
    """Print user errors as one line (no traceback) and exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MergeIRError as exc:
            message = " ".join(str(exc).splitlines())  # one line, whatever a value held
            click.echo(f"error: {message}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mergekit-ir")
@click.option("-v", "--verbose", is_flag=True, help="Log cache hits, plans and timings.")
def main(verbose: bool) -> None:
    """Build domain- and language-adapted rerankers by merging checkpoints.

    \b
    mergeir run                    # the offline quickstart demo
    mergeir run paper-table1       # an experiment from registry.yaml (needs network)
    mergeir merge quickstart-tiny --alpha 0.5 --out merged/
    mergeir plugins                # installed merge methods, scorers, backends
    mergeir validate registry.yaml
    mergeir reported paper-table1  # the paper's published cells, as Markdown
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    quiet_libraries()


def quiet_libraries() -> None:
    """Our own progress bars and messages are enough; silence the libraries' chatter."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for noisy in ("transformers", "huggingface_hub", "bm25s", "numba", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _registry(path: str | None):
    from mergekit_ir.experiments.registry import default_registry_path, load_registry

    return load_registry(Path(path) if path else default_registry_path())


def _cache(cache_dir: str | None, no_cache: bool):
    from mergekit_ir.storage.cache import Cache

    return Cache(Path(cache_dir) if cache_dir else None, enabled=not no_cache)


@main.command()
@click.argument("experiment", default="quickstart")
@click.option(
    "--registry",
    "registry_path",
    type=click.Path(dir_okay=False),
    help="Registry YAML (default: $MERGEIR_REGISTRY, ./registry.yaml, or the bundled one).",
)
@click.option(
    "--dataset",
    "datasets",
    multiple=True,
    help="Only these datasets of the experiment (repeatable).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Output folder (default: mergeir-out/EXPERIMENT).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps.")
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    help="Scoring dtype (default: the experiment's, auto = bf16 on CUDA, fp32 on CPU).",
)
@click.option(
    "--batch-size", type=click.IntRange(1), help="Scoring batch size (default: the experiment's)."
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="Cache folder (default: $MERGEIR_CACHE or ~/.cache/mergekit_ir).",
)
@click.option(
    "--no-cache",
    is_flag=True,
    help="Recompute everything (results are still written to the cache).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Show where every checkpoint and dataset comes from and what will run; load nothing.",
)
def run(
    experiment: str,
    registry_path: str | None,
    datasets: tuple[str, ...],
    out_dir: str | None,
    device: str,
    dtype: str | None,
    batch_size: int | None,
    cache_dir: str | None,
    no_cache: bool,
    quiet: bool,
    dry_run: bool,
) -> None:
    """Run an EXPERIMENT from the registry and write its report.

    BM25 top-k, re-rank with Θ0, ΘD, ΘT and Θ'(α) for the α grid (swept in place,
    no reload), tune α and λ on dev splits, fuse with BM25, evaluate, test
    significance, and write Markdown/LaTeX/CSV tables, TREC runs and a JSON of
    every number. Interrupted runs resume from the cache.

    \b
    Examples:
      mergeir run                                  # offline quickstart demo
      mergeir run paper-table1 --dataset scifact --device cuda
      mergeir run paper-table1 --dry-run           # what it needs, what is local
    """
    from mergekit_ir.experiments.runner import RunOptions, run_experiment, selected_datasets

    reg = _registry(registry_path)
    if experiment == "quickstart" and "quickstart" not in reg.experiments and not registry_path:
        from mergekit_ir.experiments.registry import bundled_registry_path, load_registry

        reg = load_registry(bundled_registry_path())  # a local registry.yaml never hides the demo
    out = Path(out_dir) if out_dir else Path("mergeir-out") / experiment
    if dry_run:
        from mergekit_ir.experiments.dry_run import describe

        plan, problems = describe(
            reg,
            experiment,
            selected_datasets(reg.experiment(experiment), datasets),
            _cache(cache_dir, no_cache).root,
            out,
        )
        click.echo(plan)
        if problems:
            raise ConfigError(
                f"{experiment}: {problems} problem(s) to fix before running "
                "(lines marked MISSING or UNKNOWN above)"
            )
        return
    if experiment == "quickstart":
        click.echo(
            "quickstart: a smoke demo on a toy collection with tiny random models — its numbers mean nothing."
        )
    opts = RunOptions(
        out_dir=out,
        cache=_cache(cache_dir, no_cache),
        device=device,
        datasets=datasets or None,
        progress=not quiet,
        batch_size=batch_size,
        dtype=dtype,
        echo=click.echo,
    )
    outcome = run_experiment(reg, experiment, opts)
    click.echo("")
    click.echo((out / "results.md").read_text())
    if (out / "alpha.md").is_file():
        click.echo((out / "alpha.md").read_text())
    if outcome.results.reported:
        from mergekit_ir.reports.reported import summary

        click.echo(f"vs reported (reported.md): {summary(outcome.results.reported)}\n")
    click.echo(outcome.timer.table())
    c = opts.cache
    click.echo(f"cache: {c.hits()} hits, {c.misses()} misses ({c.root})")
    names = ", ".join(p.name for p in outcome.written)
    click.echo(f"outputs in {out}/: {names}, runs/")


def _parse_params(items: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"--param {short_repr(item)}: write NAME=VALUE, e.g. --param density=0.5"
            )
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--param {short_repr(item)}: the value is not valid YAML") from None
    return out


@main.command()
@click.argument("triplet", required=False)
@click.option(
    "--registry",
    "registry_path",
    type=click.Path(dir_okay=False),
    help="Registry YAML holding TRIPLET.",
)
@click.option("--ir", "ir_ref", help="ΘT (hub id or folder), instead of a registry triplet.")
@click.option("--pretrained", "pre_ref", help="Θ0, instead of a registry triplet.")
@click.option(
    "--domain",
    "domain_refs",
    multiple=True,
    help="ΘD (repeatable); prefix lora: or task_vector: for adapters/saved vectors.",
)
@click.option("--method", default="task_arithmetic", show_default=True, help="Merge method plugin.")
@click.option(
    "--alpha",
    type=str,
    default="1.0",
    show_default=True,
    help="α (a number, or YAML for a layer-wise value).",
)
@click.option(
    "--param", "params", multiple=True, help="Other method parameters, NAME=VALUE (repeatable)."
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Output folder for Θ'.")
@click.option(
    "--plan", is_flag=True, help="Print the merge/copy/skip table and exit without writing."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option(
    "--out-shard-size", default="5GB", show_default=True, help="Maximum safetensors shard size."
)
@click.option(
    "--device", default="cpu", show_default=True, help="Where the arithmetic runs (cpu or cuda)."
)
@click.option(
    "--allow-nonfinite",
    is_flag=True,
    help="Do not stop on NaN/Inf in ΘT, a task vector or the merged weights.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def merge(
    triplet: str | None,
    registry_path: str | None,
    ir_ref: str | None,
    pre_ref: str | None,
    domain_refs: tuple[str, ...],
    method: str,
    alpha: str,
    params: tuple[str, ...],
    out_dir: str | None,
    plan: bool,
    overwrite: bool,
    out_shard_size: str,
    device: str,
    allow_nonfinite: bool,
    quiet: bool,
) -> None:
    """Write Θ' for one TRIPLET and α as a Hugging Face folder.

    Streams tensor by tensor (memory ≈ a few tensors), writes sharded safetensors
    plus ΘT's config and tokenizer and a model card, atomically. The result loads
    with plain transformers (and sentence-transformers when ΘT is one).

    \b
    Examples:
      mergeir merge quickstart-tiny --alpha 0.5 --out merged/
      mergeir merge --ir my/ir-model --pretrained bert-base-uncased \\
          --domain my/bio-bert --method ties --param density=0.3 --alpha 0.7 --out merged/
      mergeir merge quickstart-tiny --plan
    """
    from mergekit_ir.merging.api import DomainRef, prepare_merge, write_merge
    from mergekit_ir.merging.safetensors_writer import parse_size
    from mergekit_ir.plugin_host import catalog
    from mergekit_ir.scoring.scorer import resolve_device

    resolve_device(device)  # a bad --device fails before anything is read
    try:
        alpha_value = yaml.safe_load(alpha)
    except yaml.YAMLError:
        raise ConfigError(f"--alpha {short_repr(alpha)}: not a number or YAML value") from None
    if alpha_value is None:
        raise ConfigError(f"--alpha {short_repr(alpha)}: empty; give a number, e.g. --alpha 0.5")
    mm = catalog().merge_method(method, "--method")
    alpha_param = mm.param("alpha")
    if alpha_param is not None:
        alpha_value = alpha_param.check(alpha_value, "--alpha")
    given = {**_parse_params(params), "alpha": alpha_value}
    if triplet:
        if ir_ref or pre_ref or domain_refs:
            raise ConfigError(
                "give either a registry TRIPLET or --ir/--pretrained/--domain, not both"
            )
        from mergekit_ir.experiments.triplet_merge import prepare_triplet_merge

        prepared = prepare_triplet_merge(
            _registry(registry_path),
            triplet,
            method=method,
            params=given,
            allow_nonfinite=allow_nonfinite,
            cache_root=_cache(None, False).root,
        )
    else:
        if not ir_ref or not domain_refs:
            raise ConfigError(
                "give a registry TRIPLET, or --ir and at least one --domain (and --pretrained)"
            )
        domains = [DomainRef.parse(d) for d in domain_refs]
        if pre_ref is None and any(d.kind == "checkpoint" for d in domains):
            raise ConfigError(
                "--pretrained is needed to form ΘD − Θ0 from a full domain checkpoint"
            )
        prepared = prepare_merge(
            ir_ref,
            domains,
            pretrained=pre_ref,
            method=method,
            params=given,
            allow_nonfinite=allow_nonfinite,
            provenance={"ΘT": str(ir_ref), "Θ0": str(pre_ref or "-"), "ΘD": ", ".join(domain_refs)},
        )
    if plan:
        click.echo(prepared.plan.table())
        return
    if not out_dir:
        raise ConfigError("--out DIR is required (or use --plan to only print the plan)")
    report = write_merge(
        prepared,
        out_dir,
        shard_size=parse_size(out_shard_size),
        overwrite=overwrite,
        device=device,
        progress=not quiet,
    )
    c = report.counts
    click.echo(
        f"wrote {report.out} ({report.bytes_written / 1e6:.1f} MB in {report.shards} shard(s), "
        f"{report.seconds:.1f}s): {c['merge']} merged, {c['copy']} copied from ΘT, {c['skip']} skipped"
    )


@main.command()
@click.option(
    "--base", "base_ref", required=True, help="Θ0 to continue pre-training (folder or hub id)."
)
@click.option(
    "--corpus",
    "corpus_spec",
    required=True,
    help="Registry dataset name, BEIR folder, .jsonl or .txt.",
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output ΘD folder."
)
@click.option(
    "--objective",
    type=click.Choice(["auto", "mlm", "span", "clm"]),
    default="auto",
    show_default=True,
    help="auto: mlm for encoders, span corruption for T5, clm for decoders.",
)
@click.option("--steps", type=click.IntRange(min=1), help="Optimizer steps (default: one epoch).")
@click.option(
    "--epochs", type=click.FloatRange(min=0, min_open=True), help="Passes over the corpus."
)
@click.option("--max-length", default=256, show_default=True, type=click.IntRange(min=4))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=5e-5, show_default=True, type=float)
@click.option(
    "--warmup", default=0.06, show_default=True, type=float, help="Fraction (<1) or steps."
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--lora", "lora_spec", help="Train a LoRA adapter, e.g. r=16,alpha=32,targets=query,value."
)
@click.option(
    "--head-warmup",
    default=100,
    show_default=True,
    type=click.IntRange(min=0),
    help="Steps training only a fresh MLM head (encoder frozen) when the base has none.",
)
@click.option(
    "--freeze-head", is_flag=True, help="Keep the LM head fixed (only the encoder moves)."
)
@click.option("--checkpoint-every", default=200, show_default=True, type=click.IntRange(min=0))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps.")
@click.option(
    "--registry",
    "registry_path",
    type=click.Path(dir_okay=False),
    help="registry.yaml for --corpus names.",
)
@click.option(
    "--cache-dir", type=click.Path(file_okay=False), help="Cache root (tokenised corpora)."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def adapt(
    base_ref: str,
    corpus_spec: str,
    out_dir: str,
    objective: str,
    steps: int | None,
    epochs: float | None,
    max_length: int,
    batch_size: int,
    lr: float,
    warmup: float,
    seed: int,
    lora_spec: str | None,
    head_warmup: int,
    freeze_head: bool,
    checkpoint_every: int,
    device: str,
    registry_path: str | None,
    cache_dir: str | None,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Build a domain model ΘD from an unlabelled corpus (continued pre-training).

    \b
    Example:
      mergeir adapt --base ../shared/models/splade-tiny --corpus scifact --out theta-d/ --steps 400
      # then in registry.yaml:  domain: theta-d/   (or, with --lora, domain: {lora: theta-d/})
    Rerunning the same command after an interruption resumes from the last checkpoint.
    """
    from mergekit_ir.adaptation.build import adapt as run_adapt
    from mergekit_ir.adaptation.training import AdaptSettings, LoraSpec
    from mergekit_ir.experiments.sources import resolve_checkpoint
    from mergekit_ir.scoring.scorer import resolve_device
    from mergekit_ir.storage.cache import default_cache_dir

    if steps is not None and epochs is not None:
        raise ConfigError("--steps and --epochs: give one of them")
    dev = resolve_device(device)
    settings = AdaptSettings(
        objective=objective,
        steps=steps,
        epochs=epochs,
        max_length=max_length,
        batch_size=batch_size,
        lr=lr,
        warmup=warmup,
        seed=seed,
        head_warmup=head_warmup,
        freeze_head=freeze_head,
        lora=LoraSpec.parse(lora_spec) if lora_spec else None,
    )
    cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
    registry = None
    if not Path(corpus_spec).exists():
        registry = _registry(registry_path)
    base = resolve_checkpoint(base_ref, cache_root=cache_root)
    info = run_adapt(
        base,
        corpus_spec,
        Path(out_dir),
        settings,
        dev,
        registry=registry,
        cache_root=cache_root,
        checkpoint_every=checkpoint_every,
        overwrite=overwrite,
        show_progress=not quiet,
    )
    click.echo(
        f"wrote {out_dir} ({info['objective']}, {info['steps']} steps"
        + (f" + {info['head_warmup_steps']} head warm-up" if info["head_warmup_steps"] else "")
        + f", {info['tokens_seen']} tokens, {info['tokens_per_s']:.0f} tokens/s)"
    )


@main.command("task-vector")
@click.option("--pretrained", "pre_ref", required=True, help="Θ0 (hub id or folder).")
@click.option("--domain", "domain_ref", required=True, help="ΘD (hub id or folder).")
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Where to save τ."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing folder.")
@click.option("--allow-nonfinite", is_flag=True, help="Save τ even if it has NaN/Inf values.")
def task_vector(
    pre_ref: str, domain_ref: str, out_dir: str, overwrite: bool, allow_nonfinite: bool
) -> None:
    """Save τ = ΘD − Θ0 as safetensors, reusable without its models.

    \b
    Example:
      mergeir task-vector --pretrained bert-base-uncased --domain my/bio-bert --out tau-bio/
      # then in registry.yaml:  domain: {task_vector: tau-bio/}
    """
    from mergekit_ir.merging.checkpoint import open_checkpoint
    from mergekit_ir.merging.task_vector import TaskVector

    pre, dom = open_checkpoint(pre_ref), open_checkpoint(domain_ref)
    tv = TaskVector.from_checkpoints(pre, dom)
    path = tv.save(
        out_dir,
        {"pretrained": pre_ref, "domain": domain_ref},
        overwrite=overwrite,
        allow_nonfinite=allow_nonfinite,
    )
    click.echo(f"wrote {path} ({len(tv.keys())} tensors)")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List installed merge methods, scorers and first-stage backends with their parameters."""
    from mergekit_ir.plugin_host import KINDS, catalog

    cat = catalog()
    kinds = {kind.heading: cat.table(kind) for kind in KINDS}
    if as_json:
        click.echo(
            json.dumps(
                {
                    kind: {
                        name: {
                            "plugin": r.plugin,
                            "description": r.item.description,
                            "params": [p.describe() for p in r.item.params],
                        }
                        for name, r in table.items()
                    }
                    for kind, table in kinds.items()
                },
                indent=2,
            )
        )
        return
    for kind, table in kinds.items():
        click.echo(f"{kind}:")
        for name in sorted(table):
            r = table[name]
            click.echo(f"  {name:<18} {r.item.description}  [{r.plugin}]")
            for p in r.item.params:
                click.echo(f"      {p.describe()}" + (f" — {p.help}" if p.help else ""))
        click.echo("")


@main.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
def validate(file: str | None) -> None:
    """Check a registry FILE without loading weights or data.

    Reports the first problem as `yaml.path: what is wrong`, e.g.
    `experiments.table1.merge.alpha[3]: 2.7 is outside [-2, 2]`.
    """
    reg = _registry(file)
    click.echo(
        f"{reg.path}: ok — {len(reg.datasets)} datasets, {len(reg.triplets)} triplets, "
        f"{len(reg.experiments)} experiments"
    )


@main.command("reported")
@click.argument("experiment")
@click.option(
    "--registry",
    "registry_path",
    type=click.Path(dir_okay=False),
    help="Registry YAML (default: $MERGEIR_REGISTRY, ./registry.yaml, or the bundled one).",
)
def reported_cmd(experiment: str, registry_path: str | None) -> None:
    """Print the published cells EXPERIMENT declares (its reported: block) as Markdown tables.

    \b
    Example:
      mergeir reported paper-table1
    """
    from mergekit_ir.reports.published import render_published

    exp = _registry(registry_path).experiment(experiment)
    if not exp.reported:
        raise ConfigError(
            f"experiments.{experiment}: declares no reported: cells (docs/registry.md, 'Published numbers')"
        )
    click.echo(render_published(experiment, exp.reported, exp.metrics), nl=False)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def report(run_dir: str) -> None:
    """Re-render the reports of a finished run from its results.json (no recomputation)."""
    from mergekit_ir.reports.render import write_reports

    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise ConfigError(
            f"{path}: not found; is {run_dir} the --out folder of a finished `mergeir run`?"
        )
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg})") from None
    for p in write_reports(results, Path(run_dir)):
        click.echo(f"wrote {p}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
