"""ImageFolder -> MDS conversion (`convert-dataset`): order and content for any number of workers, unreadable
images, single splits, the summary and progress bar. Reading the shards back is tests/test_data_streaming.py."""

from __future__ import annotations

import signal
import sys

import pytest

from composer_efficientnet import cli
from composer_efficientnet.data import (CorruptImageError, DatasetLayoutError, SplitNotFoundError, convert,
                                        convert_imagefolder_to_mds)
from tests.data_trees import corrupt, make_tree


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / 'imagenet')


def files(folder):
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob('*')) if path.is_file()}


def test_shards_hold_encoded_bytes_and_the_summary_counts_them(tree, tmp_path):
    summaries = convert_imagefolder_to_mds(str(tree), str(tmp_path / 'mds'), workers=1)
    val = summaries['val']
    jpeg_bytes = sum(p.stat().st_size for p in (tree / 'val').rglob('*.jpg'))
    shard_bytes = sum(p.stat().st_size for p in (tmp_path / 'mds' / 'val').glob('*.mds'))
    assert jpeg_bytes <= shard_bytes < jpeg_bytes + 4096  # raw pixels would be ~20x larger
    assert (val.split, val.images, val.shards, val.bytes, val.skipped) == ('val', 12, 1, shard_bytes, [])
    assert str(val).startswith(f'val: 12 images in 1 shard(s), {shard_bytes / 1000:.1f} kB, ')
    assert str(val).endswith(f"images/s -> {tmp_path / 'mds' / 'val'}") and val.seconds > 0


def test_workers_write_the_same_shards_as_one(tree, tmp_path, monkeypatch):
    corrupt(tree / 'train' / 'eel' / '2.jpg')
    monkeypatch.setattr(convert, '_CHUNK', 1)  # tasks of one image in blocks of two: order across every boundary
    monkeypatch.setattr(convert, '_BLOCKS_PER_WORKER', 1)
    one = convert_imagefolder_to_mds(str(tree), str(tmp_path / 'one'), workers=1)
    two = convert_imagefolder_to_mds(str(tree), str(tmp_path / 'two'), workers=2)
    assert files(tmp_path / 'one') == files(tmp_path / 'two')  # same samples, labels and order, byte for byte
    assert len(files(tmp_path / 'one')) == 4  # a shard and an index per split
    assert [(s.images, s.skipped) for s in one.values()] == [(s.images, s.skipped) for s in two.values()] == [
        (11, ['eel/2.jpg']), (12, [])]


def test_unreadable_image_is_skipped_and_named(tree, tmp_path):
    corrupt(tree / 'val' / 'dog' / '1.jpg')
    (tree / 'val' / 'cat' / '3.jpg').write_bytes(b'')
    val = convert_imagefolder_to_mds(str(tree), str(tmp_path / 'mds'), workers=1)['val']
    assert val.images == 10 and val.skipped == ['cat/3.jpg', 'dog/1.jpg']
    assert str(val).endswith('; skipped 2 unreadable image(s): cat/3.jpg, dog/1.jpg')


@pytest.mark.parametrize('out_exists', [False, True])
def test_strict_stops_at_an_unreadable_image_and_removes_what_was_written(tree, tmp_path, out_exists):
    corrupt(tree / 'val' / 'dog' / '1.jpg')  # train is written before val is read
    out = tmp_path / 'out' / 'mds'
    if out_exists:
        out.mkdir(parents=True)
    with pytest.raises(CorruptImageError, match=r'imagenet/val/dog/1.jpg: cannot read or decode this image \('):
        convert_imagefolder_to_mds(str(tree), str(out), workers=2, strict=True)
    assert sorted(tmp_path.iterdir()) == ([tmp_path / 'imagenet', tmp_path / 'out'] if out_exists
                                          else [tmp_path / 'imagenet'])
    assert not out_exists or list(out.iterdir()) == []


def test_a_single_split_tree(tree, tmp_path):
    summaries = convert_imagefolder_to_mds(str(tree / 'val'), str(tmp_path / 'mds'), split='holdout', workers=1)
    assert list(summaries) == ['holdout'] and summaries['holdout'].images == 12
    reference = convert_imagefolder_to_mds(str(tree), str(tmp_path / 'both'), workers=1)['val']
    assert (tmp_path / 'mds' / 'holdout' / 'shard.00000.mds').read_bytes() == (
        tmp_path / 'both' / 'val' / 'shard.00000.mds').read_bytes() and reference.images == 12
    with pytest.raises(DatasetLayoutError, match=r'imagenet: holds the split folder\(s\) train, val, but --split '
                                                 'holdout reads'):
        convert_imagefolder_to_mds(str(tree), str(tmp_path / 'other'), split='holdout')
    with pytest.raises(ValueError, match=r"--split: 'a/b' is not a split name"):
        convert_imagefolder_to_mds(str(tree / 'val'), str(tmp_path / 'other'), split='a/b')
    with pytest.raises(SplitNotFoundError, match='none of the splits train, val exists there; .* give --split'):
        convert_imagefolder_to_mds(str(tree / 'val'), str(tmp_path / 'other'))


def test_command_prints_a_summary_line_per_split_and_a_progress_bar(tree, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, 'isatty', lambda: True, raising=False)
    assert cli.main(['convert-dataset', '--src', str(tree), '--out', str(tmp_path / 'mds'), '--workers', '2']) == 0
    out, err = capsys.readouterr()
    assert [line.split(' images in ')[0] for line in out.splitlines()] == ['train: 12', 'val: 12']
    assert 'train: 100%' in err and '12/12' in err and 'val: 100%' in err


def test_converter_refuses_a_non_empty_output_and_checks_the_tree_first(tree, tmp_path):
    convert_imagefolder_to_mds(str(tree), str(tmp_path / 'mds'), workers=1)
    with pytest.raises(FileExistsError, match='output directory is not empty'):
        convert_imagefolder_to_mds(str(tree), str(tmp_path / 'mds'))
    (tree / 'val' / 'cat' / 'readme.md').write_text('hi')
    with pytest.raises(ValueError, match='cat/readme.md'):
        convert_imagefolder_to_mds(str(tree), str(tmp_path / 'out'))
    assert not (tmp_path / 'out').exists()  # train was fine, but nothing is written before every split is checked
    with pytest.raises(ValueError, match='workers: must be a positive number of processes, got 0'):
        convert_imagefolder_to_mds(str(tree), str(tmp_path / 'out'), workers=0)


def test_pool_workers_leave_signals_to_the_parent():
    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert saved[0] is not signal.SIG_DFL  # Composer's import-time handler, which Pool.terminate can hang on
    try:
        convert._start_worker()
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == (signal.SIG_DFL, signal.SIG_IGN)
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])
