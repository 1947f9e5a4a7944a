"""MDS shards from others: nothing written or deleted outside their place, bad labels and damaged shards handled.

Each test writes shards with Streaming's own MDSWriter, then tampers with the split's index.json or a shard's
bytes as a crafted or damaged dataset would. Every test reads from its own fresh tmp directory (StreamingDataset
names its shared memory after the local directory; see tests/test_data_streaming.py).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import pytest
from streaming import MDSWriter

from composer_efficientnet.data import CorruptImageError, DatasetLayoutError, build_streaming_imagenet_dataspec
from composer_efficientnet.data.errors import BrokenDatasetError, LabelOutOfRangeError, message_of
from tests.data_trees import make_tree

#: What every refused shard name's message says is allowed.
ALLOWED = (r"expected a file name relative to the split directory and inside it, such as 'shard.00000.mds' "
           r"\(not empty, no absolute path, no '\.\.'\)\.$")


def write_shards(split_dir: Path, labels: Optional[Sequence[int]] = None, compression: Optional[str] = None,
                 size_limit: Optional[int] = None) -> Path:
    """MDS shards of six JPEGs (two per class) in ``split_dir``, as a plain MDSWriter script writes them, with
    ``labels`` (by default 0, 0, 1, 1, 2, 2)."""
    images = sorted(make_tree(split_dir.parent.parent / f'tree-{split_dir.name}', per_class=2,
                              splits=('images',)).rglob('images/*/*'))
    labels = [number // 2 for number in range(len(images))] if labels is None else labels
    kwargs: Dict[str, Any] = {'size_limit': size_limit} if size_limit else {}
    with MDSWriter(out=str(split_dir), columns={'x': 'jpeg', 'y': 'int'}, compression=compression,
                   **kwargs) as writer:
        for path, label in zip(images, labels):
            writer.write({'x': path.read_bytes(), 'y': label})
    return split_dir


def tamper_index(split_dir: Path, change: Callable[[Dict[str, Any]], None]) -> Path:
    """Rewrite ``split_dir/index.json`` after ``change`` edits its parsed content in place."""
    index = split_dir / 'index.json'
    content = json.loads(index.read_text())
    change(content)
    index.write_text(json.dumps(content))
    return index


def rename_shard(split_dir: Path, key: str, name: Any, shard: int = 0) -> Path:
    """Name shard ``shard``'s ``key`` file (``raw_data`` or ``zip_data``) ``name`` in the index."""
    return tamper_index(split_dir, lambda content: content['shards'][shard][key].update(basename=name))


def read_all(**kwargs: Any):
    """Build the split's DataSpec (eval-style unless said) and read every batch; the dataset."""
    spec = build_streaming_imagenet_dataspec(**{'is_train': False, 'crop_size': 16, 'batch_size': 4,
                                                'shuffle': False, **kwargs})
    for _ in spec.dataloader:
        pass
    return spec.dataloader.dataset


def files_under(folder: Path):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob('*') if not path.is_dir())


# -- shard names in index.json -------------------------------------------------------------------------------------

@pytest.mark.parametrize('cached', [False, True], ids=['read in place', 'copied to local'])
@pytest.mark.parametrize('split', ['train', 'val'])
@pytest.mark.parametrize('absolute', [False, True], ids=['../', 'absolute'])
def test_a_raw_shard_name_outside_the_split_writes_nothing_there(tmp_path, cached, split, absolute):
    # The shard is compressed and its raw file missing: Streaming decompresses the raw file to its name.
    split_dir = write_shards(tmp_path / 'mds' / split, compression='zstd')
    outside = tmp_path / 'outside.mds'
    name = str(outside) if absolute else '../../outside.mds'
    rename_shard(split_dir, 'raw_data', name)
    local = {'local': str(tmp_path / 'cache')} if cached else {}
    problem = 'an absolute path' if absolute else r"a path that climbs out with '\.\.'"
    with pytest.raises(DatasetLayoutError, match=rf"^{re.escape(str(split_dir))}/index.json: shard 0 names its "
                                                 rf"raw_data file '{re.escape(name)}', {problem}; {ALLOWED}"):
        read_all(remote=str(tmp_path / 'mds'), is_train=split == 'train', **local)
    assert not outside.exists()


@pytest.mark.parametrize('absolute', [False, True], ids=['../', 'absolute'])
def test_a_zip_shard_name_naming_another_file_deletes_nothing(tmp_path, absolute):
    # Shard 1 repeats shard 0 with its compressed file named as the victim: once shard 0's raw file is in the
    # cache, Streaming would think shard 1 decompressed and delete its "compressed file" to save space.
    split_dir = write_shards(tmp_path / 'mds' / 'val', compression='zstd')
    victim = tmp_path / 'victim.txt'
    victim.write_text('not the shards to delete')
    name = str(victim) if absolute else '../../victim.txt'

    def repeat_shard(content: Dict[str, Any]) -> None:
        content['shards'].append(json.loads(json.dumps(content['shards'][0])))
        content['shards'][1]['zip_data']['basename'] = name

    tamper_index(split_dir, repeat_shard)
    with pytest.raises(DatasetLayoutError, match=rf"index.json: shard 1 names its zip_data file '{re.escape(name)}', "):
        read_all(remote=str(tmp_path / 'mds'), local=str(tmp_path / 'cache'))
    assert victim.read_text() == 'not the shards to delete'


