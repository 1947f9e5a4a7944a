"""Image transforms: decoding and augmentation on the host (uint8 out), conversion on the device.

Workers decode, crop and flip, and return uint8 CHW tensors; :class:`NormalizeOnDevice` makes them float,
normalized and channels_last after the host-to-device copy. That moves a quarter of the bytes a float
pipeline would and takes the conversion off the data-loading workers (``benchmarks/data_pipeline.py``
measures both).
"""

from __future__ import annotations

from collections import abc
from typing import Any, Callable, Dict, Literal, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import RandomResizedCrop as _RandomResizedCropV1
from torchvision.transforms import v2

__all__ = ['IMAGENET_MEAN', 'IMAGENET_STD', 'AUGMENTATIONS', 'VAL_CROP_FRACTION', 'Interpolation',
           'NormalizeOnDevice', 'RandomResizedCropFlip', 'ResizeShorterSide', 'StageSettings', 'TrainTransform',
           'decode_image_bytes', 'MAX_IMAGE_PIXELS', 'ImageSize', 'ImageTooLargeError', 'encoded_image_size',
           'check_image_pixels', 'check_max_image_pixels', 'resize_uint8', 'image_transform', 'val_resize_size',
           'check_augment', 'normalize_on_device', 'start_batch']

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


#: The default most pixels an image may have to be decoded: Pillow's own default ``Image.MAX_IMAGE_PIXELS``
#: (89,478,485, a quarter GiB of 24-bit pixels), above which a PIL-based pipeline (torchvision's ImageFolder
#: loader) warns of a decompression bomb; a tree that loads there without warnings loads here. Decoded, such an
#: image is 256 MiB of RGB pixels (up to about 3x that while a 16-bit PNG or a GIF is converted), per DataLoader
#: worker; an 89 Mpx photograph is larger than any ImageNet image and most cameras' (a 61 Mpx full-frame sensor
#: is 9504 x 6336). The datasets' ``max_image_pixels`` and predict's ``--max-image-pixels`` change it.
MAX_IMAGE_PIXELS = 89_478_485


class ImageSize(NamedTuple):
    """An encoded image's size as its header gives it: the first frame's ``width`` and ``height``, the number
    of ``frames`` the decoder would decode (GIF: every frame; else 1), and ``pixels``, all frames' together."""
    width: int
    height: int
    frames: int
    pixels: int

    def __str__(self) -> str:
        if self.frames <= 1:
            return f'{self.width} x {self.height} pixels ({self.pixels:,})'
        same = self.pixels == self.frames * self.width * self.height
        return (f'{self.frames} frames of {"" if same else "(the first) "}{self.width} x {self.height} pixels '
                f'({self.pixels:,} in all)')


class ImageTooLargeError(ValueError):
    """An image whose header gives more pixels than the limit; raised before anything is decoded.

    A ValueError, so a dataset skips and counts it as a bad sample (or names it in ``strict`` mode) like an
    image that cannot be decoded. The message gives the size and the limit; callers add how to change it.
    """

    def __init__(self, size: ImageSize, limit: int) -> None:
        super().__init__(f'{size} is more than the limit of {limit:,} pixels')
        self.size, self.limit = size, limit


_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0-SOF15 less DHT, JPG, DAC
_JPEG_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD8)) | {0x01}  # RST0-RST7, TEM: no length field


def _be16(view: memoryview, at: int) -> int:
    return view[at] << 8 | view[at + 1]


def _le16(view: memoryview, at: int) -> int:
    return view[at] | view[at + 1] << 8


def _jpeg_size(view: memoryview) -> Optional[Tuple[int, int]]:
    """The frame header's width and height, found by walking the marker segments before the first scan as
    libjpeg does (bytes between segments skipped, fill bytes ignored); None when there is none."""
    at, end = 2, len(view)
    while at < end:
        while at < end and view[at] != 0xFF:  # libjpeg skips (and warns about) bytes before a marker
            at += 1
        while at < end and view[at] == 0xFF:
            at += 1
        if at >= end:
            return None
        marker = view[at]
        at += 1
        if marker in _JPEG_FRAME_MARKERS:
            return (_be16(view, at + 5), _be16(view, at + 3)) if at + 7 <= end else None
        if marker in (0xD9, 0xDA):  # end of image, or a scan, before any frame header
            return None
        if marker == 0 or marker in _JPEG_STANDALONE_MARKERS:
            continue
        if at + 2 > end or _be16(view, at) < 2:
            return None
        at += _be16(view, at)
    return None


def _gif_size(view: memoryview, limit: Optional[int]) -> Optional[ImageSize]:
    """The first frame's size and the pixels of all frames, from the image descriptors: giflib (torchvision's
    decoder) decodes every frame at its own size. Walking stops once ``limit`` is passed, or where the data
    ends or is malformed (the decoder stops there too)."""
    end = len(view)
    if end < 13:
        return None
    at = 13 + ((3 << (view[10] & 7) + 1) if view[10] & 0x80 else 0)  # after the global color table
    first: Optional[Tuple[int, int]] = None
    frames = pixels = 0

    def skip_sub_blocks(at: int) -> int:
        while at < end and view[at]:
            at += view[at] + 1
        return at + 1

    while at < end:
        kind = view[at]
        if kind == 0x21 and at + 1 < end:  # an extension: label, then sub-blocks
            at = skip_sub_blocks(at + 2)
        elif kind == 0x2C and at + 10 <= end:  # an image descriptor: position, size, flags
            width, height, flags = _le16(view, at + 5), _le16(view, at + 7), view[at + 9]
            first = first or (width, height)
            frames, pixels = frames + 1, pixels + width * height
            if limit is not None and pixels > limit:
                break
            at += 10 + ((3 << (flags & 7) + 1) if flags & 0x80 else 0)
            at = skip_sub_blocks(at + 1)  # after the LZW code size, the image data
        else:  # the trailer, a truncated record or one giflib refuses
            break
    if first is None:
        return ImageSize(_le16(view, 6), _le16(view, 8), 0, 0)  # no frame: nothing to decode (the decoder fails)
    return ImageSize(first[0], first[1], frames, pixels)


