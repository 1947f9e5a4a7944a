"""Host throughput of the ImageFolder training pipeline, per worker core: uint8 out versus float out.

Not a test. The benchmark writes its own JPEGs at ImageNet-like sizes (about 500x375, quality 90, cut from
the two photographs scikit-learn ships, so the content compresses like real photos) into a temporary
ImageFolder tree (about 50 KiB a file; ImageNet's average is about 110 KiB, so real files decode
somewhat slower), then runs each pipeline in this process (``num_workers=0``, one torch thread), which is
what one DataLoader worker process does on one core. Rows:

* ``train uint8`` (this package): read, ``torchvision.io.decode_image``, random-resized crop and flip with
  PyTorch's native uint8 resize; uint8 out.
* ``train float``: the same plus conversion to float and ImageNet normalization in the worker, the classic
  pipeline; it ships 4x the bytes to the device.
* ``train uint8 tv-v2``: the same decode with torchvision's own v2 ``RandomResizedCrop`` (which resizes via
  float on AVX-512 CPUs, pytorch/vision#8374).
* ``train uint8 PIL``: PIL decode and the v2 transforms on PIL images (Pillow's resize).
* ``val uint8`` / ``val uint8 tv-v2`` / ``val uint8 PIL``: resize to 256 and center-crop 224, likewise.
* ``decode`` / ``decode PIL``: decoding alone.

Each row is timed over a full pass through the images, several rounds interleaved with the other rows; the
median and best round are reported (the best is the least disturbed by other load on the machine). The last
lines say how many worker cores an accelerator consuming ``--target`` images/s (6,000: an H100 training
EfficientNet-B0 compiled) needs with each pipeline.

Example:
    python benchmarks/data_pipeline.py --num-images 300 --rounds 5
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from composer_efficientnet.data.imagefolder import ImageFolderDataset
from composer_efficientnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, image_transform, val_resize_size


def write_images(root: str, num_images: int, num_classes: int = 10, seed: int = 0) -> None:
    """``root/train/class_k/i.JPEG``: random 450-500 x 333-375 crops (ImageNet's median size is 500x375) of
    scikit-learn's two 640x427 sample photographs, unscaled, randomly mirrored, saved at quality 90."""
    import sklearn.datasets
    photos_dir = os.path.join(os.path.dirname(sklearn.datasets.__file__), 'images')
    photos = [Image.open(os.path.join(photos_dir, name)).convert('RGB') for name in ('china.jpg', 'flower.jpg')]
    rng = random.Random(seed)
    for i in range(num_images):
        photo = photos[i % len(photos)]
        width, height = rng.randint(450, 500), rng.randint(333, 375)
        left, top = rng.randint(0, photo.width - width), rng.randint(0, photo.height - height)
        image = photo.crop((left, top, left + width, top + height))
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        class_dir = os.path.join(root, 'train', f'class_{i % num_classes}')
        os.makedirs(class_dir, exist_ok=True)
        image.save(os.path.join(class_dir, f'{i}.JPEG'), quality=90)


class Alternative(Dataset):
    """The same files decoded by ``decode`` and transformed by ``transform``, for the comparison rows."""

    def __init__(self, source: ImageFolderDataset, decode: Callable[[str], object], transform: Callable) -> None:
        self.source, self.decode, self.transform = source, decode, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        image = self.transform(self.decode(self.source.path(index)))
        return (image if isinstance(image, torch.Tensor) else v2.functional.pil_to_tensor(image)), 0


def torchvision_transform(is_train: bool, crop: int) -> v2.Compose:
    """torchvision's own v2 transforms for the same crops (tensor or PIL input)."""
    if is_train:
        return v2.Compose([v2.RandomResizedCrop(crop, antialias=True), v2.RandomHorizontalFlip()])
    return v2.Compose([v2.Resize(val_resize_size(crop), antialias=True), v2.CenterCrop(crop)])


def float_out(transform: Callable) -> Callable:
    """``transform`` followed by the host-side float conversion and normalization a classic pipeline does."""
    return v2.Compose([transform, v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def time_loader(loader: DataLoader) -> Tuple[float, int]:
    """Images per second over one full pass, and the bytes each image ships to the device."""
    start, count, shipped = time.perf_counter(), 0, 0
    for images, _ in loader:
        count += images.shape[0]
        shipped = images[0].nbytes
    return count / (time.perf_counter() - start), shipped


def time_decode(paths: Sequence[str], decode: Callable[[str], object]) -> Tuple[float, int]:
    """Images per second decoding every file once (nothing shipped)."""
    start = time.perf_counter()
    for path in paths:
        decode(path)
    return len(paths) / (time.perf_counter() - start), 0


def decode_torchvision(path: str) -> torch.Tensor:
    from torchvision.io import read_file

    from composer_efficientnet.data.transforms import decode_image_bytes
    return decode_image_bytes(read_file(path))


def decode_pil(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert('RGB')


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            model = next(line.split(':', 1)[1].strip() for line in cpuinfo if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return f'{model}, {os.cpu_count()} cores, torch {torch.__version__}'


def load_average() -> str:
    return ', '.join(f'{x:.1f}' for x in os.getloadavg()) if hasattr(os, 'getloadavg') else 'n/a'


def run(num_images: int, rounds: int, crop: int, batch_size: int, target: float, root: Optional[str]) -> None:
    torch.set_num_threads(1)  # what each DataLoader worker process runs with
    with tempfile.TemporaryDirectory() as tmp:
        root = root or tmp
        if not os.path.isdir(os.path.join(root, 'train')):
            write_images(root, num_images)
        split = os.path.join(root, 'train')
        ours_train = ImageFolderDataset(split, image_transform(True, crop))
        paths = [ours_train.path(i) for i in range(len(ours_train))]
        jpeg_kb = statistics.mean(os.path.getsize(p) for p in paths) / 1024
        sizes = [Image.open(p).size for p in paths[:50]]
        print(f'Machine: {machine()}; load average before: {load_average()}')
        print(f'{len(paths)} JPEGs, mean {jpeg_kb:.0f} KiB, e.g. {sizes[0][0]}x{sizes[0][1]}; '
              f'crop {crop}; one process, one torch thread (= one DataLoader worker core)')

        def loader(dataset: Dataset) -> DataLoader:
            return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)

        loaders = {
            'train uint8': loader(ours_train),
            'train float': loader(ImageFolderDataset(split, float_out(image_transform(True, crop)))),
            'train uint8 tv-v2': loader(Alternative(ours_train, decode_torchvision, torchvision_transform(True, crop))),
            'train uint8 PIL': loader(Alternative(ours_train, decode_pil, torchvision_transform(True, crop))),
            'val uint8': loader(ImageFolderDataset(split, image_transform(False, crop))),
            'val uint8 tv-v2': loader(Alternative(ours_train, decode_torchvision, torchvision_transform(False, crop))),
            'val uint8 PIL': loader(Alternative(ours_train, decode_pil, torchvision_transform(False, crop))),
        }
        rows: Dict[str, Callable[[], Tuple[float, int]]] = {
            name: (lambda row_loader=row_loader: time_loader(row_loader)) for name, row_loader in loaders.items()}
        rows['decode'] = lambda: time_decode(paths, decode_torchvision)
        rows['decode PIL'] = lambda: time_decode(paths, decode_pil)

        for fn in rows.values():  # warm-up: page cache, lazy initialization
            fn()
        rates: Dict[str, List[float]] = {name: [] for name in rows}
        shipped: Dict[str, int] = {}
        for _ in range(rounds):
            for name, fn in rows.items():
                rate, shipped[name] = fn()
                rates[name].append(rate)

        print(f'\n{"pipeline":<20}{"median img/s":>14}{"best img/s":>12}{"bytes/image":>13}')
        for name, row_rates in rates.items():
            print(f'{name:<20}{statistics.median(row_rates):>14.0f}{max(row_rates):>12.0f}'
                  f'{(f"{shipped[name]:,}" if shipped[name] else "-"):>13}')
        print(f'\nload average after: {load_average()}')
        print(f'An accelerator at {target:,.0f} images/s needs, per the median (best) rate:')
        for name in ('train uint8', 'train float'):
            print(f'  {name}: {math.ceil(target / statistics.median(rates[name]))} '
                  f'({math.ceil(target / max(rates[name]))}) worker cores, '
                  f'{target * shipped[name] / 1e9:.2f} GB/s host-to-device')


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--num-images', type=int, default=300, help='JPEGs to write (default 300)')
    parser.add_argument('--rounds', type=int, default=5, help='timed passes per pipeline (default 5)')
    parser.add_argument('--crop', type=int, default=224, help='crop size (default 224, EfficientNet-B0)')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--target', type=float, default=6000.0, help='accelerator images/s (default 6000)')
    parser.add_argument('--root', default=None, help='use (or fill) this directory instead of a temporary one')
    args = parser.parse_args(argv)
    run(args.num_images, args.rounds, args.crop, args.batch_size, args.target, args.root)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
