"""A callback that counts, per training step, the reads of tensor values back to the host."""

from __future__ import annotations

import collections
import contextlib
from typing import Any, Counter, Dict, Iterator, List, Optional

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from torch.overrides import TorchFunctionMode

__all__ = ['HostReads', 'READS', 'earlier_step_read']

#: Tensor methods that hand a value to Python or copy to the CPU: on an accelerator each waits for the device.
READS = frozenset({'item', 'tolist', 'cpu', 'numpy', '__bool__', '__int__', '__float__', '__index__'})
_earlier_step_reads = 0


@contextlib.contextmanager
def earlier_step_read() -> Iterator[None]:
    """Mark reads of values from an earlier step, already on the host (a copy waited for with an event), as
    not this step's: :class:`HostReads` does not count them."""
    global _earlier_step_reads
    _earlier_step_reads += 1
    try:
        yield
    finally:
        _earlier_step_reads -= 1


class _ReadCounter(TorchFunctionMode):

    def __init__(self, device_type: str) -> None:
        super().__init__()
        self.device_type = device_type
        self.reads: Counter[str] = collections.Counter()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Optional[Dict[str, Any]] = None) -> Any:
        name = getattr(func, '__name__', '')
        if name in READS and not _earlier_step_reads and self._on_device(args):
            self.reads[name] += 1
        return func(*args, **(kwargs or {}))

    def _on_device(self, args: Any) -> bool:
        return bool(args) and isinstance(args[0], torch.Tensor) and args[0].device.type == self.device_type


class HostReads(Callback):
    """Count the host reads of tensor values (``.item()``, ``.cpu()``, ``bool(tensor)``, ...) in each training
    step, from one batch start to the next: the whole loop iteration, including the Trainer's bookkeeping,
    callbacks, logging and the next batch's fetch.

    On a GPU every such read makes the host wait for the work queued so far, so a step with none can run ahead
    of the device. The count works on any device, so a CPU run shows what a GPU run would wait on. Only reads
    of tensors on the Trainer's device count; on a CPU that is every tensor, so a data pipeline that runs in the
    training process (no workers) counts too. Reads marked with :func:`earlier_step_read` (a previous step's
    values, copied to the host behind that step's work) are not counted. Steps before ``skip`` (warm-up) and
    the last (epoch and run ends may read on purpose) are not counted. The counts are kept in
    :attr:`per_step` (one ``Counter`` of method names per counted step) and logged as ``host_reads/step``.

    Args:
        skip: first steps not counted.

    Example:
        >>> from composer_efficientnet.callbacks import HostReads
        >>> reads = HostReads(skip=2)
        >>> # Trainer(..., callbacks=[reads]).fit(); then sum(reads.per_step[-1].values()) == 0 for a sync-free step
    """

    def __init__(self, skip: int = 2) -> None:
        self.skip = skip
        self.per_step: List[Counter[str]] = []
        self._counter: Optional[_ReadCounter] = None

    def batch_start(self, state: State, logger: Logger) -> None:
        self._stop(logger)
        if int(state.timestamp.batch) >= self.skip:
            self._counter = _ReadCounter({'gpu': 'cuda'}.get(state.device.name, state.device.name))
            self._counter.__enter__()

    def epoch_end(self, state: State, logger: Logger) -> None:
        self._discard()

    def fit_end(self, state: State, logger: Logger) -> None:
        self._discard()

    def close(self, state: State, logger: Logger) -> None:
        self._discard()  # a run that raised mid-step must not leave the counter on the mode stack

    def _stop(self, logger: Logger) -> None:
        if self._counter is None:
            return
        self._counter.__exit__(None, None, None)
        self.per_step.append(self._counter.reads)
        self._counter = None
        logger.log_metrics({'host_reads/step': sum(self.per_step[-1].values())})

    def _discard(self) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self._counter = None
