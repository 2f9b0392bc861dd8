"""Merge time against the measured I/O limit and mergekit, from Θ0 + ΘD and from a 4-bit τ.

    python benchmarks/merge_speed.py [--arch bert-large|llama] [--repeat 5] [--workdir DIR]

Builds a synthetic triplet with real names and shapes: ``bert-large`` (the default) is three
``BertModel`` checkpoints of BERT-large's size in fp32 (24 layers, hidden 1024, 1.34 GB each);
``llama`` is the fp16 ``LlamaForCausalLM`` triplet of ``merge_memory.py`` (``--size-gb``). Θ0 is
random, ΘD and ΘT are Θ0 plus small noise. It stores τ = ΘD − Θ0 at 4 bits
(``mergeir task-vector --bits 4``), then runs, each in a fresh subprocess, interleaved
``--repeat`` times, after ``sync``, with the previous output deleted and the inputs read once
into page cache (none of it timed):

- **I/O limit, Θ0 + ΘD**: read ΘT, Θ0 and ΘD from page cache, write the output's bytes and
  ``fsync`` them — what any merge must do at least;
- **I/O limit, streamed**: the same bytes, but read in one thread while the output is written
  in another with ``O_DIRECT`` from an aligned buffer (as ``mergeir merge`` writes) — the
  stricter bound: any merge on this machine needs at least this;
- **I/O limit, 4-bit τ** (and streamed): the same with ΘT and the stored τ as inputs;
- **ours**: ``mergeir merge --ir ΘT --pretrained Θ0 --domain ΘD --alpha 0.5``;
- **ours, 4-bit τ**: ``mergeir merge --ir ΘT --domain task_vector:τ4 --alpha 0.5``;
- **mergekit**: ``mergekit-yaml``, ``task_arithmetic`` with base Θ0, ΘT at weight 1 and ΘD at
  weight α, in the checkpoints' dtype (``float32`` / ``float16``);
- **import torch**: ``python -c "import torch"``, the start-up both tools pay.

For each: command wall time (start-up included), the time of the work itself (our merge as
the CLI reports it — plan, merge, write, fsync, rename; the limit's own clock), peak RSS
(process tree, polled every 20 ms); median and best over the repeats. Ratios are medians
against the limit and against mergekit in the same run. Outputs are compared: ours equals
mergekit up to fp32 rounding (it sums the same terms in another order).
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
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from merge_memory import (  # noqa: E402
    build_checkpoints,
    console_script,
    layers_for,
    measure,
    mergekit_config,
)

LIMIT = r"""
import mmap, os, sys, threading, time
mode, out, nbytes, *inputs = sys.argv[1:]
CHUNK = 16 * 2**20


def read_all():  # into one reused buffer: the copy out of page cache and nothing else
    buf = memoryview(bytearray(CHUNK))
    for p in inputs:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def write_all():  # buffered writes, then fsync
    chunk, left = memoryview(bytearray(CHUNK)), int(nbytes)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    while left > 0:
        left -= os.write(fd, chunk[: min(left, CHUNK)])
    os.fsync(fd)
    os.close(fd)


def write_direct():  # O_DIRECT from an aligned buffer: no page-cache copy, no writeback
    chunk, left = mmap.mmap(-1, CHUNK), int(nbytes)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    while left > 0:
        left -= os.write(fd, chunk)
    os.ftruncate(fd, int(nbytes))
    os.fsync(fd)
    os.close(fd)


start = time.perf_counter()
if mode == "serial":  # read everything, then write everything and fsync
    read_all()
    write_all()
else:  # "streamed": reads in one thread while the output is written with O_DIRECT
    reader = threading.Thread(target=read_all)
    reader.start()
    write_direct()
    reader.join()
print(f"work {time.perf_counter() - start:.3f}")
"""


def bert_large(root: Path, seed: int = 0) -> dict[str, Path]:
    """Θ0, ΘD, ΘT with ``BertModel``'s names and BERT-large's shapes, fp32, one file each."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
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


def warm(files: list[Path]) -> None:
    """Read the inputs once, untimed: they are in page cache when the run starts (this VM's
    DAMON reclaim pages cold file pages out within seconds, so a run could read the disk)."""
    for p in files:
        with p.open("rb", buffering=0) as f:
            while f.read(16 * 2**20):
                pass


def weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def tensors(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in weight_files(folder):
        with safe_open(str(f), framework="pt") as st:
            out.update(dict.fromkeys(st.keys(), f))
    return out


def max_difference(a: Path, b: Path) -> float:
    ta, tb = tensors(a), tensors(b)
    if set(ta) != set(tb):
        sys.exit(f"{a} and {b} hold different tensors: {sorted(set(ta) ^ set(tb))[:5]}")
    worst = 0.0
    for name in ta:
        with safe_open(str(ta[name]), framework="pt") as fa, safe_open(str(tb[name]), "pt") as fb:
            x, y = fa.get_tensor(name).float(), fb.get_tensor(name).float()
        worst = max(worst, (x - y).abs().max().item())
    return worst


def work_seconds(log: Path) -> float | None:
    """The work's own time: ``work S`` from the limit, ``(…, S s)`` from ``mergeir merge``."""
    text = log.read_text()
    m = re.search(r"^work ([\d.]+)", text, re.M) or re.search(r", ([\d.]+)s\): \d+ merged", text)
    return float(m.group(1)) if m else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=("bert-large", "llama"), default="bert-large")
    ap.add_argument("--size-gb", type=float, default=1.0, help="llama: fp16 GB per checkpoint")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mergespeed"))
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints and outputs")
    ap.add_argument(
        "--methods",
        default="limit,limit-streamed,limit-tau,limit-tau-streamed,ours,ours-tau,mergekit,"
        "import-torch",
    )
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    work = args.workdir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        run(args, methods, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, methods: list[str], work: Path) -> None:
    t0 = time.perf_counter()
    if args.arch == "bert-large":
        dirs, dtype = bert_large(work / "inputs"), "float32"
        what = "BertModel, BERT-large shapes (24 layers, hidden 1024), fp32"
    else:
        hidden, vocab = 1024, 32000
        inter = 64 * round(hidden * 2.6875 / 64)
        layers = layers_for(args.size_gb, hidden, inter, vocab)
        dirs = build_checkpoints(work / "inputs", hidden, inter, vocab, layers, 500 * 10**6)
        dtype = "float16"
        what = f"LlamaForCausalLM (hidden {hidden}, {layers} layers, vocab {vocab}), fp16"
    mergeir = console_script("mergeir")
    tau = work / "tau4"
    start = time.perf_counter()
    subprocess.run(
        [mergeir, "task-vector", "--pretrained", str(dirs["pretrained"]), "--domain",
         str(dirs["domain"]), "--bits", "4", "--out", str(tau)],
        check=True, capture_output=True,
    )  # fmt: skip
    tau_s = time.perf_counter() - start
    size = {k: sum(f.stat().st_size for f in weight_files(d)) for k, d in dirs.items()}
    tau_bytes = sum(f.stat().st_size for f in weight_files(tau))
    print(
        f"built the triplet in {time.perf_counter() - t0:.0f} s ({what}, "
        f"{size['ir'] / 1e9:.2f} GB each); 4-bit τ {tau_bytes / 1e6:.0f} MB in {tau_s:.1f} s",
        file=sys.stderr,
    )
    outs = {m: work / f"out-{m}" for m in methods}
    cfg = mergekit_config(work / "mergekit.yaml", dirs, args.alpha, dtype)
    inputs = [*weight_files(dirs["ir"]), *weight_files(dirs["pretrained"])]
    inputs += weight_files(dirs["domain"])
    limit = [sys.executable, "-c", LIMIT, "serial"]
    streamed = [sys.executable, "-c", LIMIT, "streamed"]
    tau_inputs = [*map(str, weight_files(dirs["ir"]) + weight_files(tau))]
    merge = [mergeir, "merge", "--ir", str(dirs["ir"]), "--alpha", str(args.alpha), "-q"]
    commands = {
        "limit": [*limit, str(outs.get("limit")), str(size["ir"]), *map(str, inputs)],
        "limit-streamed": [*streamed, str(outs.get("limit-streamed")), str(size["ir"]),
                           *map(str, inputs)],
        "limit-tau": [*limit, str(outs.get("limit-tau")), str(size["ir"]), *tau_inputs],
        "limit-tau-streamed": [*streamed, str(outs.get("limit-tau-streamed")), str(size["ir"]),
                               *tau_inputs],
        "ours": [*merge, "--pretrained", str(dirs["pretrained"]), "--domain",
                 str(dirs["domain"]), "--out", str(outs.get("ours"))],
        "ours-tau": [*merge, "--domain", f"task_vector:{tau}", "--out", str(outs.get("ours-tau"))],
        "mergekit": [console_script("mergekit-yaml"), str(cfg), str(outs.get("mergekit")),
                     "--no-copy-tokenizer", "--quiet"],
        "import-torch": [sys.executable, "-c", "import torch"],
    }  # fmt: skip
    results: dict[str, list[tuple[int, float, float | None]]] = {m: [] for m in methods}
    failed: dict[str, str] = {}
    for r in range(args.repeat):
        for m in [m for m in methods if m not in failed]:
            if outs[m].is_dir():
                shutil.rmtree(outs[m])
            elif outs[m].exists():
                outs[m].unlink()
            os.sync()
            warm(inputs + weight_files(tau))
            log = work / f"{m}.log"
            try:
                peak, wall, _ = measure(commands[m], log, dict(os.environ))
            except SystemExit:  # reported in the table; the other methods still run
                lines = log.read_text().strip().splitlines() or ["no output"]
                failed[m] = lines[-1][:200]
                print(f"  {m} failed: {failed[m]}", file=sys.stderr)
                continue
            results[m].append((peak, wall, work_seconds(log)))
            print(
                f"  {m} ({r + 1}/{args.repeat}): {wall:.2f} s wall, work "
                f"{results[m][-1][2]} s, peak {peak / 2**20:.0f} MB",
                file=sys.stderr,
            )
    for m in failed:
        del results[m]
    report(args, results, outs, what, size, tau_bytes, failed)


