"""One run per save_folder (composer_efficientnet/run_lock.py): the lock itself (refused from another process
with the holder named; free again once the holder ends, SIGKILL included), two runs started into one folder at
once (one trains, the other stops with one line and the first one's checkpoints are intact), and the ranks of
one run (global rank 0 holds the lock for all; every rank of a refused run stops by itself, and under
``composer -n 2`` the launcher exits 2 with the line once).

The runs go through ``python -m tests.test_run_lock GATE RECIPE [overrides]``: ``composer_efficientnet.train``
with a callback that waits at the start of fit, once the run holds its folder, until the file ``GATE/go``
exists (``GATE/paused-rank{rank}`` tells that it waits there).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import pytest
import torch
from composer.core import Callback
from composer.utils import dist

from composer_efficientnet import run_lock, train
from composer_efficientnet.run_lock import LOCK_FILENAME, FolderInUseError, acquire, hold_save_folder, read_holder
from tests.bad_inputs import with_run, write_recipe
from tests.processes import ENV, free_port, launch, stop

ROOT = Path(__file__).resolve().parent.parent
HOST = re.escape(socket.gethostname())
#: A run of the digits at 8x8, a checkpoint every batch.
SHORT = ['max_duration=3ba', 'save_interval=1ba', 'eval_subset_num_batches=1', 'train_batch_size=32',
         'eval_batch_size=32']


def _in_use(folder: str, run: str, pid: int) -> str:
    return (rf"save_folder '{re.escape(folder)}' is in use by run '{run}' \(pid {pid} on host {HOST}, since "
            r'\d\d:\d\d:\d\d\); wait for it to end or choose another save_folder')


def _snapshot(folder: Path) -> dict:
    return {str(path.relative_to(folder)): (path.is_dir(), path.lstat().st_mtime_ns) for path in folder.rglob('*')}


# -- the lock ------------------------------------------------------------------------------------------------------

def _hold(folder: str, run_name: str, connection, release: bool) -> None:
    """In a forked process: lock ``folder``, say so, wait for a word, then release it (or just exit)."""
    lock = acquire(folder, run_name)
    connection.send(os.getpid())
    connection.recv()
    if release:
        lock.release()


@pytest.fixture
def holder():
    """``start(folder, run_name, release)``: a forked process holding ``folder``'s lock; ``end(process)`` lets it
    exit. Every process is killed at the end of the test."""
    context = multiprocessing.get_context('fork')  # the test process's modules, already imported: no start-up
    processes = []

    def start(folder: Path, run_name: str = 'a', release: bool = True):
        ours, theirs = context.Pipe()
        process = context.Process(target=_hold, args=(str(folder), run_name, theirs, release), daemon=True)
        process.start()
        assert ours.poll(60), 'the holder did not take the lock'
        assert ours.recv() == process.pid
        process.connection = ours
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.is_alive():
            process.kill()
        process.join()


@pytest.mark.parametrize('ending', ['releases', 'exits', 'is killed'])
def test_a_second_process_is_refused_until_the_holder_ends(tmp_path, holder, ending):
    folder = tmp_path / 'checkpoints'
    process = holder(folder, 'a', release=ending == 'releases')
    with pytest.raises(FolderInUseError) as refused:
        acquire(str(folder), 'b')
    assert re.fullmatch(_in_use(str(folder), 'a', process.pid), str(refused.value)), str(refused.value)
    assert refused.value.holder.pid == process.pid and refused.value.holder.run_name == 'a'
    if ending == 'is killed':
        os.kill(process.pid, signal.SIGKILL)
    else:
        process.connection.send('end')
    process.join(30)
    assert process.exitcode is not None
    assert (folder / LOCK_FILENAME).exists() == (ending != 'releases')  # a dead holder's file is left, unlocked
    with acquire(str(folder), 'b') as lock:
        assert read_holder(str(folder)).pid == os.getpid() and read_holder(str(folder)).run_name == 'b'
        assert lock.holder.run_name == 'b'
    assert not (folder / LOCK_FILENAME).exists()


def test_a_process_holding_a_folder_gets_its_own_lock_again(tmp_path):
    with acquire(str(tmp_path / 'checkpoints'), 'a') as lock:
        assert acquire(str(tmp_path / 'checkpoints'), 'a') is lock
        assert acquire(str(tmp_path / 'checkpoints' / '.'), 'a') is lock
    assert not lock.held


@pytest.mark.parametrize('folder', ['existing', 'missing/nested'])
def test_a_run_that_wrote_nothing_leaves_the_folder_as_it_was(tmp_path, folder):
    (tmp_path / 'existing').mkdir()
    (tmp_path / 'existing' / 'ep1-ba8-rank0.pt').write_bytes(b'an earlier run')
    os.utime(tmp_path / 'existing', ns=(1, 10**18))
    before = _snapshot(tmp_path)
    lock = acquire(str(tmp_path / folder), 'a')
    assert (tmp_path / folder / LOCK_FILENAME).is_file()
    lock.release()
    lock.release()  # a second release does nothing
    assert _snapshot(tmp_path) == before


def test_a_run_that_wrote_keeps_what_it_wrote(tmp_path):
    with acquire(str(tmp_path / 'runs' / 'a'), 'a'):
        (tmp_path / 'runs' / 'a' / 'ep0-ba1-rank0.pt').write_bytes(b'a checkpoint')
    assert sorted(path.name for path in (tmp_path / 'runs' / 'a').iterdir()) == ['ep0-ba1-rank0.pt']


def test_a_lock_file_removed_by_its_holder_is_not_the_one_locked(tmp_path, monkeypatch):
    """A process that opened the lock file just before its holder removed it and let go gets the lock of a file
    no one else will open: it must start over with the file now at that name."""
    folder = tmp_path / 'checkpoints'
    folder.mkdir()
    (folder / LOCK_FILENAME).write_text('{}')
    stale = os.open(folder / LOCK_FILENAME, os.O_RDWR)
    os.unlink(folder / LOCK_FILENAME)
    opened = []
    real_open = run_lock._open

    def open_the_removed_file_first(path):
        opened.append(path)
        return (stale, False) if len(opened) == 1 else real_open(path)

    monkeypatch.setattr(run_lock, '_open', open_the_removed_file_first)
    with acquire(str(folder), 'a'):
        assert len(opened) == 2
        probe = os.open(folder / LOCK_FILENAME, os.O_RDONLY)
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(probe)
    with pytest.raises(OSError) as closed:
        os.fstat(stale)
    assert closed.value.errno == errno.EBADF


def test_a_file_system_without_flock_runs_unlocked_with_one_warning(tmp_path, monkeypatch, caplog):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(run_lock.fcntl, 'flock', no_flock)
    recipe = SimpleNamespace(settings={'save_folder': str(tmp_path / 'checkpoints'), 'run_name': 'a'})
    with caplog.at_level(logging.WARNING, logger='composer_efficientnet'):
        assert hold_save_folder(recipe) is None
        assert hold_save_folder(recipe) is None
    assert [record.getMessage() for record in caplog.records] == [
        f"warning: save_folder '{tmp_path / 'checkpoints'}' cannot be locked (its file system does not support "
        f'flock: {os.strerror(errno.ENOLCK)}), so nothing keeps another run from writing checkpoints there at the '
        'same time']
    assert not (tmp_path / 'checkpoints').exists()  # nothing left of the attempt


def test_a_remote_save_folder_is_not_locked_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(run_lock, '_WARNED', set())
    recipe = SimpleNamespace(settings={'save_folder': 's3://bucket/runs/{run_name}', 'run_name': 'a'})
    with caplog.at_level(logging.WARNING, logger='composer_efficientnet'):
        assert hold_save_folder(recipe) is None
        assert hold_save_folder(recipe) is None
    assert [record.getMessage() for record in caplog.records] == [
        "warning: save_folder 's3://bucket/runs/{run_name}' is remote, where no lock keeps another run from writing "
        'checkpoints at the same time; give each run its own save_folder (such as one containing {run_name})']


@pytest.mark.parametrize('settings', [{}, {'save_folder': 'runs/{run_name}'}], ids=['no save_folder',
                                                                                    'a folder Composer names'])
def test_nothing_is_locked_without_a_folder_to_lock(tmp_path, monkeypatch, settings):
    monkeypatch.chdir(tmp_path)
    assert hold_save_folder(SimpleNamespace(settings=settings)) is None
    assert not any(tmp_path.iterdir())


# -- the ranks of one run -------------------------------------------------------------------------------------------

def _as_rank(monkeypatch, rank: int, from_rank_zero=None) -> list:
    """This process as ``rank`` of 2; rank 0's broadcast gives ``from_rank_zero`` (rank 0 keeps its own value).
    The values broadcast, as each rank passed them."""
    sent = []

    def broadcast(box, src=0):
        sent.append(box[0])
        if rank != 0:
            box[0] = from_rank_zero

    monkeypatch.setattr(dist, 'get_global_rank', lambda: rank)
    monkeypatch.setattr(dist, 'get_world_size', lambda: 2)
    monkeypatch.setattr(dist, 'initialize_dist', lambda device, timeout: None)
    monkeypatch.setattr(dist, 'broadcast_object_list', broadcast)
    return sent


def _recipe(folder: Path) -> SimpleNamespace:
    return SimpleNamespace(settings={'save_folder': str(folder), 'run_name': 'b', 'device': 'cpu'})


def test_rank_zero_takes_the_lock_and_tells_every_rank(tmp_path, monkeypatch, holder):
    sent = _as_rank(monkeypatch, 0)
    with hold_save_folder(_recipe(tmp_path / 'free')) as lock:
        assert lock.held and read_holder(str(tmp_path / 'free')).pid == os.getpid()
    process = holder(tmp_path / 'held', 'a')
    with pytest.raises(FolderInUseError) as refused:
        hold_save_folder(_recipe(tmp_path / 'held'))
    assert sent[0] is None and re.fullmatch(_in_use(str(tmp_path / 'held'), 'a', process.pid), sent[1])
    assert str(refused.value) == sent[1]


def test_other_ranks_take_no_lock_and_stop_with_rank_zeros_refusal(tmp_path, monkeypatch, holder):
    process = holder(tmp_path / 'held', 'a')
    before = _snapshot(tmp_path)
    refusal = f"save_folder '{tmp_path / 'held'}' is in use by run 'a' (pid {process.pid} on host h, since 14:02:11)"
    _as_rank(monkeypatch, 1, from_rank_zero=refusal)
    with pytest.raises(FolderInUseError, match=re.escape(refusal)):
        hold_save_folder(_recipe(tmp_path / 'held'))
    _as_rank(monkeypatch, 1, from_rank_zero=None)
    assert hold_save_folder(_recipe(tmp_path / 'free')) is None  # rank 0 holds it for the run
    assert _snapshot(tmp_path) == before  # rank 1 neither made nor opened a lock file


# -- whole runs -------------------------------------------------------------------------------------------------------

class Gate(Callback):
    """Wait at the start of fit, after the run has taken its folder's lock, until ``folder/go`` exists."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def fit_start(self, state, logger) -> None:
        (self.folder / f'paused-rank{dist.get_global_rank()}').touch()
        deadline = time.monotonic() + 300
        while not (self.folder / 'go').exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def _gated_main(gate: str, argv: list) -> int:
    build = train.build_trainer

    def build_with_gate(recipe):
        trainer = build(recipe)
        trainer.state.callbacks.append(Gate(Path(gate)))
        return trainer

    train.build_trainer = build_with_gate
    return train.main(argv)


