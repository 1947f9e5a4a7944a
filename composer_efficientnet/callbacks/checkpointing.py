"""Checkpoints that a kill at any moment cannot corrupt: atomic files, an atomic ``latest`` link, gates.

Composer 0.32.1's ``CheckpointSaver`` writes each checkpoint in place under its final name and then updates
the ``latest`` symlink by removing it and creating it anew. A process killed during the write leaves a
truncated file under a checkpoint's name; one killed between the removal and the creation leaves no
``latest`` link, so the next ``autoresume`` silently starts the run from scratch. :class:`AtomicCheckpointSaver`
writes to a hidden temporary file that is flushed to disk and renamed into place, replaces the link with a
rename, and only then deletes checkpoints beyond ``num_checkpoints_to_keep``. Before every write it calls its
gates (such as :class:`~composer_efficientnet.callbacks.DivergenceGuard`'s check) on every process, so a
gate that raises prevents the write.

While :func:`checkpoints_without_code` is active, Composer reads every checkpoint it loads (a ``load_path``, an
autoresume checkpoint, local or downloaded) with :func:`~composer_efficientnet.safe_load.read_checkpoint`,
which refuses one that would run code, instead of ``torch.load(weights_only=False)``; an archive is unpacked with
its members checked (:mod:`composer_efficientnet.archives`), with or without ``load_trusted``.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import logging
import os
import re
import zipfile
from typing import Any, Callable, Dict, Iterator, List, Optional

from composer.callbacks import CheckpointSaver
from composer.core import State
from composer.loggers import Logger
from composer.utils import checkpoint as composer_checkpoint
from composer.utils import dist, format_name_with_dist, partial_format

from composer_efficientnet.outputs import PARTIAL_PREFIX
from composer_efficientnet.outputs import free_space as _free_space
from composer_efficientnet.outputs import fsync_directory as _fsync_directory
from composer_efficientnet.outputs import os_error_in as _os_error_in
from composer_efficientnet.outputs import partial_name as _partial_name
from composer_efficientnet.archives import composer_unpacks_checked
from composer_efficientnet.safe_load import read_checkpoint

__all__ = ['AtomicCheckpointSaver', 'CHECKPOINT_FILENAME', 'CheckpointWriteError', 'LATEST_FILENAME', 'PARTIAL_PREFIX',
           'checkpoint_pattern', 'checkpoints_without_code', 'complete_checkpoints', 'is_complete_checkpoint',
           'latest_checkpoint', 'newest_complete_checkpoint', 'point_latest_at', 'replace_symlink']

#: The private names of Composer 0.32.1's ``composer.utils.checkpoint`` used here (tests check each still exists
#: and is still called where this module relies on it): the writer of a checkpoint file, the reader every
#: monolithic checkpoint load goes through, and the validation that reader runs first.
COMPOSER_PRIVATE_NAMES = ('_write_checkpoint_file', '_torch_load_with_validation', '_ensure_valid_checkpoint')

log = logging.getLogger(__name__)

#: Composer's default names, which the recipe runner uses.
CHECKPOINT_FILENAME = 'ep{epoch}-ba{batch}-rank{rank}.pt'
LATEST_FILENAME = 'latest-rank{rank}.pt'
#: Temporary files start with PARTIAL_PREFIX (composer_efficientnet.outputs'); they never match a checkpoint name,
#: so nothing ever loads one.

Gate = Callable[[State], None]


class CheckpointWriteError(Exception):
    """A checkpoint could not be written (a full disk, a lost mount); the message names it and what is intact."""


def _publish(partial: str, path: str) -> None:
    os.replace(partial, path)
    _fsync_directory(os.path.dirname(path))


@contextlib.contextmanager
def _atomic_checkpoint_files() -> Iterator[None]:
    """While active, Composer's checkpoint writer writes a temporary file, syncs it and renames it into place."""
    write_in_place = composer_checkpoint._write_checkpoint_file

    def write_atomically(state_dict: Dict[str, Any], filename: str) -> None:
        partial = _partial_name(filename)
        try:
            write_in_place(state_dict, partial)
            with open(partial, 'rb') as file:
                os.fsync(file.fileno())
            _publish(partial, filename)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(partial)
            raise

    composer_checkpoint._write_checkpoint_file = write_atomically
    try:
        yield
    finally:
        composer_checkpoint._write_checkpoint_file = write_in_place


