"""Evaluate weights on held-out data from a YAML recipe: ``python -m composer_efficientnet.evaluate RECIPE.yaml``.

The recipe that trained a run evaluates it: the sections only training uses are ignored, so the model,
``val_dataset``, ``eval_batch_size``, the algorithms (those that change the model, such as ``blurpool``, must be
the run's), the loggers and the run settings count. The weights are ``load_path`` (a Composer checkpoint, of which
only the weights are read), else the newest complete checkpoint in the recipe's ``save_folder``, else the model's
``pretrained`` file (torchvision, timm or this package). Runs as one process or under Composer's launcher
(``composer -n 8 -m composer_efficientnet.evaluate recipe.yaml``): each process evaluates its share and the
metrics are reduced over all of them, counting every image once.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import traceback
import warnings
from typing import Any, Dict, List, Optional

import torch
from composer import Trainer
from composer.utils import dist, parse_uri, reproducibility

import composer_efficientnet
from composer_efficientnet.arguments import eval_parser, parse
from composer_efficientnet.data import DATA_ERRORS
from composer_efficientnet.data.errors import message_of
from composer_efficientnet.outputs import OutputError, atomic_output, output_problem
from composer_efficientnet.recipe import Recipe, RecipeError, load_recipe, validate
from composer_efficientnet.resume import check_checkpoint, check_of_this_run, checkpoint_must_fit, newest_run_checkpoint
from composer_efficientnet.runner import (build_data, check_data_fits, held_out_metrics,
                                         ignore_short_last_batch_warnings, log_around_progress_bars, report_recipe_error,
                                         run_settings, status)

__all__ = ['build_evaluator', 'checkpoint_to_load', 'evaluate', 'main']


def checkpoint_to_load(recipe: Recipe) -> Optional[str]:
    """The Composer checkpoint whose weights are evaluated: ``load_path``, else the newest complete checkpoint in
    the run's local ``save_folder``; ``None`` when the model's ``pretrained`` file gives the weights. With
    ``load_path`` the model is still built from ``pretrained`` first, as in the run that fine-tuned it.

    A :class:`RecipeError` when there are no weights, when both ``pretrained`` and a checkpoint in
    ``save_folder`` could be meant, when the checkpoint is unreadable or would run code when loaded, or when the
    newest one in ``save_folder`` is of another ``run_name`` (a folder without ``{run_name}`` holds every run's).
    """
    load_path = recipe.settings.get('load_path')
    if load_path:
        check_checkpoint(load_path, recipe)
        return load_path
    pretrained = recipe.model.params.get('pretrained')
    save_folder = recipe.settings.get('save_folder')
    newest = newest_run_checkpoint(recipe.settings)
    if newest and pretrained:
        raise RecipeError('load_path', f'is not set, and both model.{recipe.model.name}.pretrained ({pretrained}) and '
                          f'the newest checkpoint in save_folder ({newest}) could be the weights: set '
                          f'load_path={newest} to evaluate the run, or save_folder=null to evaluate {pretrained}')
    if newest:
        state = check_checkpoint(newest, recipe, key='save_folder')
        check_of_this_run(recipe, newest, state, 'evaluate that run', f'or load_path={newest} to evaluate it')
    if newest or pretrained:
        return newest
    local_folder = save_folder and not parse_uri(save_folder)[0]
    searched = '' if not local_folder else f'; save_folder {save_folder!r} ' + (
        'holds no checkpoint' if os.path.isdir(save_folder) else 'does not exist')
    raise RecipeError('load_path', f'evaluation needs weights: set load_path=CHECKPOINT (a Composer checkpoint) or '
                      f'model.{recipe.model.name}.pretrained=FILE (torchvision, timm or composer_efficientnet '
                      f'weights){searched}')


def build_evaluator(recipe: Recipe) -> Trainer:
    """A Composer ``Trainer`` holding the recipe's model with the weights to evaluate loaded (see
    :func:`checkpoint_to_load`) and the held-out data as its evaluation data; nothing to train."""
    checkpoint = checkpoint_to_load(recipe)
    eval_data = build_data(recipe, recipe.val_dataset, recipe.settings['eval_batch_size'])
    reproducibility.seed_all(recipe.settings.get('seed', 17))
    model = recipe.model.build()
    check_data_fits(recipe, model, {'val_dataset': eval_data})
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='No optimizer was specified')  # made by Composer, never stepped
        return checkpoint_must_fit(recipe, checkpoint, lambda: Trainer(
            model=model, eval_dataloader=eval_data, algorithms=[entry.build() for entry in recipe.algorithms],
            **{**run_settings(recipe), 'load_path': checkpoint, 'load_weights_only': True}))


def evaluate(trainer: Trainer) -> Dict[str, float]:
    """Run the evaluation; the held-out top-1 and top-5 (percent), cross-entropy and the number of images."""
    trainer.eval()
    metrics = held_out_metrics(trainer)['eval']
    return {**metrics, 'images': int(trainer.state.eval_timestamp.sample)}


def _record(recipe: Recipe, trainer: Trainer, source: str, results: Dict[str, float]) -> Dict[str, Any]:
    return {'model': recipe.model.name, 'model_params': recipe.model.params, 'weights': source,
            'val_dataset': {recipe.val_dataset.name: recipe.val_dataset.params},
            'eval_batch_size': recipe.settings['eval_batch_size'], 'precision': trainer.state.precision.value,
            'processes': recipe.world_size, **results,
            'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            'versions': {'composer_efficientnet': composer_efficientnet.__version__, 'torch': torch.__version__}}


def main(argv: Optional[List[str]] = None) -> int:
    """Validate the recipe for evaluation, load the weights, evaluate, print (and with ``--json`` write) the
    results; recipe mistakes exit with status 2 and one line on stderr."""
    args = parse(eval_parser(), argv)
    ignore_short_last_batch_warnings()
    log_around_progress_bars()
    json_problem = args.json and output_problem(args.json, 'eval.json')  # before the evaluation, not after
    if json_problem:
        print(f'composer-efficientnet: --json: {json_problem}', file=sys.stderr)
        return 2
    try:
        recipe = validate(load_recipe(args.recipe, args.overrides), world_size=dist.get_world_size(), purpose='eval')
        trainer = build_evaluator(recipe)
        results = evaluate(trainer)
    except RecipeError as error:
        if args.debug:
            traceback.print_exc()
        return report_recipe_error(error)
    except DATA_ERRORS as error:
        if args.debug:
            traceback.print_exc()
        status(f'composer-efficientnet: {message_of(error)}', sys.stderr)  # beside the progress bar
        return 2
    source = trainer.state.load_path or recipe.model.params['pretrained']
    trainer.close()
    if dist.get_global_rank() == 0:
        print(f"{recipe.model.name}, weights {source}: {results['images']} held-out images\n"
              f"top-1: {results['top-1']:.2f}%\ntop-5: {results['top-5']:.2f}%\n"
              f"cross-entropy: {results['cross-entropy']:.4f}", flush=True)
        if args.json:
            try:
                with atomic_output(args.json, '--json', 'w') as file:
                    json.dump(_record(recipe, trainer, source, results), file, indent=2)
            except OutputError as error:
                if args.debug:
                    traceback.print_exc()
                print(f'composer-efficientnet: {error}', file=sys.stderr)
                return 4
    return 0


if __name__ == '__main__':
    sys.exit(main())
