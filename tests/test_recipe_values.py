"""Recipe numbers (issue 21, topic 'values'): NaN and infinities refused everywhere, parameters out of range refused
at validation (the model's by the builder's own check, so the Python API refuses them too), and a checkpoint whose
``state.callbacks`` is a list read as having no identity. The command-line rows are in tests/bad_inputs_values.py."""

from __future__ import annotations

import glob
import inspect
import json
import math
import os
import types
from pathlib import Path

import pytest
import torch

from composer_efficientnet import EfficientNet, composer_efficientnet, registry, resume, train
from composer_efficientnet.recipe import RecipeError, _entry, load_recipe, mistakes_of, validate
from tests import bad_inputs  # noqa: F401 - first: it imports the rows' module below at its end
from tests.bad_inputs_values import list_callbacks_checkpoint
from tests.test_recipe import with_changes

ROOT = Path(__file__).resolve().parent.parent

REFUSED = [
    ('NaN dropout', {'model': {'efficientnet_b0': {'dropout': math.nan}}},
     'model.efficientnet_b0.dropout: must be a finite number, got nan'),
    ('NaN learning rate', {'optimizers': {'sgd': {'lr': math.nan}}},
     'optimizers.sgd.lr: must be a finite number, got nan'),
    ('infinite learning rate', {'optimizers': {'sgd': {'lr': math.inf}}},
     'optimizers.sgd.lr: must be a finite number, got inf'),
    ('negative infinite weight decay', {'optimizers': {'sgd': {'lr': 0.1, 'weight_decay': -math.inf}}},
     'optimizers.sgd.weight_decay: must be a finite number, got -inf'),
    ('NaN beta', {'optimizers': {'adam': {'betas': [math.nan, 0.999]}}},
     'optimizers.adam.betas.0: must be a finite number, got nan'),
    ('NaN scheduler multiplier', {'schedulers': [{'cosine_decay': {'alpha_f': math.nan}}]},
     'schedulers.cosine_decay.alpha_f: must be a finite number, got nan'),
    ('NaN label smoothing', {'algorithms': [{'label_smoothing': {'smoothing': math.nan}}]},
     'algorithms.label_smoothing.smoothing: must be a finite number, got nan'),
    ('NaN callback number', {'callbacks': [{'early_stopper': {'monitor': 'x', 'dataloader_label': 'eval',
                                                              'min_delta': math.nan}}]},
     'callbacks.early_stopper.min_delta: must be a finite number, got nan'),
    ('NaN dataset number', {'train_dataset': {'digits': {'is_train': True, 'mean': [0.5, math.nan, 0.5]}}},
     'train_dataset.digits.mean.1: must be a finite number, got nan'),
    ('NaN setting', {'scale_schedule_ratio': math.nan}, 'scale_schedule_ratio: must be a finite number, got nan'),
    ('infinite dataloader option', {'dataloader': {'timeout': math.inf}},
     'dataloader.timeout: must be a finite number, got inf'),
    ('BatchNorm eps of 0', {'model': {'efficientnet_b0': {'bn_eps': 0}}},
     'model.efficientnet_b0: bn_eps must be a positive number (BatchNorm divides by sqrt(variance + bn_eps)), '
     'got 0.'),
    ('negative BatchNorm momentum', {'model': {'efficientnet_b0': {'bn_momentum': -1}}},
     'model.efficientnet_b0: bn_momentum must be a number in [0, 1] (the weight of each batch in the BatchNorm '
     'running statistics), got -1.'),
    ('BatchNorm momentum above 1', {'model': {'efficientnet_v2_s': {'bn_momentum': 1.5}}},
     'model.efficientnet_v2_s: bn_momentum must be a number in [0, 1]'),
    ('dropout of 1', {'model': {'efficientnet_b0': {'dropout': 1}}},
     'model.efficientnet_b0: dropout must be a number in [0, 1), got 1.'),
    ('negative drop_connect_rate', {'model': {'efficientnetb0': {'drop_connect_rate': -0.1}}},
     'model.efficientnetb0: drop_connect_rate must be a number in [0, 1), got -0.1.'),
    ('no classes', {'model': {'efficientnet_b0': {'num_classes': 0}}},
     'model.efficientnet_b0: num_classes must be a positive integer, got 0.'),
    ('negative learning rate', {'optimizers': {'rmsprop': {'lr': -0.1}}},
     'optimizers.rmsprop.lr: must be 0 or more, got -0.1'),
    ('negative momentum', {'optimizers': {'decoupled_sgdw': {'lr': 0.1, 'momentum': -0.9}}},
     'optimizers.decoupled_sgdw.momentum: must be 0 or more, got -0.9'),
    ('negative eps', {'optimizers': {'adamw': {'eps': -1e-8}}}, 'optimizers.adamw.eps: must be 0 or more, got -1e-08'),
    ('one beta', {'optimizers': {'decoupled_adamw': {'betas': [0.9]}}},
     'optimizers.decoupled_adamw.betas: must be two numbers in [0, 1)'),
    ("the optimizer's own check", {'optimizers': {'rmsprop': {'lr': 0.1, 'alpha': -0.5}}},
     'optimizers.rmsprop: Invalid alpha value: -0.5'),
    ('negative gamma', {'schedulers': [{'exponential': {'gamma': -0.5}}]},
     'schedulers.exponential.gamma: must be 0 or more'),
    ('negative power', {'schedulers': [{'polynomial': {'power': -1}}]},
     'schedulers.polynomial.power: must be 0 or more'),
    ('shrinking restarts', {'schedulers': [{'cosine_warmrestart': {'t_0': '1ep', 't_mult': 0.5}}]},
     'schedulers.cosine_warmrestart.t_mult: must be 1 or more'),
    ('negative multiplier', {'schedulers': [{'constant': {'alpha': -1}}]},
     'schedulers.constant.alpha: a multiplier of the learning rate: 0 or more, got -1'),
    ('step of 0 batches', {'schedulers': [{'step': {'step_size': '0ba'}}]},
     "schedulers.step.step_size: must be positive, got '0ba'"),
    ('decay period as a number', {'schedulers': [{'exponential': {'gamma': 0.9, 'decay_period': 2}}]},
     "schedulers.exponential.decay_period: must be a time such as '1ep', '500ba' or '0.5dur' (a string"),
    ('wall-clock milestone', {'schedulers': [{'multistep': {'milestones': ['5sec']}}]},
     "schedulers.multistep.milestones.0: '5sec' counts seconds, which Composer's schedulers do not take here"),
    ('warm-up that is not a time', {'schedulers': [{'cosine_decay_with_warmup': {'t_warmup': 'soon'}}]},
     "schedulers.cosine_decay_with_warmup.t_warmup: must be a Composer time such as '1ep', '500ba' or '0.5dur'"),
    ('label smoothing of 1', {'algorithms': [{'label_smoothing': {'smoothing': 1}}]},
     'algorithms.label_smoothing.smoothing: 1: must be in [0, 1)'),
    ("an algorithm's own check", {'algorithms': [{'progressive_resizing': {'mode': 'squash'}}]},
     "algorithms.progressive_resizing: mode 'squash' is not supported"),
    ("an algorithm's own time check", {'algorithms': [{'ema': {'half_life': 'soon'}}]}, 'algorithms.ema: '),
    ('SWA annealing', {'algorithms': [{'swa': {'anneal_steps': 0}}]},
     'algorithms.swa: anneal_steps must be greater than 0'),
]