def _env(**extra: str) -> dict:
    return {**ENV, 'PYTHONPATH': str(ROOT), **extra}


def _start(tmp: Path, name: str, argv: list, gate: Optional[Path] = None, **env: str) -> subprocess.Popen:
    """A training run in ``tmp`` (waiting at ``gate``, if given), its output in ``tmp/NAME.out`` and ``.err``."""
    command = ['-m', 'tests.test_run_lock', str(gate)] if gate else ['-m', 'composer_efficientnet.train']
    if gate:
        gate.mkdir(exist_ok=True)
    with open(tmp / f'{name}.out', 'w') as out, open(tmp / f'{name}.err', 'w') as err:
        return subprocess.Popen([sys.executable, *command, *argv], cwd=tmp, env=_env(**env), stdout=out, stderr=err,
                                start_new_session=True)


def _wait_for(path: Path, processes: list, tmp: Path, names: list, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for process, name in zip(processes, names):
            assert process.poll() is None, f'{name} exited early:\n{(tmp / f"{name}.err").read_text()}'
        assert time.monotonic() < deadline, f'{path} did not appear'
        time.sleep(0.05)


def _err_lines(tmp: Path, name: str) -> list:
    return (tmp / f'{name}.err').read_text().strip().splitlines()


def _run_names(folder: Path) -> dict:
    return {path.name: torch.load(path, map_location='cpu', weights_only=False)['state']['run_name']
            for path in sorted(folder.glob('ep*-rank0.pt'))}


@pytest.fixture
def started():
    processes = []
    yield processes
    stop(processes)


@pytest.mark.slow
def test_two_runs_into_one_folder_at_once_one_trains_the_other_is_refused(tmp_path, started):
    """Run a holds the folder (it waits at the start of fit); run b, started meanwhile, stops with one line and
    exit 2 before writing anything; run a then trains, and every checkpoint in the folder is run a's."""
    recipe = write_recipe(tmp_path, with_run())
    gate = tmp_path / 'gate'
    first = _start(tmp_path, 'a', [recipe, *SHORT, 'run_name=a'], gate=gate)
    started.append(first)
    _wait_for(gate / 'paused-rank0', [first], tmp_path, ['a'])
    second = _start(tmp_path, 'b', [recipe, *SHORT, 'run_name=b'])
    started.append(second)
    assert second.wait(timeout=300) == 2, _err_lines(tmp_path, 'b')
    lines = _err_lines(tmp_path, 'b')
    assert re.fullmatch('composer-efficientnet: ' + _in_use('checkpoints', 'a', first.pid), lines[-1]), lines
    assert [line for line in lines if line.startswith('composer-efficientnet')] == lines[-1:]
    (gate / 'go').touch()
    assert first.wait(timeout=300) == 0, _err_lines(tmp_path, 'a')
    names = _run_names(tmp_path / 'checkpoints')
    assert sorted(names) == ['ep0-ba1-rank0.pt', 'ep0-ba2-rank0.pt', 'ep0-ba3-rank0.pt']
    assert set(names.values()) == {'a'}, names
    assert not (tmp_path / 'checkpoints' / LOCK_FILENAME).exists()


def _start_ranks(tmp: Path, recipe: str, attempt: str, gate: Optional[Path] = None) -> list:
    """Ranks 0 and 1 of one run, each the only process of a node of its own (so that each node's first process
    reports a mistake, and none waits for a launcher to stop it), on loopback."""
    port = str(free_port())
    return [_start(tmp, f'{attempt}-rank{rank}', [recipe, *SHORT, 'run_name=a', 'dist_timeout=60'], gate=gate,
                   RANK=str(rank), LOCAL_RANK='0', WORLD_SIZE='2', LOCAL_WORLD_SIZE='1', NODE_RANK=str(rank),
                   MASTER_ADDR='127.0.0.1', MASTER_PORT=port) for rank in range(2)]


@pytest.mark.slow
def test_the_ranks_of_one_run_share_rank_zeros_lock(tmp_path, started):
    recipe = write_recipe(tmp_path, with_run())
    gate = tmp_path / 'gate'
    ranks = _start_ranks(tmp_path, recipe, 'run', gate=gate)
    started += ranks
    names = ['run-rank0', 'run-rank1']
    for rank in range(2):  # both past taking the lock: rank 1 was not refused by rank 0's
        _wait_for(gate / f'paused-rank{rank}', ranks, tmp_path, names)
    assert read_holder(str(tmp_path / 'checkpoints')).pid == ranks[0].pid
    (gate / 'go').touch()
    for process, name in zip(ranks, names):
        assert process.wait(timeout=300) == 0, _err_lines(tmp_path, name)
    assert set(_run_names(tmp_path / 'checkpoints').values()) == {'a'}
    assert not (tmp_path / 'checkpoints' / LOCK_FILENAME).exists()


@pytest.mark.slow
def test_every_rank_of_a_refused_run_stops_with_the_line(tmp_path, started, holder):
    process = holder(tmp_path / 'checkpoints', 'other')
    before = _snapshot(tmp_path / 'checkpoints')
    recipe = write_recipe(tmp_path, with_run())
    ranks = _start_ranks(tmp_path, recipe, 'refused')
    started += ranks
    for rank, rank_process in enumerate(ranks):
        assert rank_process.wait(timeout=300) == 2, _err_lines(tmp_path, f'refused-rank{rank}')
        last = _err_lines(tmp_path, f'refused-rank{rank}')[-1]
        assert re.fullmatch('composer-efficientnet: ' + _in_use('checkpoints', 'other', process.pid), last), last
    assert _snapshot(tmp_path / 'checkpoints') == before


@pytest.mark.slow
def test_a_refused_run_under_the_launcher_is_one_line_and_exit_2(tmp_path, holder):
    """``composer -n 2``: rank 0 prints the line and exits 2; the launcher stops rank 1 (waiting for it to) and
    exits 2, not with the status of the rank it stopped."""
    process = holder(tmp_path / 'checkpoints', 'a')
    code, output = launch('composer_efficientnet.train', [write_recipe(tmp_path, with_run()), *SHORT, 'run_name=b'],
                          tmp_path, timeout=300)
    assert code == 2, output
    lines = [line for line in output.splitlines() if 'is in use by' in line]
    assert len(lines) == 1 and re.fullmatch('composer-efficientnet: ' + _in_use('checkpoints', 'a', process.pid),
                                            lines[0]), output
    assert 'is in use by' not in (tmp_path / 'rank1.err').read_text()


if __name__ == '__main__':
    sys.exit(_gated_main(sys.argv[1], sys.argv[2:]))
