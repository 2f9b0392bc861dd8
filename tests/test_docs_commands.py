"""The docs' offline commands run verbatim (a reader copies them from the page).

Every ``mergeir …`` line of a ```bash block in README.md and docs/*.md that needs no network
and no extra plugin — the quickstart's, the published cells, validation, re-rendering and
evaluating the quickstart's outputs — runs in a fresh folder holding the repository's
registry.yaml, in page order after the README's main job (``mergeir run``).
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: A command runs offline when it names something generated here or read from the registry.
OFFLINE = re.compile(
    r"quickstart|^mergeir reported |^mergeir validate registry\.yaml|^mergeir plugins$"
    r"|^mergeir export merged/"
)
#: Commands that need what this page set up elsewhere (a third-party plugin being written, a
#: Ray cluster, a hub id) are not run here; their own tests cover them.
NEEDS_MORE = re.compile(r"clipped|--executor|timed|--mergekit-config|my-exp|/tmp/")


def commands(page: Path) -> list[str]:
    found = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            line = re.sub(r"\s+", " ", line)
            if line.startswith("mergeir ") and OFFLINE.search(line) and not NEEDS_MORE.search(line):
                found.append(line)
    return found


def test_the_docs_have_offline_commands_to_run():
    every = [c for p in PAGES for c in commands(p)]
    assert "mergeir merge quickstart-tiny --alpha 0.5 --out merged/" in every
    assert any(c.startswith("mergeir eval mergeir-out/quickstart/") for c in every)


@pytest.mark.slow
def test_offline_commands_in_the_docs_run_verbatim(tmp_path, monkeypatch):
    """Each command's words go to the CLI exactly as written (``shlex``, as bash splits them),
    in one process: a fresh interpreter per command cost ~6 s of imports each, and the
    ``mergeir`` console script itself is tested from the installed wheel
    (tests/test_packaging.py). A line with shell syntax fails here: word splitting would not
    be what a reader's shell does with it."""
    from click.testing import CliRunner

    from mergekit_ir.cli import main

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "registry.yaml", work / "registry.yaml")
    shutil.copytree(ROOT / "docs", work / "docs")
    env = {
        "MERGEIR_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "MERGEIR_REGISTRY": None,  # unset: the folder's registry.yaml, as a reader's shell has
    }
    monkeypatch.chdir(work)
    ran: set[str] = set()
    for cmd in ["mergeir run -q", *(c for p in PAGES for c in commands(p))]:
        if cmd in ran:
            continue
        ran.add(cmd)
        if "--out merged/" in cmd or "--out best/" in cmd:  # pages reuse these names
            shutil.rmtree(work / cmd.split("--out ")[1].split()[0], ignore_errors=True)
        assert not SHELL.search(cmd), f"{cmd}: shell syntax; give the page a plain command"
        res = CliRunner(env=env).invoke(main, shlex.split(cmd)[1:])
        assert res.exit_code == 0, f"{cmd}\n{res.output[-3000:]}\n{res.exception!r}"
    assert len(ran) >= 6


#: Shell syntax a line may hold (pipes, redirections, variables, globs...), which handing the
#: words to the CLI would not honour.
SHELL = re.compile(r"[|&;<>$`*?(){}~\\]")
