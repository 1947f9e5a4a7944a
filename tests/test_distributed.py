"""Across processes (2 CPU processes, gloo): identical weights on both ranks; killing one rank ends the other
with one clear line within the distributed timeout, not a hang; the rerun resumes both, bitwise."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import ENV, free_port, launch, stop

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = str(ROOT / 'recipes' / 'quickstart.yaml')
DIST_TIMEOUT = 20
OVERRIDES = ['max_duration=4ba', 'save_interval=2ba', 'autoresume=true', 'run_name=dist', 'deterministic_mode=true',
             f'dist_timeout={DIST_TIMEOUT}', 'save_num_checkpoints_to_keep=-1', 'progress_bar=false',
             'train_dataset.digits.image_size=8', 'val_dataset.digits.image_size=8', 'eval_subset_num_batches=1']


def _digests(text: str) -> dict:
    return {int(rank): digest for rank, digest in re.findall(r'^rank (\d) final weights sha256: (\w+)$', text, re.M)}


@pytest.fixture
def started():
    """The processes a test starts, stopped when it ends, passed or not."""
    processes = []
    yield processes
    stop(processes)


def _start_ranks(tmp: Path, attempt: str) -> list:
    """Both ranks as the launcher starts them (its environment variables), each with its own output files."""
    port = str(free_port())
    processes = []
    for rank in range(2):
        env = {**ENV, 'RANK': str(rank), 'LOCAL_RANK': str(rank), 'WORLD_SIZE': '2', 'LOCAL_WORLD_SIZE': '2',
               'NODE_RANK': '0', 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': port}
        out = open(tmp / f'{attempt}-rank{rank}.out', 'w')
        err = open(tmp / f'{attempt}-rank{rank}.err', 'w')
        processes.append(subprocess.Popen(
            [sys.executable, '-m', 'composer_efficientnet.train', QUICKSTART, *OVERRIDES,
             f'save_folder={tmp / "checkpoints"}'], cwd=tmp, env=env, stdout=out, stderr=err,
            start_new_session=True))
    return processes


@pytest.fixture(scope='module')
def launched(tmp_path_factory):
    """``composer -n 2`` on the quickstart recipe, uninterrupted: the final weights of each rank."""
    tmp = tmp_path_factory.mktemp('launched')
    code, output = launch('composer_efficientnet.train', [QUICKSTART, *OVERRIDES, f'save_folder={tmp / "checkpoints"}'],
                          tmp)
    assert code == 0, output
    yield {**_digests(output), **_digests((tmp / 'rank1.out').read_text())}
    shutil.rmtree(tmp)  # its checkpoints are not needed past this module


@pytest.mark.slow
def test_launcher_run_ends_with_identical_weights_on_both_ranks(launched):
    assert sorted(launched) == [0, 1] and launched[0] == launched[1]


@pytest.mark.slow
def test_killed_rank_stops_the_other_and_the_rerun_resumes_both(tmp_path, launched, started):
    started += _start_ranks(tmp_path, 'first')
    rank0, rank1 = started
    latest = tmp_path / 'checkpoints' / 'latest-rank0.pt'
    deadline = time.monotonic() + 300
    while not latest.exists():
        assert rank0.poll() is None and rank1.poll() is None, (tmp_path / 'first-rank0.err').read_text()
        assert time.monotonic() < deadline, 'no checkpoint was written'
        time.sleep(0.05)
    rank1.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    assert rank0.wait(timeout=DIST_TIMEOUT + 30) == 1  # not a hang: gloo sees the closed connection or times out
    assert time.monotonic() - killed < DIST_TIMEOUT + 30
    last_line = (tmp_path / 'first-rank0.err').read_text().strip().splitlines()[-1]
    assert re.fullmatch(r'composer-efficientnet: rank 0 lost contact with another process \(.+\); rerun the same '
                        r'command to resume every process from the last checkpoint', last_line), last_line
    step = int(re.search(r'ep0-ba(\d+)-rank0\.pt', os.readlink(latest))[1])

    rerun = _start_ranks(tmp_path, 'rerun')
    started += rerun
    for rank, process in enumerate(rerun):
        assert process.wait(timeout=600) == 0, (tmp_path / f'rerun-rank{rank}.err').read_text()
    outputs = [(tmp_path / f'rerun-rank{rank}.out').read_text() for rank in range(2)]
    for rank, output in enumerate(outputs):
        assert f'rank {rank} resumed from {latest} at step {step}' in output
    assert {**_digests(outputs[0]), **_digests(outputs[1])} == launched  # as if never interrupted


@pytest.mark.slow
def test_recipe_mistake_under_the_launcher_is_one_line_and_exit_2(tmp_path):
    """Every rank finds the mistake; the launcher prints it once (from rank 0) and exits 2, not with the status
    of a rank it stopped."""
    code, output = launch('composer_efficientnet.train', [QUICKSTART, 'precision=fp64'], tmp_path, timeout=120)
    mistakes = [line for line in output.splitlines() if 'recipe error' in line]
    assert code == 2, output
    assert mistakes == ["composer-efficientnet: recipe error: precision: unknown precision 'fp64'; valid: amp, "
                        'amp_bf16, amp_fp16, amp_fp8, bf16, fp16, fp32 (any case)'], output
    assert 'recipe error' not in (tmp_path / 'rank1.err').read_text()
