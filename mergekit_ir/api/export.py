"""Exporting a merged model to ONNX (and OpenVINO): :func:`export` and ``mergeir export``.

The output folder holds the model folder's files plus ``onnx/model.onnx`` — the layout
sentence-transformers' ``backend="onnx"`` (through Optimum) and ONNX Runtime read: inputs
``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the tokenizer gives them)
with dynamic ``batch_size`` / ``sequence_length`` axes; output ``last_hidden_state``
(bi-encoder) or ``logits`` (cross-encoder, SPLADE's masked-LM head).

Checked before any work: the folder is a model (``config.json``, a tokenizer), the scorer kind
is one this exports, and the output folder passes the one output-folder policy
(:func:`mergekit_ir.storage.output_folder.check_output`; the marker is ``onnx/export.json``).
After the export the ONNX model is run with ONNX Runtime on a few (query, document) pairs and
compared with the torch model (fp32: the largest absolute difference within ``atol``; int8:
the cosine of the outputs and the agreement of the document order per query). A mismatch is a
one-line refusal and nothing is written. The result is recorded in ``onnx/export.json`` and
appended to the ``README.md`` card when there is one.

The exporter is torch's ``torch.export``-based one (``dynamo=True``, needs ``onnxscript``):
the TorchScript one (``dynamo=False``) traces transformers' mask code into constants and gives
logits off by ~1e-2, which the check here catches.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from mergekit_ir.errors import CheckpointError, ConfigError, MergeIRError
from mergekit_ir.scoring.compiled import OPSET, export_graph
from mergekit_ir.storage import atomic
from mergekit_ir.storage.output_folder import OutputKind, check_output

KINDS = ("bi-encoder", "cross-encoder", "splade")
TARGETS = ("onnx", "openvino")
ONNX_FILE = "onnx/model.onnx"
#: sentence-transformers' name for a dynamic int8 file (``export_dynamic_quantized_onnx_model``
#: with ``"avx512_vnni"``); load it with ``model_kwargs={"file_name": ...}``.
INT8_FILE = "onnx/model_qint8_avx512_vnni.onnx"
OPENVINO_FILE = "openvino/openvino_model.xml"
RECORD = "onnx/export.json"
CARD = "README.md"
ATOL = 1e-4
#: int8 is refused when the cosine of an output row (a text's hidden states / term weights;
#: for a cross-encoder the column of logits) with the fp32 one is below this. The document
#: order agreement is recorded, not required: on near-tied scores (tiny or untrained models)
#: int8 noise swaps neighbours that fp32 separates by less than the quantisation step.
INT8_MIN_COSINE = 0.98

EXPORT_OUTPUT = OutputKind(
    what="the exported model",
    marker=RECORD,
    earlier="`mergeir export`",
    flag="--out",
    overwrite_flag="--overwrite",
    error=ConfigError,
)

#: sentence-transformers ``model_type`` -> scorer kind.
ST_MODEL_KINDS = {
    "SentenceTransformer": "bi-encoder",
    "CrossEncoder": "cross-encoder",
    "SparseEncoder": "splade",
}

#: (query, document) texts the export is checked on: different lengths, so padding and the
#: dynamic axes are exercised (batch and length differ from the export's example).
QUERIES = (
    "what is the effect of the drug on the cells",
    "gene expression in cancer",
    "does the treatment increase the risk of disease in patients",
)
DOCUMENTS = (
    "the study of the drug effect on human cells and the expression of genes",
    "cancer",
    "patients with the treatment were not at higher risk of disease",
    "mice brain blood levels",
)
EXAMPLE = (("the query", "a relevant document"), ("what", "no"))


@dataclass
class ExportRecord:
    """What ``onnx/export.json`` records."""

    kind: str
    targets: list[str]
    files: list[str]
    exporter: str
    opset: int
    inputs: list[str]
    output: str
    compared: str  # what was compared
    pairs: int
    atol: float
    max_abs_diff: float
    int8: dict[str, float] | None = None
    openvino_max_abs_diff: float | None = None
    versions: dict[str, str] = field(default_factory=dict)


# ---- the model folder ---------------------------------------------------------------------


def detect_kind(folder: Path) -> str:
    """The scorer kind of a model folder: its sentence-transformers ``model_type``, else its
    architecture (``…ForSequenceClassification``: cross-encoder, ``…ForMaskedLM``: splade,
    anything else: bi-encoder)."""
    st = folder / "config_sentence_transformers.json"
    if st.is_file():
        try:
            model_type = json.loads(st.read_text()).get("model_type")
        except (json.JSONDecodeError, AttributeError):
            model_type = None
        if model_type in ST_MODEL_KINDS:
            return ST_MODEL_KINDS[model_type]
    arch = " ".join(read_config(folder).get("architectures") or [])
    if "ForSequenceClassification" in arch:
        return "cross-encoder"
    if "ForMaskedLM" in arch:
        return "splade"
    return "bi-encoder"


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{folder}: not a model folder (no config.json); give the folder `mergeir merge "
            "--out` wrote"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: not a model config (a JSON object)")
    return raw


def check_model_folder(folder: Path) -> None:
    """A folder with a config, weights and a tokenizer, with its transformer at the root."""
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder}: not a folder; give the folder `mergeir merge --out` wrote"
        )
    read_config(folder)
    if not any(folder.glob("*.safetensors")) and not (folder / "pytorch_model.bin").is_file():
        raise CheckpointError(f"{folder}: no model weights (*.safetensors, pytorch_model.bin)")
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise CheckpointError(f"{folder}: no tokenizer (tokenizer.json); the export needs one")
    modules = folder / "modules.json"
    if modules.is_file():
        try:
            listed = json.loads(modules.read_text())
            paths = [
                str(m.get("path", ""))
                for m in listed
                if str(m.get("type", "")).endswith("Transformer")
            ]
        except (json.JSONDecodeError, AttributeError, TypeError):
            raise CheckpointError(f"{modules}: not a sentence-transformers module list") from None
        if paths and paths[0] not in ("", "."):
            raise CheckpointError(
                f"{folder}: its Transformer module is in {paths[0]}/, not the folder itself; "
                "export supports the layout sentence-transformers saves today (transformer at the root)"
            )


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---- torch side ---------------------------------------------------------------------------


def load_torch(folder: Path, kind: str) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) as the scorer of ``kind`` loads them."""
    from transformers import (
        AutoModel,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    cls = {
        "bi-encoder": AutoModel,
        "cross-encoder": AutoModelForSequenceClassification,
        "splade": AutoModelForMaskedLM,
    }[kind]
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = cls.from_pretrained(folder).eval()
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{folder}: cannot load it as a {kind} ({first})") from None
    return model, tokenizer


def _wrapper(model: Any, names: Sequence[str], output: str) -> Any:
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return getattr(self.model(**dict(zip(names, tensors, strict=True))), output)

    return Wrapped().eval()


def input_names(model: Any, tokenizer: Any) -> list[str]:
    import inspect

    accepted = inspect.signature(model.forward).parameters
    given = tokenizer("a", "b", return_tensors="pt")
    return [
        n for n in ("input_ids", "attention_mask", "token_type_ids") if n in given and n in accepted
    ]


def encode(tokenizer: Any, kind: str, texts: Sequence[Any], names: Sequence[str]) -> dict[str, Any]:
    if kind == "cross-encoder":
        queries, docs = zip(*texts, strict=True)
        enc = tokenizer(
            list(queries), list(docs), padding=True, truncation=True, return_tensors="pt"
        )
    else:
        enc = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    return {n: enc[n] for n in names}


def export_onnx(
    model: Any, tokenizer: Any, kind: str, names: list[str], output: str, path: Path
) -> None:
    """The exporter the compiled scoring backends use too
    (:func:`mergekit_ir.scoring.compiled.export_graph`)."""
    example = encode(
        tokenizer,
        kind,
        EXAMPLE if kind == "cross-encoder" else [" ".join(p) for p in EXAMPLE],
        names,
    )
    export_graph(_wrapper(model, names, output), example, output, path, f"this {kind}")


# ---- comparison ---------------------------------------------------------------------------


def batches(tokenizer: Any, kind: str, names: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """The checked inputs: queries and documents (separately) or every (query, document) pair."""
    if kind == "cross-encoder":
        pairs = [(q, d) for q in QUERIES for d in DOCUMENTS]
        return [("pairs", encode(tokenizer, kind, pairs, names))]
    return [
        ("queries", encode(tokenizer, kind, QUERIES, names)),
        ("documents", encode(tokenizer, kind, DOCUMENTS, names)),
    ]


def compared_values(kind: str, raw: Any, mask: Any) -> Any:
    """The values compared: masked last hidden states, logits, or SPLADE term weights."""
    import numpy as np

    raw = np.asarray(raw, dtype=np.float64)
    mask = np.asarray(mask, dtype=np.float64)
    if kind == "bi-encoder":
        return raw * mask[..., None]
    if kind == "splade":
        return (np.log1p(np.maximum(raw, 0.0)) * mask[..., None]).max(axis=1)
    return raw


def scores(kind: str, outputs: dict[str, Any], masks: dict[str, Any]) -> Any:
    """(queries × documents) scores from the compared values, as each scorer kind ranks."""
    import numpy as np

    if kind == "cross-encoder":
        logits = outputs["pairs"]
        col = logits[:, 0] if logits.shape[1] == 1 else logits[:, 1]
        return col.reshape(len(QUERIES), len(DOCUMENTS))
    if kind == "splade":
        return outputs["queries"] @ outputs["documents"].T
    pooled = {}
    for name in ("queries", "documents"):
        m = np.asarray(masks[name], dtype=np.float64)
        v = outputs[name].sum(axis=1) / m.sum(axis=1, keepdims=True)
        pooled[name] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return pooled["queries"] @ pooled["documents"].T


def order_agreement(a: Any, b: Any) -> float:
    """Share of (document, document) pairs each query orders alike under ``a`` and ``b``."""
    import numpy as np

    same = total = 0
    for row_a, row_b in zip(a, b, strict=True):
        for i in range(len(row_a)):
            for j in range(i + 1, len(row_a)):
                total += 1
                same += int(np.sign(row_a[i] - row_a[j]) == np.sign(row_b[i] - row_b[j]))
    return same / total if total else 1.0


def min_cosine(a: dict[str, Any], b: dict[str, Any]) -> float:
    import numpy as np

    worst = 1.0
    for name in a:
        x = a[name].reshape(len(a[name]), -1) if a[name].ndim > 1 else a[name][:, None]
        y = b[name].reshape(len(b[name]), -1) if b[name].ndim > 1 else b[name][:, None]
        if x.shape[1] == 1:  # one logit per pair: the cosine of the whole column
            x, y = x.T, y.T
        num = (x * y).sum(axis=1)
        den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        worst = min(worst, float(np.min(np.where(den > 0, num / np.maximum(den, 1e-30), 1.0))))
    return worst


def run_torch(
    model: Any,
    kind: str,
    names: Sequence[str],
    inputs: list[tuple[str, dict[str, Any]]],
    output: str,
) -> dict[str, Any]:
    import torch

    out = {}
    with torch.no_grad():
        for name, enc in inputs:
            raw = getattr(model(**enc), output).numpy()
            out[name] = compared_values(kind, raw, enc["attention_mask"].numpy())
    return out


def run_onnx(path: Path, kind: str, inputs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    out = {}
    for name, enc in inputs:
        raw = session.run(None, {k: v.numpy() for k, v in enc.items()})[0]
        out[name] = compared_values(kind, raw, enc["attention_mask"].numpy())
    return out


def run_openvino(path: Path, kind: str, inputs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU")
    out = {}
    for name, enc in inputs:
        raw = compiled({k: v.numpy() for k, v in enc.items()})[compiled.output(0)]
        out[name] = compared_values(kind, raw, enc["attention_mask"].numpy())
    return out


def max_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    import numpy as np

    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


# ---- the command --------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {}
    for name in ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "openvino"):
        with contextlib.suppress(md.PackageNotFoundError):
            found[name] = md.version(name)
    return found


def _require(module: str, why: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{why} needs the '{module}' package; pip install 'mergekit-ir[export]'")


def export(
    folder: str | Path,
    out: str | Path,
    *,
    to: str = "onnx",
    int8: bool = False,
    kind: str | None = None,
    atol: float = ATOL,
    overwrite: bool = False,
) -> ExportRecord:
    """Export ``folder`` to ``out`` (its files plus ``onnx/``, ``openvino/``); checked, then
    recorded. Any refusal is a :class:`MergeIRError` and leaves ``out`` as it was."""
    folder = Path(folder)
    if to not in TARGETS:
        raise ConfigError(f"--to {to}: choose one of {', '.join(TARGETS)}")
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"--kind {kind}: export supports {', '.join(KINDS)}")
    if not atol > 0:
        raise ConfigError(f"--atol {atol}: must be > 0")
    check_model_folder(folder)
    kind = kind or detect_kind(folder)
    for module in ("onnx", "onnxscript", "onnxruntime") + (
        ("openvino",) if to == "openvino" else ()
    ):
        _require(module, f"--to {to}")
    size = folder_bytes(folder)
    out = check_output(
        out,
        EXPORT_OUTPUT,
        inputs=[("the model", folder)],
        overwrite=overwrite,
        needed_bytes=size * (4 if int8 or to == "openvino" else 3),
    )

    model, tokenizer = load_torch(folder, kind)
    names = input_names(model, tokenizer)
    output = "last_hidden_state" if kind == "bi-encoder" else "logits"
    inputs = batches(tokenizer, kind, names)
    expected = run_torch(model, kind, names, inputs, output)
    compared = {
        "bi-encoder": "last hidden state (unpadded tokens)",
        "cross-encoder": "logits",
        "splade": "sparse term weights max(log1p(relu(logits)))",
    }[kind]
    with atomic.directory(out, overwrite=overwrite) as tmp:
        for item in sorted(folder.iterdir()):
            if item.name.startswith(".") or item.name in ("onnx", "openvino"):
                continue  # hidden files and an earlier export are not copied
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        onnx_path = tmp / ONNX_FILE
        export_onnx(model, tokenizer, kind, names, output, onnx_path)
        got = run_onnx(onnx_path, kind, inputs)
        diff = max_diff(expected, got)
        if not diff <= atol:
            raise CheckpointError(
                f"the ONNX model does not match the torch model: max |diff| {diff:.3g} > "
                f"--atol {atol:g} on the {compared}; nothing written"
            )
        files = [ONNX_FILE]
        record = ExportRecord(
            kind=kind,
            targets=[to],
            files=files,
            exporter="torch.onnx.export(dynamo=True)",
            opset=OPSET,
            inputs=names,
            output=output,
            compared=compared,
            pairs=len(QUERIES) * len(DOCUMENTS),
            atol=atol,
            max_abs_diff=diff,
            versions=_versions(),
        )
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            q_path = tmp / INT8_FILE
            quantize_dynamic(str(onnx_path), str(q_path), weight_type=QuantType.QInt8)
            q_got = run_onnx(q_path, kind, inputs)
            ref = scores(kind, expected, {n: e["attention_mask"].numpy() for n, e in inputs})
            q_scores = scores(kind, q_got, {n: e["attention_mask"].numpy() for n, e in inputs})
            stats = {
                "min_cosine": min_cosine(expected, q_got),
                "order_agreement": order_agreement(ref, q_scores),
                "top1_agreement": float((ref.argmax(axis=1) == q_scores.argmax(axis=1)).mean()),
                "max_abs_diff": max_diff(expected, q_got),
                "min_cosine_required": INT8_MIN_COSINE,
            }
            if not stats["min_cosine"] >= INT8_MIN_COSINE:
                raise CheckpointError(
                    f"the int8 model strays from the torch model (cosine {stats['min_cosine']:.4f} "
                    f"< {INT8_MIN_COSINE}; document order agreement "
                    f"{stats['order_agreement']:.2f}); export without --int8"
                )
            record.int8 = stats
            files.append(INT8_FILE)
        if to == "openvino":
            import openvino as ov

            ov_path = tmp / OPENVINO_FILE
            ov_path.parent.mkdir(parents=True, exist_ok=True)
            ov.save_model(ov.convert_model(str(onnx_path)), str(ov_path), compress_to_fp16=False)
            ov_diff = max_diff(expected, run_openvino(ov_path, kind, inputs))
            if not ov_diff <= atol:
                raise CheckpointError(
                    f"the OpenVINO model does not match the torch model: max |diff| {ov_diff:.3g} "
                    f"> --atol {atol:g}; nothing written"
                )
            record.openvino_max_abs_diff = ov_diff
            files.append(OPENVINO_FILE)
        (tmp / RECORD).write_text(json.dumps(asdict(record), indent=2) + "\n")
        card = tmp / CARD
        if card.is_file():
            with card.open("a") as fh:
                fh.write("\n" + card_section(record))
    return record


def card_section(record: ExportRecord) -> str:
    lines = [
        "## ONNX export",
        "",
        f"Exported with `mergeir export` ({record.exporter}, opset {record.opset}) as a "
        f"{record.kind}: {', '.join(f'`{f}`' for f in record.files)}.",
        f"Checked with ONNX Runtime against the torch model on {record.pairs} (query, document) "
        f"pairs ({record.compared}): max |diff| {record.max_abs_diff:.2e} (tolerance {record.atol:g}).",
    ]
    if record.int8:
        lines.append(
            f"int8 (dynamic, ONNX Runtime): min cosine {record.int8['min_cosine']:.4f}, document "
            f"order agreement {record.int8['order_agreement']:.2f}, top-1 agreement "
            f"{record.int8['top1_agreement']:.2f}."
        )
    if record.openvino_max_abs_diff is not None:
        lines.append(f"OpenVINO: max |diff| {record.openvino_max_abs_diff:.2e}.")
    return "\n".join(lines) + "\n"


def describe(record: ExportRecord, out: Path) -> str:
    line = (
        f"exported {record.kind} to {out}: {', '.join(record.files)}; max |diff| "
        f"{record.max_abs_diff:.2e} <= {record.atol:g} over {record.pairs} pairs"
    )
    if record.int8:
        line += (
            f"; int8 cosine {record.int8['min_cosine']:.4f}, order agreement "
            f"{record.int8['order_agreement']:.2f}"
        )
    if record.openvino_max_abs_diff is not None:
        line += f"; openvino max |diff| {record.openvino_max_abs_diff:.2e}"
    return line


@click.command("export")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Choice(TARGETS), default="onnx", show_default=True)
@click.option("--int8", is_flag=True, help="also write an ONNX Runtime dynamic int8 model")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="the new folder")
@click.option(
    "--kind", type=click.Choice(KINDS), default=None, help="scorer kind (default: from the folder)"
)
@click.option("--atol", type=float, default=ATOL, show_default=True, help="fp32 tolerance")
@click.option("--overwrite", is_flag=True, help="replace an earlier `mergeir export` output")
@click.pass_context
def export_command(
    ctx: click.Context,
    model: Path,
    to: str,
    int8: bool,
    out: Path,
    kind: str | None,
    atol: float,
    overwrite: bool,
) -> None:
    """Export a merged MODEL folder to ONNX (onnx/model.onnx) or OpenVINO, checked.

    The outputs of the exported model are compared with the torch model's on a few
    (query, document) pairs before anything is written; see docs/export.md.

    \b
    mergeir export merged/ --to onnx --out merged-onnx/
    mergeir export merged/ --to onnx --int8 --out merged-onnx/
    """
    try:
        record = export(model, out, to=to, int8=int8, kind=kind, atol=atol, overwrite=overwrite)
    except MergeIRError as exc:  # as the mergeir group prints it, when called on its own too
        click.echo(f"error: {' '.join(str(exc).splitlines())}", err=True)
        ctx.exit(2)
    except OSError as exc:
        from mergekit_ir.storage.output_folder import os_error_line

        click.echo(f"error: {os_error_line(exc)}", err=True)
        ctx.exit(2)
    click.echo(describe(record, out))
