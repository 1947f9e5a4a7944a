"""Train from a YAML recipe: ``python -m composer_efficientnet.train RECIPE.yaml [key=value ...]``.

Runs as one process, or under Composer's launcher on one node or many
(``composer -n 8 -m composer_efficientnet.train recipe.yaml``). Batch sizes in the recipe are global.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import sys
import warnings
from typing import Any, Dict, List, Optional

import torch
from composer import Trainer
from composer.loggers import ConsoleLogger, ProgressBarLogger
from composer.utils import dist, reproducibility

from composer_efficientnet.callbacks import CheckpointWriteError, DivergenceError, SyncBuffers
from composer_efficientnet.data import BadSampleReport
from composer_efficientnet.recipe import Entry, Recipe, RecipeError, load_recipe, validate
from composer_efficientnet.resume import check_autoresume, check_no_earlier_run, checkpoint_savers
from composer_efficientnet.trainer import SyncFreeTrainer

__all__ = ['build_trainer', 'main', 'weights_digest']


def _build_dataset(entry: Entry, **context: Any) -> Any:
    accepted = inspect.signature(entry.target).parameters
    try:
        return entry.build(**{k: v for k, v in context.items() if k in accepted})
    except (ValueError, OSError, ImportError) as error:
        raise RecipeError(entry.key, str(error)) from error


def _build(entry: Entry, *args: Any) -> Any:
    try:
        return entry.build(*args)
    except (ValueError, TypeError) as error:
        raise RecipeError(entry.key, str(error)) from error


def _device_and_precision(recipe: Recipe) -> tuple:
    device = recipe.settings.get('device') or ('gpu' if torch.cuda.is_available() else 'cpu')
    device = next(iter(device)) if isinstance(device, dict) else device
    precision = recipe.precision
    if device == 'cpu' and precision and precision.startswith('amp'):
        print(f"warning: precision {recipe.settings['precision']} needs a GPU; this CPU run uses fp32.",
              file=sys.stderr)
        precision = 'fp32'
    return device, precision


def _configure_cudnn(settings: Dict[str, Any], device: str) -> None:
    """On a GPU, let cuDNN time the convolution algorithms for the run's fixed shapes and keep the fastest, as
    torchvision's and timm's training scripts do, unless the recipe asks for determinism or says no."""
    if device == 'gpu':
        torch.backends.cudnn.benchmark = settings.get('cudnn_benchmark', not settings.get('deterministic_mode'))


def _compile_config(value: Any) -> Optional[Dict[str, Any]]:
    if value is True:
        return {}
    return value or None


def build_trainer(recipe: Recipe) -> Trainer:
    """Build data, model, optimizer and everything else a validated recipe names, then the Trainer:
    :class:`SyncFreeTrainer`, or Composer's own with ``sync_free: false``.

    Data is built first, so a bad data tree fails before a model is allocated or a file is written.
    """
    settings = recipe.settings
    seed = settings.get('seed', 17)
    device, precision = _device_and_precision(recipe)
    _configure_cudnn(settings, device)
    context = {'seed': seed, 'dataloader_kwargs': settings.get('dataloader', {}),
               'model_resolution': recipe.model_resolution}
    train_data = _build_dataset(recipe.train_dataset, batch_size=settings['train_batch_size'] // recipe.world_size,
                                **context)
    eval_data = None
    if recipe.val_dataset is not None:
        eval_data = _build_dataset(recipe.val_dataset, batch_size=settings['eval_batch_size'] // recipe.world_size,
                                   **context)
    check_autoresume(recipe)  # a changed recipe stops here, before a model is built
    check_no_earlier_run(recipe)
    reproducibility.seed_all(seed)  # the model's initialization follows the recipe's seed, on every rank
    model = _build(recipe.model)
    optimizer = _build(recipe.optimizer, model.parameters())
    loggers = [_build(entry) for entry in recipe.loggers]
    accum = settings.get('grad_accum')
    microbatch = 'auto' if accum == 'auto' else (
        settings['train_batch_size'] // recipe.world_size // accum if accum else None)
    trainer_class = SyncFreeTrainer if settings.get('sync_free', True) else Trainer
    return trainer_class(
        model=model, train_dataloader=train_data, eval_dataloader=eval_data, optimizers=optimizer,
        schedulers=[_build(entry) for entry in recipe.schedulers],
        algorithms=[_build(entry) for entry in recipe.algorithms],
        callbacks=[BadSampleReport(), SyncBuffers(), *(_build(entry) for entry in recipe.callbacks),
                   *checkpoint_savers(recipe)],
        loggers=loggers,
        max_duration=settings['max_duration'], device=device, precision=precision, seed=seed,
        device_train_microbatch_size=microbatch, compile_config=_compile_config(settings.get('compile')),
        progress_bar=settings.get('progress_bar', True) and not any(isinstance(l, ProgressBarLogger) for l in loggers),
        log_to_console=settings.get('log_to_console', False) and not any(isinstance(l, ConsoleLogger) for l in loggers),
        **{key: settings[key] for key in _TRAINER_PASSTHROUGH if key in settings},
    )


_TRAINER_PASSTHROUGH = ('eval_interval', 'scale_schedule_ratio', 'load_path', 'load_weights_only',
                        'autoresume', 'run_name', 'deterministic_mode', 'train_subset_num_batches',
                        'eval_subset_num_batches', 'dist_timeout', 'console_log_interval', 'python_log_level')


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, to compare replicas across processes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _rank_prefix() -> str:
    return f'rank {dist.get_global_rank()} ' if dist.get_world_size() > 1 else ''


def report(trainer: Trainer) -> List[str]:
    """Lines summarizing a finished run: held-out metrics, and with several processes each rank's weights."""
    lines = []
    for label, metrics in trainer.state.eval_metrics.items():
        for name, metric in metrics.items():
            if name in ('MulticlassAccuracy', 'Top5Accuracy'):
                title = 'top-1' if name == 'MulticlassAccuracy' else 'top-5'
                lines.append(f'held-out {title} ({label}): {100 * float(metric.compute()):.2f}%')
    if dist.get_world_size() > 1:
        lines.append(f'rank {dist.get_global_rank()} final weights sha256: {weights_digest(trainer.state.model)}')
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    """Validate the recipe, build, fit, report; recipe mistakes exit with status 2 and one line on stderr."""
    parser = argparse.ArgumentParser(prog='composer-efficientnet train', description=__doc__.splitlines()[0])
    parser.add_argument('recipe', help='path to a YAML recipe')
    parser.add_argument('overrides', nargs='*', help='dotted.key=value overrides, e.g. max_duration=2ep')
    parser.add_argument('--debug', action='store_true', help='show tracebacks instead of one-line errors')
    args = parser.parse_args(argv)
    # Composer warns on every short last batch of an epoch; that is expected with drop_last false.
    warnings.filterwarnings('ignore', message='Cannot split tensor of length')
    try:
        recipe = validate(load_recipe(args.recipe, args.overrides), world_size=dist.get_world_size())
        trainer = build_trainer(recipe)
    except RecipeError as error:
        if args.debug:
            raise
        print(f'composer-efficientnet: recipe error: {str(error).splitlines()[0]}', file=sys.stderr)  # one line
        return 2
    return _fit(trainer, debug=args.debug)


