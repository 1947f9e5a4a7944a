"""`synthetic`: batches made once on the device; per step the loader yields an empty placeholder."""

from __future__ import annotations

import pytest
import torch

from composer_efficientnet.data import BUILDERS, NormalizeOnDevice, build_synthetic_dataspec


def test_loader_yields_the_same_zero_byte_placeholder_every_step():
    spec = build_synthetic_dataspec(batch_size=8, num_samples=80, model_resolution=24)
    batches = list(spec.dataloader)
    assert len(batches) == len(spec.dataloader) == 10 and spec.num_samples == 80
    assert all(batch is batches[0] for batch in batches)  # no per-step host work: nothing is built or copied
    images, labels = batches[0]
    assert images.shape[0] == labels.shape[0] == 8 and images.nbytes == labels.nbytes == 0
    assert spec.get_num_samples_in_batch(batches[0]) == 8
    assert [b[0].shape[0] for b in spec.split_batch(batches[0], 3)] == [3, 3, 2]


def test_device_transform_materializes_once_and_normalizes_like_real_data():
    spec = build_synthetic_dataspec(num_classes=7, batch_size=4, num_samples=40, model_resolution=24, seed=3)
    placeholder = next(iter(spec.dataloader))
    first_images, first_labels = spec.microbatch_transforms(placeholder)
    cached = dict(spec.microbatch_transforms._cache)
    second_images, second_labels = spec.microbatch_transforms(placeholder)
    assert first_images.shape == (4, 3, 24, 24) and first_images.dtype == torch.float32
    assert first_images.device == placeholder[0].device
    assert first_images.is_contiguous(memory_format=torch.channels_last)
    assert first_labels.dtype == torch.int64 and 0 <= int(first_labels.min()) and int(first_labels.max()) < 7
    assert torch.equal(first_images, second_images) and second_labels is first_labels
    assert spec.microbatch_transforms._cache == cached and len(cached) == 1  # generated once, then reused
    (raw, _), = cached.values()
    assert raw.dtype == torch.uint8
    torch.testing.assert_close(first_images, NormalizeOnDevice()((raw, None))[0])


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_float_dtypes_are_returned_as_cached(dtype):
    spec = build_synthetic_dataspec(batch_size=2, num_samples=2, image_size=16, dtype=dtype)
    placeholder = next(iter(spec.dataloader))
    images, labels = spec.microbatch_transforms(placeholder)
    assert images.dtype == getattr(torch, dtype) and images.shape == (2, 3, 16, 16)
    assert spec.microbatch_transforms(placeholder)[0] is images


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="dtype: unknown 'int8'; allowed: uint8, float32, float16, bfloat16"):
        build_synthetic_dataspec(dtype='int8', batch_size=2)
    with pytest.raises(ValueError, match=r'num_samples \(3\) is less than one global batch'):
        build_synthetic_dataspec(num_samples=3, batch_size=4)
    assert BUILDERS['synthetic'] is build_synthetic_dataspec
