"""Publishing Θ' on the Hugging Face hub: :func:`push` and the ``mergeir push`` command.

Everything up to the upload runs offline and is tested: the folder holds model weights, its
card (``README.md``, written by the merge with the hub metadata and, for a run's Θ', a
``model-index``) parses as the hub parses cards (``huggingface_hub.ModelCard``, metadata
errors not ignored), the repo id is well formed, and the files to send are listed. The
upload itself is ``HfApi().create_repo`` + ``upload_folder``; it needs the network and a
write token (``HF_TOKEN`` or ``hf auth login``), and any failure there is one line.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from mergekit_ir.errors import CheckpointError, ConfigError, MergeIRError
from mergekit_ir.merging.checkpoint import WEIGHT_FILES
from mergekit_ir.merging.engine import inside

CARD = "README.md"
HUB = "https://huggingface.co"


def read_card(folder: Path) -> Any:
    """The folder's model card, parsed and checked as the hub reads it (a
    ``huggingface_hub.ModelCard``); a missing card or invalid metadata is one line."""
    import yaml
    from huggingface_hub import ModelCard

    path = folder / CARD
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no model card; push a folder `mergeir merge --out` wrote (it writes one)"
        )
    text = path.read_text(errors="replace")
    if not text.startswith("---"):
        raise CheckpointError(f"{path}: the card has no YAML metadata block (library_name, tags)")
    try:
        card = ModelCard(text, ignore_metadata_errors=False)
    except (ValueError, TypeError, yaml.YAMLError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"{path}: the card's metadata is not valid for the hub ({first})"
        ) from None
    return card


@dataclass(frozen=True)
class PushPlan:
    """What :func:`push` sends: the folder's files and its checked card."""

    folder: Path
    repo_id: str
    private: bool
    files: tuple[tuple[str, int], ...]  # (path in the repo, bytes)
    card: Any  # huggingface_hub.ModelCard

    @property
    def url(self) -> str:
        return f"{HUB}/{self.repo_id}"

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def describe(self) -> str:
        """The dry run's answer: where, which files, and the validated card's metadata."""
        data = self.card.data
        results = data.eval_results or []
        datasets = ", ".join(dict.fromkeys(r.dataset_name for r in results))
        card_line = (
            f"model card: valid for the hub (library_name: {data.library_name or '-'}; "
            f"base_model: {', '.join(_as_list(data.base_model)) or '-'}; "
            + (
                f"model-index '{data.model_name}': {len(results)} results on {datasets})"
                if results
                else "no model-index)"
            )
        )
        lines = [
            f"would upload {len(self.files)} files ({_size(self.total_bytes)}) from {self.folder} "
            f"to {self.url} ({'private' if self.private else 'public'} when created)",
            *(f"  {path}  {_size(size)}" for path, size in self.files),
            card_line,
            "---",
            data.to_yaml(),
            "---",
        ]
        return "\n".join(lines)


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def check_repo_id(repo_id: str) -> str:
    """``NAME`` or ``OWNER/NAME`` as the hub accepts it; anything else is one line."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        if not isinstance(repo_id, str) or repo_id.count("/") > 1:
            raise HFValidationError("write NAME or OWNER/NAME")
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"{repo_id!r}: not a hub repo id ({first})") from None
    return repo_id


def plan_push(folder: str | Path, repo_id: str, *, private: bool = False) -> PushPlan:
    """Check everything :func:`push` can check without the network, and list the files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder; give the folder `mergeir merge --out` wrote")
    check_repo_id(repo_id)
    if not any((folder / f).is_file() for f in WEIGHT_FILES) and not any(
        folder.glob("*.safetensors")
    ):
        raise CheckpointError(f"{folder}: no model weights (looked for {', '.join(WEIGHT_FILES)})")
    card = read_card(folder)
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue  # hidden files (.cache, .git) are not part of the model
        if path.is_symlink() and not inside(path, folder):
            continue  # as the merge: a link out of the folder is not the model's
        files.append((rel.as_posix(), path.stat().st_size))
    return PushPlan(folder, repo_id, private, tuple(files), card)


def push(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    dry_run: bool = False,
) -> str:
    """Upload a merged model folder to the hub as ``repo_id``; returns the commit's URL.

    The card is checked first (:func:`read_card`); the repo is created when it does not exist
    (``private`` applies then; an existing repo keeps its visibility). ``token``: a write token,
    default ``HF_TOKEN`` or the one ``hf auth login`` saved. With ``dry_run`` nothing is sent:
    the answer lists the files that would be uploaded and the validated card's metadata.
    A failed upload (no network, no or a read-only token) is a one-line :class:`MergeIRError`.
    """
    plan = plan_push(folder, repo_id, private=private)
    if dry_run:
        return plan.describe()
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=getattr(repo, "repo_id", repo_id),
            folder_path=plan.folder,
            repo_type="model",
            commit_message="Upload a model merged with mergekit-ir",
            allow_patterns=[glob.escape(path) for path, _ in plan.files],
        )
    except Exception as exc:  # the network, the token, the hub: whatever it is, one line
        first = (str(exc).splitlines() or [""])[0][:200]
        raise MergeIRError(
            f"push {plan.folder} to {repo_id}: the upload failed ({type(exc).__name__}: {first}); "
            "check the network and that a write token is set (HF_TOKEN or `hf auth login`)"
        ) from None
    return str(getattr(commit, "commit_url", None) or getattr(repo, "url", None) or plan.url)


@click.command("push")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.argument("repo")
@click.option(
    "--private", is_flag=True, help="Create the repo private (an existing repo keeps its own)."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check the folder and its card; list what would be uploaded. Contacts nobody.",
)
@click.pass_context
def push_command(ctx: click.Context, folder: Path, repo: str, private: bool, dry_run: bool) -> None:
    """Upload a merged model FOLDER to the Hugging Face hub as REPO (OWNER/NAME).

    The card `mergeir merge` wrote is checked as the hub reads it first (metadata, and for
    `--from-run`/`--save-best` outputs the model-index of the run's metrics). The upload
    needs the network and a write token: HF_TOKEN, or `hf auth login`.

    \b
    mergeir push merged/ me/scifact-merged --dry-run
    mergeir push merged/ me/scifact-merged --private
    """
    try:
        answer = push(folder, repo, private=private, dry_run=dry_run)
    except MergeIRError as exc:  # as the mergeir group prints it, when called on its own too
        click.echo(f"error: {' '.join(str(exc).splitlines())}", err=True)
        ctx.exit(2)
    click.echo(answer if dry_run else f"uploaded {folder} to {answer}")
