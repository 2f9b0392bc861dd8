"""The package works from its wheel, not only from an editable install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_torch_is_a_range_and_psutil_is_not_a_runtime_dependency():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = [d for d in deps if d.startswith("torch")]
    assert torch and "==" not in torch[0] and ">=" in torch[0]
    assert not any(d.startswith("psutil") for d in deps)


@pytest.mark.slow
def test_wheel_installs_and_runs_from_any_folder(tmp_path):
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(ROOT)], check=True)
    wheel = next(wheels.glob("mergekit_ir-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "MERGEIR_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("MERGEIR_REGISTRY", None)

    def mergeir(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", "from mergekit_ir.cli import main; main()", *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
        )

    listed = mergeir("plugins")
    assert listed.returncode == 0, listed.stderr
    assert "task_arithmetic" in listed.stdout and "bm25s" in listed.stdout
    checked = mergeir("validate")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(str(site / "mergekit_ir" / "registry.yaml"))
    dry = mergeir("run", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "quickstart" in dry.stdout and "ready to run" in dry.stdout
