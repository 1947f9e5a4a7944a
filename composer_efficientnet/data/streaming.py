"""ImageNet in MosaicML Streaming (MDS) shards: conversion from an ImageFolder tree, and the DataSpec.

Shards hold the original encoded bytes (JPEG for ImageNet), not decoded pixels, so they are as small as the
source tree. Reading goes through ``streaming.StreamingDataset``, which partitions samples over nodes,
processes and workers deterministically, caches shards from a remote (a local directory or any object store
it supports) in ``local``, and resumes mid-epoch. ``mosaicml-streaming`` is the optional extra
``composer-efficientnet[streaming]``; it is imported only when these functions run.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional, Sequence, Union

from composer.core import DataSpec

from composer_efficientnet.data.errors import OptionalDependencyError, SplitNotFoundError
from composer_efficientnet.data.imagefolder import SPLITS, scan_split
from composer_efficientnet.data.loading import loader_kwargs, make_dataspec
from composer_efficientnet.data.transforms import Interpolation, image_transform

__all__ = ['MDS_COLUMNS', 'convert_imagefolder_to_mds', 'build_streaming_imagenet_dataspec', 'require_streaming']

log = logging.getLogger(__name__)

#: The columns of every shard: encoded image bytes, class index, and the source path for error messages.
MDS_COLUMNS = {'x': 'bytes', 'y': 'int', 'path': 'str'}


def require_streaming() -> Any:
    """The ``streaming`` module, or an error saying how to install the optional extra."""
    try:
        import streaming
    except ImportError as error:
        raise OptionalDependencyError("Streaming (MDS) data needs the optional package 'mosaicml-streaming', "
                                      "which is not installed; install it with "
                                      "pip install 'composer-efficientnet[streaming]'.") from error
    return streaming


def _is_url(location: str) -> bool:
    return '://' in location


def _join(location: str, split: str) -> str:
    return f"{location.rstrip('/')}/{split}" if _is_url(location) else os.path.join(location, split)


def convert_imagefolder_to_mds(src: str, out: str, splits: Sequence[str] = tuple(SPLITS.values()),
                               size_limit: Union[int, str] = '64mb',
                               compression: Optional[str] = None) -> Dict[str, int]:
    """Write each split of the ImageFolder tree ``src`` that exists (``train``, ``val``) as MDS shards under
    ``out/<split>``; returns the number of samples written per split.

    Each split is checked as :func:`~composer_efficientnet.data.imagefolder.scan_split` checks it, and
    labels are the same class indices the ImageFolder path uses. ``out`` may be a local directory or any
    remote ``streaming.MDSWriter`` accepts; a local split directory must be empty or absent.
    """
    streaming = require_streaming()
    present = [split for split in splits if os.path.isdir(os.path.join(src, split))]
    if not present:
        raise SplitNotFoundError(f'{src}: none of the splits {", ".join(splits)} exists there; expected an '
                                 'ImageFolder tree such as train/<class>/<image>.JPEG.')
    scanned = {}  # every split is checked before anything is written, so a bad tree leaves no shards behind
    for split in present:
        split_out = _join(out, split)
        if not _is_url(split_out) and os.path.isdir(split_out) and os.listdir(split_out):
            raise FileExistsError(f'{split_out}: output directory is not empty; expected an empty or missing '
                                  'directory (remove it to convert again).')
        scanned[split] = scan_split(os.path.join(src, split))[1:]
    counts: Dict[str, int] = {}
    for split, (paths, labels) in scanned.items():
        split_dir, split_out = os.path.join(src, split), _join(out, split)
        log.info('Writing %d samples of %s to %s', len(paths), split_dir, split_out)
        with streaming.MDSWriter(out=split_out, columns=MDS_COLUMNS, compression=compression,
                                 size_limit=size_limit) as writer:
            for path, label in zip(paths, labels):
                with open(os.path.join(split_dir, path), 'rb') as file:
                    writer.write({'x': file.read(), 'y': label, 'path': path})
        counts[split] = len(paths)
    return counts


def _check_shards(remote: Optional[str], local: Optional[str], split: str) -> None:
    """Fail at build time, naming the path, when local shards that must already exist are missing."""
    if remote is None and local is None:
        raise ValueError('streaming_imagenet: set remote (where the shards are: a directory or an object store '
                         'URL), local (a cache directory, or the shards themselves), or both.')
    location = remote if remote is not None else local
    if not _is_url(location):
        index = os.path.join(location, split, 'index.json')
        if not os.path.isfile(index):
            raise SplitNotFoundError(f'{index}: MDS index not found; expected shards written by '
                                     f'`composer-efficientnet convert-dataset --src IMAGEFOLDER --out {location}` '
                                     f'with a {split}/ split.')


def build_streaming_imagenet_dataspec(remote: Optional[str] = None, local: Optional[str] = None,
                                      is_train: bool = True, split: Optional[str] = None, resize_size: int = -1,
                                      crop_size: Optional[int] = None, augment: Optional[str] = None,
                                      shuffle: Optional[bool] = None, drop_last: Optional[bool] = None,
                                      strict: bool = False, cache_limit: Optional[str] = None,
                                      predownload: Optional[int] = None, interpolation: Interpolation = 'bilinear',
                                      *, batch_size: int, seed: int = 17,
                                      dataloader_kwargs: Optional[Dict[str, Any]] = None,
                                      model_resolution: int = 224) -> DataSpec:
    """ImageNet from MDS shards, with the ImageFolder path's transforms and uint8 out of the workers.

    ``split`` defaults to ``train`` or ``val`` from ``is_train``. A local ``remote`` with no ``local`` is read
    in place; otherwise shards are copied from ``remote`` into ``local`` (``cache_limit`` bounds that cache,
    e.g. ``'100gb'``). The shuffle is StreamingDataset's, seeded with the recipe's seed.
    """
    streaming = require_streaming()
    from composer_efficientnet.data._streaming_dataset import StreamingImageDataset

    split = SPLITS[is_train] if split is None else split
    _check_shards(remote, local, split)
    if remote is not None and local is None and not _is_url(remote):
        remote, local = None, remote
    crop_size = model_resolution if crop_size is None else crop_size
    transform = image_transform(is_train, crop_size, resize_size, augment, interpolation)
    dataset = StreamingImageDataset(transform=transform,
                                    strict=strict, remote=remote, local=local, split=split,
                                    shuffle=is_train if shuffle is None else shuffle, shuffle_seed=seed,
                                    batch_size=batch_size, cache_limit=cache_limit, predownload=predownload)
    loader = streaming.StreamingDataLoader(dataset, batch_size=batch_size,
                                           drop_last=is_train if drop_last is None else drop_last,
                                           **loader_kwargs(dataloader_kwargs))
    return make_dataspec(loader, num_samples=dataset.epoch_size)
