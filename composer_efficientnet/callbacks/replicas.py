"""Keep every process's copy of the model identical where DDP does not: the buffers."""

from __future__ import annotations

from typing import Iterator

import torch
from composer.algorithms import EMA
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

__all__ = ['SyncBuffers']


class SyncBuffers(Callback):
    """Give every process rank 0's buffers (BatchNorm running statistics) before each evaluation and at the end.

    DDP keeps parameters identical, but it copies rank 0's buffers to the others only at the start of each
    forward pass; each process then updates them from its own batch. Without this, every process evaluates
    with different statistics, and the processes end with different weights. Rank 0's are the ones its
    checkpoints hold. Composer's EMA keeps its own average of each process's buffers; those are given rank 0's
    too. A no-op in a single process.
    """

    def eval_start(self, state: State, logger: Logger) -> None:
        self._broadcast(state)

    def fit_end(self, state: State, logger: Logger) -> None:
        self._broadcast(state)

    @staticmethod
    def _broadcast(state: State) -> None:
        if dist.get_world_size() == 1:
            return
        for buffer in _buffers(state):
            dist.broadcast(buffer, src=0)


def _buffers(state: State) -> Iterator[torch.Tensor]:
    """The model's buffers, then those of every EMA average (the model's and EMA's swap around evaluations)."""
    yield from state.model.buffers()
    for algorithm in state.algorithms:
        if isinstance(algorithm, EMA) and algorithm.ema_model is not None:
            yield from algorithm.ema_model.named_buffers_dict.values()