@contextlib.contextmanager
def checkpoints_without_code(shown: Optional[str] = None, trusted: bool = False) -> Iterator[None]:
    """While active, Composer reads the checkpoints it loads with ``weights_only`` and the allow-list of
    :func:`~composer_efficientnet.safe_load.read_checkpoint`, after its download (or decompression) and its
    optional validation, and before anything is unpickled: a file that would run code raises
    :class:`~composer_efficientnet.safe_load.UnsafeCheckpointError`, naming it ``shown`` (what the user gave, since
    Composer reads a temporary copy) or else the file Composer was asked to load. Allowed files load as they would
    with Composer's reader.

    Archives (``.tar``, ``.pt.gz``, ...) are unpacked into Composer's temporary folder with every member checked
    (:func:`~composer_efficientnet.archives.composer_unpacks_checked`), never with Composer's ``extractall`` or
    beside the original; with ``trusted`` that is all that is done, and Composer unpickles the files itself.
    """
    sources: Dict[str, str] = {}
    with composer_unpacks_checked(sources):
        if trusted:
            yield
            return
        load_unsafely = composer_checkpoint._torch_load_with_validation

        def load_without_code(checkpoint_filepath: str, map_location: str) -> Any:
            validated = composer_checkpoint._ensure_valid_checkpoint(checkpoint_filepath)
            return read_checkpoint(validated, shown=shown or sources.get(str(checkpoint_filepath)),
                                   map_location=map_location)

        composer_checkpoint._torch_load_with_validation = load_without_code
        try:
            yield
        finally:
            composer_checkpoint._torch_load_with_validation = load_unsafely


def replace_symlink(target: str, link: str) -> None:
    """Point ``link`` at ``target`` (relative to the link's folder) in one rename; the link is never missing.

    A link that cannot be made (a file system out of inodes or space, read-only, ...) raises
    :class:`CheckpointWriteError`, whose one line names the link, the reason, the free space and what the link
    still names; the temporary link is removed.
    """
    partial = _partial_name(link)
    try:
        if os.path.lexists(partial):  # left by an earlier failure of this process
            os.remove(partial)
        os.symlink(os.path.relpath(target, os.path.dirname(link) or '.'), partial)
        _publish(partial, link)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(partial)
        folder = os.path.dirname(link) or '.'
        name = os.path.basename(link)
        kept = f'{name} still points at {os.readlink(link)}' if os.path.islink(link) else f'there is no {name} yet'
        raise CheckpointWriteError(f'could not point {name} in {folder} at {os.path.basename(target)}: '
                                   f'{error.strerror or error} ({_free_space(folder)}); {os.path.basename(target)} '
                                   f'is complete, {kept}; nothing partial was left') from error


def is_complete_checkpoint(path: str) -> bool:
    """Whether ``path`` exists and, for a ``.pt`` file, ends with the zip directory ``torch.save`` writes last.

    A truncated ``.pt`` file lacks that directory; other formats are only checked for existence.
    """
    if not os.path.isfile(path):
        return False
    return zipfile.is_zipfile(path) if path.endswith('.pt') else True


def checkpoint_pattern(filename: str, rank: int) -> re.Pattern:
    """A regular expression for the names ``filename`` gives the checkpoints of ``rank``."""
    pattern = re.escape(partial_format(filename, rank=rank))
    for unit in ('epoch', 'batch', 'sample', 'token', 'batch_in_epoch', 'sample_in_epoch', 'token_in_epoch'):
        pattern = pattern.replace(re.escape(f'{{{unit}}}'), r'\d+')
    return re.compile(f'^{pattern}$')


def complete_checkpoints(folder: str, filename: str = CHECKPOINT_FILENAME, rank: int = 0) -> List[str]:
    """The complete checkpoints of ``rank`` in ``folder``, oldest written first."""
    if not os.path.isdir(folder):
        return []
    pattern = checkpoint_pattern(filename, rank=rank)
    complete = [path for path in glob.glob(os.path.join(folder, '*'))
                if pattern.match(os.path.basename(path)) and is_complete_checkpoint(path)]
    return sorted(complete, key=lambda path: os.stat(path).st_mtime_ns)


def newest_complete_checkpoint(folder: str, filename: str = CHECKPOINT_FILENAME) -> Optional[str]:
    """The most recently written complete checkpoint of rank 0 in ``folder``, or ``None``.

    The newest, rather than the ``latest`` link's: a process killed after a checkpoint was renamed into place
    but before the link was updated (by this saver or Composer's), or a link to a missing or truncated
    file, would otherwise resume from an older checkpoint or from scratch.
    """
    complete = complete_checkpoints(folder, filename)
    return complete[-1] if complete else None


def point_latest_at(checkpoint: str, latest_filename: str = LATEST_FILENAME) -> None:
    """Make rank 0's ``latest`` link beside ``checkpoint`` name it, if it does not already."""
    link = os.path.join(os.path.dirname(checkpoint), partial_format(latest_filename, rank=0))
    if not os.path.exists(link) or not os.path.samefile(link, checkpoint):
        log.warning('autoresume: pointing %s at %s, the most recently written complete checkpoint', link, checkpoint)
        replace_symlink(checkpoint, link)


