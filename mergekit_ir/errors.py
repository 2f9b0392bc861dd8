"""Errors the user can act on.

Every error that reaches the CLI is a `MergeIRError`: its message is one line that
names the file, YAML key or tensor at fault and says what to do. The CLI prints it
without a traceback.
"""

import re
import reprlib


class MergeIRError(Exception):
    """Base class: a user-facing, one-line error."""


class ConfigError(MergeIRError):
    """A registry or experiment config is invalid (names the YAML path)."""


class PluginError(MergeIRError):
    """A plugin is unknown, broken, or two plugins claim one name."""


class CheckpointError(MergeIRError):
    """A checkpoint is missing, corrupt, or does not fit the rest of its triplet."""


class DatasetError(MergeIRError):
    """A dataset id is unknown or one of its files is broken (names file and line)."""


ECHO_LIMIT = 80


def _bounded_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 3, 6, 6, 4, 6
    r.maxstring, r.maxother, r.maxlong = ECHO_LIMIT, ECHO_LIMIT, 40
    return r


_REPR = _bounded_repr()


def short_repr(value: object, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters, for echoing a user's value in an error.

    Every error that echoes a value goes through here, so a message stays one short line
    even when the value is huge (a YAML alias expanded into megabytes): ``reprlib`` bounds
    the depth and length while rendering, so a giant value is never rendered in full.
    """
    text = _REPR.repr(value).replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def key_label(key: object) -> str:
    """A YAML key as it appears in an error's path: bare when it is a plain word, else quoted."""
    text = str(key)
    return text if re.fullmatch(r"[\w.@+-]{1,60}", text) else short_repr(key, 40)
