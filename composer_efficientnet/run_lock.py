"""One training run at a time in a ``save_folder``: a lock that a run holds on its folder while it lives.

Two runs started into one folder at once would both pass the start-up checks (an earlier run's checkpoints,
autoresume's checks) before either had written anything, and then write over each other's checkpoints; two
autoresume runs would delete each other's files while rotating them. :func:`hold_save_folder` takes an OS file
lock (``flock``) on a hidden file in the folder, :data:`LOCK_FILENAME`, before those checks, and the run keeps it
until it ends. A second run into the folder is refused at once with :class:`FolderInUseError`, naming the run
that holds it.

The kernel releases the lock when its holder's process ends, however it ends (a ``SIGKILL`` too), so a lock is
never left behind by a dead run: a folder whose holder died is simply free. The file's content (pid, host,
run name, start time) only names the holder in the refusal. On release the file is removed while still locked
(a process that opened the old file finds, once it gets the lock, that the name no longer leads to it, and
starts over), and a run that stopped before writing anything leaves the folder as it found it: folders it
created and their times as they were.

One process of a run holds the lock: global rank 0, the only one that writes monolithic checkpoints, the
``latest`` link and autoresume's link (Composer 0.32.1; this package's recipes have no sharded checkpoints). On a
file system shared by the nodes a lock per node would make a run refuse itself; on node-local disks the other
nodes write nothing into their ``save_folder``. Rank 0 shares its outcome with every rank, so that the ranks of a
refused run all stop with the same line instead of waiting for a rank 0 that has gone.

A remote ``save_folder`` (``s3://...``) cannot be locked: the run warns once and goes on unlocked. So does a run
whose file system refuses ``flock`` (some network file systems): the warning names the reason.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

from composer.utils import dist, format_name_with_dist, parse_uri

from composer_efficientnet.runner import run_device

__all__ = ['FolderInUseError', 'Holder', 'LOCK_FILENAME', 'RunLock', 'acquire', 'hold_save_folder', 'lock_folder',
           'read_holder', 'releases_locks']

log = logging.getLogger(__name__)

#: The lock file in a locked folder; hidden, and matching no checkpoint name.
LOCK_FILENAME = '.run.lock'
#: How long a refused process waits when the lock file names a process of this host that has ended: a child it
#: forked (a dataloader worker) shares its lock until it notices, within seconds, and exits.
ORPHAN_GRACE_S = 10.0
#: How long a refused process waits for a holder that has just taken the lock to write its name.
NAME_WAIT_S = 0.5

F = TypeVar('F', bound=Callable[..., Any])


@dataclass(frozen=True)
class Holder:
    """The process holding a folder's lock, as its lock file names it."""
    pid: int
    host: str
    run_name: Optional[str]
    started: float  # time.time() when it took the lock

    @classmethod
    def this_process(cls, run_name: Optional[str]) -> 'Holder':
        return cls(os.getpid(), socket.gethostname(), run_name, time.time())

    def to_text(self) -> str:
        since = time.strftime('%Y-%m-%dT%H:%M:%S%z', time.localtime(self.started))
        return json.dumps({'pid': self.pid, 'host': self.host, 'run_name': self.run_name, 'started': self.started,
                           'since': since}) + '\n'

    @classmethod
    def from_text(cls, text: str) -> Optional['Holder']:
        try:
            content = json.loads(text)
            return cls(int(content['pid']), str(content['host']), content.get('run_name'), float(content['started']))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def ended(self) -> bool:
        """Whether the holder is a process of this host that no longer runs."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's process
            return False
        return False

    def __str__(self) -> str:
        started = time.localtime(self.started)
        since = time.strftime('%H:%M:%S' if started[:3] == time.localtime()[:3] else '%Y-%m-%d %H:%M:%S', started)
        run = f"run '{self.run_name}'" if self.run_name else 'a run'
        return f'{run} (pid {self.pid} on host {self.host}, since {since})'


class FolderInUseError(Exception):
    """A run's ``save_folder`` is locked by another run; the message names the folder and the holder."""

    def __init__(self, message: str, folder: Optional[str] = None, holder: Optional[Holder] = None) -> None:
        super().__init__(message)
        self.folder = folder
        self.holder = holder

    @classmethod
    def held_by(cls, folder: str, holder: Optional[Holder]) -> 'FolderInUseError':
        if holder is None:
            who = f'another run (its lock file {LOCK_FILENAME} does not name it)'
        else:
            who = str(holder)
            if holder.ended():
                who = who[:-1] + '; that process has ended, but a process it started still holds the lock)'
        return cls(f"save_folder '{folder}' is in use by {who}; wait for it to end or choose another save_folder",
                   folder, holder)


