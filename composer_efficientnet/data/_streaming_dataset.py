"""The StreamingDataset subclass behind ``streaming_imagenet``.

Kept apart from :mod:`composer_efficientnet.data.streaming`, which imports this module only when streaming
data is used: ``mosaicml-streaming`` is an optional extra, and spawned DataLoader workers must be able to
import the class by name to unpickle the dataset.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from streaming import StreamingDataset

from composer_efficientnet.data.bad_samples import BadSampleTracker, load_or_replace
from composer_efficientnet.data.transforms import decode_image_bytes

__all__ = ['StreamingImageDataset']


class StreamingImageDataset(StreamingDataset):
    """MDS shards of ``{'x': encoded image bytes, 'y': int label, 'path': source path}`` as
    ``(uint8 CHW image, int label)`` samples, with the same bad-sample handling as the ImageFolder path."""

    def __init__(self, *, transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, strict: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transform = transform
        self.strict = strict
        self.bad_samples = BadSampleTracker()

    def _load(self, index: int) -> Tuple[torch.Tensor, int]:
        sample = super().get_item(index)
        return decode_image_bytes(torch.frombuffer(bytearray(sample['x']), dtype=torch.uint8)), int(sample['y'])

    def describe(self, index: int) -> str:
        """The sample's source path as recorded at conversion, with its shard location."""
        stream = self.streams[0]
        where = stream.remote or stream.local
        try:
            return f"{super().get_item(index)['path']} (sample {index} of {where}/{stream.split or ''})"
        except Exception:  # noqa: BLE001  (only a description for a message; never hide the real error)
            return f'sample {index} of {where}/{stream.split or ""}'

    def get_item(self, sample_id: int, retry: int = 7) -> Tuple[torch.Tensor, int]:
        image, label = load_or_replace(sample_id, self.num_samples, self._load, self.describe, self.bad_samples,
                                       self.strict)
        return (self.transform(image) if self.transform is not None else image), label
