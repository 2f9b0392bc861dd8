"""Merge cost of every built-in merge method, against mergekit, and the in-place sweep's cost.

    python benchmarks/merge_methods_speed.py [--arch bert-large|bert-base|bert-tiny]
        [--llama-size-gb 1.0]
        [--methods all|ties,della,...] [--parts bert,mergekit-api,sweep,llama] [--repeat 1]
        [--workdir DIR] [--keep]

Three parts, each method in a fresh subprocess (peak RSS of the process tree polled every
20 ms, as ``merge_memory.py`` measures it), the inputs read once into page cache first:

1. **BERT** (``--arch``): a synthetic ``BertModel`` triplet with BERT-large's shapes (24
   layers, hidden 1024, 1.34 GB per checkpoint in fp32; ``bert-base``: 12 layers, hidden 768,
   0.44 GB — the reduced mode for a small machine). Θ0 is random, ΘD and ΘT are Θ0 plus small
   noise. For each method, ``ours`` is ``mergeir merge --ir ΘT --pretrained Θ0 --domain ΘD
   --method M --param …`` (its own clock: plan, read, merge, write, fsync) and ``mergekit API``
   is ``mergekit.merge_methods.api.merge_state_dicts`` on the same three state dicts (loaded
   with safetensors, merged, saved and fsynced; its merge alone is timed too), with our triplet
   mapped onto mergekit's inputs as docs/merge-methods.md and the oracle tests map it. Outputs
   are compared (max |ours − mergekit|): equal to fp32 rounding for the deterministic methods,
   different by construction for the random ones (dare, della: other RNG streams).
2. **Sweep**: the in-place sweep (``mergekit_ir.merging.sweep.InPlaceSweep``) on a
   ``BertModel`` loaded from ΘT: building it once (reads τ and Θ0 onto the device), then the
   time to move the live model to each new grid point (α = 0.3, 0.6, 0.9), against a fresh
   merge + load at each of those points (the streamed merge to a folder, then
   ``from_pretrained`` of it), in the same process; medians over the three points.
3. **Llama** (``--llama-size-gb``): the fp16 ``LlamaForCausalLM`` triplet of
   ``merge_memory.py``, where ``mergekit-yaml`` runs (mergekit 0.1.5 does not know BERT). For
   each mergekit method one recipe (``dtype: float16``); ours runs the same recipe with
   ``mergeir merge --mergekit-config`` where the recipe importer reproduces it, else (dare,
   della, sce, arcee_fusion: random masks or sampled statistics) ``mergeir merge --method``
   with the same parameters.

Every ratio is ours / mergekit in the same run, on the same inputs. mergekit is the
``oracle`` extra (``pip install -e .[oracle]``); without it the mergekit columns say so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import torch
import yaml
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from merge_memory import build_checkpoints, console_script, layers_for, measure  # noqa: E402
from merge_speed import max_difference, warm, weight_files, work_seconds  # noqa: E402

ALPHA = 0.5
#: method -> (our parameters, mergekit's inputs (b = Θ0, t = ΘT, d = ΘD), mergekit's base,
#: mergekit's parameters (lists: one value per non-base model)); None: no mergekit method.
#: The mappings of docs/merge-methods.md ("How α maps onto mergekit's parameters").
METHODS: dict[str, tuple[dict[str, Any], str, str | None, dict[str, Any]] | None] = {
    "task_arithmetic": ({"alpha": ALPHA}, "b t d", "b", {"weight": [1.0, ALPHA]}),
    "ties": (
        {"alpha": ALPHA, "density": 0.5},
        "b t d",
        "b",
        {"weight": [1.0, ALPHA], "density": 0.5, "normalize": False},
    ),
    "dare_ties": (
        {"alpha": ALPHA, "density": 0.5},
        "b t d",
        "b",
        {"weight": [1.0, ALPHA], "density": 0.5, "normalize": False},
    ),
    "dare_linear": (
        {"alpha": ALPHA, "density": 0.5},
        "b t d",
        "b",
        {"weight": [1.0, ALPHA], "density": 0.5},
    ),
    "magnitude_prune": None,
    "breadcrumbs": (
        {"alpha": ALPHA, "density": 0.9, "gamma": 0.01},
        "b t d",
        "b",
        {"weight": [1.0, ALPHA], "density": 0.9, "gamma": 0.01},
    ),
    "breadcrumbs_ties": (
        {"alpha": ALPHA, "density": 0.9, "gamma": 0.01},
        "b t d",
        "b",
        {"weight": [1.0, ALPHA], "density": 0.9, "gamma": 0.01, "normalize": False},
    ),
    "della": (
        {"alpha": ALPHA, "density": 0.5, "epsilon": 0.15},
        "b t d",
        "b",
        {"weight": [1.0, ALPHA], "density": 0.5, "epsilon": 0.15, "normalize": False},
    ),
    "della_linear": (
        {"alpha": ALPHA, "density": 0.5, "epsilon": 0.15},
        "b t d",
        "b",
        {"weight": [1.0, ALPHA], "density": 0.5, "epsilon": 0.15},
    ),
    "sce": ({"alpha": 1.0, "select_topk": 0.5}, "b t d", "b", {"select_topk": 0.5}),
    "linear": ({"alpha": ALPHA}, "t d", None, {"weight": [1 - ALPHA, ALPHA]}),
    "slerp": ({"alpha": ALPHA}, "t d", "t", {"t": ALPHA}),
    "nuslerp": ({"alpha": ALPHA}, "b t d", "b", {"weight": [1 - ALPHA, ALPHA]}),
    "multislerp": ({"alpha": ALPHA}, "b t d", "b", {"weight": [1 - ALPHA, ALPHA]}),
    "karcher": ({"alpha": 0.5}, "t d", None, {}),
    "model_stock": ({}, "b t d", "b", {}),
    "ram": ({}, "b t d", "b", {}),
    "ramplus_tl": ({"r": 0.1, "rho_max": 0.2}, "b t d", "b", {"r": 0.1, "alpha": 0.2}),
    "nearswap": ({"t": 0.01}, "t d", "t", {"t": 0.01}),
    "arcee_fusion": ({}, "t d", "t", {}),
}
#: Methods ``mergeir merge --mergekit-config`` reproduces (the others are refused in a recipe).
RECIPE_METHODS = {
    "task_arithmetic",
    "ties",
    "breadcrumbs",
    "breadcrumbs_ties",
    "linear",
    "slerp",
    "nuslerp",
    "multislerp",
    "karcher",
    "model_stock",
    "nearswap",
    "ram",
    "ramplus_tl",
}
RANDOM = {"dare_ties", "dare_linear", "della", "della_linear"}
GRID = (0.3, 0.6, 0.9)
#: --arch: (hidden size, layers, heads); bert-tiny is a smoke check of the script itself
ARCHS = {"bert-large": (1024, 24, 16), "bert-base": (768, 12, 12), "bert-tiny": (64, 2, 2)}

MERGEKIT_API = r"""
import json, os, sys, time
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file

