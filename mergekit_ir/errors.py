"""Errors the user can act on.

Every error that reaches the CLI is a `MergeIRError`: its message is one line that
names the file, YAML key or tensor at fault and says what to do. The CLI prints it
without a traceback.
"""


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
