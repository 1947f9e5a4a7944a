"""Recipe validation: every mistake is one stderr line naming the key, exit status 2, nothing built."""

import os
import re

import pytest
import yaml

from composer_efficientnet import train
from composer_efficientnet.recipe import RecipeError, RecipeErrors, load_recipe, validate

BASE = {
    'model': {'efficientnet_b0': {'num_classes': 10}},
    'train_dataset': {'digits': {'is_train': True, 'image_size': 32}},
    'val_dataset': {'digits': {'is_train': False, 'image_size': 32}},
    'optimizers': {'sgd': {'lr': 0.1, 'momentum': 0.9}},
    'schedulers': [{'cosine_decay_with_warmup': {'t_warmup': '1ep'}}],
    'algorithms': [{'label_smoothing': {'smoothing': 0.1}}],
    'max_duration': '1ep',
    'train_batch_size': 64,
    'eval_batch_size': 64,
    'device': 'cpu',
}


def write(tmp_path, recipe, name='recipe.yaml'):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def with_changes(**changes):
    recipe = {**BASE, **changes}
    return {k: v for k, v in recipe.items() if v is not ...}


MISTAKES = [
    ('unknown section', with_changes(max_epochs=3), r"max_epochs: unknown section"),
    ('misspelled section', with_changes(optimizer={'sgd': {'lr': 0.1}}), r"did you mean 'optimizers'"),
    ('missing model', with_changes(model=...), r'model: is required'),
    ('unknown model', with_changes(model={'efficientnet_b9': {}}), r"model.efficientnet_b9: Unknown model"),
    ('closest model', with_changes(model={'efficientnet_b9': {}}), r"Did you mean 'efficientnet_b"),
    ('unknown algorithm', with_changes(algorithms=[{'label_smoothin': {}}]), r"Did you mean 'label_smoothing'"),
    ('unknown parameter', with_changes(optimizers={'sgd': {'lr': 0.1, 'momentun': 0.9}}),
     r"optimizers.sgd.momentun: unknown parameter \(did you mean 'momentum'\?\); valid parameters: lr"),
    ('model parameter type', with_changes(model={'efficientnet_b0': {'num_classes': 'ten'}}),
     r'model.efficientnet_b0.num_classes: must be int'),
    ('algorithm parameter type', with_changes(algorithms=[{'label_smoothing': {'smoothing': 'high'}}]),
     r'algorithms.label_smoothing.smoothing: must be float'),
    ('scalar type', with_changes(train_batch_size='big'), r'train_batch_size: must be int'),
    ('bool for int', with_changes(seed=True), r'seed: must be int'),
    ('missing datadir', with_changes(train_dataset={'imagenet': {'datadir': '/no/such/dir', 'is_train': True}}),
     r"train_dataset.imagenet.datadir: directory '/no/such/dir' does not exist"),
    ('two optimizers', with_changes(optimizers={'sgd': {'lr': 0.1}, 'adamw': {'lr': 0.1}}),
     r"optimizers: selects exactly one optimizer, got 2: adamw, sgd; to swap one for another in an override, give "
     r"the whole section: optimizers='\{sgd: \{\.\.\.\}\}'$"),  # the recipe file's keys are sorted
    ('section shape', with_changes(algorithms='label_smoothing'), r'algorithms: must be a mapping'),
    ('unknown precision', with_changes(precision='fp64'), r"precision: unknown precision 'fp64'"),
    ('unknown device', with_changes(device='tpu'), r'device: must be one of gpu, cpu, mps'),
    ('dataloader option', with_changes(dataloader={'num_worker': 2}), r"dataloader.num_worker: unknown option"),
    ('grad_accum', with_changes(grad_accum=3), r'grad_accum: must be a positive integer dividing'),
    ('missing eval batch', with_changes(eval_batch_size=...), r'eval_batch_size: is required'),
    ('missing required param', with_changes(callbacks=[{'early_stopper': {'monitor': 'x'}}]),
     r"callbacks.early_stopper: missing required parameter 'dataloader_label'"),
    ('bad member parameter value', with_changes(model={'efficientnet_b0': {'num_classes': 0}}),
     r'model.efficientnet_b0: num_classes must be a positive integer'),
]


