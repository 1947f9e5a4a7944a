"""ImageNet-style folders (``datadir/train/<class>/*.JPEG``, ``datadir/val/<class>/*.JPEG``) as a DataSpec.

The tree is scanned and checked when the dataset is built, before any training: a missing split, an empty
class folder, a file that is not an image, a symlink loop or a dangling symlink, or train and val folders
naming different classes are errors that name the path. Files that look like images but cannot be decoded,
or whose header gives more than ``max_image_pixels`` pixels, are found only when read; they are skipped and
counted (see :mod:`composer_efficientnet.data.bad_samples`), or raise in ``strict`` mode.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from composer.core import DataSpec
from torch.utils.data import Dataset
from torchvision.io import read_file

from composer_efficientnet.data.bad_samples import BadSampleTracker, load_or_replace
from composer_efficientnet.data.errors import DatasetLayoutError, SplitNotFoundError
from composer_efficientnet.data.loading import make_dataloader, make_dataspec
from composer_efficientnet.data.transforms import (MAX_IMAGE_PIXELS, Interpolation, StageSettings,
                                                    check_max_image_pixels, decode_image_bytes, image_transform,
                                                    normalize_on_device, start_batch)

__all__ = ['IMAGE_EXTENSIONS', 'SPLITS', 'broken_symlink', 'scan_split', 'ImageFolderDataset',
           'build_imagenet_dataspec']

#: File name endings the decoder reads (``torchvision.io.decode_image``), compared case-insensitively.
IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png', '.webp', '.gif')

#: The split directory each value of ``is_train`` reads.
SPLITS = {True: 'train', False: 'val'}

_SHOWN = 5  # how many offending paths an error message lists


def _is_hidden(name: str) -> bool:
    return name.startswith('.')  # .DS_Store, ._AppleDouble, editor swap files: never data


def _link_problem(path: str) -> Optional[Tuple[str, str]]:
    """``('loop' or 'dangling', "-> 'target'"...)`` if ``path`` is a symlink that leads nowhere, else None."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as error:
        target = f"-> '{os.readlink(path)}'"
        if error.errno == errno.ELOOP:
            return 'loop', target
        return 'dangling', target if error.errno == errno.ENOENT else f'{target}: {error.strerror}'
    return None


def broken_symlink(path: str) -> Optional[str]:
    """What is wrong with ``path`` if it is a symlink that leads nowhere (a loop of links, or a target that is
    missing), in words; None for anything else."""
    problem = _link_problem(path)
    if problem is None:
        return None
    kind, target = problem
    return f'a symlink loop ({target}, which leads back to itself)' if kind == 'loop' else (
        f'a dangling symlink ({target}, which does not exist)' if target.endswith("'") else
        f'a dangling symlink ({target})')


def _list_classes(split_dir: str) -> List[str]:
    """The sorted class folder names of a split, or an error if it is missing or holds loose files."""
    if not os.path.isdir(split_dir):
        parent = os.path.dirname(split_dir.rstrip(os.sep)) or '.'
        present = sorted(os.listdir(parent)) if os.path.isdir(parent) else None
        where = (f'{parent} holds: {", ".join(present[:_SHOWN]) or "nothing"}' if present is not None else
                 f'{parent} does not exist either')
        broken = broken_symlink(split_dir.rstrip(os.sep))
        what = f'split directory is {broken}' if broken else 'split directory not found'
        raise SplitNotFoundError(f'{split_dir}: {what} ({where}); expected an ImageFolder tree with one subfolder '
                                 'per class, e.g. train/<class>/<image>.JPEG and val/<class>/<image>.JPEG.')
    entries = sorted(e for e in os.listdir(split_dir) if not _is_hidden(e))
    loose = [e for e in entries if not os.path.isdir(os.path.join(split_dir, e))]
    broken = [f'{e}: {why}' for e, why in ((e, broken_symlink(os.path.join(split_dir, e))) for e in loose) if why]
    if broken:
        raise DatasetLayoutError(f'{split_dir}: {len(broken)} broken symlink(s) directly in the split directory '
                                 f'({"; ".join(broken[:_SHOWN])}); fix or remove them.')
    if loose:
        raise DatasetLayoutError(f'{split_dir}: {len(loose)} file(s) directly in the split directory '
                                 f'({", ".join(loose[:_SHOWN])}); expected only one subfolder per class, '
                                 'with the images inside.')
    if not entries:
        raise DatasetLayoutError(f'{split_dir}: no class folders; expected one subfolder per class.')
    split = _identity(split_dir)
    loops = [f"{e} -> '{os.readlink(os.path.join(split_dir, e))}'" for e in entries
             if os.path.islink(os.path.join(split_dir, e)) and _identity(os.path.join(split_dir, e)) == split]
    if loops:
        raise DatasetLayoutError(f'{split_dir}: {len(loops)} symlink loop(s) ({"; ".join(loops[:_SHOWN])} (back to '
                                 'the split directory)); a class folder that is a link to its split never ends; '
                                 'remove or fix the link(s).')
    return entries


