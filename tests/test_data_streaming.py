"""MDS shards: ImageFolder -> MDS conversion and the `streaming_imagenet` builder (needs mosaicml-streaming).

Every test reads shards from its own fresh tmp directory: StreamingDataset names its shared memory after the
local directory, so reusing one in a process clashes. (streaming's clean_stale_shared_memory is not used: it
unlinks every StreamingDataset's shared memory on the machine, including other test runs'.)
"""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch

from composer_efficientnet.data import (OptionalDependencyError, SplitNotFoundError, build_imagenet_dataspec,
                                        build_streaming_imagenet_dataspec, convert_imagefolder_to_mds)
from tests.data_trees import corrupt, make_tree

pytest.importorskip('streaming')


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / 'imagenet')


@pytest.fixture
def shards(tree, tmp_path):
    out = tmp_path / 'mds'
    assert convert_imagefolder_to_mds(str(tree), str(out)) == {'train': 12, 'val': 12}
    return out


def test_shards_hold_encoded_bytes_not_pixels(tree, shards):
    jpeg_bytes = sum(p.stat().st_size for p in (tree / 'val').rglob('*.jpg'))
    shard_bytes = sum(p.stat().st_size for p in (shards / 'val').glob('*.mds'))
    assert jpeg_bytes <= shard_bytes < jpeg_bytes + 4096  # raw pixels would be ~20x larger
    assert (shards / 'val' / 'index.json').is_file()


def test_round_trip_matches_the_imagefolder_path(tree, shards):
    kwargs = {'is_train': False, 'crop_size': 32, 'batch_size': 4, 'shuffle': False}
    folder = build_imagenet_dataspec(str(tree), **kwargs)
    stream = build_streaming_imagenet_dataspec(remote=str(shards), **kwargs)
    folder_data, stream_data = folder.dataloader.dataset, stream.dataloader.dataset
    assert len(stream_data) == len(folder_data) == 12 and stream.num_samples == 12
    for i in range(12):
        (a, label_a), (b, label_b) = folder_data[i], stream_data[i]
        assert label_a == label_b and a.dtype == b.dtype == torch.uint8 and torch.equal(a, b)
    labels = Counter()
    for images, batch_labels in stream.dataloader:
        assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.uint8
        labels.update(batch_labels.tolist())
    assert labels == Counter(folder_data[i][1] for i in range(12))


def test_remote_is_cached_in_local(shards, tmp_path):
    spec = build_streaming_imagenet_dataspec(remote=str(shards), local=str(tmp_path / 'cache'), crop_size=16,
                                             batch_size=4, dataloader_kwargs={'num_workers': 1})
    batches = list(spec.dataloader)
    assert len(batches) == 3 and all(images.shape == (4, 3, 16, 16) for images, _ in batches)
    assert (tmp_path / 'cache' / 'train' / 'index.json').is_file()


def test_corrupt_sample_is_skipped_and_counted(tree, tmp_path):
    corrupt(tree / 'val' / 'dog' / '1.jpg')
    convert_imagefolder_to_mds(str(tree), str(tmp_path / 'mds'))
    spec = build_streaming_imagenet_dataspec(local=str(tmp_path / 'mds'), is_train=False, crop_size=16,
                                             batch_size=4)
    assert sum(images.shape[0] for images, _ in spec.dataloader) == 12
    count, names = spec.dataloader.dataset.bad_samples.snapshot()
    assert count == 1 and names[0].startswith('dog/1.jpg (sample 5 of ')


def test_strict_mode_names_the_source_file(tree, tmp_path):
    corrupt(tree / 'val' / 'dog' / '1.jpg')
    convert_imagefolder_to_mds(str(tree), str(tmp_path / 'mds'))
    spec = build_streaming_imagenet_dataspec(local=str(tmp_path / 'mds'), is_train=False, crop_size=16,
                                             batch_size=4, strict=True)
    with pytest.raises(ValueError, match='dog/1.jpg'):
        list(spec.dataloader)


def test_missing_shards_are_an_error_at_build_time(tmp_path):
    with pytest.raises(SplitNotFoundError, match=f"{tmp_path / 'train' / 'index.json'}: MDS index not found"):
        build_streaming_imagenet_dataspec(remote=str(tmp_path), batch_size=2)
    with pytest.raises(ValueError, match='set remote'):
        build_streaming_imagenet_dataspec(batch_size=2)


def test_converter_refuses_a_non_empty_output_and_a_tree_without_splits(tree, shards, tmp_path):
    with pytest.raises(FileExistsError, match='output directory is not empty'):
        convert_imagefolder_to_mds(str(tree), str(shards))
    with pytest.raises(SplitNotFoundError, match='none of the splits train, val exists'):
        convert_imagefolder_to_mds(str(tmp_path / 'nothing'), str(tmp_path / 'out'))


def test_converter_checks_the_tree_like_the_imagefolder_path(tree, tmp_path):
    (tree / 'train' / 'cat' / 'readme.md').write_text('hi')
    with pytest.raises(ValueError, match='cat/readme.md'):
        convert_imagefolder_to_mds(str(tree), str(tmp_path / 'out'))


def test_missing_streaming_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'streaming', None)  # makes `import streaming` raise ImportError
    with pytest.raises(OptionalDependencyError, match=r"pip install 'composer-efficientnet\[streaming\]'"):
        build_streaming_imagenet_dataspec(remote=str(tmp_path), batch_size=2)
    with pytest.raises(ImportError, match='mosaicml-streaming'):
        convert_imagefolder_to_mds(str(tmp_path), str(tmp_path / 'out'))