def test_a_remote_index_is_checked_once_downloaded_before_any_shard_is_fetched(tmp_path):
    split_dir = write_shards(tmp_path / 'mds' / 'val')
    rename_shard(split_dir, 'raw_data', '../../../outside.mds')
    with pytest.raises(DatasetLayoutError, match=rf"^{re.escape(str(split_dir))}/index.json: shard 0 names its "
                                                 'raw_data '):
        read_all(remote=str(tmp_path / 'mds'), local=str(tmp_path / 'cache'))
    assert files_under(tmp_path / 'cache') == []  # no shard fetched, and the refused index not left in the cache
    assert not (tmp_path / 'outside.mds').exists()


def test_a_cached_index_is_checked_before_streaming_reads_it(tmp_path):
    write_shards(tmp_path / 'mds' / 'val', compression='zstd')
    kwargs = {'remote': str(tmp_path / 'mds'), 'local': str(tmp_path / 'cache')}
    assert len(read_all(**kwargs)) == 6
    (tmp_path / 'cache' / 'val' / 'shard.00000.mds').unlink()  # to be decompressed again on the next read
    cached = rename_shard(tmp_path / 'cache' / 'val', 'raw_data', '../../outside.mds')
    with pytest.raises(DatasetLayoutError, match=rf"^{re.escape(str(cached))}: shard 0 names its raw_data file "
                                                 r"'\.\./\.\./outside\.mds'"):
        read_all(**kwargs)
    assert not (tmp_path / 'outside.mds').exists()


def test_a_folder_linked_out_of_the_split_is_refused(tmp_path):
    split_dir = write_shards(tmp_path / 'mds' / 'val', compression='zstd')
    (tmp_path / 'elsewhere').mkdir()
    (split_dir / 'link').symlink_to(tmp_path / 'elsewhere')
    rename_shard(split_dir, 'raw_data', 'link/shard.00000.mds')
    with pytest.raises(DatasetLayoutError, match=r"shard 0 names its raw_data file 'link/shard.00000.mds', a path "
                                                 r'that leads out of the split directory through a symbolic link; '):
        read_all(remote=str(tmp_path / 'mds'))
    assert files_under(tmp_path / 'elsewhere') == []


def test_shards_in_subfolders_and_linked_shard_files_are_read(tmp_path):
    """Names inside the split are fine: shards in a subfolder (as Streaming's merge_index writes them), and a
    shard file that is a link (Streaming replaces or removes a link, never what it points to)."""
    split_dir = write_shards(tmp_path / 'mds' / 'val', size_limit=2500)
    names = [shard['raw_data']['basename'] for shard in json.loads((split_dir / 'index.json').read_text())['shards']]
    assert len(names) >= 2
    (split_dir / 'part').mkdir()
    os.rename(split_dir / names[0], split_dir / 'part' / names[0])
    rename_shard(split_dir, 'raw_data', f'part/{names[0]}')
    (tmp_path / 'store').mkdir()
    os.rename(split_dir / names[1], tmp_path / 'store' / names[1])
    (split_dir / names[1]).symlink_to(tmp_path / 'store' / names[1])
    dataset = read_all(remote=str(tmp_path / 'mds'))
    assert len(dataset) == 6 and dataset.bad_samples.snapshot()[0] == 0


@pytest.mark.parametrize('key, name, problem', [
    ('raw_data', '', 'empty'),
    ('raw_data', None, 'not a file name'),
    ('raw_data', 7, 'not a file name'),
    ('raw_data', 'shard\0.mds', 'a name with a NUL character'),
    ('raw_data', 'part/', 'a directory, not a file'),
    ('raw_data', '.', 'a directory, not a file'),
    ('raw_data', 'part/../../outside.mds', r"a path that climbs out with '\.\.'"),
    ('zip_data', '..', r"a path that climbs out with '\.\.'"),
    ('zip_data', '', 'empty'),
])
def test_every_shard_name_is_checked(tmp_path, key, name, problem):
    split_dir = write_shards(tmp_path / 'mds' / 'val', compression='zstd')
    rename_shard(split_dir, key, name)
    with pytest.raises(DatasetLayoutError) as error:
        read_all(remote=str(tmp_path / 'mds'))
    assert str(error.value) == (f"{split_dir}/index.json: shard 0 names its {key} file {name!r}, "
                                f"{problem.replace(chr(92), '')}; expected a file name relative to the split "
                                "directory and inside it, such as 'shard.00000.mds' (not empty, no absolute path, "
                                "no '..').")


