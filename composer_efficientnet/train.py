"""Train from a YAML recipe: ``python -m composer_efficientnet.train RECIPE.yaml [key=value ...]``.

Runs as one process, or under Composer's launcher on one node or many
(``composer -n 8 -m composer_efficientnet.train recipe.yaml``). Batch sizes in the recipe are global.
"""

from __future__ import annotations

import hashlib
import sys
import traceback
from typing import List, Optional

import torch
from composer import Trainer
from composer.utils import dist, reproducibility

from composer_efficientnet.arguments import parse, train_parser
from composer_efficientnet.callbacks import CheckpointWriteError, DivergenceError, SyncBuffers
from composer_efficientnet.callbacks.class_names import ClassNames
from composer_efficientnet.data import DATA_ERRORS, BadSampleReport
from composer_efficientnet.data.errors import message_of
from composer_efficientnet.recipe import Recipe, RecipeError, load_recipe, validate
from composer_efficientnet.resume import (check_autoresume, check_checkpoint, check_no_earlier_run, checkpoint_must_fit,
                                         checkpoint_savers, loads_checked)
from composer_efficientnet.run_lock import FolderInUseError, hold_save_folder, releases_locks
from composer_efficientnet.runner import (build_data, check_data_fits, fail_on_every_process, held_out_metrics,
                                         ignore_short_last_batch_warnings, log_around_progress_bars, report_recipe_error,
                                         run_settings, status)
from composer_efficientnet.trainer import SyncFreeTrainer

__all__ = ['build_trainer', 'main', 'weights_digest']


