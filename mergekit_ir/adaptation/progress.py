"""What a long adaptation says while it works: one line as soon as it starts, then a line per
phase (tokenising, head warm-up, training), and in a log (stderr not a TTY) a step line at
least every :data:`LOG_INTERVAL_S` seconds with rate and ETA. Warnings are printed even when
progress is off.

Time comes from :func:`now` (a monotonic clock the tests replace with a fake one), so the
timing rules are tested without sleeping.
"""

from __future__ import annotations

import sys
import time

#: A log gets a line at least this often (seconds), however long a tenth of the run takes.
LOG_INTERVAL_S = 30.0

_clock = time.monotonic


def now() -> float:
    return _clock()


def is_tty() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h14m``."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def warn(message: str) -> None:
    """A warning line on stderr (shown with ``-q`` too: it is about the result, not progress)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Reporter:
    """Phase lines (``adapt: …``) and the timing of periodic lines in a log."""

    def __init__(self, enabled: bool, interval_s: float = LOG_INTERVAL_S) -> None:
        self.enabled = enabled
        self.interval_s = interval_s
        self.last = now()

    def say(self, message: str) -> None:
        if self.enabled:
            # sys.stderr looked up at call time: a test's capture (or a redirect) sees it
            print(f"adapt: {message}", file=sys.stderr, flush=True)
            self.last = now()

    def due(self) -> bool:
        """Whether a periodic line is owed (enabled, and ``interval_s`` since the last one)."""
        return self.enabled and now() - self.last >= self.interval_s

    def line(self, text: str) -> None:
        """A periodic line, printed as it is (``adapt step …``)."""
        if self.enabled:
            print(text, file=sys.stderr, flush=True)
            self.last = now()
