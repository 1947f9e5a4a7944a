"""Image transforms: decoding and augmentation on the host (uint8 out), conversion on the device.

Workers decode, crop and flip, and return uint8 CHW tensors; :class:`NormalizeOnDevice` makes them float,
normalized and channels_last after the host-to-device copy. That moves a quarter of the bytes a float
pipeline would and takes the conversion off the data-loading workers (``benchmarks/data_pipeline.py``
measures both).
"""

from __future__ import annotations

from collections import abc
from typing import Any, Callable, Dict, Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import RandomResizedCrop as _RandomResizedCropV1
from torchvision.transforms import v2

__all__ = ['IMAGENET_MEAN', 'IMAGENET_STD', 'AUGMENTATIONS', 'VAL_CROP_FRACTION', 'Interpolation', 'NormalizeOnDevice',
           'RandomResizedCropFlip', 'ResizeShorterSide', 'StageSettings', 'TrainTransform', 'decode_image_bytes',
           'resize_uint8', 'image_transform', 'val_resize_size', 'check_augment', 'normalize_on_device',
           'start_batch']

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Validation images are resized so that the center crop keeps this fraction of the shorter side.
VAL_CROP_FRACTION = 0.875

#: Resampling of every resize: Composer's recipes used bilinear; torchvision's and timm's EfficientNet weights
#: were evaluated with bicubic.
Interpolation = Literal['bilinear', 'bicubic']


def _autoaugment() -> v2.Transform:
    return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)


#: Training augmentation policies selectable by name (``augment:`` in a recipe), after crop and flip.
AUGMENTATIONS: Dict[str, Callable[[], v2.Transform]] = {
    'autoaugment': _autoaugment,
    'randaugment': v2.RandAugment,
}


def check_augment(augment: Optional[str]) -> None:
    """Raise a ValueError naming the allowed policies if ``augment`` is not one of them (or None)."""
    if augment is not None and augment not in AUGMENTATIONS:
        raise ValueError(f"augment: unknown policy '{augment}'; allowed: {', '.join(AUGMENTATIONS)} or null.")


def decode_image_bytes(data: torch.Tensor) -> torch.Tensor:
    """Encoded image bytes (a 1-D uint8 tensor) to a uint8 RGB CHW tensor.

    ``torchvision.io.decode_image`` (libjpeg-turbo for JPEG; PNG, WebP and GIF too, grayscale and CMYK
    converted to RGB) decodes 1.1-1.5x faster than PIL in ``benchmarks/data_pipeline.py`` and yields a tensor
    the uint8 resize takes directly. Both the ImageFolder and the streaming path use it, so identical bytes
    give identical pixels. An animated GIF gives its first frame (as PIL does), a 16-bit PNG its top 8 bits.
    Raises RuntimeError on bytes it cannot decode.
    """
    image = decode_image(data, mode=ImageReadMode.RGB)
    if image.ndim == 4:
        image = image[0]
    return v2.functional.to_dtype(image, torch.uint8, scale=True)


def _native_uint8_kernel() -> bool:
    # PyTorch's uint8 kernel is vectorized for AVX2 (so AVX-512 CPUs too); elsewhere the float path is faster.
    return torch.backends.cpu.get_cpu_capability() in ('AVX2', 'AVX512')


def resize_uint8(image: torch.Tensor, size: Tuple[int, int], interpolation: Interpolation = 'bilinear') -> torch.Tensor:
    """Antialiased resize of a uint8 CHW image to ``size`` (height, width), uint8 out.

    On x86 CPUs with AVX2 this runs PyTorch's native uint8 kernel on a channels_last view, about twice as
    fast as ``torchvision.transforms.v2.Resize``, which in torchvision 0.22 converts to float and back on
    AVX-512 machines (pytorch/vision#8374; most accelerator hosts). Results match it to within 1.
    """
    batch = image.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    if not _native_uint8_kernel():
        resized = F.interpolate(batch.float(), size=size, mode=interpolation, antialias=True, align_corners=False)
        return resized.round_().clamp_(0, 255).to(torch.uint8)[0]
    if batch.stride(0) != batch.numel():
        # A 1xCxHxW tensor is ambiguously channels_last; give it an explicit batch stride so that interpolate
        # allocates a channels_last output instead of re-packing it (torchvision does the same).
        batch = batch.as_strided(batch.shape, (batch.numel(), *batch.stride()[1:]))
    return F.interpolate(batch, size=size, mode=interpolation, antialias=True, align_corners=False)[0]