def build_trainer(recipe: Recipe) -> Trainer:
    """Build data, model, optimizer and everything else a validated recipe names, then the Trainer:
    :class:`SyncFreeTrainer`, or Composer's own with ``sync_free: false``.

    Data is built first, so a bad data tree fails before a model is allocated or a file is written; then the run
    locks its ``save_folder`` (:func:`~composer_efficientnet.run_lock.hold_save_folder`) before anything reads it.
    """
    settings = recipe.settings
    train_data = build_data(recipe, recipe.train_dataset, settings['train_batch_size'])
    eval_data = build_data(recipe, recipe.val_dataset, settings['eval_batch_size']) if recipe.val_dataset else None
    hold_save_folder(recipe)  # before the checks of what save_folder holds: no other run writes there from now on
    if settings.get('load_path'):
        check_checkpoint(settings['load_path'], recipe)
    resumed = check_autoresume(recipe)  # a changed recipe stops here, before a model is built
    check_no_earlier_run(recipe)
    reproducibility.seed_all(settings.get('seed', 17))  # the model's initialization follows the seed, on every rank
    model = recipe.model.build()
    check_data_fits(recipe, model, {'train_dataset': train_data, 'val_dataset': eval_data})
    accum = settings.get('grad_accum')
    microbatch = 'auto' if accum == 'auto' else (
        settings['train_batch_size'] // recipe.world_size // accum if accum else None)
    trainer_class = SyncFreeTrainer if settings.get('sync_free', True) else Trainer
    # recorded in checkpoints for predict (synthetic data's loader has no dataset)
    classes = getattr(getattr(train_data.dataloader, 'dataset', None), 'classes', None)
    return checkpoint_must_fit(recipe, resumed or settings.get('load_path'), lambda: trainer_class(
        model=model, train_dataloader=train_data, eval_dataloader=eval_data,
        optimizers=recipe.optimizer.build(model.parameters()),
        schedulers=[entry.build() for entry in recipe.schedulers],
        algorithms=[entry.build() for entry in recipe.algorithms],
        callbacks=[BadSampleReport(), SyncBuffers(), ClassNames(classes),
                   *(entry.build() for entry in recipe.callbacks),
                   *checkpoint_savers(recipe)],
        max_duration=settings['max_duration'], device_train_microbatch_size=microbatch, **run_settings(recipe)),
        key='autoresume' if resumed else 'load_path')


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
    metrics_by_label = held_out_metrics(trainer)
    lines = [f'held-out {title} ({label}): {metrics[title]:.2f}%' for label, metrics in metrics_by_label.items()
             for title in ('top-1', 'top-5') if title in metrics]
    if dist.get_world_size() > 1:
        lines.append(f'rank {dist.get_global_rank()} final weights sha256: {weights_digest(trainer.state.model)}')
    return lines


@releases_locks  # the save_folder's lock, however the run ends
def main(argv: Optional[List[str]] = None) -> int:
    """Validate the recipe, build, fit, report; recipe mistakes exit with status 2 and one line on stderr."""
    args = parse(train_parser(), argv)
    ignore_short_last_batch_warnings()
    log_around_progress_bars()
    try:
        recipe = validate(load_recipe(args.recipe, args.overrides), world_size=dist.get_world_size())
        trainer = build_trainer(recipe)
    except RecipeError as error:
        if args.debug:
            traceback.print_exc()
        return report_recipe_error(error)
    except FolderInUseError as error:  # another run holds save_folder: every rank stops, one line per node
        if args.debug:
            traceback.print_exc()
        return fail_on_every_process([f'composer-efficientnet: {error}'], 2)
    except CheckpointWriteError as error:  # autoresume could not point the latest link at the checkpoint it resumes
        if args.debug:
            traceback.print_exc()
        status(f'composer-efficientnet: {_rank_prefix()}{error}; make room there, then rerun', sys.stderr)
        return 4
    try:
        with loads_checked(recipe):  # what load_checkpoint callbacks load during fit is checked as load_path is
            return _fit(trainer, debug=args.debug)
    except RecipeError as error:
        if args.debug:
            traceback.print_exc()
        return report_recipe_error(error)


#: Markers of a collective that failed because another process died or stopped answering.
_LOST_PROCESS = ('gloo', 'nccl', 'connection closed', 'connection reset', 'timed out')


def _lost_process(error: RuntimeError) -> bool:
    return dist.get_world_size() > 1 and (isinstance(error, torch.distributed.DistError) or any(
        marker in str(error).lower() for marker in _LOST_PROCESS))


def _fit(trainer: Trainer, debug: bool) -> int:
    """Fit and report; a divergence (status 3), a checkpoint that cannot be written (status 4), an image that
    strict mode refuses or a broken dataset (status 2) or a lost process (status 1) ends with one line on stderr,
    on a line of its own beside the progress bars (:func:`status`)."""
    if trainer.state.load_path is not None:
        status(f'{_rank_prefix()}resumed from {trainer.state.load_path} at step {int(trainer.state.timestamp.batch)}')
    if (trainer.state.get_elapsed_duration() or 0) >= 1:  # a rerun of a finished run, e.g. a scheduler's retry
        status(f'{_rank_prefix()}the run is complete: max_duration {trainer.state.max_duration} reached at step '
               f'{int(trainer.state.timestamp.batch)}; nothing to train (raise max_duration to train on)')
        trainer.close()
        return 0
    try:
        trainer.fit()
    except DivergenceError as error:
        status(f'composer-efficientnet: {error}', sys.stderr)
        trainer.close()
        return 3
    except CheckpointWriteError as error:
        if debug:
            traceback.print_exc()
        status(f'composer-efficientnet: {_rank_prefix()}{error}; make room there, then rerun (with autoresume: true it '
               'continues from the last checkpoint)', sys.stderr)
        return 4
    except DATA_ERRORS as error:
        if debug:
            traceback.print_exc()
        status(f'composer-efficientnet: {_rank_prefix()}{message_of(error)}', sys.stderr)
        return 2
    except RuntimeError as error:
        if not _lost_process(error):
            raise
        if debug:
            traceback.print_exc()
        status(f'composer-efficientnet: {_rank_prefix()}lost contact with another process '
               f'({str(error).splitlines()[0]}); rerun the same command to resume every process from the last '
               'checkpoint', sys.stderr)
        return 1
    for line in report(trainer):
        status(line)
    trainer.close()
    return 0

if __name__ == '__main__':
    sys.exit(main())