def report(args, results, outs, what, size, tau_bytes, failed) -> None:
    labels = {
        "limit": "I/O limit, Θ0 + ΘD (read 3, then write + fsync 1)",
        "limit-streamed": "I/O limit, Θ0 + ΘD, streamed (reads beside O_DIRECT writes)",
        "limit-tau": "I/O limit, 4-bit τ (read ΘT + τ, then write + fsync 1)",
        "limit-tau-streamed": "I/O limit, 4-bit τ, streamed",
        "ours": "ours, from Θ0 + ΘD (`mergeir merge`)",
        "ours-tau": "ours, from the 4-bit τ",
        "mergekit": "mergekit (`mergekit-yaml`)",
        "import-torch": "`python -c 'import torch'` (start-up both tools pay)",
    }
    med = {m: statistics.median(x[1] for x in rs) for m, rs in results.items()}
    work_med = {
        m: statistics.median(w) if (w := [x[2] for x in rs if x[2] is not None]) else None
        for m, rs in results.items()
    }
    vm = psutil.virtual_memory()
    print(f"\nCommand: `{shlex.join([Path(sys.executable).name, *sys.argv])}`  ")
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {vm.total / 2**30:.1f} GiB RAM, "
        f"Python {platform.python_version()}, torch {torch.__version__}; inputs in page cache, "
        f"`sync` before each run; {args.repeat} interleaved runs each  "
    )
    print(
        f"Triplet: {what}, {size['ir'] / 1e9:.2f} GB per checkpoint; 4-bit τ "
        f"{tau_bytes / 1e6:.0f} MB; α = {args.alpha}\n"
    )
    print(
        "| what | wall, median (s) | wall, best (s) | work, median (s) | work, best (s) | "
        "peak RSS (MB) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for m, rs in results.items():
        works = [x[2] for x in rs if x[2] is not None]
        wm = f"{work_med[m]:.2f}" if works else "–"
        wb = f"{min(works):.2f}" if works else "–"
        print(
            f"| {labels[m]} | {med[m]:.2f} | {min(x[1] for x in rs):.2f} | {wm} | {wb} | "
            f"{max(x[0] for x in rs) / 2**20:,.0f} |"
        )
    for m, why in failed.items():
        print(f"| {labels[m]} | failed: `{why}` | | | | |")
    print()
    pairs = [
        ("ours", "limit", "work", "goal ≤ 1.5"),
        ("ours", "limit-streamed", "work", "against the stricter bound"),
        ("ours-tau", "limit-tau", "work", ""),
        ("ours-tau", "limit-tau-streamed", "work", ""),
        ("ours", "mergekit", "wall", "goal ≤ 1.0"),
        ("ours-tau", "mergekit", "wall", "goal ≤ 0.3"),
    ]
    for a, b, kind, goal in pairs:
        if a in results and b in results:
            x = work_med[a] if kind == "work" else med[a]
            y = work_med[b] if kind == "work" and work_med[b] else med[b]
            note = f" ({goal})" if goal else ""
            print(f"- {a} / {b}, {kind} medians: **{x / y:.2f}**{note}")
    if {"ours-tau", "mergekit", "import-torch"} <= results.keys():
        t = med["import-torch"]
        x, y = med["ours-tau"] - t, med["mergekit"] - t
        print(f"- ours-tau / mergekit, wall medians less torch's import: **{x / y:.2f}**")
    if "ours" in results and "mergekit" in results:
        d = max_difference(outs["ours"], outs["mergekit"])
        print(f"- ours vs mergekit: max |difference| {d:.3g} (fp32 rounding; same terms)")
    if "ours" in results and "ours-tau" in results:
        d = max_difference(outs["ours"], outs["ours-tau"])
        print(f"- ours from Θ0 + ΘD vs from the 4-bit τ: max |difference| {d:.3g} (α·quantization)")
    json.dump(
        {m: [list(x) for x in rs] for m, rs in results.items()},
        sys.stderr,
    )
    print(file=sys.stderr)


if __name__ == "__main__":
    main()