class RandomResizedCropFlip(torch.nn.Module):
    """Inception-style random crop (area ``scale``, aspect ``ratio``) resized to ``size`` square, then a
    horizontal flip with probability 0.5; torchvision's crop distribution, :func:`resize_uint8`'s speed."""

    def __init__(self, size: int, scale: Tuple[float, float] = (0.08, 1.0),
                 ratio: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
                 interpolation: Interpolation = 'bilinear') -> None:
        super().__init__()
        self.size, self.scale, self.ratio, self.interpolation = size, scale, ratio, interpolation

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        top, left, height, width = _RandomResizedCropV1.get_params(image, list(self.scale), list(self.ratio))
        crop = resize_uint8(image[:, top:top + height, left:left + width], (self.size, self.size), self.interpolation)
        return crop.flip(-1) if torch.rand(()) < 0.5 else crop


class ResizeShorterSide(torch.nn.Module):
    """Resize so that the shorter side is ``size``, keeping the aspect ratio (as ``v2.Resize(size)`` does)."""

    def __init__(self, size: int, interpolation: Interpolation = 'bilinear') -> None:
        super().__init__()
        self.size, self.interpolation = size, interpolation

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        if height <= width:
            return resize_uint8(image, (self.size, int(self.size * width / height)), self.interpolation)
        return resize_uint8(image, (int(self.size * height / width), self.size), self.interpolation)


class StageSettings:
    """The training images' side and RandAugment magnitude of the current progressive-learning stage, in shared
    memory, so that DataLoader workers (forked or spawned, persistent or not) read what the main process wrote.

    :class:`~composer_efficientnet.algorithms.ProgressiveLearning` writes it in the main process at fit start and
    at the start of each epoch, before Composer makes the epoch's iterator, so while no worker loads a training
    batch; datasets read it once per batch (:func:`start_batch`), so all images of a batch have one size even if
    it changed while a batch was being built. ``None`` (stored as 0) leaves the dataset's own setting.
    """

    def __init__(self) -> None:
        self._values = torch.zeros(2, dtype=torch.int64).share_memory_()

    def set(self, image_size: Optional[int] = None, magnitude: Optional[int] = None) -> None:
        """Make batches started from now on use ``image_size`` pixels and RandAugment ``magnitude`` (or the
        dataset's own where None)."""
        self._values.copy_(torch.tensor([image_size or 0, -1 if magnitude is None else magnitude]))

    def get(self) -> Tuple[Optional[int], Optional[int]]:
        """The image side and RandAugment magnitude set, each None where the dataset's own applies."""
        size, magnitude = self._values.tolist()
        return size or None, None if magnitude < 0 else magnitude


class TrainTransform(torch.nn.Module):
    """The training transform: random-resized crop and flip, then the optional ``augment`` policy, with the crop
    size and RandAugment magnitude of :attr:`stage` (re-read by :meth:`start_batch`), else the built ones."""

    def __init__(self, crop_size: int, augment: Optional[str] = None, interpolation: Interpolation = 'bilinear'
                 ) -> None:
        super().__init__()
        check_augment(augment)
        self.crop = RandomResizedCropFlip(crop_size, interpolation=interpolation)
        self.augment = AUGMENTATIONS[augment]() if augment is not None else None
        self.stage = StageSettings()
        self._built = (crop_size, getattr(self.augment, 'magnitude', None))

    def start_batch(self) -> None:
        """Take the stage's settings for the images that follow (the next batch)."""
        size, magnitude = self.stage.get()
        self.crop.size = size or self._built[0]
        if isinstance(self.augment, v2.RandAugment):
            self.augment.magnitude = self._built[1] if magnitude is None else magnitude

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        image = self.crop(image)
        return image if self.augment is None else self.augment(image)


def start_batch(transform: Any) -> None:
    """Let ``transform`` take the current stage's settings, if it follows stages (:class:`TrainTransform`)."""
    if isinstance(transform, TrainTransform):
        transform.start_batch()


