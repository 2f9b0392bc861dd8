"""Shared fixtures: tiny real checkpoints built per session, paths to ../shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # the suite runs in two pytest-xdist workers (pyproject's addopts): one intra-op thread
    # each, in this process and in the commands the tests start, so that two workers on two
    # cores never run four busy threads
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BEIR = SHARED / "data" / "beir"
MODELS = SHARED / "models"
WORDS = [
    "the",
    "cell",
    "protein",
    "gene",
    "cancer",
    "treatment",
    "tumor",
    "patients",
    "study",
    "risk",
    "heart",
    "brain",
    "virus",
    "vaccine",
    "immune",
    "diet",
    "vitamin",
    "insulin",
    "glucose",
    "lung",
]


@pytest.fixture(autouse=True)
def fresh_warning_log(monkeypatch):
    """Scorer warnings are logged once per process (INFO on repeats): each test starts as a
    fresh process would, whichever tests its xdist worker ran before it."""
    from mergekit_ir.scoring import scorer

    monkeypatch.setattr(scorer, "_LOGGED_WARNINGS", set())


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread while a module runs; the module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``.

    Tiny models gain nothing from intra-op threads, and on a shared CPU they cost seconds.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> tuple[Path, str]:
    """``mergeir run -q`` on the embedded quickstart, once per session: ``(root, output)`` with
    the outputs in ``root/out`` and its cache in ``root/cache``. Tests that only read the
    outputs, or warm a run of their own from the cache, share it; none may change ``out/``."""
    from click.testing import CliRunner

    from mergekit_ir.cli import main

    root = tmp_path_factory.mktemp("qs")
    args = ["run", "--registry", str(ROOT / "registry.yaml"), "--out", str(root / "out")]
    res = CliRunner().invoke(main, [*args, "--cache-dir", str(root / "cache"), "-q"])
    assert res.exit_code == 0, res.output
    return root, res.output


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (shared data/models not available)")
    return path


@pytest.fixture(scope="session")
def tiny_triplet(tmp_path_factory) -> dict[str, Path]:
    """Θ0 (BERT MLM), ΘD (MLM, Θ0 + noise), ΘT (sequence classifier, Θ0 + noise) and a base ΘT."""
    from safetensors.torch import load_file

    from mergekit_ir.references.tiny_models import save_bert, word_tokenizer

    root = tmp_path_factory.mktemp("triplet")
    tok = word_tokenizer(WORDS)
    pre = save_bert(root / "pretrained", tok, 0, head="mlm")
    state = load_file(pre / "model.safetensors")
    dom = save_bert(root / "domain", tok, 1, head="mlm", base_state=state, noise=0.02)
    ir = save_bert(root / "ir", tok, 2, head="classifier", base_state=state, noise=0.02)
    ir_base = save_bert(root / "ir_base", tok, 3, head="base", base_state=state, noise=0.02)
    return {"pretrained": pre, "domain": dom, "ir": ir, "ir_base": ir_base, "root": root}


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, torch may have been imported (by a plugin) before OMP_NUM_THREADS was set."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