@pytest.mark.parametrize('label,recipe,message', MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistake_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, label, recipe, message):
    monkeypatch.chdir(tmp_path)
    assert train.main([write(tmp_path, recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('composer-efficientnet: recipe error: ')
    assert re.search(message, err[0]), err[0]
    assert os.listdir(tmp_path) == ['recipe.yaml']  # nothing written


def test_every_mistake_is_reported_one_line_each(tmp_path, monkeypatch, capsys):
    """The README's example on the quickstart recipe (adamw): the misspelled parameter and the second optimizer it
    adds are both reported, and so are independent mistakes in other sections."""
    monkeypatch.chdir(tmp_path)
    quickstart = os.path.join(os.path.dirname(__file__), '..', 'recipes', 'quickstart.yaml')
    assert train.main([quickstart, 'optimizers.rmsprop.momentun=0.9', 'precision=fp64', 'max_epochs=3',
                       'algorithms.0.sample_stochastic_depth.drop_rat=0.1']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith('composer-efficientnet: recipe error: ') for line in err), err
    found = [line.split('recipe error: ', 1)[1].split(':', 1)[0] for line in err]
    assert sorted(found) == sorted(['max_epochs', 'optimizers.rmsprop.momentun', 'optimizers',
                                    'algorithms.sample_stochastic_depth.drop_rat', 'precision']), err
    assert os.listdir(tmp_path) == []  # nothing written


def test_one_mistake_is_raised_as_itself_several_together():
    with pytest.raises(RecipeError) as one:
        validate(with_changes(seed=True))
    assert type(one.value) is RecipeError and one.value.key == 'seed'
    with pytest.raises(RecipeErrors) as several:
        validate(with_changes(seed=True, device='tpu', model=...))
    assert [error.key for error in several.value.errors] == ['model', 'seed', 'device']


def test_batch_not_divisible_by_processes():
    with pytest.raises(RecipeError, match=r'train_batch_size: 64 is global .* divisible by the number of processes \(3\)'):
        validate(dict(BASE), world_size=3)


def test_missing_file_and_bad_yaml(tmp_path, capsys):
    assert train.main([str(tmp_path / 'nope.yaml')]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / 'bad.yaml'
    bad.write_text('model: [unclosed\n')
    assert train.main([str(bad)]) == 2
    assert 'is not valid YAML' in capsys.readouterr().err


def test_bad_override_syntax(tmp_path, capsys):
    assert train.main([write(tmp_path, BASE), 'max_duration']) == 2
    assert 'an override is written key=value' in capsys.readouterr().err


def test_debug_shows_traceback(tmp_path, capsys):
    assert train.main([write(tmp_path, with_changes(max_epochs=3)), '--debug']) == 2  # the status stays
    err = capsys.readouterr().err
    assert 'Traceback (most recent call last)' in err and 'recipe error: max_epochs' in err.strip().splitlines()[-1]


def test_overrides(tmp_path):
    config = load_recipe(write(tmp_path, BASE), ['max_duration=2ep', 'optimizers.sgd.lr=0.5',
                                                 'schedulers.0.cosine_decay_with_warmup.t_warmup=3ba',
                                                 'precision=amp_bf16'])
    assert config['max_duration'] == '2ep' and config['optimizers']['sgd']['lr'] == 0.5
    assert config['schedulers'][0]['cosine_decay_with_warmup']['t_warmup'] == '3ba'
    assert validate(config).precision == 'amp_bf16'


def test_override_values_are_read_as_recipe_files_are(tmp_path):
    """OmegaConf reads 1e-3 in a recipe file as a float; PyYAML alone reads it as a string."""
    (tmp_path / 'exponent.yaml').write_text(yaml.safe_dump(BASE).replace('lr: 0.1', 'lr: 1e-3'))
    from_file = load_recipe(str(tmp_path / 'exponent.yaml'))['optimizers']['sgd']['lr']
    config = load_recipe(write(tmp_path, BASE), ['optimizers.sgd.lr=1e-3', 'optimizers.sgd.weight_decay=5E-5',
                                                 'seed=1_000', 'run_name=1e3x', 'scale_schedule_ratio=.5'])
    assert from_file == config['optimizers']['sgd']['lr'] == 0.001
    assert config['optimizers']['sgd']['weight_decay'] == 5e-5 and config['seed'] == 1000
    assert config['run_name'] == '1e3x' and config['scale_schedule_ratio'] == 0.5


def test_a_list_entry_given_whole_replaces_or_appends(tmp_path):
    config = load_recipe(write(tmp_path, BASE), ['schedulers.0={constant: {}}', 'algorithms.1={blurpool: {}}',
                                                 'dataloader={num_workers: 2, prefetch_factor: 4}',
                                                 'dataloader.prefetch_factor=null'])
    assert config['schedulers'] == [{'constant': {}}]
    assert config['algorithms'] == [{'label_smoothing': {'smoothing': 0.1}}, {'blurpool': {}}]
    assert validate(config).settings['dataloader'] == {'num_workers': 2, 'prefetch_factor': None}


def test_a_one_entry_section_given_whole_replaces_the_recipes(tmp_path):
    config = load_recipe(write(tmp_path, BASE), ["optimizers={adamw: {lr: 0.001}}",
                                                 "model={efficientnet_b1: {num_classes: 10}}",
                                                 "train_dataset.digits.image_size=16"])
    assert config['optimizers'] == {'adamw': {'lr': 0.001}}
    assert config['model'] == {'efficientnet_b1': {'num_classes': 10}}
    assert config['train_dataset'] == {'digits': {'is_train': True, 'image_size': 16}}  # dotted keys still merge
    recipe = validate(config)
    assert (recipe.optimizer.name, recipe.model.name) == ('adamw', 'efficientnet_b1')


def test_list_section_entries_are_overridden_by_name_or_position(tmp_path):
    recipe = with_changes(algorithms=[{'label_smoothing': {'smoothing': 0.1}}, {'channels_last': {}}])
    config = load_recipe(write(tmp_path, recipe), ['algorithms.label_smoothing.smoothing=0.2',
                                                   'algorithms.1.channels_last={}',
                                                   'schedulers.cosine_decay_with_warmup.t_warmup=2ep'])
    assert config['algorithms'] == [{'label_smoothing': {'smoothing': 0.2}}, {'channels_last': {}}]
    assert config['schedulers'] == [{'cosine_decay_with_warmup': {'t_warmup': '2ep'}}]
    with pytest.raises(RecipeError, match=r"algorithms.blurpool.replace_convs: algorithms has no entry named "
                                          r"'blurpool' \(it has: label_smoothing, channels_last\); name an entry"):
        load_recipe(write(tmp_path, recipe), ['algorithms.blurpool.replace_convs=false'])


@pytest.mark.parametrize('legacy,modern', [('AMP', 'amp_fp16'), ('FP32', 'fp32'), ('BF16', 'amp_bf16')])
def test_legacy_precisions(legacy, modern):
    assert validate(with_changes(precision=legacy)).precision == modern


def test_model_card_recipe_format_validates(tmp_path):
    (tmp_path / 'train').mkdir()
    recipe = yaml.safe_load(open('recipes/efficientnet_b0_imagenet.yaml' if os.path.exists(
        'recipes/efficientnet_b0_imagenet.yaml') else os.path.join(os.path.dirname(__file__), '..', 'recipes',
                                                                   'efficientnet_b0_imagenet.yaml')))
    recipe['train_dataset']['imagenet']['datadir'] = str(tmp_path)
    recipe['val_dataset']['imagenet']['datadir'] = str(tmp_path)
    validated = validate(recipe, world_size=8)
    assert validated.optimizer.name == 'rmsprop' and validated.optimizer.params['lr'] == 0.08
    assert validated.settings['train_batch_size'] == 4096 and validated.model_resolution == 224