def _webp_size(view: memoryview) -> Optional[Tuple[int, int]]:
    """The canvas size of an extended WebP (``VP8X``), else the lossy or lossless bitstream's."""
    chunk = bytes(view[12:16])
    if chunk == b'VP8X' and len(view) >= 30:
        return (1 + (view[24] | view[25] << 8 | view[26] << 16), 1 + (view[27] | view[28] << 8 | view[29] << 16))
    if chunk == b'VP8 ' and len(view) >= 30 and bytes(view[23:26]) == b'\x9d\x01\x2a':
        return _le16(view, 26) & 0x3FFF, _le16(view, 28) & 0x3FFF
    if chunk == b'VP8L' and len(view) >= 25 and view[20] == 0x2F:
        bits = view[21] | view[22] << 8 | view[23] << 16 | view[24] << 24
        return 1 + (bits & 0x3FFF), 1 + (bits >> 14 & 0x3FFF)
    return None


def encoded_image_size(data: torch.Tensor, limit: Optional[int] = None) -> Optional[ImageSize]:
    """The size an encoded image (a 1-D uint8 tensor) decodes to, read from its header without decoding.

    The format is told by the signature ``torchvision.io.decode_image`` dispatches on (JPEG, PNG, GIF, WebP);
    None for bytes of another format, which the decoder refuses. Raises ValueError for a known format whose
    header gives no size (a damaged file, which the decoder would refuse too). ``limit`` only lets a GIF's
    frames stop being counted once they pass it.
    """
    view = memoryview(data.numpy()) if data.numel() else memoryview(b'')
    head = bytes(view[:16])
    if head[:3] == b'\xff\xd8\xff':
        size, kind = _jpeg_size(view), 'JPEG'
    elif head[:4] == b'\x89PNG':
        size, kind = ((int.from_bytes(view[16:20], 'big'), int.from_bytes(view[20:24], 'big'))
                      if len(view) >= 24 and head[12:16] == b'IHDR' else None), 'PNG'
    elif head[:6] in (b'GIF87a', b'GIF89a'):
        gif, kind = _gif_size(view, limit), 'GIF'
        if gif is not None:
            return gif
        size = None
    elif head[:4] == b'RIFF' and head[8:15] == b'WEBPVP8':
        size, kind = _webp_size(view), 'WebP'
    else:
        return None
    if size is None:
        raise ValueError(f'damaged {kind} header: it gives no image size')
    return ImageSize(size[0], size[1], 1, size[0] * size[1])


def check_max_image_pixels(limit: Optional[int], name: str = 'max_image_pixels') -> None:
    """Raise a ValueError naming ``name`` unless ``limit`` is a positive number of pixels or None (no limit)."""
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f'{name}: must be a positive number of pixels, or null for no limit (default '
                         f'{MAX_IMAGE_PIXELS:,}, Pillow\'s), got {limit!r}.')


def check_image_pixels(data: torch.Tensor, limit: Optional[int] = MAX_IMAGE_PIXELS) -> None:
    """Raise :class:`ImageTooLargeError` if the encoded image's header gives more than ``limit`` pixels (all
    frames together), before anything is decoded; None is no limit. See :func:`encoded_image_size`."""
    if limit is None:
        return
    size = encoded_image_size(data, limit)
    if size is not None and size.pixels > limit:
        raise ImageTooLargeError(size, limit)


def decode_image_bytes(data: torch.Tensor, max_pixels: Optional[int] = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Encoded image bytes (a 1-D uint8 tensor) to a uint8 RGB CHW tensor.

    ``torchvision.io.decode_image`` (libjpeg-turbo for JPEG; PNG, WebP and GIF too, grayscale and CMYK
    converted to RGB) decodes 1.1-1.5x faster than PIL in ``benchmarks/data_pipeline.py`` and yields a tensor
    the uint8 resize takes directly. Both the ImageFolder and the streaming path use it, so identical bytes
    give identical pixels. An animated GIF gives its first frame (as PIL does), a 16-bit PNG its top 8 bits.

    An image whose header gives more than ``max_pixels`` pixels (:data:`MAX_IMAGE_PIXELS` by default; None for
    no limit) raises :class:`ImageTooLargeError` before it is decoded: a small file can hold a huge image (a
    1.2 MB PNG of 20000 x 20000 pixels decodes to 1.2 GB). The limit is an argument, not a global setting, so
    that a dataset carries its own into DataLoader worker processes, forked or spawned.
    Raises RuntimeError or ValueError on bytes it cannot decode.
    """
    check_image_pixels(data, max_pixels)
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
