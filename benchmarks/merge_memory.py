"""Peak memory and wall time of a streamed task-arithmetic merge vs loading everything and mergekit.

    python benchmarks/merge_memory.py [--size-gb 1.0] [--workdir /tmp/mergebench] [--keep]
                                      [--repeat N] [--threads N]

Builds three synthetic Llama checkpoints (real ``LlamaConfig`` ``config.json``, the real
``LlamaForCausalLM`` tensor names, random fp16 weights, sharded safetensors plus
``model.safetensors.index.json``), each about ``--size-gb`` GB: Θ0, and ΘD and ΘT as Θ0 plus
small noise. Then, each in a fresh subprocess, measures peak RSS (psutil, polled every 20 ms,
summed over the process and its children) and wall time of the same merge
Θ' = ΘT + α·(ΘD − Θ0) done three ways:

- ``ours``: ``mergeir merge --ir ΘT --pretrained Θ0 --domain ΘD --alpha α -q``;
- ``naive``: ``safetensors.torch.load_file`` all three checkpoints, compute Θ' in a dict,
  ``save_file`` (the "load everything" baseline);
- ``mergekit``: ``mergekit-yaml`` with ``merge_method: task_arithmetic``, ``base_model`` Θ0,
  ΘT with weight 1 and ΘD with weight α, ``dtype: float16`` (its defaults otherwise, CPU).

It checks that the three outputs agree tensor by tensor (ours and naive bit for bit, since both
compute in fp32; ours and mergekit, which computes in fp16, within a few fp16 ulps), and prints a
Markdown table (with CPU time, user + system, next to wall time: on a busy machine CPU time is
the steadier number) plus the two headline ratios: ours/naive peak RSS (goal < 0.25) and
ours/mergekit wall time (goal <= 1.0). With ``--repeat N`` the methods run N times, interleaved,
and the table keeps each one's fastest run and highest peak. ``--threads N`` sets
OMP_NUM_THREADS for all three (torch's intra-op threads). Input files are freshly written, so
all three read them from a warm page cache. The multi-GB work folder is deleted at the end
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch
from safetensors import safe_open
from safetensors.torch import save_file

NAIVE = r"""
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file

def load(folder):
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values()))
             if index.is_file() else ["model.safetensors"])
    sd = {}
    for f in files:
        sd.update(load_file(str(folder / f)))
    return sd

t_dir, p_dir, d_dir, alpha, out = sys.argv[1:6]
alpha = float(alpha)
theta_t, theta_0, theta_d = load(t_dir), load(p_dir), load(d_dir)
merged = {}
for name, t in theta_t.items():
    merged[name] = (t.float() + alpha * (theta_d[name].float() - theta_0[name].float())).to(t.dtype)