@pytest.mark.parametrize('label,changes,message', REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_at_validation_in_one_line(label, changes, message):
    with pytest.raises(RecipeError) as caught:
        validate(with_changes(**changes))
    assert [line[:len(message)] for line in mistakes_of(caught.value)] == [message]


@pytest.mark.parametrize('override', ['model.efficientnet_b0.bn_eps=0', 'optimizers.sgd.lr=.nan',
                                      'model.efficientnet_b0.dropout=.nan', 'optimizers.sgd.lr=.inf',
                                      'model.efficientnet_b0.bn_momentum=-1'])
def test_refused_before_data_or_a_model_is_built(tmp_path, monkeypatch, capsys, override):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train, 'build_data', lambda *a, **k: pytest.fail('data was built'))
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(json.dumps(with_changes()))
    assert train.main([str(recipe), override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('composer-efficientnet: recipe error: '), err
    assert os.listdir(tmp_path) == ['recipe.yaml']


@pytest.mark.parametrize('name,value', [('bn_eps', 0), ('bn_eps', -1e-5), ('bn_eps', math.inf), ('bn_momentum', -1),
                                        ('bn_momentum', math.nan), ('dropout', math.nan), ('dropout', 1.0),
                                        ('drop_connect_rate', math.nan), ('num_classes', 0), ('num_classes', True)])
def test_the_python_api_refuses_them_too(name, value):
    with pytest.raises(ValueError, match=f'^{name} must be'):
        composer_efficientnet('efficientnet_b0', **{name: value})


def test_composer_efficientnet_refuses_bn_eps_of_0():
    with pytest.raises(ValueError, match='bn_eps'):
        composer_efficientnet('efficientnet_b0', bn_eps=0)


def test_the_builder_accepts_the_edges_of_each_range():
    model = EfficientNet.from_name('efficientnet_b0', num_classes=1, dropout=0.0, drop_connect_rate=0.0,
                                   bn_momentum=1.0, bn_eps=1e-12)
    assert model.num_classes == 1
    EfficientNet.from_name('efficientnet_b0', bn_momentum=None, features_only=True)  # cumulative BatchNorm averages


def _floats(value):
    if isinstance(value, float):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _floats(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _floats(item)


def test_no_registered_target_has_an_infinite_default():
    """So every infinity in a recipe is refused; one registered from elsewhere with one may take one."""
    infinite = [f'{kind}.{name}.{parameter.name}' for kind, reg in registry.REGISTRIES.items() for name in reg.names()
                for parameter in inspect.signature(reg.get(name)).parameters.values()
                if any(math.isinf(number) for number in _floats(parameter.default))]
    assert infinite == []


def test_infinity_is_taken_where_the_default_is_infinite():
    def stopper(patience: float = math.inf, floor: float = 0.0) -> None:
        pass

    reg = types.SimpleNamespace(get=lambda name: stopper)
    assert _entry('callbacks.stopper', reg, 'stopper', {'patience': -math.inf}).params == {'patience': -math.inf}
    for params, shown in (({'patience': math.nan}, 'nan'), ({'floor': math.inf}, 'inf')):
        with pytest.raises(RecipeError, match=f'must be a finite number, got {shown}$'):
            _entry('callbacks.stopper', reg, 'stopper', params)


def test_every_shipped_recipe_still_validates(tmp_path):
    (tmp_path / 'train').mkdir()
    (tmp_path / 'val').mkdir()
    recipes = sorted(glob.glob(str(ROOT / 'recipes' / '*.yaml')))
    assert len(recipes) >= 15
    for path in recipes:
        config = load_recipe(path)
        for key in ('train_dataset', 'val_dataset'):
            for params in (config.get(key) or {}).values():
                if isinstance(params, dict) and 'datadir' in params:
                    params['datadir'] = str(tmp_path)
        batch = config.get('train_batch_size', 8)
        validate(config, world_size=8 if batch % 8 == 0 else 1)


# -- a checkpoint whose state.callbacks is a list ----------------------------------------------------------------

@pytest.mark.parametrize('state', [
    {'callbacks': [('AtomicCheckpointSaver', {'metadata': {'recipe': {'model': 'efficientnet_b0'}}})]},
    {'callbacks': 'AtomicCheckpointSaver'},
    {'callbacks': {'AtomicCheckpointSaver': ['metadata']}},
    {'callbacks': {'AtomicCheckpointSaver': {'metadata': None}}},
    {'callbacks': {'AtomicCheckpointSaver': {'metadata': {'recipe': 'efficientnet_b0'}}}},
    {'callbacks': None},
    {},
], ids=['callbacks a list', 'callbacks a string', 'saver state a list', 'metadata null', 'recipe a string',
        'callbacks null', 'no callbacks'])
def test_a_checkpoint_not_of_our_saver_has_no_identity(state):
    assert resume._identity_in(state) is None


def test_our_savers_identity_is_read():
    identity = {'model': 'efficientnet_b0', 'model.num_classes': 10}
    state = {'callbacks': {'AtomicCheckpointSaver': {'metadata': {'recipe': identity}}}}
    assert resume._identity_in(state) == identity


TINY = {'model': {'efficientnet_b0': {'num_classes': 10}}, 'train_dataset': {'digits': {'image_size': 8}},
        'optimizers': {'sgd': {'lr': 0.1}}, 'max_duration': '1ba', 'train_batch_size': 16, 'device': 'cpu',
        'progress_bar': False, 'autoresume': True, 'run_name': 'tiny', 'save_interval': '1ba'}


def test_autoresume_of_a_checkpoint_whose_callbacks_are_a_list_resumes_it(tmp_path, capsys):
    """Not written by our saver (Composer writes callbacks as a mapping), so it has no identity to compare: the run
    resumes it as one of Composer's own saver, whose callback states Composer then leaves out."""
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(json.dumps({**TINY, 'save_folder': str(tmp_path / 'checkpoints')}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train.main([str(recipe)]) == 0
        checkpoint = tmp_path / 'checkpoints' / 'ep0-ba1-rank0.pt'
        saved = torch.load(checkpoint, weights_only=False)
        saved['state']['callbacks'] = list(saved['state']['callbacks'].items())
        torch.save(saved, checkpoint)
        assert resume.stored_identity(str(checkpoint)) is None
        capsys.readouterr()
        assert train.main([str(recipe), 'max_duration=2ba']) == 0
    finally:
        torch.set_num_threads(threads)
    assert 'at step 1' in capsys.readouterr().out
    assert (tmp_path / 'checkpoints' / 'ep0-ba2-rank0.pt').exists()


def test_a_list_callbacks_checkpoint_is_what_the_bad_input_row_writes(tmp_path):
    path = list_callbacks_checkpoint(tmp_path / 'ep1-ba8-rank0.pt', 'listed')
    assert isinstance(torch.load(path, weights_only=True)['state']['callbacks'], list)
    assert resume.stored_identity(str(path)) is None
