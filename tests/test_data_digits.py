"""The digits dataset behind the quickstart: a fixed held-out split and the random-shift augmentation."""

import pytest
import torch
import torch.nn.functional as F

from composer_efficientnet.data import build_digits_dataspec
from composer_efficientnet.data.digits import RandomShift, digits_tensors


def test_split_is_fixed_and_covers_every_scan():
    train, held_out = digits_tensors(is_train=True, image_size=8), digits_tensors(is_train=False, image_size=8)
    assert (len(train), len(held_out)) == (1438, 359)
    again = digits_tensors(is_train=False, image_size=8)
    assert torch.equal(held_out.tensors[0], again.tensors[0])
    labels = torch.cat([train.tensors[1], held_out.tensors[1]])
    assert torch.bincount(labels, minlength=10).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def _offset(shifted: torch.Tensor, image: torch.Tensor, max_shift: int) -> tuple:
    """The (dy, dx) that turns ``image`` into ``shifted`` with zero fill; fails if none does."""
    padded = F.pad(image, (max_shift,) * 4)
    size = image.shape[-1]
    for top in range(2 * max_shift + 1):
        for left in range(2 * max_shift + 1):
            if torch.equal(padded[:, top:top + size, left:left + size], shifted):
                return max_shift - top, max_shift - left
    raise AssertionError('the output is not a zero-filled shift of the input')


def test_random_shift_moves_each_image_by_at_most_max_shift_and_reaches_every_offset():
    images, labels = digits_tensors(is_train=True, image_size=16).tensors
    dataset = RandomShift(images, labels, max_shift=3)
    torch.manual_seed(0)
    offsets = set()
    for draw in range(2000):  # P(one of the 49 offsets never drawn) <= 49 * (48/49)**2000 < 1e-16
        index = draw % 50
        shifted, label = dataset[index]
        assert label == labels[index] and shifted.shape == images[index].shape and shifted.dtype == torch.uint8
        offsets.add(_offset(shifted, images[index], 3))
    assert offsets == {(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)}


def test_held_out_images_are_never_shifted():
    spec = build_digits_dataspec(is_train=False, image_size=16, max_shift=3, batch_size=400)
    images, labels = next(iter(spec.dataloader))
    expected_images, expected_labels = digits_tensors(is_train=False, image_size=16).tensors
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)


@pytest.mark.parametrize('max_shift', [-1, 16])
def test_max_shift_outside_the_image_is_refused(max_shift):
    with pytest.raises(ValueError, match=rf'max_shift must be in \[0, image_size\), got {max_shift}'):
        build_digits_dataspec(image_size=16, max_shift=max_shift, batch_size=8)
