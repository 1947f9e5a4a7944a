"""The `streaming_imagenet` builder on MDS shards written by our converter, Streaming's and plain MDSWriter scripts.

Every test reads shards from its own fresh tmp directory: StreamingDataset names its shared memory after the
local directory, so reusing one in a process clashes. (streaming's clean_stale_shared_memory is not used: it
unlinks every StreamingDataset's shared memory on the machine, including other test runs'.)
"""

from __future__ import annotations

import io
import sys
from argparse import Namespace
from collections import Counter
from typing import Any, Callable, Dict

import numpy as np
import pytest
import torch
from PIL import Image
from streaming import MDSWriter
from streaming.base.format.mds.encodings import mds_encode
from streaming.vision.convert import imagenet as streaming_imagenet_converter

from composer_efficientnet.data import (CorruptImageError, DatasetLayoutError, OptionalDependencyError,
                                        SplitNotFoundError, build_imagenet_dataspec, build_streaming_imagenet_dataspec,
                                        convert_imagefolder_to_mds)
from composer_efficientnet.data._streaming_dataset import decode_image_column
from composer_efficientnet.data.imagefolder import scan_split
from composer_efficientnet.data.transforms import decode_image_bytes
from tests.data_trees import corrupt, make_tree


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / 'imagenet')


@pytest.fixture
def shards(tree, tmp_path):
    out = tmp_path / 'mds'
    summaries = convert_imagefolder_to_mds(str(tree), str(out), workers=1)
    assert {split: summary.images for split, summary in summaries.items()} == {'train': 12, 'val': 12}
    return out


def write_split(out, split_dir, columns: Dict[str, str], sample: Callable[[bytes, int, str], Dict[str, Any]]):
    """MDS shards of ``out/val``, as a plain MDSWriter script writes them: one ``sample(file bytes, label, path)``
    per image of ``split_dir``, in the ImageFolder path's order."""
    _, paths, labels = scan_split(str(split_dir))
    with MDSWriter(out=str(out / 'val'), columns=columns) as writer:
        for path, label in zip(paths, labels):
            writer.write(sample((split_dir / path).read_bytes(), label, path))
    return out


def pixels(data: bytes) -> np.ndarray:
    """The decoder's pixels of an encoded image, height x width x 3."""
    return decode_image_bytes(torch.frombuffer(bytearray(data), dtype=torch.uint8)).permute(1, 2, 0).numpy()


def png(data: bytes) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels(data)).save(out, format='PNG')
    return out.getvalue()


def same_as_imagefolder(tree, order=None, **stream_kwargs):
    """Sample k of the shards (by default image k of the tree's val split) equals the ImageFolder path's."""
    kwargs = {'is_train': False, 'crop_size': 32, 'batch_size': 4, 'shuffle': False}
    folder = build_imagenet_dataspec(str(tree), **kwargs).dataloader.dataset
    stream = build_streaming_imagenet_dataspec(**stream_kwargs, **kwargs).dataloader.dataset
    assert len(stream) == len(folder)
    for k, i in enumerate(range(len(folder)) if order is None else order):
        (expected, expected_label), (image, label) = folder[i], stream[k]
        assert label == expected_label and image.dtype == torch.uint8 and torch.equal(image, expected), k


#: Image encodings and how a writer script fills them from the JPEG file: the file itself, or its decoded pixels
#: (lossless encodings of the decoder's pixels must read back as exactly those pixels).
IMAGE_COLUMNS = {
    'bytes': lambda data: data,
    'jpeg': lambda data: data,  # MDSWriter stores given bytes as they are; Streaming's converter does this
    'png': png,
    'pil': lambda data: Image.fromarray(pixels(data)),
    'ndarray': pixels,
    'ndarray:uint8': pixels,
}


@pytest.mark.parametrize('encoding', IMAGE_COLUMNS)
def test_every_image_encoding_reads_as_the_imagefolder_path(tree, tmp_path, encoding):
    columns = {'label': 'int32', 'image': encoding, 'caption': 'str'}
    encode = IMAGE_COLUMNS[encoding]
    write_split(tmp_path / 'mds', tree / 'val', columns,
                lambda data, label, path: {'image': encode(data), 'label': label, 'caption': path})
    same_as_imagefolder(tree, remote=str(tmp_path / 'mds'), image_key='image', label_key='label')