def _identity(path: str) -> Tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


#: The problems a class folder's walk finds, each with how a layout error names them and what to do.
_PROBLEMS = {
    'loops': ('symlink loop(s)', 'each leads back to itself or to a folder it is in, so the folder never ends; '
              'remove or fix the link(s).'),
    'dangling': ('dangling symlink(s)', 'their targets do not exist; fix or remove the link(s).'),
    'special': ('file(s) that are not regular files', 'reading a FIFO, socket or device would block or fail; '
                'remove them.'),
}


def _walk_class(class_dir: str, split_dir: str) -> Dict[str, List[str]]:
    """The files under one class folder by kind: ``images`` and ``not_images`` (paths relative to the split
    directory, in the order of a sorted top-down walk that follows directory symlinks, as
    ``os.walk(followlinks=True)`` gives them) and the problems of :data:`_PROBLEMS`, each a path and what it is.

    A directory symlink is followed unless it leads to a folder the walk is already in (a loop that ``os.walk``
    would follow some 40 levels deep, listing the images again at each); a symlink that leads nowhere (a loop
    of links, or a missing target) and a FIFO, socket or device (reading a FIFO would block) are problems of
    their own rather than "not images". A folder that cannot be listed is an error (``os.walk`` would leave its
    images out without a word).
    """
    found: Dict[str, List[str]] = {'images': [], 'not_images': [], **{kind: [] for kind in _PROBLEMS}}

    def relative(path: str) -> str:
        return os.path.relpath(path, split_dir)

    def visit(folder: str, inside: Dict[Tuple[int, int], str], via: str) -> None:
        try:
            with os.scandir(folder) as listing:
                entries = sorted((e for e in listing if not _is_hidden(e.name)), key=lambda e: e.name)
        except OSError as error:
            raise DatasetLayoutError(f'{folder}: cannot list this folder ({error.strerror}); its images would be '
                                     'left out.') from None
        folders = []
        for entry in entries:
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()  # both follow symlinks
            except OSError:  # a loop of links (ELOOP), on some systems
                is_dir = is_file = False
            link = None if is_dir or is_file else _link_problem(entry.path)
            if is_dir:
                folders.append(entry)
            elif is_file:
                found['images' if entry.name.lower().endswith(IMAGE_EXTENSIONS) else 'not_images'].append(
                    relative(entry.path))
            elif link is not None:
                found['loops' if link[0] == 'loop' else 'dangling'].append(f'{relative(entry.path)} {link[1]}')
            else:
                mode = os.stat(entry.path).st_mode
                kind = 'a FIFO' if stat.S_ISFIFO(mode) else 'a socket' if stat.S_ISSOCK(mode) else 'a device'
                found['special'].append(f'{relative(entry.path)}: {kind}')
        for entry in folders:
            identity = _identity(entry.path)
            # The symlink followed last on the way here, which a loop is named by.
            link = f"{relative(entry.path)} -> '{os.readlink(entry.path)}'" if entry.is_symlink() else via
            if identity in inside:
                found['loops'].append(f'{link} (back to {inside[identity]})')
                continue
            visit(entry.path, {**inside, identity: relative(entry.path)}, link)

    split, top = _identity(split_dir), _identity(class_dir)
    if top == split:  # a class "folder" that is a link to its split
        found['loops'].append(f"{relative(class_dir)} -> '{os.readlink(class_dir)}' (back to the split directory)")
        return found
    visit(class_dir, {split: 'the split directory', top: relative(class_dir)}, relative(class_dir))
    return found


