"""Registries: built-in names, entry points from another distribution, the list and info commands."""

import sys
import textwrap

import pytest

from composer_efficientnet import cli, registry
from composer_efficientnet.recipe import RecipeError, validate

EXPECTED = {
    'models': ['efficientnet_b0', 'efficientnet_b7', 'efficientnetb0'],
    'algorithms': ['blurpool', 'channels_last', 'cutmix', 'cutout', 'ema', 'label_smoothing', 'mixup',
                   'progressive_resizing', 'randaugment', 'augmix', 'sam', 'selective_backprop', 'stochastic_depth',
                   'swa', 'gradient_clipping', 'sample_stochastic_depth'],
    'callbacks': ['lr_monitor', 'speed_monitor', 'memory_monitor', 'checkpoint_saver', 'early_stopper',
                  'training_curves'],
    'loggers': ['progress_bar', 'file', 'tensorboard', 'wandb', 'mlflow'],
    'optimizers': ['sgd', 'adamw', 'rmsprop', 'decoupled_sgdw', 'decoupled_adamw'],
    'schedulers': ['cosine_decay_with_warmup', 'linear_decay_with_warmup', 'step', 'multistep', 'constant',
                   'exponential'],
    'datasets': ['digits'],
}


@pytest.mark.parametrize('kind', list(EXPECTED))
def test_builtin_names(kind):
    names = registry.REGISTRIES[kind].names()
    assert set(EXPECTED[kind]) <= set(names)


def test_unknown_name_lists_valid_and_closest():
    with pytest.raises(registry.RegistryError) as info:
        registry.optimizers.get('rmsprob')
    assert "Did you mean 'rmsprop'" in str(info.value) and 'decoupled_adamw' in str(info.value)


@pytest.fixture
def third_party_distribution(tmp_path, monkeypatch):
    """A distribution on sys.path that adds a model through the composer_efficientnet.models entry point group."""
    (tmp_path / 'tiny_models.py').write_text(textwrap.dedent('''
        from composer_efficientnet import composer_efficientnet

        def build_tiny(num_classes: int = 10):
            """B0 under another name, as a third-party package would add it."""
            return composer_efficientnet('efficientnet_b0', num_classes=num_classes)
    '''))
    info = tmp_path / 'tiny_models-1.0.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: tiny-models\nVersion: 1.0\n')
    (info / 'entry_points.txt').write_text('[composer_efficientnet.models]\ntiny_net = tiny_models:build_tiny\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop('tiny_models', None)


def test_entry_point_adds_a_model(third_party_distribution):
    assert 'tiny_net' in registry.models.names()
    model = registry.models.get('tiny_net')(num_classes=3)
    assert model.num_classes == 3
    recipe = validate({'model': {'tiny_net': {'num_classes': 3}}, 'train_dataset': {'digits': {}},
                       'optimizers': {'sgd': {'lr': 0.1}}, 'max_duration': '1ba', 'train_batch_size': 8})
    assert recipe.model.name == 'tiny_net' and recipe.model_resolution == 224


def test_entry_point_that_cannot_load_is_a_recipe_error(third_party_distribution, tmp_path):
    info = tmp_path / 'tiny_models-1.0.dist-info' / 'entry_points.txt'
    info.write_text('[composer_efficientnet.models]\nbroken_net = missing_module:build\n')
    with pytest.raises(RecipeError, match=r"model.broken_net: 'broken_net' is registered by the entry point "
                                          r"missing_module:build \(group composer_efficientnet.models\), which "
                                          r"cannot be loaded: No module named 'missing_module'"):
        validate({'model': {'broken_net': {}}, 'train_dataset': {'digits': {}}, 'optimizers': {'sgd': {'lr': 0.1}},
                  'max_duration': '1ba', 'train_batch_size': 8})


def test_list_command(capsys):
    assert cli.main(['list', 'optimizers']) == 0
    out = capsys.readouterr().out
    assert out.startswith('optimizers: ') and '  rmsprop\n' in out and 'models' not in out


def test_info_command(capsys):
    assert cli.main(['info']) == 0
    lines = capsys.readouterr().out.splitlines()
    b0 = next(line for line in lines if line.startswith('efficientnet_b0 '))
    assert '5.29M' in b0 and '224' in b0 and '77.1%' in b0
    b0_gmacs = float(b0.split()[3])
    assert 0.38 < b0_gmacs < 0.41  # the paper's 0.39B multiply-adds
    b7 = next(line for line in lines if line.startswith('efficientnet_b7 '))
    assert '66.35M' in b7 and 34 < float(b7.split()[3]) < 40  # paper: 37B


def test_every_composer_algorithm_callback_and_logger_is_registered():
    import composer.algorithms as ca
    import composer.callbacks as cc
    import composer.loggers as cl
    from composer.core import Algorithm, Callback
    from composer.loggers import LoggerDestination
    from composer_efficientnet.callbacks import AtomicCheckpointSaver
    from composer_efficientnet.algorithms import LabelSmoothing

    replaced = {cc.CheckpointSaver: AtomicCheckpointSaver, ca.LabelSmoothing: LabelSmoothing}
    left_out = {cc.Generate}  # text generation for Hugging Face models
    for module, base, reg in ((ca, Algorithm, registry.algorithms), (cc, Callback, registry.callbacks),
                              (cl, LoggerDestination, registry.loggers)):
        registered = set(reg.get_all().values())
        shipped = {getattr(module, name) for name in module.__all__}
        shipped = {cls for cls in shipped if isinstance(cls, type) and issubclass(cls, base) and cls is not base}
        assert len(shipped) >= 10  # Composer's classes were found, so an empty difference means something
        missing = {cls.__name__ for cls in shipped - left_out if replaced.get(cls, cls) not in registered}
        assert not missing, f'{reg.kind} not registered: {sorted(missing)}'
