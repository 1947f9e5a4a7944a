"""Starting the package's entry points as separate processes, one or under Composer's launcher, so that none
outlives its test: each starts in a session of its own and is killed with everything it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

#: One thread per process, and gloo on loopback whatever the machine's name resolves to.
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'GLOO_SOCKET_IFNAME': 'lo'}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def stop(processes: list) -> None:
    """End every process still running, with whatever it started."""
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def launch(module: str, args: List[str], cwd: Path, processes: int = 2, timeout: float = 600) -> Tuple[int, str]:
    """``composer -n PROCESSES -m MODULE ARGS`` in ``cwd``, each rank's output in ``cwd/rank{rank}.out`` and
    ``.err``; the launcher's exit status and output."""
    launcher = str(Path(sys.executable).parent / 'composer')
    process = subprocess.Popen([launcher, '-n', str(processes), '--stdout', str(cwd / 'rank{rank}.out'), '--stderr',
                                str(cwd / 'rank{rank}.err'), '-m', module, *args], cwd=cwd, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        stop([process])
    return process.returncode, output
