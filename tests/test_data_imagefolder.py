"""The `imagenet` (ImageFolder) builder: shapes, uint8 out of the workers, transforms, device normalization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2

from composer_efficientnet.data import BUILDERS, NormalizeOnDevice, build_imagenet_dataspec
from composer_efficientnet.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, ResizeShorterSide, decode_image_bytes,
                                                   image_transform, val_resize_size)
from composer_efficientnet.recipe import RecipeError, validate
from tests.data_trees import CLASSES, make_tree


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / 'imagenet')


def test_registered_names():
    assert {'digits', 'imagenet', 'streaming_imagenet', 'synthetic'} <= set(BUILDERS)
    from composer_efficientnet import registry
    assert registry.datasets.get('imagenet') is build_imagenet_dataspec


def test_train_batches_are_uint8_crops_with_class_index_labels(tree):
    spec = build_imagenet_dataspec(str(tree), is_train=True, crop_size=32, batch_size=4,
                                   dataloader_kwargs={'num_workers': 2, 'persistent_workers': True})
    batches = list(spec.dataloader)
    assert len(batches) == 3  # 12 images, drop_last defaults to is_train
    for images, labels in batches:
        assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
        assert labels.dtype == torch.int64
    assert sorted(torch.cat([labels for _, labels in batches]).tolist()) == sorted(list(range(len(CLASSES))) * 4)
    assert spec.dataloader.dataset.classes == sorted(CLASSES)


def test_val_is_resize_then_center_crop_of_the_decoded_file(tree):
    spec = build_imagenet_dataspec(str(tree), is_train=False, crop_size=32, batch_size=5)
    dataset = spec.dataloader.dataset
    images, labels = next(iter(spec.dataloader))
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.uint8
    assert not spec.dataloader.drop_last
    for i in range(5):  # shuffle defaults to is_train: val is in file order
        reference = decode_image(read_file(dataset.path(i)), mode=ImageReadMode.RGB)
        reference = v2.functional.center_crop(v2.functional.resize(reference, 37, antialias=True), 32)
        difference = (images[i].int() - reference.int()).abs()  # torchvision may round via float: within 1
        assert int(difference.max()) <= 1 and float(difference.float().mean()) < 0.5
    assert val_resize_size(224) == 256 and val_resize_size(224, 240) == 240 and val_resize_size(32) == 37


def test_bicubic_val_is_torchvisions_bicubic_resize_then_center_crop(tree):
    """How torchvision and timm evaluated their EfficientNet weights: bicubic, antialiased."""
    spec = build_imagenet_dataspec(str(tree), is_train=False, crop_size=32, resize_size=36, batch_size=5,
                                   interpolation='bicubic')
    images, _ = next(iter(spec.dataloader))
    for i in range(5):
        reference = decode_image(read_file(spec.dataloader.dataset.path(i)), mode=ImageReadMode.RGB)
        reference = v2.functional.resize(reference, 36, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        reference = v2.functional.center_crop(reference, 32)
        assert int((images[i].int() - reference.int()).abs().max()) <= 1
    bilinear, _ = next(iter(build_imagenet_dataspec(str(tree), is_train=False, crop_size=32, resize_size=36,
                                                    batch_size=5).dataloader))
    assert not torch.equal(images, bilinear)


def test_unknown_interpolation_is_a_recipe_error(tree):
    config = {'model': {'efficientnet_b0': {}}, 'optimizers': {'sgd': {'lr': 0.1}}, 'max_duration': '1ep',
              'train_batch_size': 4,
              'train_dataset': {'imagenet': {'datadir': str(tree), 'interpolation': 'nearest'}}}
    with pytest.raises(RecipeError, match=r"train_dataset\.imagenet\.interpolation: must be one of 'bilinear', "
                                          r"'bicubic', got 'nearest'"):
        validate(config)


@pytest.mark.parametrize('shape', [(3, 40, 48), (3, 61, 37)])
def test_resize_matches_torchvision_within_one(shape):
    image = torch.randint(0, 256, shape, dtype=torch.uint8)
    ours = ResizeShorterSide(29)(image)
    reference = v2.functional.resize(image, 29, antialias=True)
    assert ours.shape == reference.shape and ours.dtype == torch.uint8
    assert int((ours.int() - reference.int()).abs().max()) <= 1


def test_resolution_follows_the_model_when_crop_size_is_unset(tree):
    for is_train in (True, False):
        spec = build_imagenet_dataspec(str(tree), is_train=is_train, batch_size=2, model_resolution=40)
        images, _ = next(iter(spec.dataloader))
        assert images.shape[-2:] == (40, 40)


def test_legacy_recipe_parameters_work_unchanged(tree):
    legacy = {'resize_size': -1, 'crop_size': 224, 'is_train': True, 'datadir': str(tree), 'shuffle': True,
              'drop_last': True}
    images, _ = next(iter(BUILDERS['imagenet'](**legacy, batch_size=2, seed=17).dataloader))
    assert images.shape == (2, 3, 224, 224)
    val = dict(legacy, resize_size=256, is_train=False, shuffle=False, drop_last=False)
    images, _ = next(iter(BUILDERS['imagenet'](**val, batch_size=2, seed=17).dataloader))
    assert images.shape == (2, 3, 224, 224)


@pytest.mark.parametrize('augment', ['autoaugment', 'randaugment'])
def test_augment_policies_keep_uint8(tree, augment):
    spec = build_imagenet_dataspec(str(tree), crop_size=32, augment=augment, batch_size=4)
    images, _ = next(iter(spec.dataloader))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8


def test_unknown_augment_names_the_allowed_ones(tree):
    with pytest.raises(ValueError, match="augment: unknown policy 'autoaug'.*autoaugment, randaugment"):
        build_imagenet_dataspec(str(tree), augment='autoaug', batch_size=2)


def test_train_crops_are_random_and_flip():
    image = torch.arange(3 * 40 * 48, dtype=torch.int64).remainder(256).to(torch.uint8).view(3, 40, 48)
    transform = image_transform(True, 24)
    torch.manual_seed(0)
    crops = [transform(image) for _ in range(4)]
    assert all(c.shape == (3, 24, 24) and c.dtype == torch.uint8 for c in crops)
    assert not all(torch.equal(crops[0], c) for c in crops[1:])


def test_device_normalization_matches_torchvision_on_float(tree):
    spec = build_imagenet_dataspec(str(tree), crop_size=32, batch_size=4)
    images, labels = next(iter(spec.dataloader))
    normalized, same_labels = spec.microbatch_transforms((images, labels))
    reference = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)(images.float() / 255.0)
    assert normalized.dtype == torch.float32 and same_labels is labels
    assert normalized.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(normalized, reference, atol=1e-5, rtol=0)
    plain, _ = NormalizeOnDevice(channels_last=False)((images, labels))
    assert plain.is_contiguous()
    torch.testing.assert_close(plain, reference, atol=1e-5, rtol=0)


def test_float_images_pass_through_unnormalized():
    images = torch.randn(2, 3, 8, 8)
    out, _ = NormalizeOnDevice()((images, None))
    assert torch.equal(out, images)


def test_a_16_bit_png_and_an_animated_gif_decode_to_8_bit_rgb(tmp_path):
    """Both are valid ImageFolder files; they must come out as every other image does, not stop the run."""
    deep = np.random.default_rng(0).integers(0, 65536, (40, 48)).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / 'deep.png')
    frames = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8)) for i in (1, 2)]
    frames[0].save(tmp_path / 'moving.gif', save_all=True, append_images=frames[1:])

    png = decode_image_bytes(read_file(str(tmp_path / 'deep.png')))
    assert png.shape == (3, 40, 48) and png.dtype == torch.uint8
    assert torch.equal(png[0], torch.from_numpy((deep >> 8).astype(np.uint8)))  # the top 8 bits, gray in RGB
    gif = decode_image_bytes(read_file(str(tmp_path / 'moving.gif')))
    assert gif.shape == (3, 40, 48) and gif.dtype == torch.uint8
    first_frame = np.asarray(Image.open(tmp_path / 'moving.gif').convert('RGB'))  # PIL opens the first frame
    assert torch.equal(gif, torch.from_numpy(first_frame).permute(2, 0, 1))