def latest_checkpoint(state: State) -> Optional[str]:
    """Rank 0's latest complete checkpoint as written by the run's first checkpoint saver, if any."""
    saver = next((cb for cb in state.callbacks if isinstance(cb, CheckpointSaver)), None)
    if saver is None or saver.latest_filename is None:
        return None
    link = os.path.join(saver.folder, partial_format(saver.latest_filename.filename, rank=0))
    path = os.path.realpath(format_name_with_dist(link, state.run_name))
    return path if is_complete_checkpoint(path) else None


class AtomicCheckpointSaver(CheckpointSaver):
    """Composer's :class:`~composer.callbacks.CheckpointSaver` (same arguments), made safe to kill at any moment.

    Monolithic checkpoints (the default; not FSDP-sharded ones) are written to a hidden ``.partial-*`` file,
    synced and renamed; the ``latest`` link is replaced by a rename after the checkpoint is complete; old
    checkpoints are deleted only after that. Leftover ``.partial-*`` files of a killed run are removed when the
    next fit starts. A checkpoint that cannot be written (a full disk, a lost mount) raises
    :class:`CheckpointWriteError`, whose message names it, the reason, the free space and the last complete one.

    Args:
        metadata: JSON-like data stored in every checkpoint (under this callback's state), such as what the
            recipe trained; read it back with ``torch.load(path)['state']['callbacks']['AtomicCheckpointSaver']``.
            Set by the recipe runner, not by recipes.
        **kwargs: :class:`~composer.callbacks.CheckpointSaver`'s arguments.
    """

    @functools.wraps(CheckpointSaver.__init__)  # recipes are validated against CheckpointSaver's arguments
    def __init__(self, *args: Any, metadata: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metadata = metadata
        self._gates: List[Gate] = []

    def add_gate(self, gate: Gate) -> None:
        """Call ``gate(state)`` on every process before each checkpoint is written; if it raises, none is."""
        self._gates.append(gate)

    def fit_start(self, state: State, logger: Logger) -> None:
        folder = format_name_with_dist(self.folder, state.run_name)
        if dist.get_global_rank() == 0:
            for partial in glob.glob(os.path.join(folder, f'{PARTIAL_PREFIX}*')):
                log.info('Removing %s, a checkpoint whose writing was interrupted', partial)
                os.remove(partial)
        super().fit_start(state, logger)
        self._count_earlier_checkpoints(state, folder)

    def _count_earlier_checkpoints(self, state: State, folder: str) -> None:
        """After a resume from this folder, the run's earlier checkpoints count towards ``num_checkpoints_to_keep``:
        Composer starts that count afresh, so each resume would leave its predecessors' checkpoints behind."""
        if (self.saved_checkpoints or self.num_checkpoints_to_keep < 0 or state.fsdp_sharded_state_dict_enabled
                or state.load_path is None or not os.path.isdir(folder)
                or not os.path.samefile(os.path.dirname(os.path.abspath(state.load_path)), folder)):
            return
        self.saved_checkpoints = complete_checkpoints(folder, os.path.basename(self.filename.filename),
                                                      dist.get_global_rank())

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        if self.metadata is not None:
            state['metadata'] = self.metadata
        return state

    def _save_checkpoint(self, state: State, logger: Logger) -> None:
        for gate in self._gates:
            gate(state)
        latest, keep = self.latest_filename, self.num_checkpoints_to_keep
        written = len(self.saved_checkpoints)
        self.latest_filename, self.num_checkpoints_to_keep = None, -1  # both done below, in a safe order
        try:
            with _atomic_checkpoint_files():
                super()._save_checkpoint(state, logger)
        except (OSError, RuntimeError) as error:
            reason = _os_error_in(error)
            if reason is None:
                raise
            raise CheckpointWriteError(self._write_failure(state, reason)) from error
        finally:
            self.latest_filename, self.num_checkpoints_to_keep = latest, keep
        if len(self.saved_checkpoints) == written:  # this process wrote no file
            return
        if latest is not None and keep != 0 and self.rank_saves_symlinks:
            saved = self.saved_checkpoints[-1]
            target = os.path.dirname(saved) if state.fsdp_sharded_state_dict_enabled else saved
            link = latest.format(state)
            os.makedirs(os.path.dirname(link) or '.', exist_ok=True)
            replace_symlink(target, link)
        if keep >= 0:
            self._rotate_checkpoints(sharding_enabled=state.fsdp_sharded_state_dict_enabled)

    def _write_failure(self, state: State, reason: OSError) -> str:
        path = self.filename.format(state)
        folder = os.path.dirname(path) or '.'
        last = newest_complete_checkpoint(folder, os.path.basename(self.filename.filename))
        kept = f'the last complete checkpoint, {last}, is intact' if last else 'no checkpoint had been written'
        return (f'could not write checkpoint {os.path.basename(path)} in {folder}: {reason.strerror or reason} '
                f'({_free_space(folder)}); {kept}; nothing partial was left')
