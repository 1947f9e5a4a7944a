"""Training-step throughput of EfficientNet: this package's model through its ``composer.Trainer`` against
torchvision's and timm's in a plain PyTorch loop.

Every row runs in this one process, on the same device, batch, resolution, precision and memory format,
on one synthetic batch made once and already on the device, so the rows differ only by model and training
loop, never by data loading. Rows:

* ``ours``: this package's member through :class:`~composer_efficientnet.trainer.SyncFreeTrainer` (the
  ``composer.Trainer`` that recipes use) with :class:`SampleStochasticDepth` (0.2), :class:`LabelSmoothing`
  (0.1) and, with channels_last, Composer's ``ChannelsLast``; its train metric (accuracy, part of the
  Composer model) is updated, computed and logged every step, as in any real run.
* ``torchvision`` and ``timm`` (the peers): the same member in a plain loop with
  ``F.cross_entropy(label_smoothing=0.1)``, each with its own stochastic depth at 0.2.
* ``ours-loop`` (diagnostic, not run by default): this package's module in the same plain loop, which
  splits the Trainer's cost from the model's.
* ``ours-composer`` (diagnostic, not run by default): as ``ours``, through Composer's own ``Trainer``.
* ``ours-lean`` and ``ours-lean-loop`` (``--memory-efficient`` adds them): as ``ours`` and ``ours-loop``, the
  model built with ``memory_efficient=True``.

Every row also reports the activation megabytes per image its model keeps for backward (float32, counted with
saved-tensor hooks on the meta device, so the figure is the same on every machine), beside images/s and peak memory.

Trainer rows also count the host reads of device values per step (``HostReads``), in a few untimed steps
after the timed ones, eager only (the counter intercepts every torch call, which compiled code would guard on).

Each row runs eager and, with ``--compile``, compiled (``compile_config={}`` for the Trainer,
``torch.compile(model)`` for the loops). Time is taken at step ends (CUDA events on a GPU, ``perf_counter``
on the CPU), after warm-up steps, over several windows; a row's images/s is the median window. Each row
is compared to the fastest peer row of the same mode.

Example:
    >>> from composer_efficientnet.benchmark import main
    >>> main(['--device', 'cpu', '--resolution', '32', '--batch-size', '2', '--steps', '1', '--warmup', '1',
    ...       '--windows', '1', '--rows', 'ours-loop,torchvision'])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import composer
import torch
import torch.nn.functional as F
import torchvision
from composer import Callback, State, Trainer
from composer.algorithms import ChannelsLast
from composer.core.engine import Engine
from composer.loggers import Logger
from torch import nn

import composer_efficientnet
from composer_efficientnet.algorithms import (LabelSmoothing, SampleStochasticDepth, apply_label_smoothing,
                                              apply_sample_stochastic_depth)
from composer_efficientnet.callbacks import HostReads
from composer_efficientnet.composer_model import composer_efficientnet as build_composer_model
from composer_efficientnet.efficientnet import MEMBERS, EfficientNet, canonical_name
from composer_efficientnet.trainer import SyncFreeTrainer

__all__ = ['Settings', 'Row', 'main', 'run_benchmark', 'format_table']

IMPLEMENTATIONS = {
    'ours': 'ours, SyncFreeTrainer',
    'ours-loop': 'ours, plain loop',
    'ours-composer': 'ours, composer.Trainer',
    'ours-lean': 'ours lean, SyncFreeTrainer',
    'ours-lean-loop': 'ours lean, plain loop',
    'torchvision': 'torchvision, plain loop',
    'timm': 'timm, plain loop',
}
PEERS = ('torchvision', 'timm')
TRAINERS = {'ours': SyncFreeTrainer, 'ours-composer': Trainer, 'ours-lean': SyncFreeTrainer}
LEAN_ROWS = ('ours-lean', 'ours-lean-loop')  # memory_efficient=True; --memory-efficient adds them
READ_COUNT_STEPS = 3  # untimed steps after the timed ones; the last is not counted (run ends may read)
DEFAULT_ROWS = ('ours', 'torchvision', 'timm')
MODES = ('eager', 'compiled')
DROP_RATE = 0.2
LABEL_SMOOTHING = 0.1
NUM_CLASSES = 1000
SGD_ARGS = {'lr': 0.01, 'momentum': 0.9, 'weight_decay': 5e-5}
SYNC_CHECK_STEPS = 3
TRAIN_METRICS_NOTE = ('Trainer rows: the Composer model\'s train metric (MulticlassAccuracy) is updated, computed '
                      'and logged every step, as in any Trainer run; the plain loops compute no metric.')

#: Defaults per device type: the issue's GPU setting, and a CPU setting that runs in about a minute on 2 cores.
DEVICE_DEFAULTS: Dict[str, Dict[str, Any]] = {
    'cuda': {'batch_size': 256, 'resolution': None, 'precision': 'bf16', 'channels_last': True, 'warmup': 20,
             'steps': 20, 'windows': 3, 'compile': True, 'cudnn_benchmark': True},
    'cpu': {'batch_size': 8, 'resolution': 128, 'precision': 'fp32', 'channels_last': False, 'warmup': 2,
            'steps': 4, 'windows': 3, 'compile': False, 'cudnn_benchmark': False},
}


@dataclass(frozen=True)
class Settings:
    """What every row of one benchmark run shares."""
    model: str
    device: str
    batch_size: int
    resolution: int
    precision: str
    channels_last: bool
    warmup: int
    steps: int
    windows: int
    compile: bool
    rows: Tuple[str, ...]
    seed: int = 17
    cudnn_benchmark: bool = False

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps * self.windows

    @property
    def modes(self) -> Tuple[str, ...]:
        return MODES if self.compile else MODES[:1]

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


@dataclass
class Row:
    """One timed configuration; ``ratio`` and ``memory_ratio`` are relative to ``reference``, the fastest peer
    row of the same mode."""
    impl: str
    mode: str
    images_per_s: Optional[float] = None
    window_images_per_s: List[float] = field(default_factory=list)
    peak_memory_gib: Optional[float] = None
    wall_s: float = 0.0
    ratio: Optional[float] = None
    memory_ratio: Optional[float] = None
    reference: Optional[str] = None
    host_reads_per_step: Optional[int] = None
    activation_mb_per_image: Optional[float] = None
    error: Optional[str] = None

    @property
    def name(self) -> str:
        return f'{self.impl}:{self.mode}'


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


def build_loop_model(impl: str, name: str) -> nn.Module:
    """The member ``name`` from ``impl``, with stochastic depth 0.2 and the member's classifier dropout."""
    if impl in ('ours-loop', 'ours-lean-loop'):
        return EfficientNet.from_name(name, num_classes=NUM_CLASSES, drop_connect_rate=DROP_RATE,
                                      memory_efficient=impl in LEAN_ROWS)
    if impl == 'torchvision':  # its default stochastic depth: 0.2, sample-wise ('row'), linear over blocks
        return getattr(torchvision.models, name)(weights=None, num_classes=NUM_CLASSES)
    if impl == 'timm':  # timm spells V2 efficientnetv2_s
        import timm
        return timm.create_model(name.replace('efficientnet_v2_', 'efficientnetv2_'), pretrained=False,
                                 num_classes=NUM_CLASSES, drop_path_rate=DROP_RATE, drop_rate=MEMBERS[name].dropout)
    raise ValueError(f'No plain-loop model for {impl!r}.')


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


