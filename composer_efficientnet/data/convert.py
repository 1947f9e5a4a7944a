"""ImageFolder trees written as MDS shards, the format ``streaming_imagenet`` reads; ``convert-dataset`` runs it.

Shards hold the original encoded bytes (JPEG for ImageNet), not decoded pixels, so they are as small as the
source tree, and a path column that error messages name. Worker processes read each file and decode it once
to check it (the slow part: 1.28M ImageNet JPEGs); the main process writes the samples with
``streaming.MDSWriter`` in the tree's sorted order, so the shards are the same for any number of workers.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from tqdm import tqdm

from composer_efficientnet.data.bad_samples import LOAD_ERRORS
from composer_efficientnet.data.errors import CorruptImageError, DatasetLayoutError, SplitNotFoundError
from composer_efficientnet.data.imagefolder import SPLITS, scan_split
from composer_efficientnet.data.streaming import is_url, require_streaming, split_location
from composer_efficientnet.data.transforms import decode_image_bytes

__all__ = ['MDS_COLUMNS', 'SplitSummary', 'convert_imagefolder_to_mds', 'default_workers']

log = logging.getLogger(__name__)

#: The columns our shards hold: encoded image bytes, class index, and the source path for error messages.
MDS_COLUMNS = {'x': 'bytes', 'y': 'int', 'path': 'str'}

_CHUNK = 16  # images per task sent to a worker
_BLOCKS_PER_WORKER = 8  # chunks in flight per worker: bounds the encoded bytes held in memory
_SHOWN = 5  # skipped images named in a summary


def default_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def _human(size: int) -> str:
    for unit in ('B', 'kB', 'MB', 'GB'):
        if size < 1000:
            return f'{size:.0f} {unit}' if unit == 'B' else f'{size:.1f} {unit}'
        size /= 1000
    return f'{size:.1f} TB'


@dataclass
class SplitSummary:
    """What converting one split wrote; ``str()`` is the closing line ``convert-dataset`` prints."""
    split: str
    out: str
    images: int
    shards: int
    bytes: int
    seconds: float
    skipped: List[str] = field(default_factory=list)  # unreadable images, relative to the split directory

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        line = (f'{self.split}: {self.images} images in {self.shards} shard(s), {_human(self.bytes)}, '
                f'{self.seconds:.1f} s, {self.images_per_second:.0f} images/s -> {self.out}')
        if self.skipped:
            shown = ', '.join(self.skipped[:_SHOWN]) + (', ...' if len(self.skipped) > _SHOWN else '')
            line += f'; skipped {len(self.skipped)} unreadable image(s): {shown}'
        return line


def _read_checked(path: str) -> Tuple[Optional[bytes], str]:
    """A file's bytes if it decodes as an image, else ``(None, why)``; runs in the worker processes."""
    try:
        with open(path, 'rb') as file:
            data = file.read()
        decode_image_bytes(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    except LOAD_ERRORS as error:
        return None, str(error).splitlines()[0] if str(error) else type(error).__name__
    return data, ''


def _start_worker() -> None:
    """Pool worker set-up: one thread each, and the signal handling ``Pool.terminate`` relies on.

    Importing Composer makes SIGTERM and SIGINT raise SystemExit; a worker that inherits that can catch the
    SIGTERM of ``terminate`` inside a lock and never exit. The parent handles Ctrl-C and terminates the workers.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)  # the workers are the parallelism; more threads each only oversubscribe the cores


@contextlib.contextmanager
def _reader(workers: int) -> Iterator[Callable[[Sequence[str]], Iterator[Tuple[Optional[bytes], str]]]]:
    """A function mapping paths to :func:`_read_checked` results in order, over ``workers`` processes."""
    if workers == 1:
        yield lambda paths: map(_read_checked, paths)
        return
    with multiprocessing.Pool(workers, initializer=_start_worker) as pool:  # terminated on leaving, if still up
        block = workers * _CHUNK * _BLOCKS_PER_WORKER

        def read(paths: Sequence[str]) -> Iterator[Tuple[Optional[bytes], str]]:
            for start in range(0, len(paths), block):  # imap would queue every path's result if writing lags
                yield from pool.imap(_read_checked, paths[start:start + block], chunksize=_CHUNK)

        yield read
        pool.close()  # done: let the workers finish and exit by themselves
        pool.join()


def _splits_of(src: str, split: Optional[str]) -> Dict[str, str]:
    """Split name -> split directory: the tree's ``train``/``val``, or ``src`` itself as the split ``split``."""
    present = [name for name in SPLITS.values() if os.path.isdir(os.path.join(src, name))]
    if split is None:
        if not present:
            raise SplitNotFoundError(f'{src}: none of the splits {", ".join(SPLITS.values())} exists there; expected '
                                     'an ImageFolder tree such as train/<class>/<image>.JPEG, or give --split NAME to '
                                     'convert a single split laid out as <class>/<image>.')
        return {name: os.path.join(src, name) for name in present}
    if not split or split in ('.', '..') or '/' in split or os.sep in split:
        raise ValueError(f"--split: '{split}' is not a split name; expected a plain folder name such as train.")
    if present:
        raise DatasetLayoutError(f'{src}: holds the split folder(s) {", ".join(present)}, but --split {split} reads '
                                 f'{src} as one split of <class>/<image>; drop --split to convert every split, or '
                                 f'give --src {os.path.join(src, present[0])}.')
    return {split: src}


def _fresh_root(path: str) -> Optional[str]:
    """The topmost directory writing to ``path`` would create (``None`` if ``path`` exists)."""
    path, root = os.path.abspath(path), None
    while not os.path.exists(path):
        root, path = path, os.path.dirname(path)
    return root


def _existing_part(path: str) -> str:
    """``path``, or its nearest ancestor that exists."""
    root = _fresh_root(path)
    return os.path.dirname(root) if root else os.path.abspath(path)


def _undo(split_out: str, fresh_root: Optional[str]) -> None:
    """Remove what a failed conversion wrote for one split: the directories it created, or its files."""
    if fresh_root is not None:
        shutil.rmtree(fresh_root, ignore_errors=True)
        return
    for name in os.listdir(split_out) if os.path.isdir(split_out) else []:
        target = os.path.join(split_out, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        else:
            os.remove(target)


def _write_split(name: str, split_dir: str, paths: List[str], labels: List[int], split_out: str, read: Callable,
                 strict: bool, progress: Optional[bool], writer_kwargs: Dict[str, Any]) -> SplitSummary:
    """Write one scanned split in order, reading its images with ``read``; the writer is finished only if
    every sample was written, so a failure never leaves an index behind."""
    log.info('Writing %d images of %s to %s', len(paths), split_dir, split_out)
    started, skipped = time.perf_counter(), []
    writer = require_streaming().MDSWriter(out=split_out, columns=MDS_COLUMNS, **writer_kwargs)
    try:
        results = read([os.path.join(split_dir, path) for path in paths])
        with tqdm(total=len(paths), desc=name, unit='img', disable=None if progress is None else not progress) as bar:
            for path, label, (data, why) in zip(paths, labels, results):
                if data is None and strict:
                    raise CorruptImageError(f'{os.path.join(split_dir, path)}: cannot read or decode this image '
                                            f'({why}); expected a valid JPEG, PNG, WebP or GIF. Fix or remove the '
                                            'file, or convert without --strict to skip unreadable images.')
                if data is None:
                    log.warning('Skipping %s: cannot read or decode this image (%s)', path, why)
                    skipped.append(path)
                else:
                    writer.write({'x': data, 'y': label, 'path': path})
                bar.update()
    except BaseException:
        writer.cancel_future_jobs()
        if writer.remote:
            shutil.rmtree(writer.local, ignore_errors=True)
        raise
    writer.finish()
    stored = [shard['zip_data'] or shard['raw_data'] for shard in writer.shards]
    return SplitSummary(name, split_out, len(paths) - len(skipped), len(stored), sum(s['bytes'] for s in stored),
                        time.perf_counter() - started, skipped)


def convert_imagefolder_to_mds(src: str, out: str, *, split: Optional[str] = None, workers: Optional[int] = None,
                               strict: bool = False, progress: Optional[bool] = None,
                               size_limit: Union[int, str] = '64mb',
                               compression: Optional[str] = None) -> Dict[str, SplitSummary]:
    """Write each split of the ImageFolder tree ``src`` (``train``, ``val``) as MDS shards under ``out/<split>``.

    Every split is checked as :func:`~composer_efficientnet.data.imagefolder.scan_split` checks it before
    anything is written, and labels are the class indices the ImageFolder path uses. An image that cannot be
    read or decoded is skipped and named in the summary; with ``strict`` it stops the conversion with a
    :class:`CorruptImageError`. That or any other failure (Ctrl-C included) first removes what this conversion
    wrote locally; for a remote ``out``, shards already uploaded stay, but no index, so they are no dataset.

    Args:
        src: The tree's root, or with ``split`` a single split laid out as ``<class>/<image>``.
        out: A local directory, or any remote ``streaming.MDSWriter`` accepts; its split folders must be empty
            or absent.
        split: Convert ``src`` as this one split, into ``out/<split>``.
        workers: Processes reading and checking images (default: :func:`default_workers`); the shards are the
            same for any number.
        strict: Stop at the first unreadable image instead of skipping it.
        progress: A progress bar per split on stderr (default: only when stderr is a terminal).
        size_limit: Shard size limit, as ``MDSWriter`` takes it.
        compression: Shard compression, as ``MDSWriter`` takes it (JPEGs barely compress).

    Returns:
        A :class:`SplitSummary` per split written.
    """
    require_streaming()
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f'workers: must be a positive number of processes, got {workers}.')
    split_dirs = _splits_of(src, split)
    outs = {name: split_location(out, name) for name in split_dirs}
    scanned = {}
    for name, split_dir in split_dirs.items():  # check everything first: a bad tree leaves no shards behind
        if not is_url(outs[name]) and not os.path.isdir(_existing_part(outs[name])):
            raise NotADirectoryError(f'{out}: {_existing_part(outs[name])} is a file; expected a directory (empty or '
                                     'missing) for the shards of each split.')
        if not is_url(outs[name]) and os.path.isdir(outs[name]) and os.listdir(outs[name]):
            raise FileExistsError(f'{outs[name]}: output directory is not empty; expected an empty or missing '
                                  'directory (remove it to convert again).')
        scanned[name] = scan_split(split_dir)[1:]
    fresh = {name: None if is_url(split_out) else _fresh_root(split_out) for name, split_out in outs.items()}
    summaries: Dict[str, SplitSummary] = {}
    try:
        with _reader(workers) as read:
            for name, split_dir in split_dirs.items():
                summaries[name] = _write_split(name, split_dir, *scanned[name], outs[name], read, strict, progress,
                                               {'size_limit': size_limit, 'compression': compression})
    except BaseException:
        for name, split_out in outs.items():
            if not is_url(split_out):
                _undo(split_out, fresh[name])
        raise
    return summaries