def val_resize_size(crop_size: int, resize_size: int = -1) -> int:
    """The shorter side validation images are resized to before the center crop.

    ``resize_size`` when positive, else ``round(crop_size / 0.875)`` (256 for a 224 crop).
    """
    return resize_size if resize_size > 0 else int(round(crop_size / VAL_CROP_FRACTION))


def image_transform(is_train: bool, crop_size: int, resize_size: int = -1, augment: Optional[str] = None,
                    interpolation: Interpolation = 'bilinear') -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-image host transform, uint8 CHW in and uint8 CHW out.

    Train: random-resized crop to ``crop_size`` (area 8-100%, aspect 3/4-4/3), horizontal flip, then the
    optional ``augment`` policy (torchvision v2); ``resize_size`` is not used, as in Composer's original
    ImageNet recipe. The crop size and RandAugment magnitude follow progressive learning's stages
    (:class:`TrainTransform`). Validation: resize the shorter side to :func:`val_resize_size`, center-crop
    ``crop_size``.
    Every resize is antialiased, with ``interpolation``.
    """
    if crop_size < 1:
        raise ValueError(f'crop_size must be a positive number of pixels, got {crop_size}.')
    check_augment(augment)
    if not is_train:
        if augment is not None:
            raise ValueError(f"augment: '{augment}' augments training images only; held-out images (is_train: "
                             'false) are resized and center-cropped, so remove augment here.')
        return v2.Compose([ResizeShorterSide(val_resize_size(crop_size, resize_size), interpolation),
                           v2.CenterCrop(crop_size)])
    return TrainTransform(crop_size, augment, interpolation)


def normalize_on_device(mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None
                        ) -> 'NormalizeOnDevice':
    """The device transform of a dataset's ``mean`` and ``std`` parameters (ImageNet's where None), checked.

    Both are 3 numbers, red, green, blue, on the [0, 1] scale images are divided to first (as torchvision's
    and timm's weight metadata give them), std above 0. A ValueError names the parameter otherwise, so a
    0-255 scale mean (123.7, ...) is refused rather than silently giving images of the wrong range.
    """
    given = {'mean': IMAGENET_MEAN if mean is None else mean, 'std': IMAGENET_STD if std is None else std}
    for name, values in given.items():
        numbers = isinstance(values, abc.Sequence) and not isinstance(values, str) and len(values) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if not numbers or not all((0 < v <= 1) if name == 'std' else (0 <= v <= 1) for v in values):
            allowed = 'in (0, 1]' if name == 'std' else 'in [0, 1]'
            raise ValueError(f'{name}: must be 3 numbers {allowed} (red, green, blue, for pixels scaled to [0, 1]; '
                             f'ImageNet\'s: {", ".join(map(str, IMAGENET_MEAN if name == "mean" else IMAGENET_STD))}), '
                             f'got {values!r}.')
    return NormalizeOnDevice(given['mean'], given['std'])


class NormalizeOnDevice:
    """The device transform of our DataSpecs: uint8 NCHW images to normalized float, channels_last.

    :class:`~composer_efficientnet.data.loading.DeviceDataSpec` applies it on the device, to the whole batch
    before any algorithm sees it (once placed on the run's device), else to each microbatch. Images that are
    not uint8 (already float) pass through unnormalized, only changing memory format.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 channels_last: bool = True) -> None:
        # (x / 255 - mean) / std == x * scale + shift, one fused multiply-add per element.
        mean64 = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
        std64 = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
        self.scale = (1.0 / (255.0 * std64)).float()
        self.shift = (-mean64 / std64).float()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._on_device: Dict[torch.device, Tuple[torch.Tensor, torch.Tensor]] = {}

    def _constants(self, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (self.scale.to(device), self.shift.to(device))
        return self._on_device[device]

    def __call__(self, batch: Tuple[torch.Tensor, Any]) -> Tuple[torch.Tensor, Any]:
        images, targets = batch
        # Change layout while still one byte per element, then convert; .float() keeps the layout.
        images = images.contiguous(memory_format=self.memory_format)
        if images.dtype == torch.uint8:
            scale, shift = self._constants(images.device)
            images = torch.addcmul(shift, images.float(), scale)
            images = images.contiguous(memory_format=self.memory_format)
        return images, targets
