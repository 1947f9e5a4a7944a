"""Recipe values that were accepted but wrong, or a traceback (issue 21, topic 'values'): NaN and infinite numbers,
numbers out of their parameter's range (the model's, the optimizer's, the schedulers', the algorithms'), and a
checkpoint whose ``state.callbacks`` is a list, as rows of tests/bad_inputs.py's TABLE (exit status 2, one line,
nothing written). tests/test_recipe_values.py checks the same refusals through :func:`validate` and the Python
API, and that the shipped recipes still validate."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import torch

from tests.bad_inputs import BadInput, override, with_run, write_recipe

MODEL = r'model\.efficientnet_b0'


def list_callbacks_checkpoint(path: Path, run_name: str) -> Path:
    """A checkpoint of run ``run_name`` whose ``state.callbacks`` is a list of (name, state) pairs, as Composer
    writes ``state.algorithms`` but never ``callbacks`` (a mapping): not written by our saver, so without the
    identity our saver records; its model holds no weights."""
    path.parent.mkdir(parents=True, exist_ok=True)
    saver = ('AtomicCheckpointSaver', {'metadata': {'recipe': {'model': 'efficientnet_b0'}}})
    torch.save({'state': {'model': {}, 'run_name': run_name, 'callbacks': [saver]}}, path)
    return path


def _autoresume_of_list_callbacks(tmp: Path) -> List[str]:
    """Autoresume of such a checkpoint (it was a traceback reading the identity), by a recipe with a mistake found
    once the model is built: the checkpoint has no identity to compare, and the next mistake is one line. (A
    recipe without one would resume it, as tests/test_recipe_values.py shows.)"""
    checkpoint = list_callbacks_checkpoint(tmp / 'checkpoints' / 'ep1-ba8-rank0.pt', 'listed')
    os.symlink(checkpoint.name, tmp / 'checkpoints' / 'latest-rank0.pt')  # as autoresume would point it
    return ['train', write_recipe(tmp, with_run(autoresume=True, run_name='listed',
                                                model={'efficientnet_b0': {'num_classes': 5}}))]


ROWS = [
    # NaN and infinities: refused for every number of a recipe (no registered parameter defaults to one).
    override('dropout that is not a number', ['model.efficientnet_b0.dropout=.nan'],
             MODEL + r'\.dropout: must be a finite number, got nan$'),
    override('learning rate that is not a number', ['optimizers.sgd.lr=.nan'],
             r'optimizers\.sgd\.lr: must be a finite number, got nan$'),
    override('infinite learning rate', ['optimizers.sgd.lr=.inf'],
             r'optimizers\.sgd\.lr: must be a finite number, got inf$'),
    override('scale_schedule_ratio that is not a number', ['scale_schedule_ratio=.nan'],
             r'scale_schedule_ratio: must be a finite number, got nan$'),
    override('dataloader timeout that is infinite', ['dataloader.timeout=.inf'],
             r'dataloader\.timeout: must be a finite number, got inf$'),
    override('a normalization mean that is not a number', ['val_dataset.digits.mean=[.nan, 0.5, 0.5]'],
             r'val_dataset\.digits\.mean\.0: must be a finite number, got nan$'),
    # The model's ranges, checked by the builder itself.
    override('BatchNorm eps of 0', ['model.efficientnet_b0.bn_eps=0'],
             MODEL + r': bn_eps must be a positive number .*, got 0\.$'),
    override('negative BatchNorm momentum', ['model.efficientnet_b0.bn_momentum=-1'],
             MODEL + r': bn_momentum must be a number in \[0, 1\] .*, got -1\.$'),
    override('dropout of 1', ['model.efficientnet_b0.dropout=1.0'],
             MODEL + r': dropout must be a number in \[0, 1\), got 1\.0\.$'),
    # The optimizer's ranges, and what it checks itself.
    override('negative weight decay', ['optimizers.sgd.weight_decay=-0.1'],
             r'optimizers\.sgd\.weight_decay: must be 0 or more, got -0\.1$'),
    override('Adam beta of 1', ['optimizers={adam: {betas: [0.9, 1.0]}}'],
             r'optimizers\.adam\.betas: must be two numbers in \[0, 1\).*, got \[0\.9, 1\.0\]$'),
    override('Nesterov momentum without a momentum', ['optimizers.sgd.momentum=0', 'optimizers.sgd.nesterov=true'],
             r'optimizers\.sgd: Nesterov momentum requires a momentum and zero dampening$'),
    # The schedulers' multipliers and times.
    override('negative final learning-rate multiplier', ['schedulers.cosine_decay_with_warmup.alpha_f=-0.1'],
             r'schedulers\.cosine_decay_with_warmup\.alpha_f: a multiplier of the learning rate: 0 or more, got '
             r'-0\.1$'),
    override('scheduler of no length', ['schedulers=[{linear_decay: {t_max: 0ba}}]'],
             r"schedulers\.linear_decay\.t_max: must be positive, got '0ba'$"),
    override('scheduler milestone as a bare number', ['schedulers=[{multistep: {milestones: [1ep, 2]}}]'],
             r"schedulers\.multistep\.milestones\.1: must be a time such as '1ep', '500ba' or '0\.5dur' \(a string: "
             r"Composer's schedulers take no bare numbers\), got 2$"),
    # The algorithms' numbers, and what an algorithm checks itself when made.
    override('label smoothing of 1', ['algorithms.label_smoothing.smoothing=1.0'],
             r'algorithms\.label_smoothing\.smoothing: 1\.0: must be in \[0, 1\)'),
    override('EMA with both half_life and smoothing', ['algorithms=[{ema: {smoothing: 0.9, update_interval: 1ba}}]'],
             r'algorithms\.ema: Only one of  half_life or smoothing can be specified$'),
    # A checkpoint our saver did not write: no identity to compare, no traceback.
    BadInput('recipe', 'autoresume of a checkpoint whose callbacks are a list', _autoresume_of_list_callbacks,
             MODEL + r'\.num_classes: is 5, but train_dataset has 10 classes; set num_classes: 10$'),
]
