"""The one exception type that reaches the user as a one-line message.

Library code raises :class:`RayotError` (or a subclass) for bad input: configuration, data,
paths, checkpoints. The CLI prints its message and exits with a non-zero status, never a
traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RayotError(Exception):
    """Bad input named in one clear message (the thing, then the problem)."""


class ConfigError(RayotError):
    """A configuration key that is unknown, of the wrong type or out of range."""


class DataError(RayotError):
    """A dataset, split file or image that is missing or malformed."""


class ModelError(RayotError):
    """A model name, pretrained tag or checkpoint that cannot be loaded."""


class TrainingError(RayotError):
    """A trial that cannot go on (for example a NaN loss)."""