def row_activation_mb(impl: str, settings: Settings) -> float:
    """Megabytes (10**6 bytes) per image that ``impl``'s model keeps for backward at the settings' resolution and
    memory format, counted in float32 on the meta device: the same figure on every machine."""
    loop_impl = {'ours': 'ours-loop', 'ours-composer': 'ours-loop', 'ours-lean': 'ours-lean-loop'}.get(impl, impl)
    with torch.device('meta'):
        model = build_loop_model(loop_impl, settings.model)
    return activation_bytes_per_image(model, settings.resolution, settings.channels_last) / 1e6


def add_ratios(rows: Sequence[Row]) -> None:
    """Compare every timed row to the fastest peer row of its mode (images/s, and peak memory when known)."""
    for mode in MODES:
        peers = [r for r in rows if r.mode == mode and r.impl in PEERS and r.images_per_s]
        if not peers:
            continue
        best = max(peers, key=lambda r: r.images_per_s)
        for row in rows:
            if row.mode != mode or not row.images_per_s:
                continue
            row.reference = best.name
            row.ratio = row.images_per_s / best.images_per_s
            if row.peak_memory_gib and best.peak_memory_gib:
                row.memory_ratio = row.peak_memory_gib / best.peak_memory_gib


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


def activation_bytes_per_image(model: nn.Module, resolution: int, channels_last: bool = False,
                               images: int = 2) -> float:
    """Bytes of the tensors autograd saves for backward in one float32 training forward, per image: parameters,
    and storage saved twice, counted once. Build ``model`` on the meta device to count without computing.

    Args:
        model: the module, put in training mode here; the batch is made on its parameters' device.
        resolution: the images' side in pixels.
        channels_last: count with a channels_last batch.
        images: the batch size counted (the count per image is the same for any batch of 2 or more).
    """
    parameters = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: Dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters:
            saved[storage._cdata] = storage.nbytes()
        return tensor

    device = next(model.parameters()).device
    batch = torch.zeros(images, 3, resolution, resolution, device=device)
    batch = batch.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.train()(batch)
    return sum(saved.values()) / images


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and core count."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open('/proc/cpuinfo') as cpuinfo:
            model = next((line.split(':', 1)[1].strip() for line in cpuinfo if line.startswith('model name')),
                         model)
    return f'{model} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)'