class _Trace:
    """The nearest existing folder at or above ``folder`` and its times before a lock was made there, to put
    them back when the lock goes and nothing else changed that folder."""

    def __init__(self, folder: str) -> None:
        existing = os.path.abspath(folder)
        while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)
        self.existing = existing
        self.before = os.stat(existing)
        self.after: Optional[int] = None

    def made(self) -> None:
        """Record the folder's time once the lock (and the folders above it) were made."""
        self.after = os.stat(self.existing).st_mtime_ns

    def untouched(self) -> bool:
        try:
            return self.after is not None and os.stat(self.existing).st_mtime_ns == self.after
        except OSError:
            return False

    def restore(self) -> None:
        try:
            os.utime(self.existing, ns=(self.before.st_atime_ns, self.before.st_mtime_ns))
        except OSError:
            pass


#: The locks this process holds, by the real path of their folder.
_HELD: Dict[str, 'RunLock'] = {}


class RunLock:
    """A lock held on ``folder`` by this process; :meth:`release` (or leaving a ``with`` block, or the end of the
    process) frees it."""

    def __init__(self, folder: str, fd: int, created: List[str], created_file: bool, trace: _Trace,
                 holder: Holder) -> None:
        self.folder = folder
        self.path = os.path.join(folder, LOCK_FILENAME)
        self.holder = holder
        self._fd: Optional[int] = fd
        self._created = created
        self._created_file = created_file
        self._trace = trace

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file (while still holding it), the folders taking the lock created if they are empty,
        and free the lock. Nothing happens on a second call."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _HELD.pop(os.path.realpath(self.folder), None)
        try:
            untouched = self._trace.untouched()
            try:
                os.unlink(self.path)
            except OSError:
                untouched = False
            if _remove_empty(self._created) and untouched and self._created_file:
                self._trace.restore()
        finally:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)  # for processes forked meanwhile too, which share it
            finally:
                os.close(fd)

    def __enter__(self) -> 'RunLock':
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        return f'RunLock({self.folder!r}, held={self.held})'


def _make_folders(folder: str) -> List[str]:
    """Create ``folder`` and any missing folder above it; the ones created, outermost first."""
    missing = []
    path = os.path.abspath(folder)
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    created = []
    for path in reversed(missing):
        try:
            os.mkdir(path)
            created.append(path)
        except FileExistsError:
            pass
    return created


def _open(path: str) -> Tuple[int, bool]:
    """``(fd, created)`` of the lock file at ``path``, created if missing; never truncated here."""
    flags = os.O_RDWR | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        return os.open(path, flags), False  # FileNotFoundError if it was just removed: the caller retries


def _read(fd: int) -> Optional[Holder]:
    return Holder.from_text(os.pread(fd, 4096, 0).decode('utf-8', 'replace'))


def read_holder(folder: str) -> Optional[Holder]:
    """The holder a folder's lock file names (a dead one's, if its holder died), or ``None``."""
    try:
        with open(os.path.join(folder, LOCK_FILENAME), encoding='utf-8', errors='replace') as file:
            return Holder.from_text(file.read(4096))
    except OSError:
        return None


def _holder_of_held(fd: int) -> Optional[Holder]:
    """The holder named by a lock file another process holds, waiting briefly for one that has just taken it."""
    deadline = time.monotonic() + NAME_WAIT_S
    while True:
        holder = _read(fd)
        if holder is not None or time.monotonic() >= deadline:
            return holder
        time.sleep(0.05)


class _Unlockable(Exception):
    """The folder's file system does not lock (or the lock file cannot be made): the reason."""


def acquire(folder: str, run_name: Optional[str] = None) -> RunLock:
    """Lock ``folder`` (created if missing) for this process, naming ``run_name`` as its holder.

    A folder this process already holds is returned as it is. Raises :class:`FolderInUseError` naming the
    holder when another process holds it, and :class:`OSError` when the lock cannot be taken there (a file
    system without ``flock``, a lock file that cannot be made); then nothing this call made is left."""
    key = os.path.realpath(folder)
    if key in _HELD and _HELD[key].held:
        return _HELD[key]
    trace = _Trace(folder)
    created: List[str] = []
    try:
        fd, created_file = _lock(folder, created)
    except OSError:
        _remove_empty(created)
        raise
    holder = Holder.this_process(run_name)
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.to_text().encode(), 0)
    trace.made()
    lock = RunLock(folder, fd, created, created_file, trace, holder)
    _HELD[key] = lock
    return lock


