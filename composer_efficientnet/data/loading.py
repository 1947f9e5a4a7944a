"""One way to turn a dataset into a per-process DataLoader and a Composer DataSpec, shared by every builder."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional

from composer.core import DataSpec
from composer.utils import dist
from torch.utils.data import DataLoader, Dataset

from composer_efficientnet.data.transforms import NormalizeOnDevice

__all__ = ['make_dataloader', 'make_dataspec', 'loader_kwargs']

_WORKER_ONLY = ('prefetch_factor', 'persistent_workers', 'timeout', 'multiprocessing_context')


def loader_kwargs(dataloader_kwargs: Optional[Dict[str, Any]] = None, **extra: Any) -> Dict[str, Any]:
    """The recipe's ``dataloader`` section plus ``extra``, without the options it unsets (null) and those that
    need worker processes when ``num_workers`` is 0 (PyTorch rejects them there rather than ignoring them)."""
    kwargs = {key: value for key, value in dict(dataloader_kwargs or {}, **extra).items() if value is not None}
    if not kwargs.get('num_workers'):
        for key in _WORKER_ONLY:
            kwargs.pop(key, None)
    return kwargs


def make_dataloader(dataset: Dataset, *, batch_size: int, shuffle: bool, drop_last: bool, seed: int,
                    dataloader_kwargs: Optional[Dict[str, Any]] = None, **extra: Any) -> DataLoader:
    """A DataLoader over this process's disjoint share of a map-style ``dataset``, reshuffled per epoch.

    The sampler is Composer's ``DistributedSampler`` (``dist.get_sampler``) seeded with ``seed``; the Trainer
    calls its ``set_epoch`` each epoch, so the order changes every epoch and is the same for a given seed.
    With ``drop_last`` false the sampler pads the last round with repeated samples so that every process
    gets the same number of batches (Composer's evaluation removes that padding from metrics).
    """
    sampler = dist.get_sampler(dataset, shuffle=shuffle, drop_last=drop_last, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      **loader_kwargs(dataloader_kwargs, **extra))


def make_dataspec(loader: Iterable, transform: Optional[Callable[[Any], Any]] = None, **kwargs: Any) -> DataSpec:
    """A DataSpec whose device-side transform (default :class:`NormalizeOnDevice`) runs on each microbatch.

    Composer 0.32 names this hook ``microbatch_transforms`` (applied after the copy to the device); there is
    no ``device_transforms`` argument any more. ``kwargs`` go to :class:`~composer.core.DataSpec`.
    """
    return DataSpec(loader, microbatch_transforms=transform if transform is not None else NormalizeOnDevice(),
                    **kwargs)
