"""Bad-input rows of MDS shards from others (issue 21, topic ``shards``): a crafted index.json, labels the model has
no class for, a damaged shard. Joined into tests/bad_inputs.py's TABLE; each exits 2 with one line and leaves the
folder as it was (the shards are read in place, so no cache is written)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List

from tests.bad_inputs import BadInput, with_run, write_recipe
from tests.test_shard_safety import rename_shard, truncate, write_shards

ALLOWED = (r"expected a file name relative to the split directory and inside it, such as 'shard.00000.mds' "
           r"\(not empty, no absolute path, no '\.\.'\)\.$")


def _shards(split: str, change: Callable[[Path], None] = lambda split_dir: None, command: str = 'train',
            labels: Any = None, compression: Any = None, **params: Any) -> Callable[[Path], List[str]]:
    """``command`` on a recipe whose ``split`` dataset is MDS shards under the folder, changed by ``change``."""
    def setup(tmp: Path) -> List[str]:
        change(write_shards(tmp / 'mds' / split, labels=labels, compression=compression))
        dataset = {'streaming_imagenet': {'remote': str(tmp / 'mds'), 'is_train': split == 'train',
                                          'crop_size': 16, 'shuffle': False, **params}}
        changes = {'train_dataset': dataset, 'train_batch_size': 2} if split == 'train' else {'val_dataset': dataset}
        argv = [command, write_recipe(tmp, with_run(**changes))]
        if command == 'eval':
            import torch

            from composer_efficientnet import EfficientNet
            torch.save(EfficientNet.from_name('efficientnet_b0', num_classes=10).state_dict(), tmp / 'weights.pt')
            argv.append(f"model.efficientnet_b0.pretrained={tmp / 'weights.pt'}")
        return argv

    return setup


ROWS: List[BadInput] = [
    BadInput('data', 'MDS index naming a shard file outside the split',
             _shards('train', lambda split_dir: rename_shard(split_dir, 'raw_data', '../../outside.mds'),
                     compression='zstd'),
             r"train_dataset.streaming_imagenet: .*/mds/train/index.json: shard 0 names its raw_data file "
             r"'../../outside.mds', a path that climbs out with '\.\.'; " + ALLOWED),
    BadInput('data', 'MDS index naming another file as a compressed shard',
             _shards('val', lambda split_dir: rename_shard(split_dir, 'zip_data', str(split_dir.parent.parent /
                                                                                       'recipe.yaml')),
                     compression='zstd'),
             r"val_dataset.streaming_imagenet: .*/mds/val/index.json: shard 0 names its zip_data file "
             r"'.*/recipe.yaml', an absolute path; " + ALLOWED),
    BadInput('data', 'MDS label beyond the model classes in training',
             _shards('train', labels=[0, 1, 12, 1, 2, 2]),
             r"^composer-efficientnet: sample 2 of .*/mds/train, sample 2 of shard.00000.mds: label 12 \(column "
             r"'y'\) is outside \[0, 10\), the classes of the model \(num_classes: 10\); fix the shards' labels, or "
             r'give the model a num_classes above every label\.$'),
    BadInput('data', 'MDS label beyond the model classes in evaluation',
             _shards('val', command='eval', labels=[0, 1, 1, 10, 2, 2]),
             r"^composer-efficientnet: sample 3 of .*/mds/val, sample 3 of shard.00000.mds: label 10 \(column 'y'\) "
             r'is outside \[0, 10\), the classes of the model \(num_classes: 10\)'),
    BadInput('data', 'negative MDS label',
             _shards('val', command='eval', labels=[0, -3, 1, 1, 2, 2]),
             r"^composer-efficientnet: sample 1 of .*/mds/val, sample 1 of shard.00000.mds: label -3 \(column 'y'\) "
             r'is outside \[0, 10\)'),
    BadInput('data', 'truncated MDS shard with strict',
             _shards('train', lambda split_dir: truncate(split_dir / 'shard.00000.mds'), strict=True),
             r'^composer-efficientnet: sample \d of .*/mds/train: cannot read this sample out of its shard '
             r'\(shard.00000.mds is truncated or damaged at its sample \d: \w+Error: .*\); expected an intact MDS '
             r'shard as streaming.MDSWriter writes it\. Copy or write the shard again, or set strict: false to skip '
             r'unreadable samples\.$'),
]
