"""The timed steps: one synthetic device batch, a plain PyTorch loop or a Trainer run over it, step ends marked
into windows (CUDA events on a GPU, ``perf_counter`` on the CPU), and one row run from freed memory."""

from __future__ import annotations

import atexit
import contextlib
import gc
import statistics
import time
import traceback
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from composer import Callback, State, Trainer
from composer.algorithms import ChannelsLast
from composer.core.engine import Engine
from composer.loggers import Logger
from torch import nn

from composer_efficientnet.algorithms import LabelSmoothing, SampleStochasticDepth
from composer_efficientnet.benchmark.rows import (DROP_RATE, LABEL_SMOOTHING, LEAN_ROWS, NUM_CLASSES, SGD_ARGS,
                                                  TRAINERS, Row, Settings, build_loop_model, row_activation_mb)
from composer_efficientnet.callbacks import HostReads
from composer_efficientnet.composer_model import composer_efficientnet as build_composer_model

__all__ = ['READ_COUNT_STEPS', 'WindowTimer', 'RepeatBatch', 'make_batch', 'autocast', 'loop_step', 'run_loop',
           'run_trainer', 'match_trainer_math', 'free_memory', 'run_row']

READ_COUNT_STEPS = 3  # untimed steps after the timed ones; the last is not counted (run ends may read)


class WindowTimer:
    """Marks the end of the warm-up and of each timing window, counted in steps; on a GPU the marks are CUDA
    events, so the host is never synchronized while timing. At the end of the warm-up the peak-memory counter
    restarts: cuDNN's autotuning in the first steps borrows a workspace as large as the free cache, which only the
    first row of a process would otherwise pay."""

    def __init__(self, settings: Settings, device: torch.device) -> None:
        self._mark_after = {settings.warmup + i * settings.steps for i in range(settings.windows + 1)}
        self._cuda = device.type == 'cuda'
        self._marks: List[Any] = []
        self._steps = 0

    def step_end(self) -> None:
        self._steps += 1
        if self._steps in self._mark_after:
            if self._cuda and not self._marks:
                torch.cuda.reset_peak_memory_stats()  # allocator bookkeeping only: no sync
            self._marks.append(self._mark())

    def _mark(self) -> Any:
        if not self._cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def window_seconds(self) -> List[float]:
        """Seconds of each window, once every step has run."""
        if len(self._marks) != len(self._mark_after):
            raise RuntimeError(f'Timed {self._steps} steps, expected {max(self._mark_after)}.')
        if self._cuda:
            torch.cuda.synchronize()
            return [start.elapsed_time(end) / 1000.0 for start, end in zip(self._marks, self._marks[1:])]
        return [end - start for start, end in zip(self._marks, self._marks[1:])]


class _StepEndCallback(Callback):
    """Feeds the Trainer's batch ends to a :class:`WindowTimer`: a window spans whole Trainer steps, with every
    per-step event, metric and logging call in it."""

    def __init__(self, timer: WindowTimer) -> None:
        self.timer = timer

    def batch_end(self, state: State, logger: Logger) -> None:
        self.timer.step_end()


class RepeatBatch:
    """An endless data loader that yields one pre-made device batch: no data work in the step."""

    def __init__(self, batch: Tuple[torch.Tensor, torch.Tensor]) -> None:
        self.batch = batch

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.batch


def make_batch(settings: Settings, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random images (in the chosen memory format) and integer labels, on ``device``."""
    generator = torch.Generator().manual_seed(settings.seed)
    shape = (settings.batch_size, 3, settings.resolution, settings.resolution)
    images = torch.randn(shape, generator=generator).to(device, memory_format=settings.memory_format)
    targets = torch.randint(0, NUM_CLASSES, (settings.batch_size,), generator=generator).to(device)
    return images, targets


def autocast(settings: Settings) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, as the Trainer's ``amp_bf16``; nothing for fp32."""
    if settings.precision == 'bf16':
        return torch.autocast('cuda', dtype=torch.bfloat16)
    return contextlib.nullcontext()


def loop_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Tuple[torch.Tensor, torch.Tensor],
              settings: Settings) -> None:
    """One plain PyTorch training step: forward and label-smoothed loss under autocast, backward, SGD."""
    images, targets = batch
    optimizer.zero_grad(set_to_none=True)
    with autocast(settings):
        loss = F.cross_entropy(model(images), targets, label_smoothing=LABEL_SMOOTHING)
    loss.backward()
    optimizer.step()


