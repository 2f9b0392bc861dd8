"""The ``mergeir`` command line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from mergekit_ir.adaptation.spec import ADAPT_PARAMS
from mergekit_ir.errors import CheckpointError, ConfigError, MergeIRError, short_repr
from mergekit_ir.params import Param
from mergekit_ir.scoring.compiled import BACKENDS
from mergekit_ir.scoring.scorer import DTYPES
from mergekit_ir.storage.cache import resolve_cache_root
from mergekit_ir.storage.output_folder import os_error_line


class _Group(click.Group):
    """Print user errors as one line (no traceback) and exit 2; add plugins' commands.

    Plugins' commands (the ``register_commands`` hook) are loaded only when a name is not a
    built-in command or when the command list is shown, so ``mergeir merge`` does not import
    every plugin first. A plugin command may not take a built-in's name.
    """

    def _plugin_commands(self) -> dict[str, click.Command]:
        from mergekit_ir.plugin_host import collect_commands, plugin_manager

        commands = collect_commands(plugin_manager())
        taken = sorted(set(commands) & set(self.commands))
        if taken:
            raise MergeIRError(
                f"a plugin adds the command '{taken[0]}', which is built in; rename the plugin's command"
            )
        return commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        try:
            extra = self._plugin_commands()
        except MergeIRError as exc:  # --help still works; the broken plugin is named
            click.echo(f"warning: {exc}", err=True)
            extra = {}
        return sorted({*self.commands, *extra})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        try:
            return self._plugin_commands().get(cmd_name)
        except MergeIRError as exc:
            click.echo(f"error: {' '.join(str(exc).splitlines())}", err=True)
            ctx.exit(2)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (MergeIRError, OSError) as exc:
            # The error boundary: user errors, and the OS refusing a write (disk full,
            # read-only, a name too long), are one line and exit code 2; no traceback.
            message = str(exc) if isinstance(exc, MergeIRError) else os_error_line(exc)
            click.echo(f"error: {' '.join(message.splitlines())}", err=True)
            ctx.exit(2)
        except click.UsageError as exc:  # a bad flag or choice: one line too, with the way out
            where = exc.ctx.command_path if exc.ctx is not None else "mergeir"
            message = " ".join(exc.format_message().splitlines())
            click.echo(f"error: {message} (see `{where} --help`)", err=True)
            ctx.exit(2)


class Number(click.ParamType):
    """A numeric flag checked by its :class:`~mergekit_ir.params.Param`, the declaration a
    registry field of the same name uses: finite, in range, an integer where meant. A bad
    value is one ``error:`` line naming the flag (not click's three-line usage error)."""

    name = "number"

    def __init__(self, declared: Param) -> None:
        self.declared = declared

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        flag = param.opts[0] if param is not None and param.opts else f"--{self.declared.name}"
        if isinstance(value, str):
            value = _number(value.strip(), self.declared.type, flag)
        return self.declared.check_scalar(value, flag)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self.declared.type.__name__.upper()


def _number(text: str, typ: type, flag: str) -> Any:
    """``text`` as ``typ``; an integer may be written ``1e3`` when it is one exactly."""
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{flag}: {short_repr(text)} is not a number") from None
    if typ is int:
        try:
            return int(text)
        except ValueError:
            if value.is_integer():
                return int(value)  # the declared range then names the bound
            raise ConfigError(f"{flag}: {short_repr(text)} is not an integer") from None
    return value


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
    # read when transformers / huggingface_hub are imported: a merge never imports them (~1 s)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for noisy in ("transformers", "huggingface_hub", "bm25s", "numba", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # imported already: its settings are fixed, set them
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def _registry(path: str | None):
    from mergekit_ir.experiments.registry import default_registry_path, load_registry

    return load_registry(Path(path) if path else default_registry_path())


def _cache(cache_dir: str | None, no_cache: bool):
    from mergekit_ir.storage.cache import Cache

    return Cache(resolve_cache_root(cache_dir), enabled=not no_cache)


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
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto, cpu, cuda, cuda:1, mps; cuda:0,cuda:1 or cuda:all split each pass over GPUs.",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    help="Scoring dtype (default: the experiment's, auto = bf16 on CUDA, fp32 on CPU).",
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=None,
    help="Scoring backend: torch, onnx, onnx-int8, openvino, openvino-int8 (CPU, fp32 weights), or "
    "auto: the scorer's measured-faster compiled backend for passes long enough to pay for the "
    "export, else torch (default: the experiment's, auto). See docs/scorers.md.",
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
    "--save-best",
    "save_best",
    type=click.Path(file_okay=False),
    help="After the run, write the tuned Θ' here (one sub-folder per triplet/α when several).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Refuse what is otherwise a warning in the report (e.g. a randomly initialised head).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Show where every checkpoint and dataset comes from and what will run; load nothing.",
)
@click.option(
    "--estimate",
    is_flag=True,
    help="With --dry-run: run the first stage and a short throughput probe of each ΘT scorer, "
    "and print the pairs, documents and estimated time of the run.",
)
@click.option(
    "--executor",
    help="Where triplet jobs run: local (default) or ray; default: the experiment's executor.",
)
@click.option(
    "--executor-param",
    "executor_params",
    multiple=True,
    help="An executor option NAME=VALUE (repeatable), e.g. workers=2 for ray; "
    "`mergeir plugins` lists each executor's options.",
)
# Deprecated spellings of --executor-param for the ray executor (kept one release, hidden).
@click.option("--address", hidden=True)
@click.option("--gpus-per-worker", hidden=True)
@click.option("--workers", hidden=True)
def run(
    experiment: str,
    registry_path: str | None,
    datasets: tuple[str, ...],
    out_dir: str | None,
    device: str,
    dtype: str | None,
    backend: str | None,
    batch_size: int | None,
    cache_dir: str | None,
    no_cache: bool,
    quiet: bool,
    save_best: str | None,
    strict: bool,
    dry_run: bool,
    estimate: bool,
    executor: str | None,
    executor_params: tuple[str, ...],
    address: str | None,
    gpus_per_worker: str | None,
    workers: str | None,
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
      mergeir run paper-table1 --dry-run --estimate --device cuda   # and what it will cost
      mergeir run paper-table1 --executor ray --executor-param address=auto \\
          --executor-param gpus_per_worker=1
    """
    from mergekit_ir.experiments.jobs import resolve_executor
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
            strict=strict,
        )
        click.echo(plan)
        if problems:
            raise ConfigError(
                f"{experiment}: {problems} problem(s) to fix before running "
                "(lines marked MISSING, UNKNOWN or MISMATCH above)"
            )
        if estimate:
            from mergekit_ir.experiments.estimate import estimate_lines
            from mergekit_ir.experiments.runner import ExperimentRun

            opts = RunOptions(
                out,
                _cache(cache_dir, no_cache),
                device=device,
                dtype=dtype,
                backend=backend,
                batch_size=batch_size,
                datasets=datasets or None,
                progress=False,
                echo=lambda _msg: None,
            )
            for line in estimate_lines(ExperimentRun(reg, experiment, opts)):
                click.echo(line)
        return
    if estimate:
        raise ConfigError("--estimate goes with --dry-run")
    if save_best:
        _check_save_best(Path(save_best))
    exp = reg.experiment(experiment)
    from mergekit_ir.experiments.runner import check_output_folder, run_inputs

    cache = _cache(cache_dir, no_cache)
    check_output_folder(out, run_inputs(reg, exp, cache.root))  # before any work or banner
    overrides = _parse_params(executor_params, "--executor-param")
    for flag, name, value in (
        ("--address", "address", address),
        ("--gpus-per-worker", "gpus_per_worker", gpus_per_worker),
        ("--workers", "workers", workers),
    ):
        if value is not None:  # deprecated: the same as --executor-param NAME=VALUE
            click.echo(f"warning: {flag} is deprecated; use --executor-param {name}=...", err=True)
            overrides[name] = yaml.safe_load(value)
    opts = RunOptions(
        executor=resolve_executor(
            exp.executor, exp.executor_params, f"experiments.{experiment}", executor, overrides
        ),
        out_dir=out,
        cache=cache,
        device=device,
        datasets=datasets or None,
        progress=not quiet,
        batch_size=batch_size,
        dtype=dtype,
        strict=strict,
        echo=click.echo,
        backend=backend,
    )
    if experiment == "quickstart":
        click.echo(
            "quickstart: a smoke demo on a toy collection with tiny random models — its numbers mean nothing."
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
    if save_best:
        _save_best(out, Path(save_best), quiet)


def _check_save_best(target: Path) -> None:
    """Before the run: --save-best must be writable at the end, not fail after the work."""
    from mergekit_ir.merging.engine import OUTPUT_MARKER
    from mergekit_ir.storage.output_folder import check_path_names, check_writable

    check_path_names(target, "--save-best")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--save-best {target}: is a file; give a folder for Θ'")
    ours = [target / OUTPUT_MARKER, *target.glob(f"*/{OUTPUT_MARKER}")] if target.is_dir() else []
    if target.is_dir() and any(target.iterdir()) and not any(p.is_file() for p in ours):
        raise ConfigError(
            f"--save-best {target}: exists and is not an earlier merge output; "
            "choose an empty or new folder"
        )
    check_writable(target, "--save-best")


def _save_best(run_dir: Path, target: Path, quiet: bool) -> None:
    """``run --save-best``: the run's tuned Θ', as ``merge --from-run`` writes it."""
    from mergekit_ir.api.from_run import prepare_selection, selections
    from mergekit_ir.api.merge import write_merge

    found = selections(run_dir)
    for sel in found:
        folder = target
        if len(found) > 1:
            same_triplet = [s for s in found if s.triplet == sel.triplet]
            suffix = f"-{'-'.join(sel.datasets)}" if len(same_triplet) > 1 else ""
            folder = target / f"{sel.triplet}{suffix}"
        report = write_merge(prepare_selection(sel), folder, overwrite=True, progress=not quiet)
        click.echo(
            f"saved {sel.triplet} Θ' (α={sel.alpha}, tuned on {', '.join(sel.datasets)}) to {report.out}"
        )


def _recorded(ref: str) -> str:
    """How a saved τ records an input: a local path resolved (it must still mean the same
    folder from elsewhere), a hub id as given; a ``lora:``/``task_vector:`` prefix kept."""
    from mergekit_ir.references.checkpoints import DomainRef

    d = DomainRef.parse(ref)
    path = Path(d.ref).expanduser()
    return DomainRef(str(path.resolve()) if path.exists() else d.ref, d.kind).text()


def _parse_params(items: tuple[str, ...], flag: str = "--param") -> dict[str, Any]:
    """``NAME=VALUE`` pairs (values read as YAML) for --param, --option and --executor-param."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {short_repr(item)}: write NAME=VALUE, e.g. {flag} name=0.5")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"{flag} {short_repr(item)}: the value is not valid YAML") from None
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
@click.option(
    "--from-run",
    "from_run",
    type=click.Path(file_okay=False),
    help="Write the Θ' a finished `mergeir run` tuned (its method, parameters and α).",
)
@click.option("--triplet", "triplet_opt", help="With --from-run: the triplet to write.")
@click.option("--dataset", help="With --from-run: the dataset whose tuned α to use.")
@click.option(
    "--corpus",
    "corpus_spec",
    help="Text source of a data-aware method (regmean): registry dataset, BEIR folder, .jsonl or .txt.",
)
@click.option(
    "--mergekit-config",
    "mergekit_config",
    type=click.Path(dir_okay=False),
    help="A mergekit YAML recipe to run instead (same tensors as mergekit-yaml; docs/merging.md).",
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
    from_run: str | None,
    triplet_opt: str | None,
    dataset: str | None,
    mergekit_config: str | None,
    quiet: bool,
    corpus_spec: str | None = None,
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
      mergeir merge --from-run mergeir-out/quickstart --out best/   # the α the run tuned
      mergeir merge --mergekit-config recipe.yml --out merged/     # a mergekit recipe
      mergeir merge quickstart-tiny --method regmean --corpus quickstart-toy --out merged/
    """
    from mergekit_ir.api.merge import prepare_merge
    from mergekit_ir.merging.engine import provenance as made_of
    from mergekit_ir.merging.method import check_alpha
    from mergekit_ir.plugin_host import catalog
    from mergekit_ir.references.checkpoints import DomainRef
    from mergekit_ir.scoring.scorer import resolve_device

    resolve_device(device)  # a bad --device fails before anything is read
    from mergekit_ir.merging.safetensors_writer import parse_size

    shard_bytes = parse_size(out_shard_size)  # and a bad --out-shard-size
    triplet = triplet or triplet_opt
    if corpus_spec is not None and (mergekit_config is not None or from_run is not None):
        raise ConfigError(
            "--corpus goes with a data-aware --method (regmean); --from-run reads the run's "
            "dataset corpus and --mergekit-config recipes are data-free"
        )
    if mergekit_config is not None:
        _merge_recipe(
            mergekit_config,
            (triplet, ir_ref, pre_ref, domain_refs, from_run, params, registry_path),
            method != "task_arithmetic" or alpha != "1.0",
            plan,
            out_dir,
            shard_bytes,
            overwrite,
            device,
            allow_nonfinite,
            quiet,
        )
        return
    if from_run is not None:
        if ir_ref or pre_ref or domain_refs or registry_path:
            raise ConfigError(
                "--from-run takes the triplet from the run; drop --ir/--pretrained/--domain/--registry"
            )
        from mergekit_ir.api.from_run import one_selection, prepare_selection

        selection = one_selection(from_run, triplet, dataset)
        click.echo(
            f"{selection.triplet}: {selection.method} with α={selection.alpha} "
            f"(tuned on {', '.join(selection.datasets)} by {from_run})"
        )
        prepared = prepare_selection(selection, allow_nonfinite)
        _finish_merge(prepared, plan, out_dir, shard_bytes, overwrite, device, quiet)
        return
    if dataset is not None:
        raise ConfigError("--dataset goes with --from-run")
    try:
        alpha_value = yaml.safe_load(alpha)
    except yaml.YAMLError:
        raise ConfigError(f"--alpha {short_repr(alpha)}: not a number or YAML value") from None
    if alpha_value is None:
        raise ConfigError(f"--alpha {short_repr(alpha)}: empty; give a number, e.g. --alpha 0.5")
    mm = catalog().merge_method(method, "--method")
    if mm.param("alpha") is not None:
        alpha_value = check_alpha(mm, alpha_value, "--alpha")
    given = {**_parse_params(params), "alpha": alpha_value}
    if triplet:
        if ir_ref or pre_ref or domain_refs:
            raise ConfigError(
                "give either a registry TRIPLET or --ir/--pretrained/--domain, not both"
            )
        from mergekit_ir.api.triplet_merge import prepare_triplet_merge

        prepared = prepare_triplet_merge(
            _registry(registry_path),
            triplet,
            method=method,
            params=given,
            allow_nonfinite=allow_nonfinite,
            cache_root=_cache(None, False).root,
            corpus=corpus_spec,
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
            provenance=made_of(str(ir_ref), pre_ref, list(domain_refs)),
            corpus=corpus_spec,
            corpora=_named_corpora(corpus_spec, registry_path),
        )
    _finish_merge(prepared, plan, out_dir, shard_bytes, overwrite, device, quiet)


def _named_corpora(corpus_spec: str | None, registry_path: str | None) -> Any:
    """The registry's datasets as corpora, when ``--corpus`` names one (not a path)."""
    if corpus_spec is None or Path(corpus_spec).expanduser().exists():
        return None
    from mergekit_ir.experiments.sources import registry_corpora

    return registry_corpora(_registry(registry_path), _cache(None, False).root)


def _merge_recipe(
    recipe_path: str,
    others: tuple[Any, ...],
    method_given: bool,
    plan: bool,
    out_dir: str | None,
    shard_bytes: int,
    overwrite: bool,
    device: str,
    allow_nonfinite: bool,
    quiet: bool,
) -> None:
    """``merge --mergekit-config``: the recipe says everything a merge needs."""
    from mergekit_ir.api.recipe import (
        describe_recipe,
        load_recipe,
        prepare_recipe_merge,
        write_recipe_merge,
    )

    if any(others) or method_given:
        raise ConfigError(
            "--mergekit-config takes models, method and parameters from the recipe; drop "
            "TRIPLET/--ir/--pretrained/--domain/--from-run/--method/--alpha/--param"
        )
    recipe = load_recipe(recipe_path)
    prepared = prepare_recipe_merge(
        recipe, cache_root=resolve_cache_root(None), allow_nonfinite=allow_nonfinite
    )
    if plan:
        click.echo("\n".join(describe_recipe(recipe, prepared)))
    _finish_merge(
        prepared, plan, out_dir, shard_bytes, overwrite, device, quiet, write=write_recipe_merge
    )


def _finish_merge(
    prepared, plan, out_dir, shard_bytes, overwrite, device, quiet, write=None
) -> None:
    """``--plan``: the table; else write Θ' (``write``: how, e.g. a recipe's own writer)."""
    from mergekit_ir.api.merge import write_merge

    if plan:
        click.echo(prepared.plan.table(prepared.job.params))
        return
    if not out_dir:
        raise ConfigError("--out DIR is required (or use --plan to only print the plan)")
    report = (write or write_merge)(
        prepared,
        out_dir,
        shard_size=shard_bytes,
        overwrite=overwrite,
        device=device,
        progress=not quiet,
        **({} if write is not None else {"echo": click.echo}),  # a data-aware method's lines
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
@click.option(
    "--steps", type=Number(ADAPT_PARAMS["steps"]), help="Optimizer steps (default: one epoch)."
)
@click.option("--epochs", type=Number(ADAPT_PARAMS["epochs"]), help="Passes over the corpus.")
@click.option(
    "--max-length", default=256, show_default=True, type=Number(ADAPT_PARAMS["max_length"])
)
@click.option(
    "--batch-size", default=32, show_default=True, type=Number(ADAPT_PARAMS["batch_size"])
)
@click.option("--lr", default=5e-5, show_default=True, type=Number(ADAPT_PARAMS["lr"]))
@click.option(
    "--warmup",
    default=0.06,
    show_default=True,
    type=Number(ADAPT_PARAMS["warmup"]),
    help="Fraction (<1) or steps.",
)
@click.option("--seed", default=0, show_default=True, type=Number(ADAPT_PARAMS["seed"]))
@click.option(
    "--lora", "lora_spec", help="Train a LoRA adapter, e.g. r=16,alpha=32,targets=query,value."
)
@click.option(
    "--head-warmup",
    default=100,
    show_default=True,
    type=Number(ADAPT_PARAMS["head_warmup"]),
    help="Steps training only a fresh MLM head (encoder frozen) when the base has none.",
)
@click.option(
    "--freeze-head", is_flag=True, help="Keep the LM head fixed (only the encoder moves)."
)
@click.option(
    "--checkpoint-every",
    default=200,
    show_default=True,
    type=click.IntRange(min=0),
    help="Steps between resumable checkpoints (0: by time only).",
)
@click.option(
    "--checkpoint-minutes",
    default=2.0,
    show_default=True,
    type=Number(
        Param("checkpoint_minutes", float, 2.0, "minutes between checkpoints", min=0.0, max=1e6)
    ),
    help="Also checkpoint when this many minutes passed (0: by steps only); Ctrl-C loses at most this.",
)
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
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an earlier `mergeir adapt` output (never a folder it did not write).",
)
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
    checkpoint_minutes: float,
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
    Rerunning the same command after an interruption resumes from the last checkpoint
    (saved every --checkpoint-every steps and every --checkpoint-minutes); rerunning it once
    ΘD is written says so and does nothing. The base, the corpus and the output folder are
    checked before any work.
    """
    from mergekit_ir.adaptation.build import adapt as run_adapt
    from mergekit_ir.adaptation.training import AdaptSettings, LoraSpec
    from mergekit_ir.references.checkpoints import resolve_checkpoint
    from mergekit_ir.scoring.scorer import resolve_device

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
    cache_root = resolve_cache_root(cache_dir)
    corpora = None
    if not Path(corpus_spec).exists():
        from mergekit_ir.experiments.sources import registry_corpora

        corpora = registry_corpora(_registry(registry_path), cache_root)
    base = resolve_checkpoint(base_ref, cache_root=cache_root)
    info = run_adapt(
        base,
        corpus_spec,
        Path(out_dir),
        settings,
        dev,
        corpora=corpora,
        cache_root=cache_root,
        checkpoint_every=checkpoint_every,
        checkpoint_minutes=checkpoint_minutes,
        overwrite=overwrite,
        show_progress=not quiet,
    )
    if info.get("already_built"):
        click.echo(
            f"{out_dir}: already built by this command (same base, corpus and settings; run key "
            f"{info['run_key']}); nothing to do — delete it or change a setting to build again"
        )
        return
    click.echo(
        f"wrote {out_dir} ({info['objective']}, {info['steps']} steps"
        + (f" + {info['head_warmup_steps']} head warm-up" if info["head_warmup_steps"] else "")
        + f", {info['tokens_seen']} tokens, {info['tokens_per_s']:.0f} tokens/s)"
    )


_BITS = click.Choice(["8", "4", "3", "2"])


def _quant_options(f: Any) -> Any:
    for opt in reversed(
        [
            click.option(
                "--group-size",
                type=Number(Param("group_size", int, 128, min=1, max=2**16)),
                default=128,
                show_default=True,
                help="Values per quantization group along each tensor's last dimension.",
            ),
            click.option(
                "--keep-full", metavar="REGEX", help="Tensors whose name matches stay fp16."
            ),
            click.option(
                "--keep-full-below",
                type=click.IntRange(0),
                default=4096,
                show_default=True,
                help="Tensors with fewer values stay fp16 (1-D biases and norms always do).",
            ),
        ]
    ):
        f = opt(f)
    return f


def _spec(bits: str | None, group_size: int, keep_full: str | None, below: int, default: int):
    from mergekit_ir.merging.quantized_store import QuantSpec

    return QuantSpec(int(bits) if bits else default, group_size, keep_full, below)


def _domain_name(ref: str, taken: set[str]) -> str:
    from mergekit_ir.references.checkpoints import DomainRef

    name = DomainRef.parse(ref).ref.rstrip("/").rsplit("/", 1)[-1]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "tau"
    base, i = name, 2
    while name in taken or name == "base":
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


@main.group(
    "task-vector", invoke_without_command=True, context_settings={"ignore_unknown_options": False}
)
@click.option("--pretrained", "pre_ref", help="Θ0 (hub id or folder).")
@click.option(
    "--domain",
    "domain_refs",
    multiple=True,
    help="ΘD (hub id or folder; repeatable with --residual, NAME=REF names the vector).",
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where to save τ.")
@click.option("--bits", type=_BITS, help="Quantize τ to this many bits (TVQ); default fp32.")
@_quant_options
@click.option(
    "--residual",
    is_flag=True,
    help="Residual TVQ over several --domain: shared base + per-vector offsets.",
)
@click.option(
    "--base-bits", type=_BITS, default="3", show_default=True, help="Bits of the RTVQ base."
)
@click.option(
    "--info",
    "info_dir",
    type=click.Path(exists=True),
    help="Print bits, size and per-tensor error of a saved τ and exit.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing folder.")
@click.option("--allow-nonfinite", is_flag=True, help="Save τ even if it has NaN/Inf values.")
@click.pass_context
def task_vector(
    ctx: click.Context,
    pre_ref: str | None,
    domain_refs: tuple[str, ...],
    out_dir: str | None,
    bits: str | None,
    group_size: int,
    keep_full: str | None,
    keep_full_below: int,
    residual: bool,
    base_bits: str,
    info_dir: str | None,
    overwrite: bool,
    allow_nonfinite: bool,
) -> None:
    """Save τ = ΘD − Θ0 as safetensors, reusable without its models; optionally quantized.

    \b
    Examples:
      mergeir task-vector --pretrained bert-base-uncased --domain my/bio-bert --out tau-bio/
      mergeir task-vector --pretrained P --domain D --bits 4 --out tau-bio-4bit/
      mergeir task-vector --pretrained P --domain bio=D1 --domain sci=D2 --residual --out rtvq/
      mergeir task-vector quantize tau-bio/ tau-bio-4bit/ --bits 4
      mergeir task-vector --info tau-bio-4bit/
      # then in registry.yaml:  domain: {task_vector: tau-bio-4bit/}  (or rtvq/bio)
    """
    if ctx.invoked_subcommand is not None:
        return
    from mergekit_ir.merging import quantized_store as qs

    if info_dir:
        click.echo(qs.info(info_dir))
        return
    if not pre_ref or not domain_refs or not out_dir:
        raise ConfigError(
            "mergeir task-vector needs --pretrained, --domain and --out "
            "(or --info DIR, or the quantize subcommand)"
        )
    from mergekit_ir.experiments.registry import check_name
    from mergekit_ir.merging.checkpoint import open_checkpoint
    from mergekit_ir.merging.task_vector import TaskVector
    from mergekit_ir.references.checkpoints import DomainRef
    from mergekit_ir.storage.output_folder import OutputKind, check_output

    pre = open_checkpoint(pre_ref, cache_root=resolve_cache_root(None))
    taken: set[str] = set()
    named = []
    for text in domain_refs:
        name, sep, ref = text.partition("=")
        if not sep:
            name, ref = _domain_name(text, taken), text
        else:  # the name becomes a folder under --out: never a path
            check_name(name, f"--domain {short_repr(text)}")
            if name == "base":
                raise ConfigError(f"--domain {short_repr(text)}: 'base' is the RTVQ base's folder")
            taken.add(name)
        named.append((name, ref, DomainRef.parse(ref)))
    kind = OutputKind(
        what="τ",
        marker="base/task_vector.json" if residual else "task_vector.json",
        earlier="saved task vector" if not residual else "RTVQ folder",
        error=CheckpointError,
    )
    inputs = [("--pretrained", pre.folder)] + [
        (f"--domain {name}", Path(d.ref)) for name, _, d in named if Path(d.ref).exists()
    ]
    check_output(out_dir, kind, inputs=inputs, overwrite=overwrite)
    named = [(n, ref, TaskVector.from_reference(d.kind, d.ref, pre)) for n, ref, d in named]
    if residual:
        spec = _spec(bits, group_size, keep_full, keep_full_below, default=2)
        from mergekit_ir.merging.residual import save_residual

        paths = save_residual(
            [(n, tv) for n, _, tv in named],
            out_dir,
            base_bits=int(base_bits),
            spec=spec,
            metadata={"pretrained": _recorded(pre_ref)},
            overwrite=overwrite,
            allow_nonfinite=allow_nonfinite,
        )
        click.echo(
            f"wrote {out_dir}: base ({base_bits}-bit) + {len(paths)} offsets ({spec.bits}-bit): "
            + ", ".join(p.name for p in paths)
        )
        return
    if len(named) > 1:
        raise ConfigError(
            "several --domain need --residual (or run mergeir task-vector per domain)"
        )
    _, domain_ref, tv = named[0]
    meta = {
        "pretrained": _recorded(pre_ref),
        "domain": _recorded(domain_ref),
        **qs.source_fingerprints(tv),
    }
    if bits:
        spec = _spec(bits, group_size, keep_full, keep_full_below, default=4)
        path = qs.save_quantized(
            tv, out_dir, spec, meta, overwrite=overwrite, allow_nonfinite=allow_nonfinite
        )
        click.echo(f"wrote {path} ({len(tv.keys())} tensors, {spec.bits}-bit)")
        return
    path = tv.save(out_dir, meta, overwrite=overwrite, allow_nonfinite=allow_nonfinite)
    click.echo(f"wrote {path} ({len(tv.keys())} tensors)")


@task_vector.command("quantize")
@click.argument("src", type=click.Path(exists=True))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--bits", type=_BITS, required=True, help="Bits per value.")
@_quant_options
@click.option("--overwrite", is_flag=True, help="Replace an existing folder.")
def task_vector_quantize(
    src: str,
    out: str,
    bits: str,
    group_size: int,
    keep_full: str | None,
    keep_full_below: int,
    overwrite: bool,
) -> None:
    """Quantize a saved task vector SRC into OUT (TVQ).

    \b
    Example:
      mergeir task-vector quantize tau-bio/ tau-bio-4bit/ --bits 4
    """
    from mergekit_ir.merging import quantized_store as qs
    from mergekit_ir.merging.task_vector import TaskVector

    tv = TaskVector.load(src)
    meta = {
        k: v
        for k, v in tv.terms[-1][1].metadata.items()
        if k in ("pretrained", "domain", "fingerprint_pretrained", "fingerprint_domain")
    }
    meta["quantized_from"] = str(src)
    spec = _spec(bits, group_size, keep_full, keep_full_below, default=4)
    path = qs.save_quantized(tv, out, spec, meta, overwrite=overwrite)
    click.echo(f"wrote {path} ({len(tv.keys())} tensors, {spec.bits}-bit)")


@main.command("rerank")
@click.argument("model")
@click.option(
    "--dataset", "datasets", multiple=True, required=True, help="Registry dataset (repeatable)."
)
@click.option(
    "--scorer", required=True, help="Scorer kind that loads MODEL (see `mergeir plugins`)."
)
@click.option("--option", "options", multiple=True, help="Scorer option NAME=VALUE (repeatable).")
@click.option("--experiment", help="Take first stage, k, fusion and metrics from this experiment.")
@click.option(
    "--first-stage", "first_stage", help="First-stage backend (default: the experiment's, bm25s)."
)
@click.option(
    "--k", type=click.IntRange(1), help="Candidates per query (default: the experiment's)."
)
@click.option("--registry", "registry_path", type=click.Path(dir_okay=False), help="Registry YAML.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Write TREC runs here.")
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto, cpu, cuda, cuda:1, mps; cuda:0,cuda:1 or cuda:all split each pass over GPUs.",
)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Cache folder.")
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=None,
    help="Scoring backend: torch, onnx, onnx-int8, openvino, openvino-int8 (CPU, fp32 weights), or "
    "auto: the scorer's measured-faster compiled backend for passes long enough to pay for the "
    "export, else torch (default: the experiment's, auto). See docs/scorers.md.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def rerank_cmd(
    model: str,
    datasets: tuple[str, ...],
    scorer: str,
    options: tuple[str, ...],
    experiment: str | None,
    first_stage: str | None,
    k: int | None,
    registry_path: str | None,
    out_dir: str | None,
    device: str,
    cache_dir: str | None,
    backend: str | None,
    quiet: bool,
) -> None:
    """Re-rank with one MODEL (a merged folder, any checkpoint of a scorer kind), no triplet.

    Same first stage, fusion (the protocol's fixed λ) and metrics as `mergeir run`; the
    table shows the first stage alone, the model alone and the model fused with it.

    \b
    Example:
      mergeir rerank merged/ --scorer bi-encoder --option pooling=mean --dataset scifact
    """
    from mergekit_ir.evaluation.trec_runs import write_trec
    from mergekit_ir.experiments.rerank_model import rerank_model
    from mergekit_ir.experiments.runner import RunOptions
    from mergekit_ir.storage import atomic
    from mergekit_ir.storage.output_folder import OutputKind, check_output

    rerank_output = OutputKind(
        what="the TREC runs", marker="rerank.json", earlier="`mergeir rerank`", overwrite_flag=None
    )
    if out_dir:  # checked before any scoring: a refusal after it would throw the work away
        model_path = Path(model)
        inputs = [("MODEL", model_path)] if model_path.exists() else []
        check_output(out_dir, rerank_output, inputs=inputs)
    reg = _registry(registry_path)
    opts = RunOptions(
        out_dir=Path(out_dir or "."),
        cache=_cache(cache_dir, False),
        device=device,
        progress=not quiet,
        echo=click.echo,
        backend=backend,
    )
    results = rerank_model(
        reg,
        model,
        scorer,
        _parse_params(options, "--option"),
        list(datasets),
        opts,
        experiment,
        first_stage,
        k,
    )
    for r in results:
        metrics = list(next(iter(r.means.values())))
        click.echo(f"\n{r.dataset} (test)")
        click.echo("| row | " + " | ".join(metrics) + " |")
        click.echo("|:---|" + "---:|" * len(metrics))
        for row, means in r.means.items():
            click.echo(f"| {row} | " + " | ".join(f"{means[m]:.4f}" for m in metrics) + " |")
    if out_dir:  # all files or none, replacing only an earlier rerank output
        with atomic.directory(out_dir, overwrite=True) as tmp:
            for r in results:
                for row, run in r.runs.items():
                    write_trec(tmp / r.dataset / f"{row.replace(' ', '_')}.trec", run, row)
            summary = {
                "model": model,
                "scorer": scorer,
                "means": {r.dataset: r.means for r in results},
            }
            (tmp / rerank_output.marker).write_text(json.dumps(summary, indent=1, sort_keys=True))
        click.echo(f"\nTREC runs in {out_dir}/")


@main.command("eval")
@click.argument("runs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--dataset", "dataset_name", required=True, help="Registry dataset whose qrels judge the run."
)
@click.option(
    "--split", help="Split spec (default: the dataset's test split), e.g. test or dev[:20%]."
)
@click.option(
    "--registry",
    "registry_path",
    type=click.Path(dir_okay=False),
    help="Registry YAML holding DATASET.",
)
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    help="Metric (repeatable; default P@10, NDCG@3, NDCG@10, MAP@100).",
)
@click.option(
    "--queries",
    type=click.Choice(["all", "retrieved"]),
    default="all",
    show_default=True,
    help="Average over every judged query, or (as BEIR does) those the run retrieved for.",
)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Cache folder (datasets).")
def eval_cmd(
    runs: tuple[str, ...],
    dataset_name: str,
    split: str | None,
    registry_path: str | None,
    metrics: tuple[str, ...],
    queries: str,
    cache_dir: str | None,
) -> None:
    """Evaluate TREC RUNS (from BEIR, PyTerrier, ranx or `mergeir run`'s runs/) on a dataset.

    The metrics are the ones `mergeir run` reports (ranx, trec_eval's tie-breaking), so a
    run file from runs/ evaluates to the same numbers as its row in results.json.

    \b
    Example:
      mergeir eval mergeir-out/quickstart/runs/quickstart-tiny/quickstart-toy/ir.trec \\
          --dataset quickstart-toy
    """
    from mergekit_ir.evaluation.metrics import evaluate, mean_scores, ranx_metric
    from mergekit_ir.evaluation.trec_runs import read_trec
    from mergekit_ir.experiments.registry import Experiment
    from mergekit_ir.experiments.sources import load_dataset

    names = list(metrics or Experiment.__dataclass_fields__["metrics"].default)
    for m in names:
        ranx_metric(m)  # an unknown metric fails before the data is read
    reg = _registry(registry_path)
    spec = reg.dataset(dataset_name)
    ds = load_dataset(spec, split or spec.test, reg.base_dir, _cache(cache_dir, False).root)
    header = "| run | " + " | ".join(names) + " |"
    lines = [header, "|:---|" + "---:|" * len(names)]
    for path in runs:
        run = read_trec(path)
        unknown = len(set(run) - set(ds.queries))
        if unknown == len(run):
            raise ConfigError(
                f"{path}: none of its {len(run)} queries is in {dataset_name}:{split or spec.test}; "
                "is it a run of another dataset or split?"
            )
        qrels = ds.qrels if queries == "all" else {q: r for q, r in ds.qrels.items() if run.get(q)}
        means = mean_scores(evaluate(qrels, run, names))
        lines.append(f"| {path} | " + " | ".join(f"{means[m]:.4f}" for m in names) + " |")
        if unknown:
            click.echo(
                f"note: {path}: {unknown} queries are not in the split and were ignored", err=True
            )
    click.echo(f"{dataset_name}:{split or spec.test}, {len(ds.qrels)} judged queries ({queries})")
    click.echo("\n".join(lines))


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
    from mergekit_ir.results import load_results

    results = load_results(run_dir)
    try:
        written = write_reports(results, Path(run_dir))
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # odd values in the file
        raise ConfigError(
            f"{Path(run_dir) / 'results.json'}: cannot be rendered ({type(exc).__name__}: "
            f"{exc}); rerun the experiment"
        ) from None
    for p in written:
        click.echo(f"wrote {p}")


def _register_api_commands() -> None:
    """``mergeir push DIR REPO`` (mergekit_ir.api.hub) and ``mergeir export MODEL --to onnx``
    (mergekit_ir.api.export): commands whose code lives with the Python API they wrap."""
    from mergekit_ir.api.export import export_command
    from mergekit_ir.api.hub import push_command

    main.add_command(push_command)
    main.add_command(export_command)


_register_api_commands()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
