"""Long work speaks in a log: a scoring pass longer than LOG_EVERY_S writes a plain line every
LOG_EVERY_S seconds, with rate and ETA (stderr not a terminal); a short one stays quiet."""

from __future__ import annotations

import time

from mergekit_ir.scoring import scorer as scorer_module
from mergekit_ir.scoring.scorer import Scorer, ScoringSettings


class Slow(Scorer):
    def score_pairs(self, pairs):
        with self.progress(len(pairs), "slow") as bar:
            for _ in pairs:
                time.sleep(0.05)
                bar.update(1)
        return [0.0] * len(pairs)


def test_a_pass_in_a_log_speaks_at_start_and_periodically(capsys, monkeypatch):
    monkeypatch.setattr(scorer_module, "LOG_EVERY_S", 0.1)
    s = Slow(ScoringSettings("cpu", "fp32", 4, True))
    with s.labelled("pass 2/5 · ΘT · toy:test"):
        s.score_pairs([("q", "d")] * 8)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert lines[0].startswith("pass 2/5 · ΘT · toy:test · slow: ") and "/8 pairs" in lines[0]
    assert len(lines) >= 2 and all("\r" not in x and "%|" not in x for x in lines)
    assert all("pair/s" in x and "ETA" in x for x in lines)


def test_a_short_pass_adds_no_line(capsys):
    s = Slow(ScoringSettings("cpu", "fp32", 4, True))
    s.score_pairs([("q", "d")] * 2)  # well under LOG_EVERY_S
    assert capsys.readouterr().err == ""


def test_quiet_means_silent(capsys):
    s = Slow(ScoringSettings("cpu", "fp32", 4, False))
    s.score_pairs([("q", "d")] * 3)
    assert capsys.readouterr().err == ""
