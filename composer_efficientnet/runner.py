"""What training and evaluation build alike from a validated recipe: device and precision, data, run settings."""

from __future__ import annotations

import inspect
import logging
import signal
import sys
import time
import warnings
from typing import Any, Dict, Optional, Sequence, TextIO, Tuple

import torch
from composer import Trainer
from composer.core import DataSpec
from composer.loggers import ConsoleLogger, ProgressBarLogger
from composer.utils import dist
from tqdm import tqdm

from composer_efficientnet.algorithms.compatibility import check_algorithms_fit_data
from composer_efficientnet.data.loading import DeviceDataSpec
from composer_efficientnet.recipe import Entry, Recipe, RecipeError, mistakes_of

__all__ = ['run_device', 'device_and_precision', 'configure_cudnn', 'build_data', 'check_data_fits', 'run_settings',
           'held_out_metrics', 'ignore_short_last_batch_warnings', 'fail_on_every_process', 'report_recipe_error',
           'status', 'log_around_progress_bars']

#: How long processes other than a node's first wait before exiting after a mistake all of them found, so that
#: Composer's launcher sees the first one's exit status (it stops the others and reports the first exit it finds).
LAUNCHER_GRACE_S = 30.0

#: Recipe settings passed to Composer's ``Trainer`` under the same name, when the recipe sets them.
TRAINER_PASSTHROUGH = ('eval_interval', 'scale_schedule_ratio', 'load_path', 'load_weights_only', 'autoresume',
                       'run_name', 'deterministic_mode', 'train_subset_num_batches', 'eval_subset_num_batches',
                       'dist_timeout', 'console_log_interval', 'python_log_level')


def ignore_short_last_batch_warnings() -> None:
    """Composer warns on every last batch of an epoch that is shorter than the batch; with ``drop_last`` false
    that is expected, not news."""
    warnings.filterwarnings('ignore', message='Cannot split tensor of length')


def status(line: str, file: Optional[TextIO] = None) -> None:
    """Print a status line (stdout by default) on a line of its own while Composer's progress bars are drawn:
    they keep the cursor at the end of a bar, so a plain print would be glued to it."""
    tqdm.write(line, file=file or sys.stdout)
    (file or sys.stdout).flush()


class _AroundProgressBars(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if not _root_prints_to_console():  # else (python_log_level) the root logger prints it itself
            status(self.format(record), sys.stderr)


def _root_prints_to_console() -> bool:
    return any(isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.stdout)
               for handler in logging.getLogger().handlers)


def log_around_progress_bars() -> None:
    """Print this package's warnings (skipped images, notices) through :func:`status`, for the command line, where
    Python would otherwise print them with its last-resort handler, glued to a progress bar."""
    logger = logging.getLogger('composer_efficientnet')
    if not any(isinstance(handler, _AroundProgressBars) for handler in logger.handlers):
        logger.addHandler(_AroundProgressBars(logging.WARNING))


def fail_on_every_process(lines: Sequence[str], exit_status: int) -> int:
    """Report a mistake that every process of the run finds (a recipe mistake): each line once on stderr (through
    :func:`status`, as a Trainer being built may have drawn a bar), and ``exit_status`` as the exit status of the
    command and of Composer's launcher around it.

    Only each node's first process prints; the others wait for the launcher to stop them. Without the wait, the
    launcher could see one of them exit first, print its output too, stop the first process and exit with that
    one's signal status (241) instead of ``exit_status``.
    """
    if dist.get_local_rank() == 0:
        for line in lines:
            status(line, sys.stderr)
    elif dist.get_local_world_size() > 1:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # stopped by the launcher: not reported as a crash of its own
        time.sleep(LAUNCHER_GRACE_S)
    return exit_status


def report_recipe_error(error: RecipeError) -> int:
    """Every mistake of ``error``, one line each as ``composer-efficientnet: recipe error: ...``; exit status 2."""
    return fail_on_every_process([f'composer-efficientnet: recipe error: {line}' for line in mistakes_of(error)], 2)


def run_device(recipe: Recipe) -> str:
    """The recipe's device, ``'gpu'``, ``'cpu'`` or ``'mps'``: a GPU when there is one, unless it says; a
    :class:`RecipeError` when it names one that is not here."""
    device = recipe.settings.get('device') or ('gpu' if torch.cuda.is_available() else 'cpu')
    device = next(iter(device)) if isinstance(device, dict) else device
    if device == 'gpu' and not torch.cuda.is_available():
        raise RecipeError('device', 'gpu, but torch sees no CUDA device here (torch.cuda.is_available() is False); '
                          'set device: cpu, or leave device out to use a GPU when there is one')
    if device == 'mps' and not torch.backends.mps.is_available():
        raise RecipeError('device', 'mps, but torch sees no Apple GPU here (torch.backends.mps.is_available() is '
                          'False); set device: cpu, or leave device out')
    return device


def device_and_precision(recipe: Recipe) -> Tuple[str, Optional[str]]:
    """The recipe's device (:func:`run_device`) and precision; mixed precision on a CPU falls back to fp32 with
    one warning line."""
    device = run_device(recipe)
    if recipe.settings.get('grad_accum') == 'auto' and device != 'gpu':
        raise RecipeError('grad_accum', f"auto sizes microbatches to a GPU's memory; this run is on the {device}: "
                          'give a number of microbatches instead')
    precision = recipe.precision
    if device == 'cpu' and precision and precision.startswith('amp'):
        print(f"warning: precision {recipe.settings['precision']} needs a GPU; this CPU run uses fp32.",
              file=sys.stderr)
        precision = 'fp32'
    return device, precision


