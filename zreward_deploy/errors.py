"""Errors raised for bad input.

Every error names the offending item (an index in a batch, a file path, a dimension name or a model
directory) and the reason, so a caller scoring thousands of images can tell which one failed and why.
"""

from __future__ import annotations

from typing import Any


class ZRewardInputError(ValueError):
    """Bad input to zreward-deploy: an image, a prompt, a dimension, a model directory or a file.

    Attributes:
        item: what was wrong: a batch index, a path, a dimension name, ... (``None`` when not itemised).
        reason: why it was refused, in words.
    """

    def __init__(self, item: Any, reason: str):
        self.item = item
        self.reason = reason
        if item is None:
            where = ""
        elif isinstance(item, str) and item.startswith("--") and item.isprintable():
            where = f"{item}: "  # a command-line flag, as the user typed it
        else:
            where = f"{item!r}: "
        super().__init__(f"{where}{reason}")

    def __reduce__(self):  # keep picklable (multiprocessing, Ray) despite the two-argument constructor
        return (type(self), (self.item, self.reason))


class InvalidImageError(ZRewardInputError):
    """An image that cannot be read or used: unreadable, truncated, empty, too large, NaN, bad mode."""


class InvalidPromptError(ZRewardInputError):
    """A prompt that is not a string, is empty, or is longer than the model accepts."""


class UnknownDimensionError(ZRewardInputError):
    """A rubric dimension that the model does not know."""


class InvalidModelError(ZRewardInputError):
    """A model directory or config that cannot be loaded: missing files, pickle weights, mismatches."""


class MissingDependencyError(ImportError):
    """An optional dependency is needed for this feature; the message names the extra to install, then
    ``hint`` (what installing it implies, or an alternative) when given."""

    def __init__(self, package: str, extra: str, feature: str, hint: str = ""):
        self.package = package
        self.extra = extra
        super().__init__(
            f"{feature} needs the optional package {package!r}; install it with "
            f"`pip install 'zreward-deploy[{extra}]'`" + (f" {hint}" if hint else "")
        )
