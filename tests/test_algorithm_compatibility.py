"""Every registered algorithm on the quickstart recipe, made tiny: it trains on normalized float images on the
device, or the recipe is refused with one line before anything is built."""

import math
import os

import pytest
import torch
import yaml
from torchvision.models.resnet import Bottleneck

from composer_efficientnet import cli, composer_efficientnet, registry, runner, train
from composer_efficientnet.algorithms.compatibility import SUPPORT, check_algorithms_fit_data
from composer_efficientnet.data import build_digits_dataspec
from composer_efficientnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from composer_efficientnet.recipe import RecipeErrors, load_recipe, mistakes_of, validate

QUICKSTART = os.path.join(os.path.dirname(__file__), '..', 'recipes', 'quickstart.yaml')
TINY = ['train_dataset.digits.image_size=16', 'train_dataset.digits.max_shift=1', 'val_dataset=null',
        'max_duration=1ep', 'train_subset_num_batches=2', 'train_batch_size=8', 'save_folder=null',
        'progress_bar=false', 'callbacks=[]']
#: Parameters each algorithm needs to act within two batches of eight 16-pixel images.
PARAMS = {
    'alibi': {'max_sequence_length': 8},
    'ema': {'half_life': '1ba'},
    'ghost_batchnorm': {'ghost_batch_size': 4},
    'gradient_clipping': {'clipping_type': 'norm', 'clipping_threshold': 1.0},
    'gyro_dropout': {'sigma': 2, 'tau': 4},
    'progressive_learning': {'num_stages': 1, 'image_size': [8, 16], 'dropout': [0.1, 0.2]},  # 1ep: the last
    'selective_backprop': {'start': 0.0, 'end': 1.0, 'interrupt': 0},
    'stochastic_depth': {'target_layer_name': 'EfficientNetMBConv', 'stochastic_method': 'sample'},
    'swa': {'swa_start': '0.4dur', 'swa_end': '0.9dur', 'update_interval': '1ba'},
}
#: Normalized [0, 1] pixels lie within these bounds, whatever the channel.
LOW = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
HIGH = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))


def _overrides(name, *extra):
    algorithm = yaml.safe_dump([{name: PARAMS.get(name, {})}], default_flow_style=True).strip()
    return [*TINY, f'algorithms={algorithm}', *extra]


def test_every_registered_algorithm_is_decided():
    assert set(SUPPORT) == set(registry.algorithms.names())
    assert sum(support.refusal is not None for support in SUPPORT.values()) == 8


def _cases():
    for name in registry.algorithms.names():
        yield pytest.param(name, 'true', id=name)
    yield pytest.param('selective_backprop', 'false', id='selective_backprop, Composer Trainer')


@pytest.mark.parametrize('name, sync_free', _cases())
def test_algorithm_trains_on_normalized_images_or_is_refused(name, sync_free, capsys):
    overrides = _overrides(name, f'sync_free={sync_free}')
    if SUPPORT[name].refusal is not None:
        assert cli.main(['train', QUICKSTART, *overrides]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f'composer-efficientnet: recipe error: algorithms.{name}: '), err
        return
    trainer = train.build_trainer(validate(load_recipe(QUICKSTART, overrides)))
    seen = []
    trainer.state.model.module.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    trainer.fit()
    loss = trainer.state.total_loss_dict['loss/train/total']
    trainer.close()
    assert math.isfinite(loss) and len(seen) >= 2
    for images in seen:
        assert images.dtype == torch.float32 and images.device.type == 'cpu'
        assert LOW - 1e-4 <= images.min() and images.max() <= HIGH + 1e-4 and images.std() > 0.5
    sizes = {tuple(images.shape) for images in seen}
    if name == 'progressive_resizing':
        assert sizes == {(8, 3, 8, 8)}
    elif name == 'colout':  # 15% of 16 rows and columns dropped
        assert sizes == {(8, 3, 13, 13)}
    elif name == 'selective_backprop':  # the selection pass, then the half it keeps
        assert sizes == {(8, 3, 16, 16), (4, 3, 16, 16)}
    elif name == 'cutout':  # zero is the mean pixel once normalized; no digit pixel normalizes to it
        assert all(bool((images == 0).any()) for images in seen)
    else:
        assert sizes == {(8, 3, 16, 16)} or name == 'sam'


def test_refused_surgery_would_change_nothing_on_our_models():
    model = composer_efficientnet('efficientnet_b0', num_classes=10)
    kinds = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.MultiheadAttention, Bottleneck)
    assert not any(isinstance(module, kinds) for module in model.modules())


def test_recipes_normalize_whole_batches_on_the_device_before_the_algorithms():
    recipe = validate(load_recipe(QUICKSTART, TINY))
    placed = runner.build_data(recipe, recipe.train_dataset, 8)
    raw = next(iter(placed.dataloader))
    assert raw[0].dtype == torch.uint8
    images, labels = placed.batch_transforms(raw)  # before Event.AFTER_DATALOADER
    assert images.dtype == torch.float32 and images.is_contiguous(memory_format=torch.channels_last)
    assert LOW - 1e-4 <= images.min() and images.max() <= HIGH + 1e-4 and torch.equal(labels, raw[1])
    assert placed.microbatch_transforms((images, labels))[0] is images
    by_hand = build_digits_dataspec(image_size=16, batch_size=8)  # not placed: per microbatch, as before
    assert by_hand.batch_transforms(raw)[0] is raw[0]
    torch.testing.assert_close(by_hand.microbatch_transforms(raw)[0], images, rtol=0, atol=0)


def test_every_algorithm_mistake_is_reported_at_once():
    with pytest.raises(RecipeErrors) as error:
        validate(load_recipe(QUICKSTART, [*TINY, 'algorithms=[{randaugment: {}}, {mixup: {alpha: 0}}, {cutout: {}}]']))
    assert [line.split(': ')[0] for line in mistakes_of(error.value)] == ['algorithms.randaugment',
                                                                        'algorithms.mixup.alpha']


def test_training_checks_are_not_made_when_a_recipe_is_evaluated(capsys):
    gyro = 'algorithms=[{gyro_dropout: {sigma: 3, tau: 4}}]'
    assert cli.main(['train', QUICKSTART, *TINY, gyro]) == 2
    assert capsys.readouterr().err.strip().endswith('algorithms.gyro_dropout.sigma: 3: is more than the 2 training '
                                                    "batches of the run (2 an epoch), where Composer's GyroDropout "
                                                    'divides by zero; use at most 2')
    swa = 'algorithms.1={swa: {schedule_swa_lr: true}}'  # takes the rate of the one scheduler, in training
    recipe = validate(load_recipe(QUICKSTART, ['eval_batch_size=8', gyro, swa]), purpose='eval')
    check_algorithms_fit_data(recipe, {'val_dataset': runner.build_data(recipe, recipe.val_dataset, 8)})