spec = json.loads(sys.argv[1])
start = time.perf_counter()
models = {k: load_file(str(p)) for k, p in spec["models"].items()}
loaded = time.perf_counter()
from mergekit.merge_methods.api import merge_state_dicts

imported = time.perf_counter()
out = merge_state_dicts(
    models, spec["method"], parameters=spec["parameters"], base=spec["base"], dtype=torch.float32
)
merged = time.perf_counter()
del models
path = Path(spec["out"]) / "model.safetensors"
path.parent.mkdir(parents=True, exist_ok=True)
save_file({k: v.contiguous() for k, v in out.items()}, str(path), metadata={"format": "pt"})
fd = os.open(path, os.O_RDONLY)
os.fsync(fd)
os.close(fd)
done = time.perf_counter()
print(f"load {loaded - start:.3f}")
print(f"merge {merged - imported:.3f}")
print(f"work {done - start - (imported - loaded):.3f}")
"""

SWEEP = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
import torch
from transformers import BertModel
from mergekit_ir.merging.checkpoint import open_checkpoint
from mergekit_ir.merging.engine import MergeJob, build_plan, merge_to_folder
from mergekit_ir.merging.sweep import InPlaceSweep
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.params import check_params
from mergekit_ir.plugin_host import catalog

spec = json.loads(sys.argv[1])
mm = catalog().merge_method(spec["method"])
params = check_params(mm.params, spec["params"], "--param", spec["method"])
ir, pre, dom = (open_checkpoint(spec[k]) for k in ("ir", "pretrained", "domain"))
job = MergeJob(ir, [TaskVector.from_checkpoints(pre, dom)], mm, params, pretrained=pre)
plan = build_plan(job)
start = time.perf_counter()
model = BertModel.from_pretrained(spec["ir"]).eval()
load_s = time.perf_counter() - start
start = time.perf_counter()
sweep = InPlaceSweep(model, job, plan)
setup_s = time.perf_counter() - start
points = []
for a in spec["grid"]:
    start = time.perf_counter()
    sweep.apply({**params, "alpha": a})
    points.append(time.perf_counter() - start)
rss_sweep = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
del sweep, model
fresh_merge, fresh_load = [], []
for a in spec["grid"]:  # the same points, each a fresh streamed merge and load
    fresh_job = MergeJob(ir, job.vectors, mm, {**params, "alpha": a}, pretrained=pre)
    with tempfile.TemporaryDirectory(dir=spec["tmp"]) as tmp:
        start = time.perf_counter()
        merge_to_folder(fresh_job, Path(tmp) / "m", progress=False, plan=build_plan(fresh_job))
        fresh_merge.append(time.perf_counter() - start)
        start = time.perf_counter()
        BertModel.from_pretrained(Path(tmp) / "m").eval()
        fresh_load.append(time.perf_counter() - start)
print(json.dumps({"load": load_s, "setup": setup_s, "points": points, "rss": rss_sweep,
                  "fresh_merge": fresh_merge, "fresh_load": fresh_load}))
"""  # fmt: skip