Path(out).mkdir(parents=True, exist_ok=True)
save_file(merged, str(Path(out) / "model.safetensors"), metadata={"format": "pt"})
"""


# -- synthetic checkpoints ------------------------------------------------------------------


def llama_shapes(
    hidden: int, inter: int, vocab: int, layers: int
) -> list[tuple[str, tuple[int, ...]]]:
    """LlamaForCausalLM tensor names and shapes, in the order transformers saves them."""
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}"
        shapes += [(f"{p}.self_attn.{x}_proj.weight", (hidden, hidden)) for x in "qkvo"]
        shapes += [
            (f"{p}.mlp.gate_proj.weight", (inter, hidden)),
            (f"{p}.mlp.up_proj.weight", (inter, hidden)),
            (f"{p}.mlp.down_proj.weight", (hidden, inter)),
            (f"{p}.input_layernorm.weight", (hidden,)),
            (f"{p}.post_attention_layernorm.weight", (hidden,)),
        ]
    shapes += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return shapes


def n_params(shapes: list[tuple[str, tuple[int, ...]]]) -> int:
    return sum(torch.Size(s).numel() for _, s in shapes)


def layers_for(size_gb: float, hidden: int, inter: int, vocab: int) -> int:
    fixed = n_params(llama_shapes(hidden, inter, vocab, 0))
    per_layer = n_params(llama_shapes(hidden, inter, vocab, 1)) - fixed
    return max(1, round((size_gb * 1e9 / 2 - fixed) / per_layer))


def build_checkpoints(
    root: Path, hidden: int, inter: int, vocab: int, layers: int, shard_bytes: int, seed: int = 0
) -> dict[str, Path]:
    """Θ0, ΘD = Θ0 + noise, ΘT = Θ0 + noise; tensors made one at a time, written shard by shard."""
    from transformers import LlamaConfig

    dirs = {k: root / k for k in ("pretrained", "domain", "ir")}
    heads = max(1, hidden // 64)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
        dtype="float16",
    )
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(d)
    shapes = llama_shapes(hidden, inter, vocab, layers)
    # group into shards of at most shard_bytes (fp16)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = torch.Size(shape).numel() * 2
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    n = len(shards)
    files = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    gen = torch.Generator().manual_seed(seed)
    for i, shard in enumerate(shards):
        parts: dict[str, dict[str, torch.Tensor]] = {k: {} for k in dirs}
        for name, shape in shard:
            if len(shape) == 1:  # RMSNorm weights around 1
                base = 1.0 + 0.05 * torch.randn(shape, generator=gen)
            else:
                base = 0.02 * torch.randn(shape, generator=gen)
            parts["pretrained"][name] = base.half()
            for k in ("domain", "ir"):
                noise = torch.randn(shape, generator=gen).mul_(0.002)
                parts[k][name] = noise.add_(base).half()
                del noise
            del base
        for k, d in dirs.items():
            save_file(parts[k], str(d / files[i]), metadata={"format": "pt"})
        del parts
    total = sum(torch.Size(s).numel() * 2 for _, s in shapes)
    index = {
        "metadata": {"total_size": total},
        "weight_map": {name: files[i] for i, shard in enumerate(shards) for name, _ in shard},
    }
    for d in dirs.values():
        (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return dirs


def mergekit_config(path: Path, dirs: dict[str, Path], alpha: float, dtype: str) -> Path:
    """mergekit's task arithmetic for Θ' = ΘT + α·(ΘD − Θ0): base Θ0, ΘT at weight 1, ΘD at α."""
    path.write_text(
        f"merge_method: task_arithmetic\nbase_model: {dirs['pretrained']}\nmodels:\n"
        f"  - model: {dirs['ir']}\n    parameters:\n      weight: 1.0\n"
        f"  - model: {dirs['domain']}\n    parameters:\n      weight: {alpha}\n"
        f"dtype: {dtype}\n"
    )
    return path


def console_script(name: str) -> str:
    """The real entry-point script next to this interpreter (not a pyenv shim), else PATH's."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    if found is None:
        sys.exit(f"{name} not found; install it (mergekit-yaml: pip install mergekit)")
    return found


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


# -- measuring ------------------------------------------------------------------------------


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total


def measure(
    cmd: list[str], log: Path, env: dict[str, str], interval: float = 0.02
) -> tuple[int, float, float]:
    """(peak RSS in bytes over the process tree, wall seconds, CPU seconds) of one fresh subprocess."""
    peak = 0
    done = threading.Event()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w") as out:
        start = time.perf_counter()
        popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        proc = psutil.Process(popen.pid)

        def poll() -> None:
            nonlocal peak
            while not done.is_set():
                try:
                    peak = max(peak, tree_rss(proc))
                except psutil.NoSuchProcess:
                    break
                time.sleep(interval)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        rc = popen.wait()
        wall = time.perf_counter() - start
        done.set()
        thread.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if rc != 0:
        sys.exit(
            f"command failed (rc {rc}): {shlex.join(cmd)}\n--- {log} ---\n{log.read_text()[-4000:]}"
        )
    return peak, wall, cpu


# -- checking -------------------------------------------------------------------------------