def test_shards_written_by_streamings_imagenet_converter(tree, tmp_path):
    np.random.seed(0)  # the converter writes the images in a random permutation of the sorted file names
    streaming_imagenet_converter.main(Namespace(
        in_root=str(tree), out_root=str(tmp_path / 'mds'), splits='val', compression='', hashes='sha1,xxh64',
        size_limit=1 << 26, progress_bar=0, leave=0, validate=1, extensions='jpg'))
    np.random.seed(0)
    same_as_imagefolder(tree, order=np.random.permutation(12).tolist(), remote=str(tmp_path / 'mds'))


def test_our_converters_shards_read_as_the_imagefolder_path(tree, shards):
    same_as_imagefolder(tree, remote=str(shards))
    stream = build_streaming_imagenet_dataspec(remote=str(shards), is_train=False, crop_size=32, batch_size=4)
    labels = Counter()
    for images, batch_labels in stream.dataloader:
        assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.uint8
        labels.update(batch_labels.tolist())
    assert stream.num_samples == 12 and labels == Counter({0: 4, 1: 4, 2: 4})


def test_grayscale_and_alpha_pixels_become_rgb():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgba = np.arange(48, dtype=np.uint8).reshape(3, 4, 4)
    expected_gray = torch.from_numpy(gray).expand(3, 3, 4)
    for encoding, value in (('ndarray', gray), ('ndarray', gray[..., None]), ('pil', Image.fromarray(gray)),
                            ('png', Image.fromarray(gray))):
        assert torch.equal(decode_image_column(encoding, mds_encode(encoding, value)), expected_gray), encoding
    for encoding, value in (('ndarray', rgba), ('pil', Image.fromarray(rgba, 'RGBA')), ('png', Image.fromarray(rgba))):
        image = decode_image_column(encoding, mds_encode(encoding, value))
        assert torch.equal(image, torch.from_numpy(rgba[..., :3]).permute(2, 0, 1)), encoding


def test_remote_is_cached_in_local(shards, tmp_path):
    spec = build_streaming_imagenet_dataspec(remote=str(shards), local=str(tmp_path / 'cache'), crop_size=16,
                                             batch_size=4, dataloader_kwargs={'num_workers': 1})
    batches = list(spec.dataloader)
    assert len(batches) == 3 and all(images.shape == (4, 3, 16, 16) for images, _ in batches)
    assert (tmp_path / 'cache' / 'train' / 'index.json').is_file()


def corrupt_shards(tree, out, columns):
    """Shards of val whose dog/1.jpg (sample 5) no longer decodes."""
    corrupt(tree / 'val' / 'dog' / '1.jpg')
    return write_split(out, tree / 'val', columns, lambda data, label, path: {'x': data, 'y': label, 'path': path})


@pytest.mark.parametrize('columns', [{'x': 'bytes', 'y': 'int', 'path': 'str'}, {'x': 'jpeg', 'y': 'int'}])
def test_corrupt_sample_is_replaced_and_counted(tree, tmp_path, columns):
    corrupt_shards(tree, tmp_path / 'mds', columns)
    spec = build_streaming_imagenet_dataspec(local=str(tmp_path / 'mds'), is_train=False, crop_size=16,
                                             batch_size=4)
    assert sum(images.shape[0] for images, _ in spec.dataloader) == 12
    count, names = spec.dataloader.dataset.bad_samples.snapshot()
    where = f"sample 5 of {tmp_path / 'mds' / 'val'}"
    assert count == 1 and names == [f'dog/1.jpg ({where})' if 'path' in columns else where]


@pytest.mark.parametrize('columns', [{'x': 'bytes', 'y': 'int', 'path': 'str'}, {'x': 'png', 'y': 'int'}])
def test_strict_mode_names_the_sample(tree, tmp_path, columns):
    corrupt_shards(tree, tmp_path / 'mds', columns)
    spec = build_streaming_imagenet_dataspec(local=str(tmp_path / 'mds'), is_train=False, crop_size=16,
                                             batch_size=4, strict=True)
    with pytest.raises(CorruptImageError, match=('dog/1.jpg ' if 'path' in columns else '^') + r'\(?sample 5 of '):
        list(spec.dataloader)