def _class_files(class_dir: str) -> List[str]:
    """Every image under one class folder (recursively, sorted), relative to the class folder's parent."""
    split_dir = os.path.dirname(class_dir)
    found = _walk_class(class_dir, split_dir)
    for kind, (what, advice) in _PROBLEMS.items():
        if found[kind]:
            raise DatasetLayoutError(f'{split_dir}: {len(found[kind])} {what} ({"; ".join(found[kind][:_SHOWN])});'
                                     f' {advice}')
    not_images = found['not_images']
    if not_images:
        raise DatasetLayoutError(f'{split_dir}: {len(not_images)} file(s) that are not images '
                                 f'({", ".join(not_images[:_SHOWN])}); expected only files ending in '
                                 f'{", ".join(IMAGE_EXTENSIONS)} (any case) inside the class folders.')
    if not found['images']:
        raise DatasetLayoutError(f'{class_dir}: empty class folder; every class folder must hold at least one '
                                 f'image ({", ".join(IMAGE_EXTENSIONS)}). Remove the folder or add its images.')
    return found['images']


def _check_sibling_classes(split_dir: str, classes: Sequence[str]) -> None:
    """Labels are class indices, so train and val must name the same classes or labels silently differ."""
    datadir, split = os.path.split(split_dir.rstrip(os.sep))
    for other in SPLITS.values():
        other_dir = os.path.join(datadir, other)
        if other == split or not os.path.isdir(other_dir):
            continue
        other_classes = sorted(e for e in os.listdir(other_dir)
                               if not _is_hidden(e) and os.path.isdir(os.path.join(other_dir, e)))
        if other_classes != list(classes):
            only_here = sorted(set(classes) - set(other_classes))[:_SHOWN]
            only_there = sorted(set(other_classes) - set(classes))[:_SHOWN]
            raise DatasetLayoutError(f'{split_dir} and {other_dir} have different class folders (only in {split}: '
                                     f'{only_here or "none"}; only in {other}: {only_there or "none"}); expected '
                                     'the same classes in every split, since labels are class indices.')


def scan_split(split_dir: str) -> Tuple[List[str], List[str], List[int]]:
    """Check an ImageFolder split and list it: ``(classes, relative image paths, labels)``, all sorted.

    The order depends only on the file names, so every process of a run sees the same indices.
    """
    classes = _list_classes(split_dir)
    _check_sibling_classes(split_dir, classes)
    paths: List[str] = []
    labels: List[int] = []
    for label, name in enumerate(classes):
        files = _class_files(os.path.join(split_dir, name))
        paths.extend(files)
        labels.extend([label] * len(files))
    return classes, paths, labels