def run_loop(impl: str, mode: str, settings: Settings, device: torch.device) -> List[float]:
    """Time ``impl``'s member in a plain loop; returns seconds per window."""
    model = build_loop_model(impl, settings.model).to(device, memory_format=settings.memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), **SGD_ARGS)
    step_model = torch.compile(model) if mode == 'compiled' else model
    batch = make_batch(settings, device)
    timer = WindowTimer(settings, device)
    for _ in range(settings.total_steps):
        loop_step(step_model, optimizer, batch, settings)
        timer.step_end()
    return timer.window_seconds()


def run_trainer(impl: str, mode: str, settings: Settings, device: torch.device,
                callbacks: Sequence[Callback] = ()) -> Tuple[List[float], Optional[int]]:
    """Time this package's member through a Trainer; returns seconds per window, and in eager mode the most
    host reads of device values in one step.

    No evaluation, checkpointing, progress bar or logger; the microbatch is the batch.
    """
    model = build_composer_model(settings.model, num_classes=NUM_CLASSES, memory_efficient=impl in LEAN_ROWS)
    algorithms = [SampleStochasticDepth(drop_rate=DROP_RATE), LabelSmoothing(smoothing=LABEL_SMOOTHING)]
    if settings.channels_last:
        algorithms.append(ChannelsLast())
    timer = WindowTimer(settings, device)
    count_reads = mode == 'eager'
    reads = HostReads(skip=settings.total_steps)
    trainer = TRAINERS[impl](
        model=model, train_dataloader=RepeatBatch(make_batch(settings, device)),
        max_duration=f'{settings.total_steps + (READ_COUNT_STEPS if count_reads else 0)}ba',
        optimizers=torch.optim.SGD(model.parameters(), **SGD_ARGS), algorithms=algorithms,
        callbacks=[_StepEndCallback(timer), *([reads] if count_reads else []), *callbacks],
        device='gpu' if device.type == 'cuda' else 'cpu',
        precision='amp_bf16' if settings.precision == 'bf16' else 'fp32',
        device_train_microbatch_size=settings.batch_size, progress_bar=False, log_to_console=False,
        loggers=[], compile_config={} if mode == 'compiled' else None, seed=settings.seed)
    try:
        trainer.fit()
        most_reads = max(sum(step.values()) for step in reads.per_step) if count_reads else None
        return timer.window_seconds(), most_reads
    finally:
        _close_trainer(trainer)


def _close_trainer(trainer: Trainer) -> None:
    """Close the Trainer and drop the ``atexit`` hook through which Composer's Engine keeps the Trainer's state
    (model, optimizer, batch) alive until exit, so the next row starts from freed memory."""
    trainer.close()
    atexit.unregister(Engine._close)


def match_trainer_math(device: torch.device) -> None:
    """Allow TF32 as Composer's GPU device does when the Trainer is built, so rows before and after the first
    Trainer row run the same fp32 math."""
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def free_memory(device: torch.device) -> None:
    """Release what the last row left: Python garbage, compiled graphs, and the CUDA cache."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_row(impl: str, mode: str, settings: Settings, device: torch.device) -> Row:
    """Run one row from freed memory; a failure is recorded in the row rather than raised, so one broken row
    does not lose the others' figures."""
    free_memory(device)
    torch.manual_seed(settings.seed)
    row = Row(impl, mode)
    start = time.perf_counter()
    try:
        row.activation_mb_per_image = row_activation_mb(impl, settings)
        if impl in TRAINERS:
            seconds, row.host_reads_per_step = run_trainer(impl, mode, settings, device)
        else:
            seconds = run_loop(impl, mode, settings, device)
        row.window_images_per_s = [settings.batch_size * settings.steps / s for s in seconds]
        row.images_per_s = statistics.median(row.window_images_per_s)
        if device.type == 'cuda':
            row.peak_memory_gib = torch.cuda.max_memory_allocated() / 2**30
    except Exception as error:  # noqa: BLE001  (reported in the row and the exit status)
        row.error = f'{type(error).__name__}: {error}'
        traceback.print_exc()
    row.wall_s = time.perf_counter() - start
    return row
