"""The host-sync check: on CUDA, this package's model step, train-metric update and whole Trainer steps run under
``torch.cuda.set_sync_debug_mode('error')``, so any host-device sync raises."""

from __future__ import annotations

import traceback
from dataclasses import replace
from typing import Any, Dict

import torch
from composer import Callback, State
from composer.loggers import Logger

from composer_efficientnet.algorithms import apply_label_smoothing, apply_sample_stochastic_depth
from composer_efficientnet.benchmark.rows import DROP_RATE, LABEL_SMOOTHING, NUM_CLASSES, SGD_ARGS, Settings
from composer_efficientnet.benchmark.timing import autocast, free_memory, make_batch, run_trainer
from composer_efficientnet.composer_model import composer_efficientnet as build_composer_model

__all__ = ['SYNC_CHECK_STEPS', 'check_host_sync']

SYNC_CHECK_STEPS = 3


class _SyncErrorSteps(Callback):
    """Makes any host-device sync an error from the start of step ``first`` to the start of step ``last``:
    whole Trainer steps, bookkeeping included, after the warm-up and before the run's end."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last

    def batch_start(self, state: State, logger: Logger) -> None:
        torch.cuda.set_sync_debug_mode('error' if self.first <= int(state.timestamp.batch) < self.last else 0)


def check_host_sync(settings: Settings, device: torch.device) -> Dict[str, str]:
    """Run steps of this package's Composer model (forward, label-smoothed loss, backward, SGD), the update of
    its train metric, and whole :class:`SyncFreeTrainer` steps, under ``torch.cuda.set_sync_debug_mode('error')``:
    any host-device sync raises.

    Returns ``{'model_step': status, 'train_metric_update': status, 'trainer_loop': status}`` with ``pass``,
    ``fail: <error>`` or ``skipped: <why>``.
    """
    checks = ('model_step', 'train_metric_update', 'trainer_loop')
    if device.type != 'cuda':
        return dict.fromkeys(checks, 'skipped: needs CUDA')
    free_memory(device)
    model = build_composer_model(settings.model, num_classes=NUM_CLASSES)
    model = model.to(device, memory_format=settings.memory_format).train()
    apply_sample_stochastic_depth(model, DROP_RATE)
    apply_label_smoothing(model, LABEL_SMOOTHING)
    optimizer = torch.optim.SGD(model.parameters(), **SGD_ARGS)
    metric = model.get_metrics(is_train=True)['MulticlassAccuracy'].to(device)
    batch = make_batch(settings, device)

    def model_step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast(settings):
            outputs = model(batch)
            loss = model.loss(outputs, batch)
        loss.backward()
        optimizer.step()
        return outputs.detach()

    outputs = model_step()  # warm-up outside the check: lazy initialization may synchronize once
    metric.update(outputs, batch[1])
    torch.cuda.synchronize()
    result = {'model_step': _without_sync(lambda: [model_step() for _ in range(SYNC_CHECK_STEPS)]),
              'train_metric_update': _without_sync(lambda: model.update_metric(batch, outputs, metric))}
    del model, optimizer, metric, batch, outputs
    free_memory(device)
    steps = SYNC_CHECK_STEPS
    loop_settings = replace(settings, warmup=steps, steps=steps, windows=1)
    result['trainer_loop'] = _without_sync(
        lambda: run_trainer('ours', 'eager', loop_settings, device, [_SyncErrorSteps(steps, 2 * steps)]), arm=False)
    free_memory(device)
    return result


def _checked_host_sync(settings: Settings, device: torch.device) -> Dict[str, str]:
    """:func:`check_host_sync`, with a failure to run it reported rather than raised after the rows' work."""
    try:
        return check_host_sync(settings, device)
    except Exception as error:  # noqa: BLE001
        traceback.print_exc()
        return {'model_step': f'error: {type(error).__name__}: {error}'}


def _without_sync(fn: Any, arm: bool = True) -> str:
    """``'pass'`` if ``fn`` runs with no host-device sync, else ``'fail: '`` and the error with its innermost
    frame. With ``arm=False``, ``fn`` turns the check on itself."""
    if arm:
        torch.cuda.set_sync_debug_mode('error')
    try:
        fn()
        return 'pass'
    except RuntimeError as error:
        frame = traceback.extract_tb(error.__traceback__)[-1]
        return f'fail: {error} (at {frame.filename}:{frame.lineno})'
    finally:
        torch.cuda.set_sync_debug_mode(0)
