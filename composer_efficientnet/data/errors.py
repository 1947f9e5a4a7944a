"""Errors the data layer raises, each naming the input, what is wrong and what is expected.

Layout errors are raised when a dataset is built, before any training, so a recipe runner can report them
as one line. They subclass the built-in types a caller would catch anyway.
"""

from __future__ import annotations

__all__ = ['DatasetLayoutError', 'SplitNotFoundError', 'CorruptImageError', 'OptionalDependencyError']


class DatasetLayoutError(ValueError):
    """A data directory whose layout is wrong: an empty class folder, a non-image file, mismatched classes."""


class SplitNotFoundError(FileNotFoundError):
    """A data directory or split (``train``, ``val``, shards) that does not exist."""

    def __str__(self) -> str:  # FileNotFoundError formats (errno, strerror) pairs; ours carry one message.
        return str(self.args[0]) if self.args else ''


class CorruptImageError(ValueError):
    """An image that cannot be read or decoded, raised instead of skipping it when ``strict`` is set."""


class OptionalDependencyError(ImportError):
    """An optional extra (such as ``mosaicml-streaming``) that a requested feature needs is not installed."""