class ImageFolderDataset(Dataset):
    """One split of an ImageFolder tree: ``(uint8 CHW image, int label)`` per index.

    Paths and labels are kept in numpy arrays rather than Python lists, so forked DataLoader workers do not
    copy them page by page as reference counts change (1.28M paths for ImageNet). A training transform's
    :class:`~composer_efficientnet.data.transforms.StageSettings` is the dataset's ``stage`` (None otherwise),
    taken once per batch. An image whose header gives more than ``max_image_pixels`` pixels (None: no limit) is
    a bad sample, refused before it is decoded; the limit is an attribute, so it goes with the dataset into
    DataLoader worker processes, spawned ones too.
    """

    def __init__(self, split_dir: str, transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 strict: bool = False, max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS) -> None:
        check_max_image_pixels(max_image_pixels)
        self.max_image_pixels = max_image_pixels
        self.root = split_dir
        self.classes, paths, labels = scan_split(split_dir)
        self._paths = np.array([p.encode('utf-8') for p in paths])
        self._labels = np.array(labels, dtype=np.int64)
        self.transform = transform
        self.strict = strict
        self.bad_samples = BadSampleTracker()
        self.stage: Optional[StageSettings] = getattr(transform, 'stage', None)

    def __len__(self) -> int:
        return len(self._labels)

    def __getitems__(self, indices: Sequence[int]) -> List[Tuple[torch.Tensor, int]]:
        """One batch (the DataLoader's fetcher calls this), all at the stage's settings of its start."""
        start_batch(self.transform)
        return [self[index] for index in indices]

    def path(self, index: int) -> str:
        """The file behind sample ``index``."""
        return os.path.join(self.root, self._paths[index].decode('utf-8'))

    def _load(self, index: int) -> Tuple[torch.Tensor, int]:
        return decode_image_bytes(read_file(self.path(index)), self.max_image_pixels), int(self._labels[index])

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image, label = load_or_replace(index, len(self), self._load, self.path, self.bad_samples, self.strict)
        return (self.transform(image) if self.transform is not None else image), label


def build_imagenet_dataspec(datadir: str, is_train: bool = True, resize_size: int = -1,
                            crop_size: Optional[int] = None, shuffle: Optional[bool] = None,
                            drop_last: Optional[bool] = None, augment: Optional[str] = None, strict: bool = False,
                            interpolation: Interpolation = 'bilinear', mean: Optional[Sequence[float]] = None,
                            std: Optional[Sequence[float]] = None,
                            max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS, *,
                            batch_size: int, seed: int = 17, dataloader_kwargs: Optional[Dict[str, Any]] = None,
                            model_resolution: int = 224) -> DataSpec:
    """ImageNet (or any ImageFolder tree) from ``datadir/train`` or ``datadir/val``, uint8 out of the workers.

    ``crop_size`` defaults to the model's native resolution; ``shuffle`` and ``drop_last`` default to
    ``is_train``; ``augment`` adds ``autoaugment`` or ``randaugment`` to training; ``strict`` makes an
    unreadable image an error instead of a skipped, counted sample; ``interpolation`` is the resizes'
    (``bicubic`` to evaluate torchvision's or timm's weights as they were); ``mean`` and ``std`` normalize on the
    device (ImageNet's by default; torchvision's EfficientNetV2-L weights use 0.5, 0.5, 0.5 for both);
    ``max_image_pixels`` is the most pixels an image may have (its header is read first, so a small file that
    would decode to gigabytes is refused undecoded, as a bad sample; default
    :data:`~composer_efficientnet.data.transforms.MAX_IMAGE_PIXELS`, Pillow's 89,478,485; null for no limit). See
    :func:`~composer_efficientnet.data.transforms.image_transform` for the transforms.
    """
    check_max_image_pixels(max_image_pixels)
    normalize = normalize_on_device(mean, std)
    crop_size = model_resolution if crop_size is None else crop_size
    transform = image_transform(is_train, crop_size, resize_size, augment, interpolation)
    dataset = ImageFolderDataset(os.path.join(datadir, SPLITS[is_train]), transform=transform, strict=strict,
                                 max_image_pixels=max_image_pixels)
    loader = make_dataloader(dataset, batch_size=batch_size, shuffle=is_train if shuffle is None else shuffle,
                             drop_last=is_train if drop_last is None else drop_last, seed=seed,
                             dataloader_kwargs=dataloader_kwargs)
    return make_dataspec(loader, transform=normalize)