def configure_cudnn(settings: Dict[str, Any], device: str) -> None:
    """On a GPU, let cuDNN time the convolution algorithms for the run's fixed shapes and keep the fastest, as
    torchvision's and timm's training scripts do, unless the recipe asks for determinism or says no."""
    if device == 'gpu':
        torch.backends.cudnn.benchmark = settings.get('cudnn_benchmark', not settings.get('deterministic_mode'))


def _model_num_classes(recipe: Recipe) -> Optional[int]:
    """The number of classes the recipe's model is built with (its ``num_classes``, or that parameter's default),
    for datasets that check labels as they read them; ``None`` for a model without the parameter."""
    value = recipe.model.params.get('num_classes', inspect.Parameter.empty)
    if value is inspect.Parameter.empty:
        try:
            parameter = inspect.signature(recipe.model.target).parameters.get('num_classes')
        except (TypeError, ValueError):
            parameter = None
        value = None if parameter is None else parameter.default
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def build_data(recipe: Recipe, entry: Entry, global_batch_size: int) -> DataSpec:
    """One dataset section's data for this process: its share of the global batch, with the recipe's seed,
    dataloader options and the model's native resolution. Our DataSpecs are placed on the run's device, so
    that algorithms see normalized images on it (:class:`~composer_efficientnet.data.loading.DeviceDataSpec`)."""
    spec = entry.build(batch_size=global_batch_size // recipe.world_size, seed=recipe.settings.get('seed', 17),
                       dataloader_kwargs=recipe.settings.get('dataloader', {}),
                       model_resolution=recipe.model_resolution, model_num_classes=_model_num_classes(recipe))
    if isinstance(spec, DeviceDataSpec):
        spec.place_on(run_device(recipe))
    return spec


def check_data_fits(recipe: Recipe, model: Any, data: Dict[str, Optional[DataSpec]]) -> None:
    """Stop before training when the model has fewer outputs than a dataset has classes (the loss would fail
    on the first batch holding a larger label), when the training data holds no whole batch, or when an
    algorithm would fail on the sizes of the batches (:func:`check_algorithms_fit_data`)."""
    outputs = getattr(model, 'num_classes', None)
    for key, spec in data.items():
        classes = getattr(getattr(spec.dataloader, 'dataset', None), 'classes', None) if spec else None
        if outputs is not None and classes is not None and len(classes) > outputs:
            raise RecipeError(f'{recipe.model.key}.num_classes', f'is {outputs}, but {key} has {len(classes)} '
                              f'classes; set num_classes: {len(classes)}')
    train = data.get('train_dataset')
    if train is not None and _batches(train) == 0:
        batch = recipe.settings['train_batch_size']
        raise RecipeError('train_batch_size', f'{batch} (global) leaves no whole batch in the training data of '
                          f'{_samples(train)} images on {recipe.world_size} process(es) with drop_last: true; '
                          'use a smaller batch or drop_last: false')
    check_algorithms_fit_data(recipe, data)


def _batches(spec: DataSpec) -> Optional[int]:
    try:
        return len(spec.dataloader)
    except TypeError:  # an iterable without a length (streaming)
        return None


def _samples(spec: DataSpec) -> str:
    try:
        return str(len(spec.dataloader.dataset))
    except (TypeError, AttributeError):
        return 'too few'


def run_settings(recipe: Recipe) -> Dict[str, Any]:
    """Trainer arguments for how the run goes rather than what it trains: device, precision, seed, loggers,
    compilation, console output and the settings Composer takes as they are."""
    settings = recipe.settings
    device, precision = device_and_precision(recipe)
    configure_cudnn(settings, device)
    hidden = settings.get('progress_bar') is False  # also the progress_bar logger a recipe lists
    loggers = [entry.build() for entry in recipe.loggers if not (hidden and entry.name == 'progress_bar')]
    compile_setting = settings.get('compile')  # true or a mapping, {} included: Composer's compile_config
    compile_config = {} if compile_setting is True else compile_setting if isinstance(compile_setting, dict) else None
    return dict(
        device=device, precision=precision, seed=settings.get('seed', 17), loggers=loggers,
        compile_config=compile_config,
        progress_bar=settings.get('progress_bar', True) and not any(isinstance(l, ProgressBarLogger) for l in loggers),
        log_to_console=settings.get('log_to_console', False) and not any(isinstance(l, ConsoleLogger) for l in loggers),
        **{key: settings[key] for key in TRAINER_PASSTHROUGH if key in settings},
    )


#: Our models' held-out metrics, by the names runs report them under.
_REPORTED_METRICS = {'MulticlassAccuracy': 'top-1', 'Top5Accuracy': 'top-5', 'CrossEntropy': 'cross-entropy'}


def held_out_metrics(trainer: Trainer) -> Dict[str, Dict[str, float]]:
    """The last evaluation's top-1 and top-5 (percent) and cross-entropy, by evaluation label, leaving out what
    no evaluation updated; every process must call it, since computing a metric reduces it across processes."""
    return {label: {_REPORTED_METRICS[name]: float(metric.compute()) * (1 if name == 'CrossEntropy' else 100)
                    for name, metric in metrics.items() if name in _REPORTED_METRICS and metric.update_called}
            for label, metrics in trainer.state.eval_metrics.items()}
