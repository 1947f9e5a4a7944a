"""Every file a command writes: checked before any work, then written whole or not at all.

The commands' outputs (``export``'s model in each format, ``predict --json``, ``eval --json``, ``benchmark
--json``, ``training_curves``' PNG) and train's ``save_folder`` go through this module, so a mistake or a
failure reads the same everywhere, as one line:

* :func:`output_problem` (and :func:`check_output`, which raises it as an :class:`OutputError`) says, before any
  work, why a file could not be written at a path: the path is a folder, its folder does not exist or is not a
  folder, or nothing can be created in that folder. :func:`folder_problem` says it of a folder that is written
  into (or created, with ``create=True``), such as a ``save_folder``.
* :func:`atomic_output` writes a file as a hidden temporary sibling (``.partial-PID-NAME``, keeping the ending
  so that writers and tools that go by it still do), flushed and synced to disk, then renamed over the path. On
  any error the temporary file is removed and nothing under the path changes; an error of the disk or the file
  system (a full disk, a read-only mount, a lost permission) becomes an :class:`OutputError` naming the output,
  the reason and the free space.

Whether a folder can be written is asked twice: ``os.access``, and then an actual file created in it and removed
(an unnamed ``O_TMPFILE`` where the file system has them, so that the folder is not even touched; a named probe
whose removal restores the folder's modification time otherwise). ``os.access`` alone is not enough: it says yes
to root for a folder without write permission that root may write anyway, but also for folders where no file can
be created at all, such as ``/proc``; and a probe alone would not say "read-only" where the mount is.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from typing import IO, Iterator, Optional

__all__ = ['OutputError', 'PARTIAL_PREFIX', 'atomic_output', 'check_output', 'folder_problem', 'free_space',
           'fsync_directory', 'os_error_in', 'output_problem', 'partial_name', 'write_failure']

#: Temporary files start with this: hidden, and never the name of anything a command reads.
PARTIAL_PREFIX = '.partial-'

#: Errors of an ``O_TMPFILE`` open that mean the file system has no unnamed files (a named probe is made instead).
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)


class OutputError(Exception):
    """An output that cannot be written, before any work or when writing it failed; the message is one line
    that names the output (starting with the option or setting that gave it) and why."""


def partial_name(path: str) -> str:
    """A hidden sibling of ``path`` for this process that keeps its ending (``.partial-PID-NAME``)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f'{PARTIAL_PREFIX}{os.getpid()}-{name}')


def free_space(folder: str) -> str:
    """The room left in ``folder``'s file system, for a message: ``'3.2 GiB free'``, ``'12 MiB free'``, with
    ``', no free inodes'`` when files can no longer be created whatever the bytes left."""
    try:
        free = shutil.disk_usage(folder or '.').free
        stats = os.statvfs(folder or '.')
    except OSError:
        return 'free space unknown'
    room = f'{free / 2**30:.1f} GiB free' if free >= 2**30 else f'{free / 2**20:.0f} MiB free'
    return room + (', no free inodes' if stats.f_files and not stats.f_favail else '')


