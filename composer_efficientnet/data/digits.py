"""The embedded dataset behind the quickstart: scikit-learn's bundled handwritten digits (1,797 8x8 scans)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from composer.core import DataSpec
from sklearn.datasets import load_digits
from torch.utils.data import Dataset, TensorDataset

from composer_efficientnet.data.loading import make_dataloader, make_dataspec
from composer_efficientnet.data.transforms import normalize_on_device

__all__ = ['digits_tensors', 'RandomShift', 'build_digits_dataspec']


def digits_tensors(is_train: bool, image_size: int = 32, holdout_fraction: float = 0.2,
                   split_seed: int = 0) -> TensorDataset:
    """The train or held-out part of the digits as uint8 RGB images of ``image_size`` and int64 labels.

    The split is a fixed permutation from ``split_seed``, so train and held-out never overlap.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f'holdout_fraction must be in (0, 1), got {holdout_fraction}.')
    if image_size < 8:
        raise ValueError(f'image_size must be at least 8 (the scans are 8x8), got {image_size}.')
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) * (255.0 / 16.0)
    images = F.interpolate(images, size=(image_size, image_size), mode='bilinear', align_corners=False)
    images = images.round().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    num_holdout = int(round(len(labels) * holdout_fraction))
    chosen = order[num_holdout:] if is_train else order[:num_holdout]
    return TensorDataset(images[chosen], labels[chosen])


class RandomShift(Dataset):
    """Images translated by a random whole number of pixels, at most ``max_shift`` each way, zero filled.

    The digits' augmentation: scans are centred but not aligned, and a flip or a crop would change the
    digit. A new offset is drawn for every sample each time it is read.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, max_shift: int) -> None:
        self.size = images.shape[-1]
        self.max_shift = max_shift
        self.padded = F.pad(images, (max_shift,) * 4)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        top, left = torch.randint(0, 2 * self.max_shift + 1, (2,)).tolist()
        image = self.padded[index, :, top:top + self.size, left:left + self.size]
        return image, self.labels[index]


def build_digits_dataspec(is_train: bool = True, image_size: int = 32, holdout_fraction: float = 0.2,
                          split_seed: int = 0, shuffle: Optional[bool] = None, drop_last: bool = False,
                          max_shift: int = 0, mean: Optional[Sequence[float]] = None,
                          std: Optional[Sequence[float]] = None, *, batch_size: int, seed: int = 17,
                          dataloader_kwargs: Optional[Dict[str, Any]] = None) -> DataSpec:
    """A Composer DataSpec over the digits; ``shuffle`` defaults to ``is_train``.

    ``max_shift`` (pixels at ``image_size``) randomly translates the training images; held-out images are
    never shifted. ``mean`` and ``std`` normalize on the device (ImageNet's by default).
    """
    normalize = normalize_on_device(mean, std)
    if image_size < 1:
        raise ValueError(f'image_size must be a positive number of pixels, got {image_size}.')
    if max_shift < 0 or max_shift >= image_size:
        raise ValueError(f'max_shift must be in [0, image_size), got {max_shift} with image_size {image_size}.')
    dataset = digits_tensors(is_train, image_size, holdout_fraction, split_seed)
    if is_train and max_shift > 0:
        dataset = RandomShift(*dataset.tensors, max_shift=max_shift)
    dataset.classes = [str(digit) for digit in range(10)]  # as torchvision datasets name theirs
    shuffle = is_train if shuffle is None else shuffle
    loader = make_dataloader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                             dataloader_kwargs=dataloader_kwargs)
    return make_dataspec(loader, transform=normalize)
