"""One way to turn a dataset into a per-process DataLoader and a Composer DataSpec, shared by every builder."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Union

from composer.core import DataSpec
from composer.devices import Device
from composer.utils import dist, get_device
from torch.utils.data import DataLoader, Dataset

from composer_efficientnet.data.transforms import NormalizeOnDevice

__all__ = ['DeviceDataSpec', 'make_dataloader', 'make_dataspec', 'loader_kwargs']

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


class DeviceDataSpec(DataSpec):
    """A Composer DataSpec whose device transform (uint8 images to normalized float) runs on the device before
    any algorithm sees the batch, once :meth:`place_on` has named the run's device.

    Composer 0.32 runs ``batch_transforms`` on the host batch, before ``Event.AFTER_DATALOADER``, and copies to
    the device only per microbatch, just before ``microbatch_transforms`` and ``Event.BEFORE_FORWARD``; its
    evaluation loop does the same. Algorithms that read or change the batch at ``AFTER_DATALOADER`` (cutout,
    colout, progressive resizing, selective backprop) would see uint8 host images there. Placed, the DataSpec's
    ``batch_transforms`` copies the uint8 batch to the device and applies ``transform`` there, so every event,
    in training and evaluation, sees normalized float images on the device, and Composer's per-microbatch copy
    finds them already there. Unplaced (a DataSpec handed to a Trainer by hand), ``transform`` runs on each
    microbatch after Composer's copy, and algorithms at ``AFTER_DATALOADER`` see the host's uint8 batch.
    """

    def __init__(self, dataloader: Iterable, transform: Callable[[Any], Any], **kwargs: Any) -> None:
        super().__init__(dataloader, microbatch_transforms=transform, **kwargs)
        self.transform = transform
        self.device: Optional[Device] = None

    def place_on(self, device: Union[str, Device]) -> None:
        """Copy each batch to ``device`` (``'cpu'``, ``'gpu'``, ``'mps'`` or a Composer Device: the Trainer's)
        and transform it there, before ``Event.AFTER_DATALOADER`` and ``Event.EVAL_BATCH_START``."""
        self.device = get_device(device)
        self.batch_transforms = self._copy_and_transform
        self.microbatch_transforms = self._default_transforms

    def _copy_and_transform(self, batch: Any) -> Any:
        assert self.device is not None
        return self.transform(self.device.batch_to_device(batch))


def make_dataspec(loader: Iterable, transform: Optional[Callable[[Any], Any]] = None,
                  **kwargs: Any) -> DeviceDataSpec:
    """A :class:`DeviceDataSpec` with device-side ``transform`` (default :class:`NormalizeOnDevice`).

    ``kwargs`` go to :class:`~composer.core.DataSpec`. The recipe runner places it on the run's device.
    """
    return DeviceDataSpec(loader, transform if transform is not None else NormalizeOnDevice(), **kwargs)