def versions() -> Dict[str, Optional[str]]:
    """Versions of everything that shapes the figures."""
    timm_version = None
    if importlib.util.find_spec('timm') is not None:
        import timm
        timm_version = timm.__version__
    return {'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.version.cuda,
            'cudnn': str(torch.backends.cudnn.version()) if torch.cuda.is_available() else None,
            'torchvision': torchvision.__version__, 'composer': composer.__version__, 'timm': timm_version,
            'composer_efficientnet': composer_efficientnet.__version__}


def report(settings: Settings, device: torch.device, rows: Sequence[Row], skipped: Dict[str, str],
           sync_check: Optional[Dict[str, str]], complete: bool) -> Dict[str, Any]:
    """The JSON document of a run: where, when, with what, and every row."""
    return {
        'benchmark': 'composer_efficientnet.benchmark',
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'device': device_name(device),
        'versions': versions(),
        'settings': {**asdict(settings), 'rows': list(settings.rows), 'modes': list(settings.modes),
                     'optimizer': {'name': 'SGD', **SGD_ARGS}, 'label_smoothing': LABEL_SMOOTHING,
                     'drop_rate': DROP_RATE, 'num_classes': NUM_CLASSES,
                     'tf32': torch.backends.cuda.matmul.allow_tf32 if device.type == 'cuda' else None,
                     'train_metrics': TRAIN_METRICS_NOTE},
        'rows': [{'name': row.name, 'description': IMPLEMENTATIONS[row.impl], **asdict(row)} for row in rows],
        'skipped': skipped,
        'sync_check': sync_check,
        'complete': complete,
    }


