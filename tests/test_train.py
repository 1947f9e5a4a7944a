"""The train entry point end to end on CPU: quickstart, shipped recipes, precision fallback."""

import glob
import os
import re

import pytest
import torch
import yaml
from composer.loggers import ProgressBarLogger

from composer_efficientnet import runner, train
from composer_efficientnet.efficientnet import MEMBERS
from composer_efficientnet.recipe import load_recipe, validate

RECIPES = os.path.join(os.path.dirname(__file__), '..', 'recipes')
QUICK = ['max_duration=2ba', 'train_batch_size=16', 'eval_batch_size=64', 'eval_subset_num_batches=1',
         'progress_bar=false', 'train_dataset.digits.image_size=16', 'val_dataset.digits.image_size=16']


def test_quickstart_recipe_runs_and_reports(tmp_path, capsys):
    save_folder = tmp_path / 'checkpoints'
    code = train.main([os.path.join(RECIPES, 'quickstart.yaml'), *QUICK, f'save_folder={save_folder}',
                       'save_interval=2ba', 'eval_interval=2ba'])
    assert code == 0
    out = capsys.readouterr().out
    top1 = float(re.search(r'held-out top-1 \(eval\): ([\d.]+)%', out).group(1))
    assert 0.0 <= top1 <= 100.0
    assert (save_folder / 'training_curves.png').stat().st_size > 10_000
    assert glob.glob(str(save_folder / 'ep0-ba2-rank0.pt'))


def test_no_held_out_figures_without_an_evaluation(capsys):
    assert train.main([os.path.join(RECIPES, 'quickstart.yaml'), *QUICK, 'max_duration=1ba', 'eval_interval=0',
                       'save_folder=null', 'callbacks=[]']) == 0
    out = capsys.readouterr().out
    assert 'held-out' not in out, out  # it said 0.00% for metrics no evaluation had updated


@pytest.mark.parametrize('progress_bar, shown', [(None, True), (False, False)])
def test_progress_bar_false_hides_a_listed_progress_bar_logger(progress_bar, shown):
    overrides = [] if progress_bar is None else [f'progress_bar={str(progress_bar).lower()}']
    recipe = validate(load_recipe(os.path.join(RECIPES, 'synthetic_benchmark.yaml'), overrides))
    loggers = runner.run_settings(recipe)['loggers']
    assert any(isinstance(logger, ProgressBarLogger) for logger in loggers) == shown


def test_mixed_precision_on_cpu_falls_back_with_one_warning(tmp_path, capsys):
    code = train.main([os.path.join(RECIPES, 'quickstart.yaml'), *QUICK, 'precision=AMP', 'save_folder=null',
                       'callbacks=[]', 'val_dataset=null'])
    assert code == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if 'precision' in line]
    assert warnings == ['warning: precision AMP needs a GPU; this CPU run uses fp32.']


@pytest.mark.parametrize('name', [name for name in MEMBERS if name != 'efficientnet_v2_xl'])  # XL ships none
def test_imagenet_recipes_validate(tmp_path, name):
    config = load_recipe(os.path.join(RECIPES, f'{name}_imagenet.yaml'),
                         [f'train_dataset.imagenet.datadir={tmp_path}', f'val_dataset.imagenet.datadir={tmp_path}'])
    recipe = validate(config, world_size=8)
    member = MEMBERS[name]
    assert recipe.model.name == name
    assert config['train_dataset']['imagenet']['crop_size'] == member.resolution == recipe.model_resolution
    assert {e.name for e in recipe.algorithms} >= {'label_smoothing', 'sample_stochastic_depth'}
    val = config['val_dataset']['imagenet']
    # as the member's published weights evaluate (B family: the EfficientNet reference's crop padding of 32
    # pixels, 256/224 for B0, the model card's)
    assert {k: val.get(k, 'bilinear' if k == 'interpolation' else None) for k in member.eval_transform()} == \
        member.eval_transform()


def test_b0_recipe_is_the_model_card():
    config = yaml.safe_load(open(os.path.join(RECIPES, 'efficientnet_b0_imagenet.yaml')))
    assert config['optimizers'] == {'rmsprop': {'lr': 0.08, 'momentum': 0.9, 'alpha': 0.9, 'eps': 0.01,
                                                'weight_decay': 1.0e-5}}
    assert config['schedulers'] == [{'cosine_decay_with_warmup': {'t_warmup': '16ep'}}]
    assert (config['train_batch_size'], config['max_duration'], config['seed']) == (4096, '400ep', 17)
    assert config['model']['efficientnet_b0'] == {'num_classes': 1000, 'drop_connect_rate': 0.2, 'dropout': 0.2,
                                                  'bn_momentum': 0.1, 'bn_eps': 1.0e-5}
    algorithms = {k: v for entry in config['algorithms'] for k, v in entry.items()}
    assert algorithms['label_smoothing'] == {'smoothing': 0.1}
    assert algorithms['sample_stochastic_depth']['drop_rate'] == 0.2


def test_synthetic_benchmark_recipe_runs_on_cpu(capsys):
    code = train.main([os.path.join(RECIPES, 'synthetic_benchmark.yaml'), 'device=cpu', 'max_duration=2ba',
                       'train_batch_size=4', 'train_dataset.synthetic.image_size=32', 'model.efficientnet_b0.num_classes=10',
                       'train_dataset.synthetic.num_classes=10', 'loggers=[]', 'progress_bar=false'])
    assert code == 0


@pytest.mark.parametrize('sync_free, expected', [(None, 'SyncFreeTrainer'), (True, 'SyncFreeTrainer'),
                                                 (False, 'Trainer')])
def test_recipe_chooses_the_trainer(sync_free, expected):
    overrides = [*QUICK, 'save_folder=null', 'val_dataset=null'] + (
        [] if sync_free is None else [f'sync_free={str(sync_free).lower()}'])
    trainer = train.build_trainer(validate(load_recipe(os.path.join(RECIPES, 'quickstart.yaml'), overrides)))
    try:
        assert type(trainer).__name__ == expected
    finally:
        trainer.close()


@pytest.mark.parametrize('settings, device, expected', [
    ({}, 'gpu', True), ({'deterministic_mode': True}, 'gpu', False), ({'cudnn_benchmark': False}, 'gpu', False),
    ({}, 'cpu', False)])
def test_cudnn_benchmark_on_a_gpu_unless_deterministic(monkeypatch, settings, device, expected):
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    runner.configure_cudnn(settings, device)
    assert torch.backends.cudnn.benchmark is expected



@pytest.mark.parametrize('override, expected', [('compile={}', {}), ('compile=true', {}), ('compile=false', None),
                                                ('compile={mode: max-autotune}', {'mode': 'max-autotune'}),
                                                (None, None)])
def test_compile_setting_becomes_composer_compile_config(override, expected):
    overrides = [*QUICK, 'save_folder=null'] + ([override] if override else [])
    settings = runner.run_settings(validate(load_recipe(os.path.join(RECIPES, 'quickstart.yaml'), overrides)))
    assert settings['compile_config'] == expected
