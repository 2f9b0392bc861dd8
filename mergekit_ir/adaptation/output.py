"""Writing ΘD: a Hugging Face folder whose tensor names are the base's own (so ΘD aligns with
Θ0/ΘT; a fresh MLM head is dropped), or a PEFT adapter folder; with a model card and loss.png."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mergekit_ir.errors import CheckpointError
from mergekit_ir.storage import atomic

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".h5", ".msgpack")
CARD = "mergekit_ir_adapt.json"


def weight_files(base: Path) -> tuple[str, list[Path]]:
    """The base's PyTorch weight files: ``("safetensors", files)``, or ``("bin", files)`` for a
    base saved only as ``pytorch_model*.bin`` (read with ``torch.load(weights_only=True)``;
    ΘD is then written as ``model.safetensors`` under the same tensor names). Checked before
    any work: a base with neither (TensorFlow/Flax only) is one line."""
    files = sorted(base.glob("*.safetensors"))
    if files:
        return "safetensors", files
    bins = sorted(base.glob("pytorch_model*.bin"))
    if bins:
        return "bin", bins
    raise CheckpointError(
        f"{base}: no PyTorch weights (*.safetensors or pytorch_model.bin); adaptation writes "
        "ΘD under the base's tensor names and needs them (re-save the base with save_pretrained)"
    )


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the weights ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def base_tensors(base: Path) -> Iterator[tuple[str, Callable[[], torch.Tensor], int]]:
    """(name, loader, element count) of every tensor in the base's weight files."""
    kind, files = weight_files(base)
    for f in files:
        if kind == "safetensors":
            with safe_open(f, "pt") as fh:
                for k in fh.keys():
                    numel = math.prod(fh.get_slice(k).get_shape())
                    yield k, (lambda fh=fh, k=k: fh.get_tensor(k)), numel
        else:
            for k, t in _load_bin(f).items():
                yield k, (lambda t=t: t), t.numel()


def base_tensor_names(base: Path) -> dict[str, str]:
    """Tensor name -> dtype of every tensor in the base's weight files."""
    return {k: str(load().dtype) for k, load, _ in base_tensors(base)}


def base_numel(base: Path) -> int:
    """Elements in the base's weights (for the free-space check, read from the headers)."""
    return sum(n for _, _, n in base_tensors(base))


def aligned_state(model: torch.nn.Module, base: Path) -> dict[str, torch.Tensor]:
    """The trained weights under the base checkpoint's names; tensors the model has no trained
    counterpart for (e.g. a pooler the MLM class lacks) are kept from the base."""
    state = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "")
    out: dict[str, torch.Tensor] = {}
    for k, load, _ in base_tensors(base):
        for cand in (k, f"{prefix}.{k}", k.removeprefix(f"{prefix}.")):
            if cand in state:
                t = state[cand]
                break
        else:
            t = load()
        out[k] = t.detach().to("cpu").contiguous()
    # safetensors refuses shared storage (tied weights): give each tensor its own
    seen: set[int] = set()
    for k, t in out.items():
        if t.data_ptr() in seen:
            out[k] = t.clone()
        seen.add(t.data_ptr())
    return out