def os_error_in(error: Optional[BaseException]) -> Optional[OSError]:
    """The OSError behind ``error``, if any (``torch.save`` and others report a failed write as another error,
    with the OSError as its cause)."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def fsync_directory(path: str) -> None:
    """Sync a folder, so that a rename in it is on disk."""
    fd = os.open(path or '.', os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cannot_create_in(folder: str) -> Optional[str]:
    """Why no file can be created in the existing folder ``folder`` (a strerror), or ``None``."""
    if not os.access(folder, os.W_OK | os.X_OK):
        with contextlib.suppress(OSError):
            if os.statvfs(folder).f_flag & os.ST_RDONLY:
                return os.strerror(errno.EROFS)
        return os.strerror(errno.EACCES)
    tmpfile = getattr(os, 'O_TMPFILE', 0)
    if tmpfile:
        try:
            os.close(os.open(folder, tmpfile | os.O_WRONLY, 0o600))
            return None
        except OSError as error:
            if error.errno not in _NO_TMPFILE:
                return error.strerror or str(error)
    probe = partial_name(os.path.join(folder, 'probe'))
    try:
        before = os.stat(folder)
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as error:
        return error.strerror or str(error)
    try:
        os.remove(probe)
        os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))  # the folder looks untouched
    except OSError:
        pass
    return None


def folder_problem(folder: str, create: bool = False) -> Optional[str]:
    """Why files could not be written in ``folder`` (a phrase for a message), or ``None``: it does not exist, is
    not a folder, or nothing can be created in it. With ``create`` a missing folder is fine where its nearest
    existing ancestor is a folder in which it can be created."""
    shown = folder or '.'
    existing = shown
    if create:
        while not os.path.lexists(existing) and os.path.dirname(os.path.abspath(existing)) != os.path.abspath(
                existing):
            existing = os.path.dirname(os.path.abspath(existing))
    if not os.path.exists(existing):
        return f"folder '{shown}' does not exist"
    if not os.path.isdir(existing):
        return (f"'{shown}' is a file" if existing == shown else
                f"'{shown}' is in '{existing}', which is a file") + ', not a folder'
    reason = _cannot_create_in(existing)
    if reason is None:
        return None
    return f"cannot write in folder '{existing}' ({reason})"


def output_problem(path: str, example: str = 'output', create: bool = False) -> Optional[str]:
    """Why a file could not be written at ``path``, checked before any work (a phrase for a message), or
    ``None``: ``path`` is a folder (the message suggests ``path/example``), its folder does not exist (unless
    ``create``: see :func:`folder_problem`) or is not a folder, or nothing can be created in it."""
    if os.path.isdir(path):
        return f"'{path}' is a directory; give a file name, such as {os.path.join(path, example)}"
    return folder_problem(os.path.dirname(path), create=create)


def check_output(path: str, label: str, example: str = 'output', create: bool = False) -> None:
    """:func:`output_problem` as an :class:`OutputError` whose message starts with ``label`` (``'--json'``)."""
    problem = output_problem(path, example, create)
    if problem:
        raise OutputError(f'{label}: {problem}')


def write_failure(path: str, label: str, reason: OSError, existed: bool) -> str:
    """The one-line message of a write of ``path`` that failed with ``reason``."""
    folder = os.path.dirname(path) or '.'
    kept = f'; the earlier {os.path.basename(path)} is unchanged' if existed else ''
    return (f"{label}: could not write '{path}': {reason.strerror or reason} ({free_space(folder)} in {folder}); "
            f'nothing partial was left{kept}')


@contextlib.contextmanager
def atomic_output(path: str, label: str, mode: str = 'wb') -> Iterator[IO]:
    """Write ``path`` whole or not at all: yields a file open (``mode``) on a hidden temporary sibling (see
    :func:`partial_name`); when the block ends, the file is flushed, synced and renamed over ``path``.

    Any error in the block or the writing removes the temporary file and leaves ``path`` as it was; one of the
    disk or the file system (an ``OSError``, or an error caused by one) is raised as an :class:`OutputError`
    whose message starts with ``label`` and names the output, the reason and the free space. Other errors pass
    through unchanged.

    Args:
        path: the file to write; its folder is created if missing.
        label: what gave the path, for the message (``'--json'``, ``'export: --out'``).
        mode: ``'wb'`` or ``'w'``.
    """
    partial = partial_name(path)
    existed = os.path.lexists(path)
    try:
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        with open(partial, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(partial)
        reason = os_error_in(error)
        if reason is None or isinstance(error, OutputError) or not isinstance(error, Exception):
            raise
        raise OutputError(write_failure(path, label, reason, existed)) from error
    with contextlib.suppress(OSError):  # the file is whole and in place; this only makes the rename durable sooner
        fsync_directory(os.path.dirname(path))