def bert_triplet(root: Path, arch: str, seed: int = 0) -> dict[str, Path]:
    """Θ0, ΘD, ΘT with ``BertModel``'s names and BERT-large's (or -base's) shapes, fp32."""
    from transformers import BertConfig, BertModel

    hidden, layers, heads = ARCHS[arch]
    config = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        architectures=["BertModel"],
    )
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in BertModel(config).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    base = {k: 0.02 * torch.randn(s, generator=gen) for k, s in shapes.items()}
    dirs = {}
    for name in ("pretrained", "domain", "ir"):
        folder = dirs[name] = root / name
        folder.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(folder)
        state = (
            base
            if name == "pretrained"
            else {k: v + 0.002 * torch.randn(v.shape, generator=gen) for k, v in base.items()}
        )
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        del state
    return dirs


def our_command(method: str, dirs: dict[str, Path], out: Path) -> list[str]:
    spec = METHODS[method]
    params = spec[0] if spec is not None else {"alpha": ALPHA, "density": 0.5}
    cmd = [console_script("mergeir"), "merge", "--ir", str(dirs["ir"]), "--pretrained",
           str(dirs["pretrained"]), "--domain", str(dirs["domain"]), "--method", method,
           "--out", str(out), "-q"]  # fmt: skip
    for k, v in params.items():
        cmd += ["--alpha", str(v)] if k == "alpha" else ["--param", f"{k}={v}"]
    return cmd


def mergekit_api_command(method: str, dirs: dict[str, Path], out: Path) -> list[str] | None:
    spec = METHODS[method]
    if spec is None:
        return None
    _, inputs, base, params = spec
    files = {"b": dirs["pretrained"], "t": dirs["ir"], "d": dirs["domain"]}
    payload = {
        "models": {i: str(files[i] / "model.safetensors") for i in inputs.split()},
        "method": method,
        "parameters": params,
        "base": base,
        "out": str(out),
    }
    return [sys.executable, "-c", MERGEKIT_API, json.dumps(payload)]


def recipe(method: str, dirs: dict[str, Path]) -> dict[str, Any]:
    """A mergekit recipe for ``method`` on the Llama triplet (fp16)."""
    spec = METHODS[method]
    assert spec is not None
    _, inputs, base, params = spec
    names = {"b": dirs["pretrained"], "t": dirs["ir"], "d": dirs["domain"]}
    ids = inputs.split()
    listed = [i for i in ids if i != base] if base is not None else ids
    if method in ("slerp", "nearswap"):
        listed = ids  # mergekit lists the base among slerp's models
    per_model = {k: v for k, v in params.items() if isinstance(v, list)}
    shared = {k: v for k, v in params.items() if not isinstance(v, list)}
    models = []
    non_base = [i for i in listed if i != base]
    for i in listed:
        entry: dict[str, Any] = {"model": str(names[i])}
        if i != base and per_model:
            j = non_base.index(i)
            entry["parameters"] = {k: v[j] for k, v in per_model.items()}
        models.append(entry)
    out: dict[str, Any] = {"merge_method": method, "models": models}
    if base is not None:
        out["base_model"] = str(names[base])
    if shared:
        out["parameters"] = shared
    out["dtype"] = "float16"
    return out