def format_table(result: Dict[str, Any]) -> str:
    """A plain-text table of a run's JSON document."""
    settings = result['settings']
    header = (f"{settings['model']} training step on {result['device']} ({result['date']}): batch "
              f"{settings['batch_size']}, {settings['resolution']}x{settings['resolution']}, {settings['precision']}"
              f"{', channels_last' if settings['channels_last'] else ''}"
              f"{', cudnn.benchmark' if settings.get('cudnn_benchmark') else ''}; "
              f"torch {result['versions']['torch']}, "
              f"composer {result['versions']['composer']}")
    lines = [header, f"{'row':<28}{'mode':<10}{'images/s':>10}{'spread':>8}{'peak GiB':>10}{'x peer':>8}"
                     f"{'mem x':>7}{'act MB':>8}{'reads':>7}  vs"]
    for row in result['rows']:
        lines.append(_format_row(row))
    for impl, why in result.get('skipped', {}).items():
        lines.append(f'{impl}: skipped ({why})')
    if result.get('sync_check'):
        lines.append('host-sync check: ' + ', '.join(f'{k} {v}' for k, v in result['sync_check'].items()))
    return '\n'.join(lines)


def _format_row(row: Dict[str, Any]) -> str:
    label = row['description']
    if row['error']:
        return f"{label:<28}{row['mode']:<10}  failed: {row['error']}"
    windows = row['window_images_per_s']
    spread = (max(windows) - min(windows)) / row['images_per_s']
    return (f"{label:<28}{row['mode']:<10}{row['images_per_s']:>10,.1f}{spread:>8.1%}"
            f"{_number(row['peak_memory_gib'], '.2f'):>10}{_number(row['ratio'], '.3f'):>8}"
            f"{_number(row['memory_ratio'], '.2f'):>7}{_number(row.get('activation_mb_per_image'), '.1f'):>8}"
            f"{_number(row.get('host_reads_per_step'), 'd'):>7}"
            f"  {row['reference'] or ''}")


def _number(value: Optional[float], spec: str) -> str:
    return 'n/a' if value is None else format(value, spec)


