"""ImageNet-style folders (``datadir/train/<class>/*.JPEG``, ``datadir/val/<class>/*.JPEG``) as a DataSpec.

The tree is scanned and checked when the dataset is built, before any training: a missing split, an empty
class folder, a file that is not an image, or train and val folders naming different classes are errors
that name the path. Files that look like images but cannot be decoded are found only when read; they are
skipped and counted (see :mod:`composer_efficientnet.data.bad_samples`), or raise in ``strict`` mode.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from composer.core import DataSpec
from torch.utils.data import Dataset
from torchvision.io import read_file

from composer_efficientnet.data.bad_samples import BadSampleTracker, load_or_replace
from composer_efficientnet.data.errors import DatasetLayoutError, SplitNotFoundError
from composer_efficientnet.data.loading import make_dataloader, make_dataspec
from composer_efficientnet.data.transforms import (Interpolation, StageSettings, decode_image_bytes,
                                                    image_transform, normalize_on_device, start_batch)

__all__ = ['IMAGE_EXTENSIONS', 'SPLITS', 'scan_split', 'ImageFolderDataset', 'build_imagenet_dataspec']

#: File name endings the decoder reads (``torchvision.io.decode_image``), compared case-insensitively.
IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png', '.webp', '.gif')

#: The split directory each value of ``is_train`` reads.
SPLITS = {True: 'train', False: 'val'}

_SHOWN = 5  # how many offending paths an error message lists


def _is_hidden(name: str) -> bool:
    return name.startswith('.')  # .DS_Store, ._AppleDouble, editor swap files: never data


def _list_classes(split_dir: str) -> List[str]:
    """The sorted class folder names of a split, or an error if it is missing or holds loose files."""
    if not os.path.isdir(split_dir):
        parent = os.path.dirname(split_dir.rstrip(os.sep)) or '.'
        present = sorted(os.listdir(parent)) if os.path.isdir(parent) else None
        where = (f'{parent} holds: {", ".join(present[:_SHOWN]) or "nothing"}' if present is not None else
                 f'{parent} does not exist either')
        raise SplitNotFoundError(f'{split_dir}: split directory not found ({where}); expected an ImageFolder '
                                 'tree with one subfolder per class, e.g. train/<class>/<image>.JPEG and '
                                 'val/<class>/<image>.JPEG.')
    entries = sorted(e for e in os.listdir(split_dir) if not _is_hidden(e))
    loose = [e for e in entries if not os.path.isdir(os.path.join(split_dir, e))]
    if loose:
        raise DatasetLayoutError(f'{split_dir}: {len(loose)} file(s) directly in the split directory '
                                 f'({", ".join(loose[:_SHOWN])}); expected only one subfolder per class, '
                                 'with the images inside.')
    if not entries:
        raise DatasetLayoutError(f'{split_dir}: no class folders; expected one subfolder per class.')
    return entries


def _class_files(class_dir: str) -> List[str]:
    """Every image under one class folder (recursively, sorted), relative to the class folder's parent."""
    split_dir, class_name = os.path.split(class_dir)
    files, not_images = [], []
    for root, dirs, names in os.walk(class_dir, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
        for name in sorted(n for n in names if not _is_hidden(n)):
            path = os.path.relpath(os.path.join(root, name), split_dir)
            (files if name.lower().endswith(IMAGE_EXTENSIONS) else not_images).append(path)
    if not_images:
        raise DatasetLayoutError(f'{split_dir}: {len(not_images)} file(s) that are not images '
                                 f'({", ".join(not_images[:_SHOWN])}); expected only files ending in '
                                 f'{", ".join(IMAGE_EXTENSIONS)} (any case) inside the class folders.')
    if not files:
        raise DatasetLayoutError(f'{class_dir}: empty class folder; every class folder must hold at least one '
                                 f'image ({", ".join(IMAGE_EXTENSIONS)}). Remove the folder or add its images.')
    return files


def _check_sibling_classes(split_dir: str, classes: Sequence[str]) -> None:
    """Labels are class indices, so train and val must name the same classes or labels silently differ."""
    datadir, split = os.path.split(split_dir.rstrip(os.sep))
    for other in SPLITS.values():
        other_dir = os.path.join(datadir, other)
        if other == split or not os.path.isdir(other_dir):
            continue
        other_classes = sorted(e for e in os.listdir(other_dir)
                               if not _is_hidden(e) and os.path.isdir(os.path.join(other_dir, e)))
        if other_classes != list(classes):
            only_here = sorted(set(classes) - set(other_classes))[:_SHOWN]
            only_there = sorted(set(other_classes) - set(classes))[:_SHOWN]
            raise DatasetLayoutError(f'{split_dir} and {other_dir} have different class folders (only in {split}: '
                                     f'{only_here or "none"}; only in {other}: {only_there or "none"}); expected '
                                     'the same classes in every split, since labels are class indices.')


def scan_split(split_dir: str) -> Tuple[List[str], List[str], List[int]]:
    """Check an ImageFolder split and list it: ``(classes, relative image paths, labels)``, all sorted.

    The order depends only on the file names, so every process of a run sees the same indices.
    """
    classes = _list_classes(split_dir)
    _check_sibling_classes(split_dir, classes)
    paths: List[str] = []
    labels: List[int] = []
    for label, name in enumerate(classes):
        files = _class_files(os.path.join(split_dir, name))
        paths.extend(files)
        labels.extend([label] * len(files))
    return classes, paths, labels


class ImageFolderDataset(Dataset):
    """One split of an ImageFolder tree: ``(uint8 CHW image, int label)`` per index.

    Paths and labels are kept in numpy arrays rather than Python lists, so forked DataLoader workers do not
    copy them page by page as reference counts change (1.28M paths for ImageNet). A training transform's
    :class:`~composer_efficientnet.data.transforms.StageSettings` is the dataset's ``stage`` (None otherwise),
    taken once per batch.
    """

    def __init__(self, split_dir: str, transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 strict: bool = False) -> None:
        self.root = split_dir
        self.classes, paths, labels = scan_split(split_dir)
        self._paths = np.array([p.encode('utf-8') for p in paths])
        self._labels = np.array(labels, dtype=np.int64)
        self.transform = transform
        self.strict = strict
        self.bad_samples = BadSampleTracker()
        self.stage: Optional[StageSettings] = getattr(transform, 'stage', None)

    def __len__(self) -> int:
        return len(self._labels)

    def __getitems__(self, indices: Sequence[int]) -> List[Tuple[torch.Tensor, int]]:
        """One batch (the DataLoader's fetcher calls this), all at the stage's settings of its start."""
        start_batch(self.transform)
        return [self[index] for index in indices]

    def path(self, index: int) -> str:
        """The file behind sample ``index``."""
        return os.path.join(self.root, self._paths[index].decode('utf-8'))

    def _load(self, index: int) -> Tuple[torch.Tensor, int]:
        return decode_image_bytes(read_file(self.path(index))), int(self._labels[index])

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image, label = load_or_replace(index, len(self), self._load, self.path, self.bad_samples, self.strict)
        return (self.transform(image) if self.transform is not None else image), label


def build_imagenet_dataspec(datadir: str, is_train: bool = True, resize_size: int = -1,
                            crop_size: Optional[int] = None, shuffle: Optional[bool] = None,
                            drop_last: Optional[bool] = None, augment: Optional[str] = None, strict: bool = False,
                            interpolation: Interpolation = 'bilinear', mean: Optional[Sequence[float]] = None,
                            std: Optional[Sequence[float]] = None, *,
                            batch_size: int, seed: int = 17, dataloader_kwargs: Optional[Dict[str, Any]] = None,
                            model_resolution: int = 224) -> DataSpec:
    """ImageNet (or any ImageFolder tree) from ``datadir/train`` or ``datadir/val``, uint8 out of the workers.

    ``crop_size`` defaults to the model's native resolution; ``shuffle`` and ``drop_last`` default to
    ``is_train``; ``augment`` adds ``autoaugment`` or ``randaugment`` to training; ``strict`` makes an
    unreadable image an error instead of a skipped, counted sample; ``interpolation`` is the resizes'
    (``bicubic`` to evaluate torchvision's or timm's weights as they were); ``mean`` and ``std`` normalize on the
    device (ImageNet's by default; torchvision's EfficientNetV2-L weights use 0.5, 0.5, 0.5 for both). See
    :func:`~composer_efficientnet.data.transforms.image_transform` for the transforms.
    """
    normalize = normalize_on_device(mean, std)
    crop_size = model_resolution if crop_size is None else crop_size
    transform = image_transform(is_train, crop_size, resize_size, augment, interpolation)
    dataset = ImageFolderDataset(os.path.join(datadir, SPLITS[is_train]), transform=transform, strict=strict)
    loader = make_dataloader(dataset, batch_size=batch_size, shuffle=is_train if shuffle is None else shuffle,
                             drop_last=is_train if drop_last is None else drop_last, seed=seed,
                             dataloader_kwargs=dataloader_kwargs)
    return make_dataspec(loader, transform=normalize)
