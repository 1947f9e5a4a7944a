"""Helpers for the data tests: small ImageFolder trees written with PIL, and a dataset of indices."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

CLASSES = ('cat', 'dog', 'eel')


def write_jpeg(path: Path, seed: int, size: Sequence[int] = (48, 40)) -> Path:
    """A smooth random RGB JPEG (width, height = size) at ``path``."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(tuple(size), Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=90)
    return path


def make_tree(root: Path, per_class: int = 4, splits: Sequence[str] = ('train', 'val'),
              classes: Sequence[str] = CLASSES) -> Path:
    """``root/<split>/<class>/<i>.jpg`` with sizes from 32x32 to 64x56, different per image."""
    seed = 0
    for split in splits:
        for name in classes:
            for i in range(per_class):
                size = (32 + 8 * (i % 5), 32 + 6 * ((i + seed) % 5))
                write_jpeg(root / split / name / f'{i}.jpg', seed, size)
                seed += 1
    return root


def corrupt(path: Path) -> Path:
    """Truncate a JPEG so that it can no longer be decoded."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])
    return path


class IndexDataset(Dataset):
    """Sample ``i`` is ``(a 1x1 uint8 image, i)``: the label records which index was loaded."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        return torch.zeros(3, 1, 1, dtype=torch.uint8), index


__all__ = ['CLASSES', 'write_jpeg', 'make_tree', 'corrupt', 'IndexDataset']