def _lock(folder: str, created: List[str]) -> Tuple[int, bool]:
    """``(fd, created)`` of the lock file of ``folder``, locked by this process; the folders made on the way are
    added to ``created``."""
    path = os.path.join(folder, LOCK_FILENAME)
    orphans_deadline = None
    while True:
        created += _make_folders(folder)
        try:
            fd, created_file = _open(path)
        except FileNotFoundError:  # removed by a holder releasing it, with its folder: start over
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_of_held(fd)
            os.close(fd)
            if holder is not None and holder.ended():
                orphans_deadline = orphans_deadline or time.monotonic() + ORPHAN_GRACE_S
                if time.monotonic() < orphans_deadline:
                    time.sleep(0.2)
                    continue
            raise FolderInUseError.held_by(folder, holder) from None
        except OSError:
            os.close(fd)
            if created_file:
                os.unlink(path)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd, created_file
        os.close(fd)  # its holder removed this file before letting go of it: lock the one there now


def _remove_empty(folders: List[str]) -> bool:
    """Remove ``folders`` (outermost first), innermost first, while they are empty; whether all went."""
    for folder in reversed(folders):
        try:
            os.rmdir(folder)
        except OSError:  # holds checkpoints, or another run's lock file
            return False
    return True


def releases_locks(function: F) -> F:
    """``function``, after whose return (or exception) every lock it took in this process is released."""
    @functools.wraps(function)
    def releasing(*args: Any, **kwargs: Any) -> Any:
        before = set(_HELD)
        try:
            return function(*args, **kwargs)
        finally:
            for key in [key for key in _HELD if key not in before]:
                _HELD[key].release()

    return releasing  # type: ignore[return-value]


_WARNED: set = set()


def _warn_once(folder: str, message: str) -> None:
    if folder not in _WARNED:
        _WARNED.add(folder)
        log.warning('warning: %s', message)


def lock_folder(settings: Dict[str, Any]) -> Optional[str]:
    """The local folder a run with these recipe settings locks (its ``save_folder`` with ``{run_name}`` and this
    process's rank filled in), or ``None``: no ``save_folder``, a remote one, or one whose ``{run_name}`` the run
    has not named (Composer names the run afresh, so the folder is new)."""
    folder = settings.get('save_folder')
    if not folder or parse_uri(folder)[0] or ('{run_name}' in folder and not settings.get('run_name')):
        return None
    return format_name_with_dist(folder, settings.get('run_name') or '')


def hold_save_folder(recipe: Any) -> Optional[RunLock]:
    """Lock the local ``save_folder`` of a training recipe for this run, before anything reads or writes it.

    Global rank 0 takes the lock and shares the outcome with every rank (initializing ``torch.distributed`` for the
    recipe's device first, as the Trainer would, when there are several processes). Returns the lock on rank 0,
    ``None`` on the other ranks and where nothing is locked; raises :class:`FolderInUseError` on every rank when
    another run holds the folder. A remote folder, or one whose file system cannot lock, gets one warning."""
    settings = recipe.settings
    folder = settings.get('save_folder')
    if not folder or ('{run_name}' in folder and not settings.get('run_name')):
        return None
    rank_zero = dist.get_global_rank() == 0
    if parse_uri(folder)[0]:
        if rank_zero:
            _warn_once(folder, f"save_folder '{folder}' is remote, where no lock keeps another run from writing "
                       'checkpoints at the same time; give each run its own save_folder (such as one containing '
                       '{run_name})')
        return None
    lock, refusal = None, None
    if rank_zero:
        local = lock_folder(settings)
        try:
            lock = acquire(local, settings.get('run_name'))
        except FolderInUseError as error:
            refusal = str(error)
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                reason = f'its file system does not support flock: {reason}'
            _warn_once(local, f"save_folder '{local}' cannot be locked ({reason}), so nothing keeps another run from "
                       'writing checkpoints there at the same time')
    if dist.get_world_size() > 1:
        refusal = _from_rank_zero(refusal, recipe)
    if refusal is not None:
        raise FolderInUseError(refusal)
    return lock


def _from_rank_zero(value: Optional[str], recipe: Any) -> Optional[str]:
    """Rank 0's ``value`` on every rank. The process group is the one the Trainer then uses (same device, same
    ``dist_timeout``)."""
    dist.initialize_dist(run_device(recipe), float(recipe.settings.get('dist_timeout', 300.0)))
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
