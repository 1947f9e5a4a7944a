"""Rows of the run_lock topic: runs into a save_folder another run holds (composer_efficientnet/run_lock.py).

The holding run is stood in for by this test process: it locks the folder's lock file through a file
description of its own, which ``flock`` keeps apart from the one the refused run opens, and names a holder the
way a run does. The lock is taken before what the folder holds is checked, so a folder in use is refused as
such even where it holds an earlier run or the checkpoints autoresume would load.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import time
from pathlib import Path
from typing import List, Optional

import torch

from composer_efficientnet.run_lock import LOCK_FILENAME, Holder
from tests.bad_inputs import BadInput, with_run, write_recipe

#: Lock files this process holds for the rows: each row's folder is its own, and they go with the process.
_HOLDING: List[int] = []

IN_USE = (r"save_folder '{folder}' is in use by run '{run}' \(pid {pid} on host {host}, since \d\d:\d\d:\d\d\); "
          r'wait for it to end or choose another save_folder$')


def hold(folder: Path, run_name: Optional[str] = 'a', content: Optional[str] = None) -> None:
    """Lock ``folder`` (created) as run ``run_name`` of this process would, or with ``content`` in the lock file."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILENAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, (Holder(os.getpid(), socket.gethostname(), run_name, time.time()).to_text() if content is None
                  else content).encode())
    _HOLDING.append(fd)


def in_use(folder: str, run: str) -> str:
    return IN_USE.format(folder=re.escape(folder), run=run, pid=os.getpid(), host=re.escape(socket.gethostname()))


def _held(holder: str = 'a', content: Optional[str] = None, checkpoint_of: Optional[str] = None, **changes):
    """A run of RUN with ``changes`` into ``checkpoints``, which run ``holder`` holds (with a checkpoint of run
    ``checkpoint_of`` in it)."""
    def setup(tmp: Path) -> List[str]:
        hold(tmp / 'checkpoints', holder, content)
        if checkpoint_of:
            torch.save({'state': {'model': {}, 'run_name': checkpoint_of}}, tmp / 'checkpoints' / 'ep1-ba8-rank0.pt')
        return ['train', write_recipe(tmp, with_run(**changes))]

    return setup


def _held_run_folder(tmp: Path) -> List[str]:
    hold(tmp / 'runs' / 'a', 'a')
    return ['train', write_recipe(tmp, with_run(save_folder='runs/{run_name}', run_name='a'))]


ROWS = [
    BadInput('recipe', 'save_folder in use by another run', _held('a', run_name='b'),
             in_use('checkpoints', 'a')),
    BadInput('recipe', 'save_folder in use that holds an earlier run', _held('a', checkpoint_of='a'),
             in_use('checkpoints', 'a')),  # not "holds checkpoints of an earlier run": the lock comes first
    BadInput('recipe', 'autoresume of a run still running', _held('a', checkpoint_of='a', autoresume=True,
                                                                   run_name='a'), in_use('checkpoints', 'a')),
    BadInput('recipe', "autoresume into another run's save_folder in use",
             _held('first', checkpoint_of='first', autoresume=True, run_name='second'),
             in_use('checkpoints', 'first')),  # not autoresume's run_name mismatch: the lock comes first
    BadInput('recipe', 'save_folder in use whose lock file names no holder', _held(content='garbage'),
             r"save_folder 'checkpoints' is in use by another run \(its lock file \.run\.lock does not name it\); "
             r'wait for it to end or choose another save_folder$'),
    BadInput('recipe', 'save_folder with {run_name} in use by that run', _held_run_folder, in_use('runs/a', 'a')),
]