@pytest.mark.parametrize('content, message', [
    ('{"version": 2, "shards": ', r'cannot read this MDS index \(Expecting value'),
    ('[1, 2]', r"not an MDS index \(no list of 'shards'\)"),
    ('{"version": 2, "shards": [{"format": "mds"}]}', r'shard 0 is not an MDS shard entry'),
    ('{"version": 2, "shards": [{"format": "parquet", "raw_data": {"basename": "a.parquet"}}]}',
     r"shard 0 is in 'parquet' format; expected MDS shards"),
])
def test_an_index_that_is_not_an_mds_index_is_one_line(tmp_path, content, message):
    split_dir = write_shards(tmp_path / 'mds' / 'val')
    (split_dir / 'index.json').write_text(content)
    with pytest.raises(DatasetLayoutError, match=rf'^{re.escape(str(split_dir))}/index.json: {message}'):
        read_all(remote=str(tmp_path / 'mds'))


# -- labels --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('split', ['train', 'val'])
@pytest.mark.parametrize('workers', [0, 1])
def test_a_label_beyond_the_models_classes_stops_with_one_line(tmp_path, split, workers):
    write_shards(tmp_path / 'mds' / split, labels=[0, 0, 1, 1002, 2, 2])
    with pytest.raises(LabelOutOfRangeError) as error:
        read_all(remote=str(tmp_path / 'mds'), is_train=split == 'train', model_num_classes=1000,
                 dataloader_kwargs={'num_workers': workers})
    assert message_of(error.value) == (f"sample 3 of {tmp_path}/mds/{split}, sample 3 of shard.00000.mds: label "
                                       "1002 (column 'y') is outside [0, 1000), the classes of the model "
                                       "(num_classes: 1000); fix the shards' labels, or give the model a "
                                       'num_classes above every label.')


def test_a_negative_label_stops_also_without_a_class_count(tmp_path):
    write_shards(tmp_path / 'mds' / 'val', labels=[0, 0, 1, 1, 2, -1])
    with pytest.raises(LabelOutOfRangeError, match=r'^sample 5 of .*: label -1 .* is outside \[0, inf\): class '
                                                   r'indices are never negative; '):
        read_all(remote=str(tmp_path / 'mds'))


def test_labels_inside_the_classes_read(tmp_path):
    write_shards(tmp_path / 'mds' / 'val', labels=[0, 1, 2, 3, 4, 4])
    assert len(read_all(remote=str(tmp_path / 'mds'), model_num_classes=5)) == 6


# -- damaged shards ------------------------------------------------------------------------------------------------

def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


@pytest.mark.parametrize('workers', [0, 1])
def test_samples_of_a_truncated_shard_are_counted_and_skipped(tmp_path, workers):
    split_dir = write_shards(tmp_path / 'mds' / 'val')
    truncate(split_dir / 'shard.00000.mds')
    spec = build_streaming_imagenet_dataspec(remote=str(tmp_path / 'mds'), is_train=False, crop_size=16,
                                             batch_size=3, shuffle=False, dataloader_kwargs={'num_workers': workers})
    labels = [label for _, batch in spec.dataloader for label in batch.tolist()]
    count, names = spec.dataloader.dataset.bad_samples.snapshot()
    assert len(labels) == 6 and count >= 1  # every batch full: the unreadable samples replaced by readable ones
    assert names[0].startswith('sample ') and names[0].endswith(f' of {split_dir}')
    assert len(set(names)) < 6  # some samples of the first half still read


def test_strict_names_the_sample_of_a_truncated_shard(tmp_path):
    split_dir = write_shards(tmp_path / 'mds' / 'val')
    truncate(split_dir / 'shard.00000.mds')
    with pytest.raises(CorruptImageError) as error:
        read_all(remote=str(tmp_path / 'mds'), strict=True)
    assert re.match(rf'sample (\d) of {re.escape(str(split_dir))}: cannot read this sample out of its shard '
                                  r'\(shard.00000.mds is truncated or damaged at its sample \1: \w+Error: .*\); '
                                  r'expected an intact MDS shard as streaming.MDSWriter writes it\. Copy or write '
                                  r'the shard again, or set strict: false', str(error.value)), str(error.value)


def test_samples_of_a_shard_of_random_bytes_are_counted_and_skipped(tmp_path):
    split_dir = write_shards(tmp_path / 'mds' / 'val', size_limit=2500)
    shards = json.loads((split_dir / 'index.json').read_text())['shards']
    assert len(shards) >= 2
    last = split_dir / shards[-1]['raw_data']['basename']
    last.write_bytes(np.random.default_rng(0).bytes(last.stat().st_size))
    spec = build_streaming_imagenet_dataspec(remote=str(tmp_path / 'mds'), is_train=False, crop_size=16,
                                             batch_size=2, shuffle=False)
    labels = [label for _, batch in spec.dataloader for label in batch.tolist()]
    count, _ = spec.dataloader.dataset.bad_samples.snapshot()
    assert len(labels) == 6 and count >= shards[-1]['samples']


def test_a_shard_of_nothing_but_damage_is_a_broken_dataset(tmp_path):
    split_dir = write_shards(tmp_path / 'mds' / 'val')
    (split_dir / 'shard.00000.mds').write_bytes(b'\xff' * 64)
    with pytest.raises(BrokenDatasetError, match=r'6 consecutive samples starting at sample 0 of .* could not be '
                                                 r'read \(last: shard.00000.mds is truncated or damaged at its '):
        read_all(remote=str(tmp_path / 'mds'))
