"""Images and class names from others (issue 21, topic 'images'): an image whose header gives more pixels than
the limit, class names of a checkpoint that are not a list of strings, symlink loops, dangling symlinks and FIFOs
in a class folder, as rows of tests/bad_inputs.py's TABLE (exit status 2, one line, nothing written), and the
helpers that write them, which tests/test_image_safety.py shares."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch

from tests.bad_inputs import BadInput, cli, data, with_run, write_recipe
from tests.data_trees import make_tree, write_jpeg

#: The first part of every class-names refusal, after the file.
CLASS_NAMES = r'the class names \(state\.callbacks\.ClassNames\.classes\)'


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))


def huge_png(width: int = 20000, height: int = 20000, rows_per_block: int = 100) -> bytes:
    """A valid black 1-bit grayscale PNG of ``width`` x ``height`` pixels, 52 kB for 20000 x 20000, which
    decodes to 1.2 GB of RGB; written in some 50 ms and a few MB of memory (Pillow takes 4 s and 400 MB).

    Its IDAT is one zlib stream of identical deflate blocks: ``rows_per_block`` rows of zeros compressed once,
    ending on a sync flush (byte-aligned, so the compressed block repeats once the window holds only zeros),
    repeated, then a final empty block and the Adler-32 of all the rows. ``height`` must be a multiple of
    ``rows_per_block``.
    """
    if height % rows_per_block:
        raise ValueError(f'height {height} is not a multiple of rows_per_block {rows_per_block}')
    block = bytes(1 + (width + 7) // 8) * rows_per_block  # each row: filter 0, then the packed pixels
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)
    steady = deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)
    checksum = 1
    for _ in range(height // rows_per_block):
        checksum = zlib.adler32(block, checksum)
    stream = (b'\x78\xda' + first + steady * (height // rows_per_block - 1) + deflate.flush()
              + struct.pack('>I', checksum))
    header = struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale, no interlace
    return b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', header) + _chunk(b'IDAT', stream) + _chunk(b'IEND', b'')


def write_huge_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(huge_png(width, height))
    return path


def named_checkpoint(path: Path, classes: Any, num_classes: int = 3) -> Path:
    """A B0 checkpoint of ``num_classes`` classes as training writes it, recording ``classes`` as its class names
    (``state.callbacks.ClassNames.classes``)."""
    from composer_efficientnet import EfficientNet
    model = EfficientNet.from_name('efficientnet_b0', num_classes=num_classes)
    torch.save({'state': {'model': model.state_dict(), 'callbacks': {'ClassNames': {'classes': classes}}}}, path)
    return path


def _predict_with_names(classes: Any) -> Callable[[Path], List[str]]:
    def setup(tmp: Path) -> List[str]:
        image = write_jpeg(tmp / 'photo.jpg', seed=1)
        return ['predict', str(named_checkpoint(tmp / 'run.pt', classes)), str(image)]

    return setup


def _predict_huge(*options: str) -> Callable[[Path], List[str]]:
    def setup(tmp: Path) -> List[str]:
        named_checkpoint(tmp / 'run.pt', ['cat', 'dog', 'eel'])
        return ['predict', str(tmp / 'run.pt'), str(write_huge_png(tmp / 'big.png')), *options]

    return setup


def _predict_dangling(tmp: Path) -> List[str]:
    named_checkpoint(tmp / 'run.pt', ['cat', 'dog', 'eel'])
    os.symlink('missing.jpg', tmp / 'gone.jpg')
    return ['predict', str(tmp / 'run.pt'), str(tmp / 'gone.jpg')]


def _strict_huge(tmp: Path) -> List[str]:
    root = make_tree(tmp / 'imagenet', per_class=2)
    write_huge_png(root / 'train' / 'dog' / 'poster.png')
    datasets = {f'{split}_dataset': {'imagenet': {'datadir': str(root), 'is_train': split == 'train',
                                                  'crop_size': 16, 'strict': True}} for split in ('train', 'val')}
    run = with_run(save_folder=None, train_batch_size=7, eval_batch_size=6, **datasets)  # one batch: every image
    return ['train', write_recipe(tmp, run)]


def _limit(value: Any) -> Callable[[Path], List[str]]:
    def setup(tmp: Path) -> List[str]:
        root = make_tree(tmp / 'imagenet', per_class=2)
        params: Dict[str, Any] = {'datadir': str(root), 'crop_size': 16}
        datasets = {'train_dataset': {'imagenet': {**params, 'max_image_pixels': value}},
                    'val_dataset': {'imagenet': {**params, 'is_train': False}}}
        return ['train', write_recipe(tmp, with_run(**datasets))]

    return setup


def _link(target: str, name: str, folder: str = 'train/eel') -> Callable[[Path], None]:
    return lambda root: os.symlink(target, root / folder / name)


ROWS: List[BadInput] = [
    # An image whose header gives more pixels than the limit: refused before it is decoded.
    cli('predict an image of 400 million pixels', _predict_huge(),
        r"predict: '.*big.png': 20000 x 20000 pixels \(400,000,000\) is more than the limit of 89,478,485 pixels; "
        r'resize it, or raise --max-image-pixels to read it', usage=False),
    cli('predict with a lower pixel limit than the image', _predict_huge('--max-image-pixels', '1000'),
        r"predict: '.*big.png': 20000 x 20000 pixels \(400,000,000\) is more than the limit of 1,000 pixels",
        usage=False),
    cli('predict with a pixel limit of zero', _predict_huge('--max-image-pixels', '0'),
        r"argument --max-image-pixels: expected a positive number of pixels, got '0'"),
    BadInput('data', 'strict training over an image of 400 million pixels', _strict_huge,
             r'composer-efficientnet: .*train/dog/poster.png: 20000 x 20000 pixels \(400,000,000\) is more than the '
             r"limit of 89,478,485 pixels, which guards memory .*raise the dataset's max_image_pixels \(null: no "
             r'limit\), or set strict: false'),
    BadInput('recipe', 'a pixel limit of zero', _limit(0),
             r'train_dataset.imagenet: max_image_pixels: must be a positive number of pixels, or null for no limit'),
    BadInput('recipe', 'a pixel limit that is not a number', _limit('huge'),
             r"train_dataset.imagenet.max_image_pixels: must be int or null, got 'huge'"),
    # Class names a checkpoint records that are not a list of strings: refused, naming the file.
    cli('predict with class names that are a mapping', _predict_with_names({'0': 'cat', '1': 'dog'}),
        rf"predict: '.*run.pt': {CLASS_NAMES} are a dict \(\{{'0': 'cat', '1': 'dog'\}}\); expected a list of "
        r'strings, one class name per label', usage=False),
    cli('predict with class names that are numbers', _predict_with_names([3, 1, 4]),
        rf"predict: '.*run.pt': {CLASS_NAMES} hold 3 entries that are not strings \(the first, index 0: an int, 3\)",
        usage=False),
    cli('predict with class names that are one string', _predict_with_names('cat dog eel'),
        rf"predict: '.*run.pt': {CLASS_NAMES} are a str \('cat dog eel'\); expected a list of strings",
        usage=False),
    cli('predict a dangling symlink', _predict_dangling,
        r"predict: '.*gone.jpg': a dangling symlink \(-> 'missing.jpg', which does not exist\)", usage=False),
    # Symlinks and special files in a class folder.
    data('symlink loop to its own class folder', _link('.', 'loop'),
         r"train_dataset.imagenet: .*/train: 1 symlink loop\(s\) \(eel/loop -> '\.' \(back to eel\)\); each leads "
         r'back to itself or to a folder it is in'),
    data('symlink loop up to the split', _link('..', 'up'),
         r"train_dataset.imagenet: .*/train: 1 symlink loop\(s\) \(eel/up -> '\.\.' \(back to the split "
         r'directory\)\)'),
    data('symlink that points to itself', _link('self.jpg', 'self.jpg'),
         r"train_dataset.imagenet: .*/train: 1 symlink loop\(s\) \(eel/self.jpg -> 'self.jpg'\)"),
    data('dangling symlink in a class folder', _link('missing.jpg', 'gone.jpg'),
         r"train_dataset.imagenet: .*/train: 1 dangling symlink\(s\) \(eel/gone.jpg -> 'missing.jpg'\); their "
         r'targets do not exist'),
    data('dangling symlink as a class folder', _link('nowhere', 'fox', folder='train'),
         r"train_dataset.imagenet: .*/train: 1 broken symlink\(s\) directly in the split directory \(fox: a "
         r"dangling symlink \(-> 'nowhere', which does not exist\)\)"),
    data('FIFO named like an image', lambda root: os.mkfifo(root / 'train' / 'eel' / 'pipe.jpg'),
         r'train_dataset.imagenet: .*/train: 1 file\(s\) that are not regular files \(eel/pipe.jpg: a FIFO\)'),
]

__all__ = ['ROWS', 'CLASS_NAMES', 'huge_png', 'write_huge_png', 'named_checkpoint']
