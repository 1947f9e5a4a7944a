"""Errors the data layer raises, each naming the input, what is wrong and what is expected.

Layout errors are raised when a dataset is built, before any training, so a recipe runner can report them
as one line. They subclass the built-in types a caller would catch anyway.
"""

from __future__ import annotations

__all__ = ['DatasetLayoutError', 'SplitNotFoundError', 'CorruptImageError', 'BrokenDatasetError',
           'DamagedShardError', 'LabelOutOfRangeError', 'OptionalDependencyError', 'DATA_ERRORS', 'message_of']


class DatasetLayoutError(ValueError):
    """A data directory whose layout is wrong: an empty class folder, a non-image file, mismatched classes."""


class SplitNotFoundError(FileNotFoundError):
    """A data directory or split (``train``, ``val``, shards) that does not exist."""

    def __str__(self) -> str:  # FileNotFoundError formats (errno, strerror) pairs; ours carry one message.
        return str(self.args[0]) if self.args else ''


class CorruptImageError(ValueError):
    """An image that cannot be read or decoded, raised instead of skipping it when ``strict`` is set."""


class BrokenDatasetError(RuntimeError):
    """So many consecutive samples cannot be read that the dataset, not a few files, is broken."""


class DamagedShardError(ValueError):
    """A sample that cannot be read out of its MDS shard (a truncated or overwritten shard file): a bad sample,
    skipped and counted like an undecodable image (or named by ``strict``)."""


class LabelOutOfRangeError(ValueError):
    """A sample whose label is not a class of the model (negative, or ``num_classes`` or more): the data and the
    model disagree, so the run stops rather than skipping it."""


#: Errors a run's data raises while it trains or evaluates; a recipe runner reports them as one line.
DATA_ERRORS = (CorruptImageError, BrokenDatasetError, LabelOutOfRangeError)


def message_of(error: BaseException) -> str:
    """The first line of the error's own message, also when a DataLoader worker raised it (PyTorch then puts
    'Caught ... in DataLoader worker process N' and the worker's traceback before it)."""
    text = str(error).strip()
    if text.startswith('Caught '):
        return text.splitlines()[-1].partition(f'{type(error).__name__}: ')[2] or text.splitlines()[-1]
    return text.splitlines()[0] if text else type(error).__name__


class OptionalDependencyError(ImportError):
    """An optional extra (such as ``mosaicml-streaming``) that a requested feature needs is not installed."""
