"""One way to turn a map-style dataset into a per-process DataLoader, shared by every builder."""

from __future__ import annotations

from typing import Any, Dict, Optional

from composer.utils import dist
from torch.utils.data import DataLoader, Dataset

__all__ = ['make_dataloader']

_WORKER_ONLY = ('prefetch_factor', 'persistent_workers', 'timeout')


def make_dataloader(dataset: Dataset, *, batch_size: int, shuffle: bool, drop_last: bool, seed: int,
                    dataloader_kwargs: Optional[Dict[str, Any]] = None, **extra: Any) -> DataLoader:
    """A DataLoader over this process's disjoint share of ``dataset``, reshuffled per epoch from ``seed``.

    ``dataloader_kwargs`` is the recipe's ``dataloader`` section; options that only mean something with
    worker processes are dropped when ``num_workers`` is 0 rather than rejected by PyTorch.
    """
    kwargs = dict(dataloader_kwargs or {}, **extra)
    if not kwargs.get('num_workers'):
        for key in _WORKER_ONLY:
            kwargs.pop(key, None)
    sampler = dist.get_sampler(dataset, shuffle=shuffle, drop_last=drop_last, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **kwargs)
