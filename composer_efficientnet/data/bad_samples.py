"""Unreadable images (and samples of damaged shards): skip and count them (or fail in ``strict`` mode), and report
them once per epoch.

A dataset that may meet bad files owns a :class:`BadSampleTracker` as its ``bad_samples`` attribute. The
tracker lives in shared memory, so the DataLoader worker processes (forked or spawned) that load samples
write counts and paths the main process can read; each worker writes only its own slot, so no lock is
needed. The :class:`BadSampleReport` callback, which the recipe runner adds to every Trainer, finds the
trackers of the train and eval dataloaders, logs what they saw at the end of each epoch and of each
evaluation, and resets them.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, List, Optional, Tuple, TypeVar

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist
from torch.utils.data import get_worker_info

from composer_efficientnet.data.errors import DATA_ERRORS, BrokenDatasetError, CorruptImageError, DamagedShardError
from composer_efficientnet.data.transforms import ImageTooLargeError

__all__ = ['BadSampleTracker', 'BadSampleReport', 'load_or_replace', 'LOAD_ERRORS', 'MAX_CONSECUTIVE_BAD']

log = logging.getLogger(__name__)

T = TypeVar('T')

#: What reading or decoding a bad file raises (torchvision's decoder raises RuntimeError, file I/O OSError).
LOAD_ERRORS = (RuntimeError, OSError, ValueError)

#: A run of this many unreadable samples in a row means the data, not a file, is broken: fail.
MAX_CONSECUTIVE_BAD = 64


class BadSampleTracker:
    """Per-process-slot counts and first paths of samples that failed to load, in shared memory.

    Slot 0 is the main process, slot ``1 + worker_id`` a DataLoader worker (modulo ``slots``).
    """

    def __init__(self, slots: int = 64, max_paths: int = 5, path_bytes: int = 1024) -> None:
        self.max_paths = max_paths
        self._counts = torch.zeros(slots, dtype=torch.int64).share_memory_()
        self._paths = torch.zeros(slots, max_paths, path_bytes, dtype=torch.uint8).share_memory_()

    def _slot(self) -> int:
        info = get_worker_info()
        return 0 if info is None else (1 + info.id) % self._counts.numel()

    def record(self, name: str) -> None:
        """Count one bad sample in this process's slot and keep its name if the slot has room."""
        slot = self._slot()
        seen = int(self._counts[slot])
        encoded = name.encode('utf-8', 'replace')[:self._paths.shape[2]]
        if seen < self.max_paths and encoded:
            row = self._paths[slot, seen]
            row.zero_()
            row[:len(encoded)] = torch.frombuffer(bytearray(encoded), dtype=torch.uint8)
        self._counts[slot] = seen + 1

    def snapshot(self) -> Tuple[int, List[str]]:
        """The number of bad samples since the last reset, and up to ``max_paths`` of their names."""
        names: List[str] = []
        for slot in torch.nonzero(self._counts).flatten().tolist():
            for row in self._paths[slot, :min(int(self._counts[slot]), self.max_paths)]:
                names.append(bytes(row.tolist()).rstrip(b'\0').decode('utf-8', 'replace'))
        return int(self._counts.sum()), names[:self.max_paths]

    def reset(self) -> None:
        """Start counting afresh (called by :class:`BadSampleReport` after each report)."""
        self._counts.zero_()


