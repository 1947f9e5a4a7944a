"""A checkpoint that cannot be written (here a disk that fills up inside ``torch.save``) stops the run with one
line that names the checkpoint, the reason and the free space, and what is intact; nothing partial is left."""

import errno
import itertools
import os
import re
from typing import Optional

import pytest
import torch
from composer.utils import checkpoint as composer_checkpoint

from composer_efficientnet import train
from composer_efficientnet.callbacks import AtomicCheckpointSaver, CheckpointWriteError
from composer_efficientnet.callbacks.checkpointing import is_complete_checkpoint
from tests.conftest import tiny_trainer

RECIPE = os.path.join(os.path.dirname(__file__), '..', 'recipes', 'quickstart.yaml')


class FullDisk:
    """A file that takes ``room`` bytes, then fails every write as a full disk does."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data) -> int:
        if self.file.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def disk_full_after(monkeypatch, writes: int, error: Optional[Exception] = None) -> None:
    """Checkpoint files after the first ``writes`` fail part way through (or raise ``error`` instead)."""
    write = composer_checkpoint._write_checkpoint_file
    count = itertools.count()

    def write_until_full(state_dict, filename):
        if next(count) < writes:
            return write(state_dict, filename)
        if error is not None:
            raise error
        with open(filename, 'wb') as file:
            torch.save(state_dict, FullDisk(file, room=1 << 20))  # torch reports it as a RuntimeError

    monkeypatch.setattr(composer_checkpoint, '_write_checkpoint_file', write_until_full)


def fit(tmp_path):
    saver = AtomicCheckpointSaver(folder=str(tmp_path), save_interval='2ba')
    trainer = tiny_trainer(max_duration='6ba', run_name='full', callbacks=[saver])
    with pytest.raises(CheckpointWriteError) as info:
        trainer.fit()
    return str(info.value), trainer


def test_full_disk_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    disk_full_after(monkeypatch, writes=1)
    message, trainer = fit(tmp_path)
    last = f'{tmp_path}/ep0-ba2-rank0.pt'
    assert re.fullmatch(rf'could not write checkpoint ep0-ba4-rank0\.pt in {re.escape(str(tmp_path))}: No space left '
                        rf'on device \(\d+(\.\d)? [GM]iB free\); the last complete checkpoint, {re.escape(last)}, is '
                        r'intact; nothing partial was left', message), message
    assert int(trainer.state.timestamp.batch) == 4
    assert sorted(os.listdir(tmp_path)) == ['ep0-ba2-rank0.pt', 'latest-rank0.pt']
    assert os.path.realpath(tmp_path / 'latest-rank0.pt') == last and is_complete_checkpoint(last)


def test_full_disk_at_the_first_checkpoint_says_none_was_written(tmp_path, monkeypatch):
    disk_full_after(monkeypatch, writes=0)
    message, _ = fit(tmp_path)
    assert message.startswith('could not write checkpoint ep0-ba2-rank0.pt in ')
    assert message.endswith('; no checkpoint had been written; nothing partial was left')
    assert os.listdir(tmp_path) == []


def test_other_errors_of_the_writer_pass_through_unchanged(tmp_path, monkeypatch):
    disk_full_after(monkeypatch, writes=0, error=RuntimeError('not a disk problem'))
    trainer = tiny_trainer(max_duration='2ba', callbacks=[AtomicCheckpointSaver(folder=str(tmp_path),
                                                                               save_interval='2ba')])
    with pytest.raises(RuntimeError, match='^not a disk problem$'):
        trainer.fit()


def test_recipe_run_exits_4_with_one_line(tmp_path, monkeypatch, capsys):
    disk_full_after(monkeypatch, writes=1)
    folder = tmp_path / 'checkpoints'
    status = train.main([RECIPE, 'max_duration=6ba', 'save_interval=2ba', f'save_folder={folder}',
                         'train_dataset.digits.image_size=8', 'val_dataset=null', 'eval_batch_size=null',
                         'progress_bar=false'])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 4
    assert len(err) == 1 and err[0].startswith('composer-efficientnet: could not write checkpoint ep0-ba4-rank0.pt')
    assert err[0].endswith(f'the last complete checkpoint, {folder}/ep0-ba2-rank0.pt, is intact; nothing partial '
                           'was left; make room there, then rerun (with autoresume: true it continues from the last '
                           'checkpoint)')
    assert sorted(os.listdir(folder)) == ['ep0-ba2-rank0.pt', 'latest-rank0.pt']
