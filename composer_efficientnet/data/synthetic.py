"""Synthetic batches for benchmarks: random images and labels made once on the device, no host work per step.

The loader yields the same placeholder each step: zero-width tensors whose first dimension is the batch size,
so Composer counts samples and splits microbatches as usual while nothing is copied to the device. The
microbatch transform, :class:`MaterializeOnDevice`, replaces the placeholder by a batch of that size generated
on the placeholder's device the first time it sees that size, and returns the cached tensors afterwards.
"""

from __future__ import annotations

from typing import Dict, Iterator, Optional, Tuple

import torch
from composer.core import DataSpec
from composer.utils import dist

from composer_efficientnet.data.loading import make_dataspec
from composer_efficientnet.data.transforms import NormalizeOnDevice

__all__ = ['DTYPES', 'SyntheticLoader', 'MaterializeOnDevice', 'build_synthetic_dataspec']

#: ``uint8`` images go through the same on-device normalization as real data every step; float images are
#: drawn from a standard normal (already "normalized") and returned as they are.
DTYPES = {'uint8': torch.uint8, 'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}

Batch = Tuple[torch.Tensor, torch.Tensor]


class SyntheticLoader:
    """``num_batches`` copies of one placeholder batch of ``batch_size`` samples that holds no data."""

    def __init__(self, batch_size: int, num_batches: int) -> None:
        self.batch_size = batch_size  # Composer reads it to size evaluation microbatches
        self.num_batches = num_batches
        self.placeholder: Batch = (torch.empty(batch_size, 0, dtype=torch.uint8), torch.empty(batch_size, 0))

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        for _ in range(self.num_batches):
            yield self.placeholder


class MaterializeOnDevice:
    """Microbatch transform: placeholder -> cached random ``(images, labels)`` on the placeholder's device."""

    def __init__(self, num_classes: int, image_size: int, dtype: torch.dtype, seed: int,
                 channels_last: bool = True) -> None:
        self.num_classes, self.image_size, self.dtype, self.seed = num_classes, image_size, dtype, seed
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.normalize = NormalizeOnDevice(channels_last=channels_last)
        self._cache: Dict[Tuple[torch.device, int], Batch] = {}

    def _generate(self, device: torch.device, size: int) -> Batch:
        generator = torch.Generator(device=device).manual_seed(self.seed)
        shape = (size, 3, self.image_size, self.image_size)
        if self.dtype == torch.uint8:
            images = torch.randint(0, 256, shape, generator=generator, device=device, dtype=torch.uint8)
        else:
            images = torch.randn(shape, generator=generator, device=device).to(self.dtype)
        labels = torch.randint(0, self.num_classes, (size,), generator=generator, device=device)
        return images.contiguous(memory_format=self.memory_format), labels

    def __call__(self, batch: Batch) -> Batch:
        placeholder = batch[0]
        key = (placeholder.device, placeholder.shape[0])
        if key not in self._cache:
            self._cache[key] = self._generate(*key)
        cached = self._cache[key]
        return self.normalize(cached) if self.dtype == torch.uint8 else cached


def build_synthetic_dataspec(num_classes: int = 1000, image_size: Optional[int] = None,
                             num_samples: int = 1_281_167, dtype: str = 'uint8', *, batch_size: int,
                             seed: int = 17, model_resolution: int = 224) -> DataSpec:
    """Random ``image_size`` (default: the model's resolution) images and labels, ``num_samples`` per epoch
    over all processes (default: ImageNet's train size), generated on the device.

    ``dtype`` is ``uint8`` (normalized on the device each step, like real data) or ``float32``, ``float16``,
    ``bfloat16`` (returned as cached). Every step returns the same batch.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype: unknown '{dtype}'; allowed: {', '.join(DTYPES)}.")
    image_size = model_resolution if image_size is None else image_size
    if image_size < 1 or num_classes < 1:
        raise ValueError(f'image_size and num_classes must be positive, got {image_size} and {num_classes}.')
    num_batches = num_samples // (batch_size * dist.get_world_size())
    if num_batches < 1:
        raise ValueError(f'num_samples ({num_samples}) is less than one global batch '
                         f'({batch_size} x {dist.get_world_size()} processes); raise num_samples.')
    loader = SyntheticLoader(batch_size, num_batches)
    transform = MaterializeOnDevice(num_classes, image_size, DTYPES[dtype], seed + dist.get_global_rank())
    return make_dataspec(loader, transform, num_samples=num_batches * batch_size * dist.get_world_size())
