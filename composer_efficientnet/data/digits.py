"""The embedded dataset behind the quickstart: scikit-learn's bundled handwritten digits (1,797 8x8 scans)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from composer.core import DataSpec
from sklearn.datasets import load_digits
from torch.utils.data import Dataset, TensorDataset

from composer_efficientnet.data.loading import make_dataloader, make_dataspec
from composer_efficientnet.data.transforms import StageSettings, normalize_on_device

__all__ = ['digits_tensors', 'scans_at', 'RandomShift', 'TrainingDigits', 'build_digits_dataspec']


def scans_at(scans: torch.Tensor, image_size: int) -> torch.Tensor:
    """8x8 scans (N x 1 x 8 x 8, float on the 0-255 scale) as uint8 RGB images of ``image_size``, bilinear."""
    if image_size < 8:
        raise ValueError(f'image_size must be at least 8 (the scans are 8x8), got {image_size}.')
    images = F.interpolate(scans, size=(image_size, image_size), mode='bilinear', align_corners=False)
    return images.round().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def _split_scans(is_train: bool, holdout_fraction: float, split_seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The train or held-out scans (float, 0-255 scale) and labels of a fixed permutation from ``split_seed``."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f'holdout_fraction must be in (0, 1), got {holdout_fraction}.')
    digits = load_digits()
    scans = torch.from_numpy(digits.images).float().unsqueeze(1) * (255.0 / 16.0)
    labels = torch.from_numpy(digits.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    num_holdout = int(round(len(labels) * holdout_fraction))
    chosen = order[num_holdout:] if is_train else order[:num_holdout]
    return scans[chosen], labels[chosen]


def digits_tensors(is_train: bool, image_size: int = 32, holdout_fraction: float = 0.2,
                   split_seed: int = 0) -> TensorDataset:
    """The train or held-out part of the digits as uint8 RGB images of ``image_size`` and int64 labels.

    The split is a fixed permutation from ``split_seed``, so train and held-out never overlap.
    """
    scans, labels = _split_scans(is_train, holdout_fraction, split_seed)
    return TensorDataset(scans_at(scans, image_size), labels)


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


class TrainingDigits(Dataset):
    """The training digits at the progressive-learning stage's size (:attr:`stage`), else at ``image_size``,
    shifted at random by up to ``max_shift`` pixels scaled with the size (rounded; none where that is 0).

    The images of each size are made once per process from the 8x8 scans (a few milliseconds) and kept. The
    stage's size is read once per batch (the DataLoader's fetcher calls ``__getitems__``).
    """

    def __init__(self, scans: torch.Tensor, labels: torch.Tensor, image_size: int, max_shift: int) -> None:
        self.scans, self.labels = scans, labels
        self.image_size, self.max_shift = image_size, max_shift
        self.stage = StageSettings()
        self._by_size: Dict[int, Dataset] = {}
        self._current = self._at(image_size)

    def _at(self, size: int) -> Dataset:
        if size not in self._by_size:
            images = scans_at(self.scans, size)
            shift = round(self.max_shift * size / self.image_size)
            self._by_size[size] = (RandomShift(images, self.labels, shift) if shift > 0 else
                                   TensorDataset(images, self.labels))
        return self._by_size[size]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self._current[index]

    def __getitems__(self, indices: Sequence[int]) -> List[Any]:
        """One batch, all at the stage's size when it starts."""
        size, _ = self.stage.get()
        self._current = self._at(size or self.image_size)
        return [self._current[index] for index in indices]


def build_digits_dataspec(is_train: bool = True, image_size: int = 32, holdout_fraction: float = 0.2,
                          split_seed: int = 0, shuffle: Optional[bool] = None, drop_last: bool = False,
                          max_shift: int = 0, mean: Optional[Sequence[float]] = None,
                          std: Optional[Sequence[float]] = None, *, batch_size: int, seed: int = 17,
                          dataloader_kwargs: Optional[Dict[str, Any]] = None) -> DataSpec:
    """A Composer DataSpec over the digits; ``shuffle`` defaults to ``is_train``.

    ``max_shift`` (pixels at ``image_size``) randomly translates the training images; held-out images are
    never shifted. Training images follow progressive learning's sizes (:class:`TrainingDigits`). ``mean``
    and ``std`` normalize on the device (ImageNet's by default).
    """
    normalize = normalize_on_device(mean, std)
    if image_size < 1:
        raise ValueError(f'image_size must be a positive number of pixels, got {image_size}.')
    if max_shift < 0 or max_shift >= image_size:
        raise ValueError(f'max_shift must be in [0, image_size), got {max_shift} with image_size {image_size}.')
    if is_train:
        dataset = TrainingDigits(*_split_scans(True, holdout_fraction, split_seed), image_size, max_shift)
    else:
        dataset = digits_tensors(False, image_size, holdout_fraction, split_seed)
    dataset.classes = [str(digit) for digit in range(10)]  # as torchvision datasets name theirs
    shuffle = is_train if shuffle is None else shuffle
    loader = make_dataloader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                             dataloader_kwargs=dataloader_kwargs)
    return make_dataspec(loader, transform=normalize)