def write_json(result: Dict[str, Any], path: Optional[str]) -> None:
    """Write ``result`` to ``path`` by a rename, so a run stopped at any moment leaves a whole file."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(f'{path}.partial', 'w') as file:
            json.dump(result, file, indent=2)
            file.write('\n')
        os.replace(f'{path}.partial', path)


def run_benchmark(settings: Settings, json_path: Optional[str] = None, sync_check: bool = True) -> Dict[str, Any]:
    """Run (with ``sync_check``) the host-sync check, then every selected row in every selected mode; the JSON
    file is rewritten after each, so an interrupted run keeps what it measured. The check runs first: it is
    short, and the row a time limit would cut off is the last one."""
    device = torch.device(settings.device)
    match_trainer_math(device)
    if device.type == 'cuda':  # every row alike: our recipes and torchvision's and timm's scripts turn it on
        torch.backends.cudnn.benchmark = settings.cudnn_benchmark
    skipped = {} if 'timm' not in settings.rows or importlib.util.find_spec('timm') else {'timm': 'not installed'}
    if 'torchvision' in settings.rows and not hasattr(torchvision.models, settings.model):
        skipped['torchvision'] = f'has no {settings.model}'
    rows: List[Row] = []
    checked = _checked_host_sync(settings, device) if sync_check else None
    write_json(report(settings, device, rows, skipped, checked, complete=False), json_path)
    for mode in settings.modes:
        for impl in settings.rows:
            if impl in skipped:
                continue
            rows.append(run_row(impl, mode, settings, device))
            add_ratios(rows)
            write_json(report(settings, device, rows, skipped, checked, complete=False), json_path)
            print(f'{rows[-1].name}: {_number(rows[-1].images_per_s, ",.1f")} images/s '
                  f'({rows[-1].wall_s:.0f} s)', flush=True)
    result = report(settings, device, rows, skipped, checked, complete=True)
    write_json(result, json_path)
    return result


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text}')
    return value


def _row_list(text: str) -> Tuple[str, ...]:
    rows = tuple(dict.fromkeys(part.strip() for part in text.split(',') if part.strip()))
    unknown = [row for row in rows if row not in IMPLEMENTATIONS]
    if unknown or not rows:
        raise argparse.ArgumentTypeError(f"unknown rows {unknown}; choose from {', '.join(IMPLEMENTATIONS)}")
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='composer-efficientnet benchmark', description=__doc__.split('\n\n')[0].replace('``', ''),
        epilog=(f"Defaults on a GPU: {DEVICE_DEFAULTS['cuda']} (resolution: the member's own). "
                f"On the CPU: {DEVICE_DEFAULTS['cpu']}."))
    parser.add_argument('--model', default='efficientnet_b0', help='member, efficientnet_b0 ... efficientnet_b7')
    parser.add_argument('--device', choices=('auto', 'cuda', 'cpu'), default='auto')
    parser.add_argument('--batch-size', type=_positive_int)
    parser.add_argument('--resolution', type=_positive_int, help="image side in pixels")
    parser.add_argument('--precision', choices=('bf16', 'fp32'), help='bf16 autocast needs CUDA')
    parser.add_argument('--channels-last', action=argparse.BooleanOptionalAction)
    parser.add_argument('--warmup', type=_positive_int, help='untimed steps first (compilation happens there)')
    parser.add_argument('--steps', type=_positive_int, help='steps per timing window')
    parser.add_argument('--windows', type=_positive_int, help='timing windows; images/s is their median')
    parser.add_argument('--compile', action=argparse.BooleanOptionalAction,
                        help='also run every row compiled (default: on a GPU only)')
    parser.add_argument('--cudnn-benchmark', action=argparse.BooleanOptionalAction,
                        help='let cuDNN time convolution algorithms, for every row (default: on a GPU)')
    parser.add_argument('--rows', type=_row_list, default=DEFAULT_ROWS,
                        help=f"comma-separated, from {', '.join(IMPLEMENTATIONS)} (default: {','.join(DEFAULT_ROWS)})")
    parser.add_argument('--memory-efficient', action='store_true',
                        help='add the rows of our memory-efficient mode: ours-lean (and ours-lean-loop with ours-loop)')
    parser.add_argument('--sync-check', action=argparse.BooleanOptionalAction, default=True,
                        help='check on CUDA that our model step makes no host-device sync (default: on)')
    parser.add_argument('--json', metavar='PATH', help='write the results there as JSON')
    parser.add_argument('--report', nargs='+', metavar='JSON', help='print the tables of earlier JSON results and exit')
    return parser


def settings_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Settings:
    """Fill unset options with the defaults of the chosen device."""
    device = ('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto' else args.device
    if device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available')
    try:
        model = canonical_name(args.model)
    except ValueError as error:
        parser.error(str(error))
    defaults = DEVICE_DEFAULTS[device]
    chosen = {key: defaults[key] if getattr(args, key) is None else getattr(args, key) for key in defaults}
    chosen['resolution'] = chosen['resolution'] or MEMBERS[model].resolution
    if chosen['precision'] == 'bf16' and device != 'cuda':
        parser.error('--precision bf16 is measured with CUDA autocast; use fp32 on the CPU')
    rows = args.rows
    if args.memory_efficient:
        rows = tuple(dict.fromkeys(rows + ('ours-lean',) + (('ours-lean-loop',) if 'ours-loop' in rows else ())))
    return Settings(model=model, device=device, rows=rows, **chosen)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark (or print earlier results with ``--report``); 1 if any row failed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.report:
        for path in args.report:
            try:
                with open(path) as file:
                    print(format_table(json.load(file)), end='\n\n')
            except (OSError, ValueError, KeyError, TypeError) as error:
                parser.error(f"--report: cannot read '{path}' as this benchmark's JSON ({type(error).__name__}: "
                             f'{error})')
        return 0
    if args.json and os.path.isdir(args.json):
        parser.error(f"--json: '{args.json}' is a directory; give a file name, such as "
                     f"{os.path.join(args.json, 'benchmark.json')}")
    settings = settings_from_args(args, parser)
    result = run_benchmark(settings, args.json, args.sync_check)
    print(format_table(result))
    return 1 if any(row['error'] for row in result['rows']) else 0


if __name__ == '__main__':
    sys.exit(main())