def load_or_replace(index: int, num_samples: int, load: Callable[[int], T], describe: Callable[[int], str],
                    tracker: BadSampleTracker, strict: bool) -> T:
    """``load(index)``, or, if that sample cannot be read, the next readable one after it (wrapping around).

    Replacing rather than dropping keeps every batch the same size. Each failure is recorded in ``tracker``;
    with ``strict`` the first failure raises :class:`CorruptImageError` naming the sample instead. A sample
    that is read but wrong for the whole run (a :data:`DATA_ERRORS` error, such as a label the model has no
    class for) is raised as it is, never replaced.
    """
    last_error: Optional[BaseException] = None
    for step in range(min(MAX_CONSECUTIVE_BAD, num_samples)):
        candidate = (index + step) % num_samples
        try:
            return load(candidate)
        except DATA_ERRORS:
            raise
        except LOAD_ERRORS as error:
            if strict:
                raise CorruptImageError(_unreadable(describe(candidate), error)) from error
            too_large = f' ({error.size.width} x {error.size.height} pixels: too large)' if isinstance(
                error, ImageTooLargeError) else ''
            tracker.record(describe(candidate) + too_large)
            last_error = error
    raise BrokenDatasetError(f'{min(MAX_CONSECUTIVE_BAD, num_samples)} consecutive samples starting at '
                             f'{describe(index)} could not be read (last: {last_error}); the dataset looks broken '
                             'rather than a few files corrupt.') from last_error


def _unreadable(where: str, error: BaseException) -> str:
    """What ``strict`` says about a sample that cannot be read: its image, or its shard's bytes."""
    if isinstance(error, ImageTooLargeError):
        return (f'{where}: {error}, which guards memory (the image would be decoded whole); resize the image, '
                'raise the dataset\'s max_image_pixels (null: no limit), or set strict: false to skip such images.')
    if isinstance(error, DamagedShardError):
        return (f'{where}: cannot read this sample out of its shard ({error}); expected an intact MDS shard as '
                'streaming.MDSWriter writes it. Copy or write the shard again, or set strict: false to skip '
                'unreadable samples.')
    return (f'{where}: cannot read or decode this image ({error}); expected a valid JPEG, PNG, WebP or GIF. Fix or '
            'remove the file, or set strict: false to skip unreadable images.')


def _tracker_of(dataloader: Any) -> Optional[BadSampleTracker]:
    tracker = getattr(getattr(dataloader, 'dataset', None), 'bad_samples', None)
    return tracker if isinstance(tracker, BadSampleTracker) else None


class BadSampleReport(Callback):
    """Logs, at the end of each epoch and each evaluation, how many unreadable images were skipped.

    Each rank logs a warning with its own count and first paths when it skipped any; the metric
    ``data/<label>/bad_samples`` is the total over all ranks (an all-reduce, once per epoch and evaluation, on
    every rank). Datasets without a tracker are ignored, so the callback is safe to add to every run.
    """

    # Counting starts when the epoch or evaluation starts: Composer loads a batch from each eval dataloader at
    # fit start (and from the train dataloader when resuming) only to seed samplers; those loads are not counted.
    def epoch_start(self, state: State, logger: Logger) -> None:
        self._reset(_tracker_of(state.train_dataloader))

    def eval_start(self, state: State, logger: Logger) -> None:
        self._reset(_tracker_of(state.dataloader))

    def epoch_end(self, state: State, logger: Logger) -> None:
        self._report('train', _tracker_of(state.train_dataloader), state, logger)

    def eval_end(self, state: State, logger: Logger) -> None:
        self._report(state.dataloader_label or 'eval', _tracker_of(state.dataloader), state, logger)

    @staticmethod
    def _reset(tracker: Optional[BadSampleTracker]) -> None:
        if tracker is not None:
            tracker.reset()

    @staticmethod
    def _report(label: str, tracker: Optional[BadSampleTracker], state: State, logger: Logger) -> None:
        if tracker is None:
            return
        count, names = tracker.snapshot()
        tracker.reset()
        if count:
            log.warning('Rank %d skipped %d unreadable image(s) in %s at epoch %d (replaced by the next readable '
                        'ones); first: %s', dist.get_global_rank(), count, label, int(state.timestamp.epoch),
                        ', '.join(names))
        total = state.device.tensor_to_device(torch.tensor([count], dtype=torch.int64))
        dist.all_reduce(total, reduce_operation='SUM')
        logger.log_metrics({f'data/{label}/bad_samples': int(total.item())})
