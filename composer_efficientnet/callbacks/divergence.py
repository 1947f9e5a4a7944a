"""Stop a run whose loss stops being finite, before a single non-finite weight reaches a checkpoint."""

from __future__ import annotations

import itertools
import logging
from typing import Any, Mapping, Optional, Sequence

import torch
from composer.callbacks import CheckpointSaver, NaNMonitor
from composer.core import State
from composer.loggers import Logger
from composer.utils import dist

from composer_efficientnet.callbacks.checkpointing import AtomicCheckpointSaver, latest_checkpoint

__all__ = ['DivergenceGuard', 'DivergenceError']

log = logging.getLogger(__name__)

_NONE = torch.iinfo(torch.int64).max  # "no bad step yet"; the reduction across processes is a minimum


class DivergenceError(RuntimeError):
    """Training diverged; the message names the step and the last good checkpoint."""


def _losses(loss: Any) -> Sequence[torch.Tensor]:
    if isinstance(loss, torch.Tensor):
        return [loss]
    if isinstance(loss, Mapping):
        return list(loss.values())
    if isinstance(loss, Sequence):
        return list(loss)
    raise TypeError(f'Loss is of type {type(loss)}, but should be a tensor, a sequence or a mapping of tensors')


def _all_finite(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One device-side boolean: whether every element of every tensor is finite (no host sync)."""
    return torch.stack([torch.isfinite(t.detach()).all() for t in tensors]).all()


class DivergenceGuard(NaNMonitor):
    """Composer's :class:`~composer.callbacks.NaNMonitor`, extended to Inf and made free of host syncs.

    Each loss is checked on the device: a flag records the first step whose loss was not finite, with no
    ``.item()`` in the training step. The flag is read (and combined across processes, so every process stops
    at the same step) every ``check_interval`` batches, at the end of training, and before every checkpoint an
    :class:`~composer_efficientnet.callbacks.AtomicCheckpointSaver` writes. Before a checkpoint the weights
    themselves are checked too. A bad step raises :class:`DivergenceError` naming it and the last good
    checkpoint; the checkpoints already written are kept and none is written with non-finite weights.

    Args:
        check_interval: batches between reads of the flag. ``None`` (default) reads every batch on a CPU,
            where reading costs nothing, and every 50 batches on an accelerator, where each read waits for the
            device; the run then stops up to ``check_interval - 1`` steps after the bad one, and never later
            than the next checkpoint.
    """

    def __init__(self, check_interval: Optional[int] = None) -> None:
        if check_interval is not None and (isinstance(check_interval, bool) or not isinstance(check_interval, int)
                                           or check_interval < 1):
            raise ValueError(f'check_interval must be a positive number of batches or null, got {check_interval!r}')
        self.check_interval = check_interval
        self._first_bad: Optional[torch.Tensor] = None
        self._interval = 1

    def init(self, state: State, logger: Logger) -> None:
        savers = [cb for cb in state.callbacks if isinstance(cb, CheckpointSaver)]
        for saver in savers:
            if isinstance(saver, AtomicCheckpointSaver):
                saver.add_gate(self.check_before_checkpoint)
            else:
                log.warning('divergence_guard cannot stop %s from writing a checkpoint with non-finite weights; use '
                            'composer_efficientnet.callbacks.AtomicCheckpointSaver instead.', type(saver).__name__)

    def fit_start(self, state: State, logger: Logger) -> None:
        self._first_bad = state.device.tensor_to_device(torch.tensor(_NONE, dtype=torch.int64))
        on_cpu = state.device.name == 'cpu'
        self._interval = self.check_interval or (1 if on_cpu else 50)

    def after_loss(self, state: State, logger: Logger) -> None:
        assert self._first_bad is not None, 'set at fit start'
        finite = _all_finite(_losses(state.loss))
        step = int(state.timestamp.batch) + 1  # the batch count once this step completes, as in checkpoint names
        self._first_bad = torch.minimum(self._first_bad, torch.where(finite, _NONE, step))

    def batch_end(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) % self._interval == 0:
            self._check(state, weights=False)

    def fit_end(self, state: State, logger: Logger) -> None:
        self._check(state, weights=False)

    def check_before_checkpoint(self, state: State) -> None:
        """Raise :class:`DivergenceError` if any loss so far or any weight is not finite (all processes)."""
        self._check(state, weights=True)

    def _check(self, state: State, weights: bool) -> None:
        if self._first_bad is None:  # called before the first fit started
            return
        bad_weights = torch.full_like(self._first_bad, _NONE)
        if weights:
            tensors = itertools.chain(state.model.parameters(), state.model.buffers())
            finite = _all_finite([t for t in tensors if t.is_floating_point()])
            bad_weights = torch.where(finite, _NONE, int(state.timestamp.batch))
        summary = torch.stack([self._first_bad, bad_weights])
        dist.all_reduce(summary, reduce_operation='MIN')
        first_bad_loss, bad_weights_step = summary.tolist()  # the only host read
        if first_bad_loss != _NONE:
            raise DivergenceError(self._message(state, f'the training loss was not finite (NaN or Inf) at step '
                                                       f'{first_bad_loss}'))
        if bad_weights_step != _NONE:
            raise DivergenceError(self._message(state, f'the model weights were not finite (NaN or Inf) after step '
                                                       f'{bad_weights_step}'))

    @staticmethod
    def _message(state: State, what: str) -> str:
        checkpoint = latest_checkpoint(state)
        where = f'last good checkpoint: {checkpoint}' if checkpoint else 'no checkpoint had been written'
        return f'training diverged: {what}; stopped at step {int(state.timestamp.batch)}; {where}'
