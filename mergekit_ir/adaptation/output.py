"""Writing ΘD: a Hugging Face folder whose tensor names are the base's own (so ΘD aligns with
Θ0/ΘT; a fresh MLM head is dropped), or a PEFT adapter folder; with a model card and loss.png."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mergekit_ir.errors import CheckpointError
from mergekit_ir.storage import atomic

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".h5", ".msgpack")
CARD = "mergekit_ir_adapt.json"


def base_tensor_names(base: Path) -> dict[str, str]:
    """Tensor name -> dtype of every tensor in the base's safetensors files."""
    files = sorted(base.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"{base}: no *.safetensors weights; adaptation writes ΘD with the base's tensor names "
            "and needs them (re-save the base with save_pretrained)"
        )
    names: dict[str, str] = {}
    for f in files:
        with safe_open(f, "pt") as fh:
            for k in fh.keys():
                names[k] = str(fh.get_slice(k).get_dtype())
    return names


def aligned_state(model: torch.nn.Module, base: Path) -> dict[str, torch.Tensor]:
    """The trained weights under the base checkpoint's names; tensors the model has no trained
    counterpart for (e.g. a pooler the MLM class lacks) are kept from the base."""
    state = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "")
    out: dict[str, torch.Tensor] = {}
    files = sorted(base.glob("*.safetensors"))
    for f in files:
        with safe_open(f, "pt") as fh:
            for k in fh.keys():
                for cand in (k, f"{prefix}.{k}", k.removeprefix(f"{prefix}.")):
                    if cand in state:
                        t = state[cand]
                        break
                else:
                    t = fh.get_tensor(k)
                out[k] = t.detach().to("cpu").contiguous()
    # safetensors refuses shared storage (tied weights): give each tensor its own
    seen: set[int] = set()
    for k, t in out.items():
        if t.data_ptr() in seen:
            out[k] = t.clone()
        seen.add(t.data_ptr())
    return out


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


def write_output(out: Path, base: Path, result: Any, info: dict[str, Any], overwrite: bool) -> Path:
    """Write ΘD (or the adapter) to ``out`` atomically, with model card, adapt json and loss.png."""
    lora = hasattr(result.model, "peft_config")
    info = {
        **info,
        "output": "peft-lora-adapter" if lora else "checkpoint",
        "loss_curve": result.losses,
        "final_loss": round(result.losses[-1], 4) if result.losses else None,
    }
    with atomic.directory(out, overwrite=overwrite) as tmp:
        if lora:
            result.model.save_pretrained(tmp)
            cfg_path = tmp / "adapter_config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["base_model_name_or_path"] = str(base)
            cfg_path.write_text(json.dumps(cfg, indent=2))
        else:
            for item in base.iterdir():
                if item.name.startswith(".") or item.name in ("README.md", CARD, "loss.png"):
                    continue
                if item.is_file() and (
                    item.name.endswith(_WEIGHT_SUFFIXES) or item.name.endswith(".index.json")
                ):
                    continue
                if item.is_dir():
                    shutil.copytree(item, tmp / item.name)
                else:
                    shutil.copy2(item, tmp / item.name)
            save_file(
                aligned_state(result.model, base),
                tmp / "model.safetensors",
                metadata={"format": "pt"},
            )
        (tmp / CARD).write_text(json.dumps(info, indent=2, default=str))
        (tmp / "README.md").write_text(_card_text(info))
        if result.losses:
            _loss_plot(result.losses, tmp / "loss.png")
    return out
