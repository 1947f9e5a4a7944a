"""Activation memory: the bytes autograd keeps for backward in a training forward, counted with saved-tensor
hooks. Counted on the meta device it computes nothing and is the same on every machine; ``composer-efficientnet
info`` (the memory table) and the benchmark's rows (``act MB``) both report it."""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

__all__ = ['activation_bytes_per_image']


def activation_bytes_per_image(model: nn.Module, resolution: int, channels_last: bool = False,
                               images: int = 2) -> float:
    """Bytes of the tensors autograd saves for backward in one float32 training forward, per image: parameters,
    and storage saved twice, counted once. Build ``model`` on the meta device to count without computing.

    Args:
        model: the module, put in training mode here; the batch is made on its parameters' device.
        resolution: the images' side in pixels.
        channels_last: count with a channels_last batch.
        images: the batch size counted (the count per image is the same for any batch of 2 or more).
    """
    parameters = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: Dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters:
            saved[storage._cdata] = storage.nbytes()
        return tensor

    device = next(model.parameters()).device
    batch = torch.zeros(images, 3, resolution, resolution, device=device)
    batch = batch.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.train()(batch)
    return sum(saved.values()) / images
