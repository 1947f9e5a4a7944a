"""ImageNet from MosaicML Streaming (MDS) shards as a DataSpec, however the shards were written.

Reading goes through ``streaming.StreamingDataset``, which partitions samples over nodes, processes and
workers deterministically, caches shards from a remote (a local directory or any object store it supports) in
``local``, and resumes mid-epoch. The shards may come from ``composer-efficientnet convert-dataset`` (see
:mod:`composer_efficientnet.data.convert`), from Streaming's own ImageNet converter or from any ``MDSWriter``
script: the image and label columns are parameters, the image may be encoded as ``bytes``, ``jpeg``, ``png``,
``pil`` or ``ndarray``, and other columns are ignored. ``mosaicml-streaming`` is the optional extra
``composer-efficientnet[streaming]``; it is imported only when these functions run.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

from composer.core import DataSpec

from composer_efficientnet.data.errors import OptionalDependencyError, SplitNotFoundError
from composer_efficientnet.data.imagefolder import SPLITS
from composer_efficientnet.data.loading import loader_kwargs, make_dataspec
from composer_efficientnet.data.transforms import Interpolation, image_transform, normalize_on_device

__all__ = ['build_streaming_imagenet_dataspec', 'require_streaming', 'is_url', 'split_location']


def require_streaming() -> Any:
    """The ``streaming`` module, or an error saying how to install the optional extra."""
    try:
        import streaming
    except ImportError as error:
        raise OptionalDependencyError("Streaming (MDS) data needs the optional package 'mosaicml-streaming', "
                                      "which is not installed; install it with "
                                      "pip install 'composer-efficientnet[streaming]'.") from error
    return streaming


def is_url(location: str) -> bool:
    """Whether ``location`` is an object store URL (``s3://...``) rather than a local path."""
    return '://' in location


def split_location(location: str, split: str) -> str:
    """The directory or URL of ``split`` under ``location``."""
    return f"{location.rstrip('/')}/{split}" if is_url(location) else os.path.join(location, split)


def _check_shards(remote: Optional[str], local: Optional[str], split: str) -> None:
    """Fail at build time, naming the path, when local shards that must already exist are missing."""
    if remote is None and local is None:
        raise ValueError('streaming_imagenet: set remote (where the shards are: a directory or an object store '
                         'URL), local (a cache directory, or the shards themselves), or both.')
    location = remote if remote is not None else local
    if not is_url(location):
        index = os.path.join(location, split, 'index.json')
        if not os.path.isfile(index):
            raise SplitNotFoundError(f'{index}: MDS index not found; expected MDS shards of the {split} split '
                                     f'there, such as `composer-efficientnet convert-dataset --src IMAGEFOLDER '
                                     f'--out {location}` or Streaming\'s ImageNet converter writes.')


def build_streaming_imagenet_dataspec(remote: Optional[str] = None, local: Optional[str] = None,
                                      is_train: bool = True, split: Optional[str] = None, resize_size: int = -1,
                                      crop_size: Optional[int] = None, augment: Optional[str] = None,
                                      shuffle: Optional[bool] = None, drop_last: Optional[bool] = None,
                                      strict: bool = False, cache_limit: Optional[str] = None,
                                      predownload: Optional[int] = None, interpolation: Interpolation = 'bilinear',
                                      image_key: str = 'x', label_key: str = 'y', allow_unsafe_types: bool = False,
                                      mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                                      *, batch_size: int, seed: int = 17,
                                      dataloader_kwargs: Optional[Dict[str, Any]] = None,
                                      model_resolution: int = 224,
                                      model_num_classes: Optional[int] = None) -> DataSpec:
    """ImageNet from MDS shards, with the ImageFolder path's transforms and uint8 out of the workers.

    ``split`` defaults to ``train`` or ``val`` from ``is_train``. A local ``remote`` with no ``local`` is read
    in place; otherwise shards are copied from ``remote`` into ``local`` (``cache_limit`` bounds that cache,
    e.g. ``'100gb'``). The shuffle is StreamingDataset's, seeded with the recipe's seed.

    The image is the column ``image_key`` (``bytes``, ``jpeg``, ``png``, ``pil`` or uint8 ``ndarray``), the
    class index the column ``label_key``; the columns are checked when the dataset is built, before any worker
    starts. Streaming opens shards with pickled (``pkl``) columns only when ``allow_unsafe_types`` declares them
    trusted; extra columns, pickled or not, are never decoded. ``mean`` and ``std`` (3 numbers each; ImageNet's
    by default) are the normalization applied on the device. See
    :func:`~composer_efficientnet.data.imagefolder.build_imagenet_dataspec` for the transform parameters.

    Shards from others are checked as they are read: every shard file name in the split's ``index.json`` must
    stay inside the split (checked before Streaming touches a shard; a remote index as soon as it is downloaded),
    a label outside ``[0, model_num_classes)`` (the model's ``num_classes``, which the recipe runner passes; any
    negative label without it) stops the run with one line naming the sample, and a sample that cannot be read
    out of a truncated or damaged shard is a bad sample, replaced and counted (named, with ``strict``). MDS
    indexes record no range of a column's values, so labels can only be checked as they are read.
    """
    streaming = require_streaming()
    from composer_efficientnet.data._streaming_dataset import StreamingImageDataset

    split = SPLITS[is_train] if split is None else split
    _check_shards(remote, local, split)
    if remote is not None and local is None and not is_url(remote):
        remote, local = None, remote
    crop_size = model_resolution if crop_size is None else crop_size
    transform = image_transform(is_train, crop_size, resize_size, augment, interpolation)
    normalize = normalize_on_device(mean, std)
    dataset = StreamingImageDataset(transform=transform, strict=strict, image_key=image_key, label_key=label_key,
                                    allow_unsafe_types=allow_unsafe_types, num_classes=model_num_classes,
                                    remote=remote, local=local, split=split,
                                    shuffle=is_train if shuffle is None else shuffle, shuffle_seed=seed,
                                    batch_size=batch_size, cache_limit=cache_limit, predownload=predownload)
    loader = streaming.StreamingDataLoader(dataset, batch_size=batch_size,
                                           drop_last=is_train if drop_last is None else drop_last,
                                           **loader_kwargs(dataloader_kwargs))
    return make_dataspec(loader, normalize, num_samples=dataset.epoch_size)