def check_finite(tensors: Iterable[tuple[str, torch.Tensor]], what: str, lr_flag: str) -> None:
    """Never write a model with NaN/inf weights (a diverged run): one line naming a tensor."""
    for name, t in tensors:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"{what}: tensor {name} holds NaN/inf after training (the run diverged); "
                f"nothing written — lower {lr_flag}"
            )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(folder: Path) -> None:
    """Every file 0666 and folder 0777 less the umask, as :mod:`~mergekit_ir.storage.atomic`
    does (safetensors and copies would otherwise leave 0600 or the base's own modes)."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)


def _roots(base: Path) -> list[Path]:
    """Where files the base links to may live: the base itself and, for a Hugging Face hub
    snapshot (``…/snapshots/<rev>``, whose files link to ``../../blobs``), its repo folder."""
    real = base.resolve()
    roots = [real]
    if real.parent.name == "snapshots":
        roots.append(real.parent.parent)
    return roots


def copy_extras(
    base: Path, dest: Path, warn: Callable[[str], None], top_skip: Callable[[Path], bool]
) -> None:
    """Copy the base's non-weight files into ``dest``: only regular files (and folders) that
    are inside the base. A symlink pointing elsewhere (``/etc/hostname``…), a FIFO or device
    is skipped with a warning, never copied, read or followed out of the base."""
    roots = _roots(base)
    seen: set[Path] = set()

    def inside(target: Path) -> bool:
        return any(target == r or r in target.parents for r in roots)

    def walk(src: Path, dst: Path, top: bool) -> None:
        real = src.resolve()
        if real in seen:  # a link loop
            return
        seen.add(real)
        for item in sorted(src.iterdir()):
            if item.name.startswith(".") or (top and top_skip(item)):
                continue
            shown = item.relative_to(base)
            if item.is_symlink():
                target = item.resolve()
                if not inside(target):
                    warn(f"{base}: {shown} links outside the base (to {target}); not copied")
                    continue
            else:
                target = item
            if target.is_dir():
                (dst / item.name).mkdir(exist_ok=True)
                walk(item, dst / item.name, False)
            elif target.is_file():
                shutil.copyfile(target, dst / item.name)
            else:
                warn(
                    f"{base}: {shown} is not a regular file (a FIFO, socket or device); not copied"
                )

    walk(base, dest, True)


def _loss_plot(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(range(1, len(losses) + 1), losses, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _card_text(info: dict[str, Any]) -> str:
    curve = info["loss_curve"]
    sample = ", ".join(f"{x:.3f}" for x in curve[:: max(len(curve) // 10, 1)])
    lines = [
        f"# ΘD: {info['objective']} adaptation of {info['base']}",
        "",
        "Made by `mergeir adapt` (mergekit-ir) from an unlabelled corpus.",
        "",
        "| | |",
        "|---|---|",
        *(
            f"| {k} | {info[k]} |"
            for k in (
                "base",
                "base_fingerprint",
                "corpus",
                "corpus_fingerprint",
                "objective",
                "output",
                "steps",
                "head_warmup_steps",
                "seed",
                "tokens_seen",
                "final_loss",
            )
        ),
        "",
        f"Settings: `{json.dumps(info['settings'], sort_keys=True)}`",
        "",
        f"Loss curve (every {max(len(curve) // 10, 1)} steps): {sample}",
        "",
        "![loss](loss.png)",
        "",
    ]
    return "\n".join(lines)


def _top_skip(item: Path) -> bool:
    """Top-level files of the base that ΘD replaces: weights, their index, our own card/plot."""
    if item.name in ("README.md", CARD, "loss.png"):
        return True
    return item.is_file() and (
        item.name.endswith(_WEIGHT_SUFFIXES) or item.name.endswith(".index.json")
    )


def write_output(
    out: Path,
    base: Path,
    result: Any,
    info: dict[str, Any],
    overwrite: bool,
    warn: Callable[[str], None] | None = None,
    lr_flag: str = "--lr",
) -> Path:
    """Write ΘD (or the adapter) to ``out`` atomically, with model card, adapt json and loss.png;
    refused (nothing written) when a weight is not finite."""
    from mergekit_ir.adaptation.progress import warn as print_warning

    warn = warn or print_warning
    lora = hasattr(result.model, "peft_config")
    info = {
        **info,
        "output": "peft-lora-adapter" if lora else "checkpoint",
        "loss_curve": result.losses,
        "final_loss": round(result.losses[-1], 4) if result.losses else None,
    }
    what = f"adapt {base}"
    if lora:
        check_finite(
            ((n, p) for n, p in result.model.named_parameters() if p.requires_grad), what, lr_flag
        )
        state = None
    else:
        state = aligned_state(result.model, base)
        check_finite(state.items(), what, lr_flag)
    with atomic.directory(out, overwrite=overwrite) as tmp:
        if lora:
            result.model.save_pretrained(tmp)
            cfg_path = tmp / "adapter_config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["base_model_name_or_path"] = str(base)
            cfg_path.write_text(json.dumps(cfg, indent=2))
        else:
            copy_extras(base, tmp, warn, _top_skip)
            save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / CARD).write_text(json.dumps(info, indent=2, default=str))
        (tmp / "README.md").write_text(_card_text(info))
        if result.losses:
            _loss_plot(result.losses, tmp / "loss.png")
        follow_umask(tmp)
    return out