def run_once(cmd: list[str], log: Path, warm_files: list[Path]) -> tuple[int, float, str]:
    os.sync()
    warm(warm_files)
    peak, wall, _ = measure(cmd, log, dict(os.environ))
    return peak, wall, log.read_text()


def interleaved(
    cmds: dict[str, tuple[list[str], Path]], repeat: int, log_dir: Path, warm_files: list[Path]
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Each command ``repeat`` times, interleaved (A, B, A, B, …: a busy spell on this shared
    machine slows both, not one), each run into a fresh output. Per command: the best (min)
    and median of wall, work (the tool's own clock) and merge time, and the highest peak RSS;
    the runs that failed, by their last line."""
    runs: dict[str, dict[str, list[float]]] = {k: {} for k in cmds}
    failed: dict[str, str] = {}
    for _ in range(repeat):
        for key, (cmd, out) in cmds.items():
            if key in failed:
                continue
            clear(out)
            log = log_dir / f"{out.name}.log"
            try:
                peak, wall, text = run_once(cmd, log, warm_files)
            except SystemExit:
                lines = log.read_text().strip().splitlines()
                failed[key] = (lines or ["no output"])[-1][:160]
                print(f"  {out.name} failed: {failed[key]}", file=sys.stderr)
                continue
            got = runs[key]
            got.setdefault("wall", []).append(wall)
            got.setdefault("peak", []).append(peak)
            if (w := work_seconds(log)) is not None:
                got.setdefault("work", []).append(w)
            if m := re.search(r"^merge ([\d.]+)", text, re.M):
                got.setdefault("merge", []).append(float(m.group(1)))
    stats = {}
    for key, got in runs.items():
        if key in failed or not got:
            continue
        stats[key] = {"peak": max(got["peak"])}
        for name in ("wall", "work", "merge"):
            xs = got.get(name)
            stats[key][name] = min(xs) if xs else None
            stats[key][f"{name} median"] = median(xs) if xs else None
        print(f"  {key}: {stats[key]}", file=sys.stderr)
    return stats, failed


def clear(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def bert_part(args, methods, work: Path, dirs: dict[str, Path], parts: set[str]) -> list[dict]:
    rows = []
    inputs = [f for d in dirs.values() for f in weight_files(d)]
    for m in methods:
        row: dict[str, Any] = {"method": m}
        cmds = {}
        if "bert" in parts:
            cmds["ours"] = (our_command(m, dirs, work / f"bert-ours-{m}"), work / f"bert-ours-{m}")
        api = mergekit_api_command(m, dirs, work / f"bert-mergekit-api-{m}")
        if "mergekit-api" in parts and api is not None:
            cmds["mergekit-api"] = (api, work / f"bert-mergekit-api-{m}")
        stats, failed = interleaved(cmds, args.repeat, work, inputs)
        row.update(stats)
        row.update({f"{k} failed": v for k, v in failed.items()})
        a, b = work / f"bert-ours-{m}", work / f"bert-mergekit-api-{m}"
        if (a / "model.safetensors").is_file() and (b / "model.safetensors").is_file():
            row["max_diff"] = max_difference(a, b)
        clear(a)
        clear(b)
        if "sweep" in parts:
            spec = METHODS[m]
            params = dict(spec[0]) if spec is not None else {"alpha": ALPHA, "density": 0.5}
            payload = {
                "method": m,
                "params": params,
                "grid": list(GRID),
                "tmp": str(work),
                **{k: str(v) for k, v in dirs.items()},
            }
            log = work / f"sweep-{m}.log"
            try:
                peak, wall, text = run_once(
                    [sys.executable, "-c", SWEEP, json.dumps(payload)], log, inputs
                )
                row["sweep"] = {**json.loads(text.strip().splitlines()[-1]), "peak": peak}
                print(f"  {m} sweep: {row['sweep']}", file=sys.stderr)
            except SystemExit:
                lines = log.read_text().strip().splitlines()
                row["sweep failed"] = (lines or ["no output"])[-1][:160]
                print(f"  {m} sweep failed: {row['sweep failed']}", file=sys.stderr)
        rows.append(row)
    return rows


def llama_part(args, methods, work: Path) -> tuple[list[dict], str]:
    hidden, vocab = 1024, 32000
    inter = 64 * round(hidden * 2.6875 / 64)
    layers = layers_for(args.llama_size_gb, hidden, inter, vocab)
    dirs = build_checkpoints(work / "llama", hidden, inter, vocab, layers, 500 * 10**6)
    what = f"LlamaForCausalLM (hidden {hidden}, {layers} layers, vocab {vocab}), fp16"
    inputs = [f for d in dirs.values() for f in weight_files(d)]
    mergekit = console_script("mergekit-yaml")
    rows = []
    for m in methods:
        if METHODS[m] is None:
            continue
        cfg = work / f"recipe-{m}.yml"
        cfg.write_text(yaml.safe_dump(recipe(m, dirs), sort_keys=False))
        outs = {k: work / f"llama-{k}-{m}" for k in ("ours", "mergekit")}
        if m in RECIPE_METHODS:
            ours = [console_script("mergeir"), "merge", "--mergekit-config", str(cfg),
                    "--out", str(outs["ours"]), "-q"]  # fmt: skip
            how = "--mergekit-config"
        else:
            ours = our_command(m, dirs, outs["ours"])
            how = "--method"
        theirs = [mergekit, str(cfg), str(outs["mergekit"]), "--no-copy-tokenizer", "--quiet"]
        row: dict[str, Any] = {"method": m, "how": how}
        cmds = {"ours": (ours, outs["ours"]), "mergekit": (theirs, outs["mergekit"])}
        stats, failed = interleaved(cmds, args.repeat, work, inputs)
        row.update(stats)
        row.update({f"{k} failed": v for k, v in failed.items()})
        if all((outs[k] / "config.json").is_file() for k in outs):
            row["max_diff"] = max_difference(outs["ours"], outs["mergekit"])
        for o in outs.values():
            clear(o)
        rows.append(row)
    return rows, what


def _listed(x: float | list[float]) -> list[float]:
    return x if isinstance(x, list) else [x]


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None or x != x else format(x, spec)


def mb(x: int | None) -> str:
    return "–" if x is None else f"{x / 2**20:,.0f}"


def _cell(stats: dict[str, Any] | None, name: str) -> str:
    """``best (median)`` of one timing."""
    if not stats or stats.get(name) is None:
        return "–"
    return f"{fmt(stats[name])} ({fmt(stats[f'{name} median'])})"


def _ratio(a: dict | None, b: dict | None, name: str) -> str:
    if not a or not b or not a.get(name) or not b.get(name):
        return "–"
    return fmt(a[name] / b[name])


def _diff(row: dict[str, Any]) -> str:
    d = row.get("max_diff")
    return "–" if d is None else f"{d:.2g}" + (" (random)" if row["method"] in RANDOM else "")


def _failed(row: dict[str, Any], key: str) -> str:
    return f"failed: `{row[f'{key} failed']}`" if f"{key} failed" in row else "–"


def report(args, bert_rows, bert_what, llama_rows, llama_what) -> None:
    vm = psutil.virtual_memory()
    print(f"\nCommand: `{shlex.join([Path(sys.executable).name, *sys.argv])}`  ")
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {vm.total / 2**30:.1f} GiB RAM, "
        f"Python {platform.python_version()}, torch {torch.__version__}; each run a fresh "
        f"subprocess, inputs in page cache, `sync` before it; {args.repeat} interleaved run(s) "
        "each: best (median) times, highest peak RSS; ratios of the best times  "
    )
    if any("ours" in r or "mergekit-api" in r for r in bert_rows):
        print(f"\n**BERT** ({bert_what}): `mergeir merge --method M` (its own clock: plan, read, "
              "merge, write, fsync) vs mergekit's `merge_state_dicts` (load + merge + save + "
              "fsync, and the merge alone)\n")  # fmt: skip
        print("| method | ours (s) | ours: peak RSS (MB) | mergekit API (s) | its merge alone (s) | "
              "mergekit API: peak RSS (MB) | time ours/mergekit | RSS ours/mergekit | max |Δ| |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in bert_rows:
            o, k = r.get("ours"), r.get("mergekit-api")
            kcell = (
                _cell(k, "work")
                if k
                else (
                    _failed(r, "mergekit-api") if "mergekit-api failed" in r else "no such method"
                )
            )
            rss = fmt(o["peak"] / k["peak"]) if o and k else "–"
            print(f"| {r['method']} | {_cell(o, 'work') if o else _failed(r, 'ours')} | "
                  f"{mb(o['peak']) if o else '–'} | {kcell} | {_cell(k, 'merge')} | "
                  f"{mb(k['peak']) if k else '–'} | {_ratio(o, k, 'work')} | {rss} | {_diff(r)} |")  # fmt: skip
    if any("sweep" in r or "sweep failed" in r for r in bert_rows):
        print(f"\n**In-place sweep** ({bert_what}): a `BertModel` of ΘT moved to α = "
              f"{', '.join(map(str, GRID))} in place vs a fresh merge to a folder + "
              "`from_pretrained` at each of those points (same process): best (median) over "
              "the three points\n")  # fmt: skip
        print("| method | build the sweep (s) | move to a grid point (s) | fresh merge + load "
              "(s) | point / fresh | sweep peak RSS (MB) |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|")
        for r in bert_rows:
            s = r.get("sweep")
            if s is None:
                if "sweep failed" in r:
                    print(f"| {r['method']} | {_failed(r, 'sweep')} | | | | |")
                continue
            fm, fl = _listed(s["fresh_merge"]), _listed(s["fresh_load"])
            fresh = [m + lo for m, lo in zip(fm, fl, strict=True)]
            print(f"| {r['method']} | {fmt(s['setup'])} | {fmt(min(s['points']))} "
                  f"({fmt(median(s['points']))}) | {fmt(min(fresh))} ({fmt(median(fresh))}) | "
                  f"{fmt(min(s['points']) / min(fresh))} | {mb(s['rss'])} |")  # fmt: skip
    if llama_rows:
        print(f"\n**Llama** ({llama_what}): the same recipe through `mergekit-yaml` and ours "
              "(`--mergekit-config`, else `--method` with the same parameters); wall time, "
              "start-up included\n")  # fmt: skip
        print("| method | ours via | ours (s) | ours: peak RSS (MB) | mergekit-yaml (s) | "
              "mergekit-yaml: peak RSS (MB) | time ours/mergekit | RSS ours/mergekit | max |Δ| |")  # fmt: skip
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in llama_rows:
            o, k = r.get("ours"), r.get("mergekit")
            rss = fmt(o["peak"] / k["peak"]) if o and k else "–"
            print(f"| {r['method']} | `{r['how']}` | {_cell(o, 'wall') if o else _failed(r, 'ours')} | "
                  f"{mb(o['peak']) if o else '–'} | {_cell(k, 'wall') if k else _failed(r, 'mergekit')} | "
                  f"{mb(k['peak']) if k else '–'} | {_ratio(o, k, 'wall')} | {rss} | {_diff(r)} |")  # fmt: skip
    print()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--arch", choices=tuple(ARCHS), default="bert-large")
    ap.add_argument("--llama-size-gb", type=float, default=1.0, help="fp16 GB per checkpoint")
    ap.add_argument("--methods", default="all")
    ap.add_argument("--parts", default="bert,mergekit-api,sweep,llama")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/merge-methods-speed"))
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    args = ap.parse_args()
    methods = list(METHODS) if args.methods == "all" else args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        sys.exit(f"--methods: unknown {unknown[0]} (one of {', '.join(METHODS)})")
    parts = set(args.parts.split(","))
    if "mergekit-api" in parts or "llama" in parts:
        try:
            import mergekit  # noqa: F401
        except ImportError:
            print("mergekit is not installed (pip install -e .[oracle]): no mergekit columns",
                  file=sys.stderr)  # fmt: skip
            parts -= {"mergekit-api", "llama"}
    work = args.workdir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        bert_rows: list[dict] = []
        bert_what = ""
        if parts & {"bert", "mergekit-api", "sweep"}:
            start = time.perf_counter()
            dirs = bert_triplet(work / "bert", args.arch)
            size = sum(f.stat().st_size for f in weight_files(dirs["ir"]))
            layers = ARCHS[args.arch][1]
            bert_what = (
                f"BertModel, {args.arch} shapes ({layers} layers), fp32, {size / 1e9:.2f} GB each"
            )
            print(f"built the BERT triplet in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            bert_rows = bert_part(args, methods, work, dirs, parts)
            if not args.keep:
                shutil.rmtree(work / "bert")
        llama_rows: list[dict] = []
        llama_what = ""
        if "llama" in parts:
            llama_rows, llama_what = llama_part(args, methods, work)
        (work.parent / f"{work.name}.json").write_text(
            json.dumps({"bert": bert_rows, "llama": llama_rows}, indent=1)
        )
        report(args, bert_rows, bert_what, llama_rows, llama_what)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