#: Markers of a collective that failed because another process died or stopped answering.
_LOST_PROCESS = ('gloo', 'nccl', 'connection closed', 'connection reset', 'timed out')


def _lost_process(error: RuntimeError) -> bool:
    return dist.get_world_size() > 1 and (isinstance(error, torch.distributed.DistError) or any(
        marker in str(error).lower() for marker in _LOST_PROCESS))


def _fit(trainer: Trainer, debug: bool) -> int:
    """Fit and report; a divergence (status 3), a checkpoint that cannot be written (status 4) or a lost process
    (status 1) ends with one line on stderr."""
    if trainer.state.load_path is not None:
        print(f'{_rank_prefix()}resumed from {trainer.state.load_path} at step {int(trainer.state.timestamp.batch)}',
              flush=True)
    try:
        trainer.fit()
    except DivergenceError as error:
        print(f'composer-efficientnet: {error}', file=sys.stderr)
        trainer.close()
        return 3
    except CheckpointWriteError as error:
        if debug:
            raise
        print(f'composer-efficientnet: {_rank_prefix()}{error}; make room there, then rerun (with autoresume: true it '
              'continues from the last checkpoint)', file=sys.stderr)
        return 4
    except RuntimeError as error:
        if debug or not _lost_process(error):
            raise
        print(f'composer-efficientnet: {_rank_prefix()}lost contact with another process '
              f'({str(error).splitlines()[0]}); rerun the same command to resume every process from the last '
              'checkpoint', file=sys.stderr)
        return 1
    for line in report(trainer):
        print(line, flush=True)
    trainer.close()
    return 0

if __name__ == '__main__':
    sys.exit(main())