def _unpickling_fails():
    raise AssertionError('an ignored pickled column was unpickled')


class Booby:
    def __reduce__(self):
        return _unpickling_fails, ()


def test_columns_are_checked_at_build_time(tree, tmp_path):
    write_split(tmp_path / 'mds', tree / 'val', {'img': 'jpeg', 'cls': 'int', 'meta': 'pkl'},
                lambda data, label, path: {'img': data, 'cls': label, 'meta': Booby()})
    kwargs = {'remote': str(tmp_path / 'mds'), 'is_train': False, 'crop_size': 16, 'batch_size': 4}
    with pytest.raises(DatasetLayoutError, match=r"mds/val: no column 'x' \(image_key\); the shards have columns "
                                                 r'cls \(int\), img \(jpeg\), meta \(pkl\)\. Set image_key'):
        build_streaming_imagenet_dataspec(**kwargs)
    with pytest.raises(DatasetLayoutError, match=r"column 'meta' \(image_key\) is pickled \(pkl\), which is not "
                                                 'supported'):
        build_streaming_imagenet_dataspec(image_key='meta', label_key='cls', **kwargs)
    with pytest.raises(DatasetLayoutError, match=r"label column 'img' is encoded as 'jpeg'; expected a class index"):
        build_streaming_imagenet_dataspec(image_key='img', label_key='img', **kwargs)
    with pytest.raises(DatasetLayoutError, match=r'column\(s\) meta are pickled \(pkl\), and Streaming opens '
                                                 r'.* set allow_unsafe_types: true'):
        build_streaming_imagenet_dataspec(image_key='img', label_key='cls', **kwargs)
    spec = build_streaming_imagenet_dataspec(image_key='img', label_key='cls', allow_unsafe_types=True, **kwargs)
    assert sorted(label for _, labels in spec.dataloader for label in labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_pixels_that_are_not_uint8_images_are_refused_and_damaged_ones_are_bad_samples(tree, tmp_path):
    write_split(tmp_path / 'mds', tree / 'val', {'x': 'ndarray:float32', 'y': 'int'},
                lambda data, label, path: {'x': pixels(data).astype(np.float32), 'y': label})
    with pytest.raises(DatasetLayoutError, match=r"image column 'x' is encoded as 'ndarray:float32'; expected one "
                                                 'image per sample'):
        build_streaming_imagenet_dataspec(remote=str(tmp_path / 'mds'), is_train=False, batch_size=4)
    with pytest.raises(ValueError, match=r'pixels of dtype float32 and shape \(2, 2\); expected uint8'):
        decode_image_column('ndarray', mds_encode('ndarray', np.zeros((2, 2), np.float32)))
    for encoding, data in (('ndarray', b'\xff\x00'), ('ndarray', b''), ('pil', b'\x01')):
        with pytest.raises(ValueError):  # what load_or_replace replaces and counts (a KeyError would end the run)
            decode_image_column(encoding, data)


def test_normalization_is_checked_and_applied(shards):
    kwargs = {'remote': str(shards), 'is_train': False, 'crop_size': 16, 'batch_size': 4}
    spec = build_streaming_imagenet_dataspec(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], **kwargs)
    images = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    assert torch.allclose(spec.microbatch_transforms((images, None))[0], torch.ones(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r'std: must be 3 numbers in \(0, 1\]'):
        build_streaming_imagenet_dataspec(std=[0.5, 0, 0.5], **kwargs)


def test_missing_shards_are_an_error_at_build_time(tmp_path):
    with pytest.raises(SplitNotFoundError, match=f"{tmp_path / 'train' / 'index.json'}: MDS index not found"):
        build_streaming_imagenet_dataspec(remote=str(tmp_path), batch_size=2)
    with pytest.raises(ValueError, match='set remote'):
        build_streaming_imagenet_dataspec(batch_size=2)


def test_missing_streaming_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'streaming', None)  # makes `import streaming` raise ImportError
    with pytest.raises(OptionalDependencyError, match=r"pip install 'composer-efficientnet\[streaming\]'"):
        build_streaming_imagenet_dataspec(remote=str(tmp_path), batch_size=2)
    with pytest.raises(ImportError, match='mosaicml-streaming'):
        convert_imagefolder_to_mds(str(tmp_path), str(tmp_path / 'out'))