def open_tensors(folder: Path) -> dict[str, Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {k: folder / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    out: dict[str, Path] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            out.update(dict.fromkeys(st.keys(), f))
    return out


def compare(a: Path, b: Path, ulps: float) -> tuple[float, float, str]:
    """(max abs diff, max diff in units of the tensor's fp16 ulp at its max magnitude, worst tensor)."""
    ta, tb = open_tensors(a), open_tensors(b)
    if set(ta) != set(tb):
        sys.exit(f"{a} and {b} hold different tensors: {sorted(set(ta) ^ set(tb))[:5]}")
    worst_abs, worst_ulp, worst_name = 0.0, 0.0, ""
    for name in ta:
        with (
            safe_open(str(ta[name]), framework="pt") as fa,
            safe_open(str(tb[name]), framework="pt") as fb,
        ):
            x, y = fa.get_tensor(name), fb.get_tensor(name)
        if x.shape != y.shape or x.dtype != y.dtype:
            sys.exit(
                f"tensor {name}: {tuple(x.shape)} {x.dtype} in {a} but {tuple(y.shape)} {y.dtype} in {b}"
            )
        diff = (x.float() - y.float()).abs().max().item()
        scale = max(y.float().abs().max().item(), 2.0**-14)
        ulp = 2.0 ** (torch.tensor(scale).log2().floor().item() - 10)  # fp16 spacing at `scale`
        if diff > worst_abs:
            worst_abs = diff
        if diff / ulp > worst_ulp:
            worst_ulp, worst_name = diff / ulp, name
        del x, y
    if worst_ulp > ulps:
        sys.exit(
            f"outputs differ: {a} vs {b}, tensor {worst_name} off by {worst_ulp:.1f} fp16 ulps (> {ulps})"
        )
    return worst_abs, worst_ulp, worst_name


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--size-gb", type=float, default=1.0, help="size of each input checkpoint (fp16 GB)"
    )
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mergebench"))
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints and outputs")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument(
        "--hidden", type=int, default=1024, help="hidden size (layers follow from --size-gb)"
    )
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--shard-size-mb", type=int, default=500, help="input shard size")
    ap.add_argument(
        "--methods", default="ours,naive,mergekit", help="comma-separated subset to run"
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per method, interleaved; the table shows the fastest run and the highest peak",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS for every run (default: unset, each library's own default)",
    )
    args = ap.parse_args()

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    hidden, vocab = args.hidden, args.vocab
    inter = 64 * round(hidden * 2.6875 / 64)  # Llama-2's 11008/4096
    layers = layers_for(args.size_gb, hidden, inter, vocab)
    work = args.workdir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        t0 = time.perf_counter()
        dirs = build_checkpoints(
            work / "inputs", hidden, inter, vocab, layers, args.shard_size_mb * 10**6
        )
        gen_s = time.perf_counter() - t0
        input_bytes = sum(folder_bytes(d) for d in dirs.values())
        largest = max(
            torch.Size(s).numel() * 2 for _, s in llama_shapes(hidden, inter, vocab, layers)
        )
        print(
            f"built 3 checkpoints in {gen_s:.0f} s: Llama hidden={hidden} intermediate={inter} "
            f"vocab={vocab} layers={layers}, {input_bytes / 3 / 1e9:.2f} GB each "
            f"(largest tensor {largest / 1e6:.0f} MB fp16)",
            file=sys.stderr,
        )

        outs = {m: work / f"out-{m}" for m in methods}
        cfg = mergekit_config(work / "mergekit.yaml", dirs, args.alpha, "float16")
        commands = {
            "ours": [
                console_script("mergeir"),
                "merge",
                "--ir",
                str(dirs["ir"]),
                "--pretrained",
                str(dirs["pretrained"]),
                "--domain",
                str(dirs["domain"]),
                "--alpha",
                str(args.alpha),
                "--out",
                str(outs.get("ours")),
                "-q",
                "--out-shard-size",
                "5GB",
            ],
            "naive": [
                sys.executable,
                "-c",
                NAIVE,
                str(dirs["ir"]),
                str(dirs["pretrained"]),
                str(dirs["domain"]),
                str(args.alpha),
                str(outs.get("naive")),
            ],
            "mergekit": [
                console_script("mergekit-yaml"),
                str(cfg),
                str(outs.get("mergekit")),
                "--no-copy-tokenizer",
                "--quiet",
            ],
        }
        env = dict(os.environ)
        if args.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
        runs: dict[str, list[tuple[int, float, float]]] = {m: [] for m in methods}
        for r in range(args.repeat):
            for m in methods:
                if outs[m].exists():
                    shutil.rmtree(outs[m])
                print(f"running {m} ({r + 1}/{args.repeat}) ...", file=sys.stderr)
                runs[m].append(measure(commands[m], work / f"{m}.log", env))
                peak, wall, cpu = runs[m][-1]
                print(
                    f"  {m}: peak {peak / 2**20:.0f} MB, {wall:.1f} s wall, {cpu:.1f} s CPU",
                    file=sys.stderr,
                )
        results = {
            m: (max(x[0] for x in rs), min(x[1] for x in rs), min(x[2] for x in rs))
            for m, rs in runs.items()
        }

        checks = []
        if "ours" in outs and "naive" in outs:
            d, u, _ = compare(outs["ours"], outs["naive"], ulps=0.0)
            checks.append(f"ours vs naive: max |diff| {d:.3g} (bit-identical)")
        if "ours" in outs and "mergekit" in outs:
            d, u, name = compare(outs["ours"], outs["mergekit"], ulps=4.0)
            checks.append(
                f"ours vs mergekit: max |diff| {d:.3g}, at most {u:.1f} fp16 ulp "
                f"(worst {name}); mergekit computes in fp16, ours in fp32"
            )

        vm = psutil.virtual_memory()
        cmdline = shlex.join([Path(sys.executable).name, *sys.argv])
        load = os.getloadavg()
        print(f"\nCommand: `{cmdline}`  ")
        print(
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
            f"{vm.total / 2**30:.1f} GiB RAM ({vm.available / 2**30:.1f} GiB available at the end), "
            f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (1/5/15 min), "
            f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}  "
        )
        print(
            f"Inputs: 3 synthetic LlamaForCausalLM checkpoints (hidden {hidden}, {layers} layers, "
            f"vocab {vocab}), {input_bytes / 3 / 1e9:.2f} GB fp16 each, {input_bytes / 1e9:.2f} GB in all; "
            f"largest tensor {largest / 1e6:.0f} MB; α = {args.alpha}  "
        )
        print(
            "\n| method | peak RSS (MB) | peak RSS / inputs | wall time (s) | time / mergekit | CPU time (s) |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        mk_time = results["mergekit"][1] if "mergekit" in results else None
        labels = {
            "ours": "ours (`mergeir merge`)",
            "naive": "naive (load all, `save_file`)",
            "mergekit": "mergekit (`mergekit-yaml`)",
        }
        for m, (rss, wall, cpu) in results.items():
            ratio = f"{wall / mk_time:.2f}" if mk_time else "–"
            print(
                f"| {labels[m]} | {rss / 2**20:,.0f} | {rss / input_bytes:.2f} | {wall:.1f} | {ratio} | {cpu:.1f} |"
            )
        print()
        if "ours" in results and "naive" in results:
            r = results["ours"][0] / results["naive"][0]
            print(
                f"- ours peak RSS / naive peak RSS = **{r:.3f}** (goal < 0.25: {'met' if r < 0.25 else 'MISSED'})"
            )
        if "ours" in results and mk_time:
            r = results["ours"][1] / mk_time
            print(
                f"- ours time / mergekit time = **{r:.2f}** (goal <= 1.0: {'met' if r <= 1.0 else 'MISSED'})"
            )
        if "ours" in results and "mergekit" in results:
            r = results["ours"][0] / results["mergekit"][0]
            print(f"- ours peak RSS / mergekit peak RSS = {r:.3f}")
        for c in checks:
            print(f"- {c}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
