"""Resume, exactly: a quickstart run killed (SIGKILL) after its first checkpoint, then again while writing a
checkpoint, ends bitwise where an uninterrupted run ends; a partly written checkpoint is never the latest.

The subprocess runs go through ``python -m tests.test_resume PROBE RECIPE [overrides]``, which is
``composer_efficientnet.train`` plus a callback that records every step's samples and loss.
"""

from __future__ import annotations

import datetime
import glob
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from composer.core import Callback

from composer_efficientnet import composer_efficientnet, train
from composer_efficientnet.callbacks import AtomicCheckpointSaver, TrainingCurves
from composer_efficientnet.callbacks.checkpointing import (PARTIAL_PREFIX, is_complete_checkpoint,
                                                           newest_complete_checkpoint)
from composer_efficientnet.resume import stored_identity
from tests.conftest import tiny_trainer

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = str(ROOT / 'recipes' / 'quickstart.yaml')
STEPS_PER_EPOCH = 8
SHORT = ['max_duration=3ep', 'save_interval=1ep', 'deterministic_mode=true', 'autoresume=true', 'run_name=resume',
         'save_num_checkpoints_to_keep=-1', f'train_subset_num_batches={STEPS_PER_EPOCH}', 'progress_bar=false',
         'train_dataset.digits.image_size=8', 'val_dataset.digits.image_size=8', 'eval_subset_num_batches=1']


class BatchProbe(Callback):
    """Append one JSON line per step: its samples (targets and a hash of the images) and its loss, bit for bit."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.record: dict = {}

    def after_dataloader(self, state, logger):
        images, targets = state.batch
        self.record = {'step': int(state.timestamp.batch) + 1, 'targets': targets.tolist(),
                       'images': hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()}

    def after_loss(self, state, logger):
        self.record['loss'] = float(state.loss.detach()).hex()

    def batch_end(self, state, logger):
        with open(self.path, 'a') as file:
            file.write(json.dumps(self.record) + '\n')


def _kill_while_saving(nth: int) -> None:
    """SIGKILL this process halfway through writing its ``nth`` checkpoint."""
    save, calls = torch.save, []

    def half_then_die(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) < nth:
            return save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[:buffer.tell() // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = half_then_die


def _probe_main(probe: str, argv: list) -> int:
    build = train.build_trainer

    def build_with_probe(recipe):
        trainer = build(recipe)
        trainer.state.callbacks.append(BatchProbe(probe))
        return trainer

    train.build_trainer = build_with_probe
    if os.environ.get('KILL_WHILE_SAVING'):
        _kill_while_saving(int(os.environ['KILL_WHILE_SAVING']))
    return train.main(argv)


def _command(tmp: Path, name: str) -> list:
    return [sys.executable, '-m', 'tests.test_resume', str(tmp / f'{name}.jsonl'), QUICKSTART, *SHORT,
            f'save_folder={tmp / name}']


def _env(**extra: str) -> dict:
    return {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1', **extra}


def _run(tmp: Path, name: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(tmp, name), cwd=tmp, env=_env(**env), capture_output=True, text=True, timeout=600)


def _records(tmp: Path, name: str) -> dict:
    lines = (tmp / f'{name}.jsonl').read_text().splitlines()
    return {record['step']: record for record in map(json.loads, lines)}


def _assert_same(a, b, where: str = 'checkpoint') -> None:
    """Bitwise equality of nested checkpoint state; only wall-clock times and object reprs (addresses) differ."""
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a.keys() - {'repr'}:
            _assert_same(a[key], b[key], f'{where}/{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f'{where}/{i}')
    elif not isinstance(a, datetime.timedelta):
        assert a == b, where


def _training_state(path: Path) -> dict:
    checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    state = checkpoint['state']
    return {'rng': checkpoint['rng'], **{key: state[key] for key in (
        'model', 'optimizers', 'schedulers', 'algorithms', 'timestamp', 'dataset_state', 'rank_zero_seed')}}


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f'exited early:\n{process.stderr.read()}'
        assert time.monotonic() < deadline, f'{path} did not appear'
        time.sleep(0.05)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('uninterrupted')
    result = _run(tmp, 'reference')
    assert result.returncode == 0, result.stderr
    yield _records(tmp, 'reference'), tmp / 'reference' / f'ep3-ba{3 * STEPS_PER_EPOCH}-rank0.pt'
    shutil.rmtree(tmp)  # its checkpoints are not needed past this module


@pytest.mark.slow
def test_killed_twice_resumes_bitwise(tmp_path, uninterrupted):
    reference, final = uninterrupted
    folder = tmp_path / 'run'
    first, second = folder / 'ep1-ba8-rank0.pt', folder / 'ep2-ba16-rank0.pt'

    # 1. SIGKILL from outside, as soon as the first epoch's checkpoint is in place.
    process = subprocess.Popen(_command(tmp_path, 'run'), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    _wait_for(folder / 'latest-rank0.pt', process)
    process.kill()
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert os.readlink(folder / 'latest-rank0.pt') == first.name

    # 2. The rerun resumes after step 8 and is killed halfway through writing the next checkpoint.
    killed = _run(tmp_path, 'run', KILL_WHILE_SAVING='1')
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert f'resumed from {folder}/latest-rank0.pt at step 8' in killed.stdout
    assert not second.exists()  # the half-written file never carries a checkpoint's name
    partial, = glob.glob(str(folder / f'{PARTIAL_PREFIX}*-{second.name}'))
    assert not is_complete_checkpoint(partial)
    assert os.readlink(folder / 'latest-rank0.pt') == first.name
    assert newest_complete_checkpoint(str(folder)) == str(first)

    # 3. The next rerun resumes from the last complete checkpoint again and runs to the end.
    finished = _run(tmp_path, 'run')
    assert finished.returncode == 0, finished.stderr
    assert f'resumed from {folder}/latest-rank0.pt at step 8' in finished.stdout
    assert not glob.glob(str(folder / f'{PARTIAL_PREFIX}*'))
    _assert_same(_training_state(final), _training_state(folder / final.name))

    # Every step saw the same samples and the same loss, bit for bit; steps 9-24 are those of the reruns.
    records = _records(tmp_path, 'run')  # a rerun's record of a step replaces that of the killed run
    assert sorted(records) == sorted(reference) == list(range(1, 3 * STEPS_PER_EPOCH + 1))
    for step in reference:
        assert records[step] == reference[step], step


def test_checkpoint_and_link_are_published_by_rename_in_a_safe_order(tmp_path, monkeypatch):
    operations = []
    replace, remove = os.replace, os.remove
    monkeypatch.setattr(os, 'replace', lambda a, b: operations.append(('replace', Path(b).name)) or replace(a, b))
    monkeypatch.setattr(os, 'remove', lambda a: operations.append(('remove', Path(a).name)) or remove(a))
    monkeypatch.setattr(os, 'symlink', lambda target, link, symlink=os.symlink: (
        operations.append(('symlink', Path(link).name[:len(PARTIAL_PREFIX)])), symlink(target, link)))
    saver = AtomicCheckpointSaver(folder=str(tmp_path), save_interval='2ba', num_checkpoints_to_keep=1)
    tiny_trainer(max_duration='4ba', callbacks=[saver]).fit()
    monkeypatch.undo()
    assert operations == [
        ('replace', 'ep0-ba2-rank0.pt'), ('symlink', PARTIAL_PREFIX), ('replace', 'latest-rank0.pt'),
        ('replace', 'ep0-ba4-rank0.pt'), ('symlink', PARTIAL_PREFIX), ('replace', 'latest-rank0.pt'),
        ('remove', 'ep0-ba2-rank0.pt')]  # written, then linked, and only then the old one deleted
    assert sorted(os.listdir(tmp_path)) == ['ep0-ba4-rank0.pt', 'latest-rank0.pt']


def _checkpoint(path: Path, mtime: float, complete: bool = True) -> Path:
    torch.save({'weights': torch.arange(1000)}, path)
    if not complete:
        path.write_bytes(path.read_bytes()[:200])
    os.utime(path, (mtime, mtime))
    return path


def test_newest_complete_checkpoint_is_chosen(tmp_path):
    old = _checkpoint(tmp_path / 'ep1-ba8-rank0.pt', 1000)
    assert newest_complete_checkpoint(str(tmp_path)) == str(old)
    newer = _checkpoint(tmp_path / 'ep2-ba16-rank0.pt', 2000)  # renamed into place; the link not yet updated
    os.symlink(old.name, tmp_path / 'latest-rank0.pt')
    assert newest_complete_checkpoint(str(tmp_path)) == str(newer)
    _checkpoint(tmp_path / 'ep3-ba24-rank0.pt', 3000, complete=False)  # truncated: never taken
    _checkpoint(tmp_path / f'{PARTIAL_PREFIX}12-ep3-ba24-rank0.pt', 4000)
    _checkpoint(tmp_path / 'ep4-ba32-rank1.pt', 5000)  # another rank's name
    assert newest_complete_checkpoint(str(tmp_path)) == str(newer)
    assert newest_complete_checkpoint(str(tmp_path / 'missing')) is None


def test_stale_run_in_the_folder_does_not_win_by_its_step(tmp_path):
    """A finished older run's higher step is not newer than the current run's checkpoint."""
    _checkpoint(tmp_path / 'ep9-ba72-rank0.pt', 1000)
    current = _checkpoint(tmp_path / 'ep1-ba8-rank0.pt', 2000)
    assert newest_complete_checkpoint(str(tmp_path)) == str(current)



TINY = {'model': {'efficientnet_b0': {'num_classes': 10}}, 'train_dataset': {'digits': {'image_size': 8}},
        'optimizers': {'sgd': {'lr': 0.1}}, 'max_duration': '1ba', 'train_batch_size': 16, 'device': 'cpu',
        'progress_bar': False, 'autoresume': True, 'run_name': 'tiny', 'save_interval': '1ba'}


def _tiny_main(tmp: Path, **changes) -> int:
    recipe = tmp / 'recipe.yaml'
    recipe.write_text(json.dumps({**TINY, 'save_folder': str(tmp / 'checkpoints'), **changes}))
    return train.main([str(recipe)])


def _snapshot(folder: Path) -> dict:
    return {path.name: (path.stat().st_mtime_ns, os.readlink(path) if path.is_symlink() else None)
            for path in folder.iterdir()}


@pytest.fixture(scope='module')
def resumable(tmp_path_factory):
    """A run of one step with its checkpoint; its recipe is TINY."""
    tmp = tmp_path_factory.mktemp('resumable')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert _tiny_main(tmp) == 0
    torch.set_num_threads(threads)
    return tmp


CHANGES = [
    ('member', {'model': {'efficientnet_b1': {'num_classes': 10}}}, "model was 'efficientnet_b0', is 'efficientnet_b1'"),
    ('num_classes', {'model': {'efficientnet_b0': {'num_classes': 100}}}, 'model.num_classes was 10, is 100'),
    ('model parameter', {'model': {'efficientnet_b0': {'num_classes': 10, 'drop_connect_rate': 0.3}}},
     'model.drop_connect_rate was 0.2, is 0.3'),
    ('optimizer', {'optimizers': {'adamw': {'lr': 0.1}}}, "optimizers was 'sgd', is 'adamw'"),
    ('dataset', {'train_dataset': {'synthetic': {'num_classes': 10, 'image_size': 8}}},
     "train_dataset was 'digits', is 'synthetic'"),
    ('batch size', {'train_batch_size': 32}, 'train_batch_size was 16, is 32'),
    ('two at once', {'model': {'efficientnet_b2': {'num_classes': 3}}},
     "model was 'efficientnet_b0', is 'efficientnet_b2'; model.num_classes was 10, is 3"),
]


@pytest.mark.parametrize('label,changes,difference', CHANGES, ids=[c[0] for c in CHANGES])
def test_changed_recipe_stops_before_a_model_is_built(resumable, monkeypatch, capsys, label, changes, difference):
    before = _snapshot(resumable / 'checkpoints')
    monkeypatch.setattr(train, 'Trainer', lambda *a, **k: pytest.fail('a Trainer was built'))
    assert _tiny_main(resumable, **changes) == 2
    err = capsys.readouterr().err.strip().splitlines()
    checkpoint = resumable / 'checkpoints' / 'ep0-ba1-rank0.pt'
    assert err == [f"composer-efficientnet: recipe error: autoresume: this recipe differs from the run that wrote "
                   f"'{checkpoint}': {difference}; resume with that recipe, or start a new run in another "
                   'save_folder (or with another run_name, where save_folder contains {run_name})']
    assert _snapshot(resumable / 'checkpoints') == before


def test_another_run_name_does_not_resume_this_run(resumable, monkeypatch, capsys):
    """The folder has no {run_name}: a run of another name would have resumed this one's checkpoint."""
    before = _snapshot(resumable / 'checkpoints')
    monkeypatch.setattr(train, 'Trainer', lambda *a, **k: pytest.fail('a Trainer was built'))
    assert _tiny_main(resumable, run_name='other') == 2
    checkpoint, folder = resumable / 'checkpoints' / 'ep0-ba1-rank0.pt', resumable / 'checkpoints'
    assert capsys.readouterr().err.strip().splitlines() == [
        f"composer-efficientnet: recipe error: run_name: is 'other', but '{checkpoint}', the newest checkpoint in "
        f"save_folder '{folder}', is of run 'tiny': set run_name=tiny to continue that run, or start run 'other' in "
        'another save_folder (such as one containing {run_name})']
    assert _snapshot(resumable / 'checkpoints') == before


def test_same_run_resumes_under_a_legacy_name_and_other_settings(resumable, tmp_path, capsys):
    """Equal after defaults and spelling: efficientnetb0 with num_classes given is efficientnet_b0; the duration,
    learning rate and checkpoint settings may change on resume."""
    run = tmp_path / 'copy'
    (run / 'checkpoints').mkdir(parents=True)
    for name in ('ep0-ba1-rank0.pt', 'latest-rank0.pt'):
        os.symlink(os.path.realpath(resumable / 'checkpoints' / name), run / 'checkpoints' / name)
    (run / 'checkpoints' / 'latest-rank0.pt').unlink()  # as if killed before Composer re-created its link
    assert _tiny_main(run, model={'efficientnetb0': {'num_classes': 10, 'drop_connect_rate': 0.2}},
                      optimizers={'sgd': {'lr': 0.01}}, max_duration='2ba', save_interval='2ba') == 0
    assert f"resumed from {run / 'checkpoints' / 'latest-rank0.pt'} at step 1" in capsys.readouterr().out
    assert os.readlink(run / 'checkpoints' / 'latest-rank0.pt') == 'ep0-ba2-rank0.pt'


def test_checkpoints_record_the_recipe(resumable):
    checkpoint = resumable / 'checkpoints' / 'ep0-ba1-rank0.pt'
    assert stored_identity(str(checkpoint)) == {
        'model': 'efficientnet_b0', 'model.bn_eps': None, 'model.bn_momentum': None, 'model.drop_connect_rate': 0.2,
        'model.dropout': None, 'model.num_classes': 10, 'model.pretrained': None, 'optimizers': 'sgd',
        'train_dataset': 'digits', 'train_batch_size': 16}


def test_memory_efficient_may_change_on_resume():
    """It changes how the model computes, not its weights or what it learns: not part of the run's identity."""
    from composer_efficientnet.recipe import load_recipe, validate
    from composer_efficientnet.resume import run_identity
    identities = [run_identity(validate(load_recipe(QUICKSTART, [f'model.efficientnet_b0.memory_efficient={value}'])))
                  for value in ('true', 'false')]
    assert identities[0] == identities[1] and 'model.memory_efficient' not in identities[0]



def test_rerunning_a_finished_run_trains_nothing_and_succeeds(resumable, capsys):
    """A scheduler's retry of a run that already reached max_duration: exit 0, one line, nothing written."""
    before = _snapshot(resumable / 'checkpoints')
    assert _tiny_main(resumable) == 0
    out = capsys.readouterr().out
    assert 'the run is complete: max_duration 1ba reached at step 1; nothing to train (raise max_duration to train ' \
           'on)' in out
    assert _snapshot(resumable / 'checkpoints') == before


def test_resuming_with_an_algorithm_that_changes_the_model_is_one_line(resumable, tmp_path, capsys):
    run = tmp_path / 'copy'
    shutil.copytree(resumable / 'checkpoints', run / 'checkpoints', symlinks=True)
    assert _tiny_main(run, algorithms=[{'blurpool': {}}], max_duration='2ba') == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"composer-efficientnet: recipe error: autoresume: '{run / 'checkpoints' / 'ep0-ba1-rank0.pt'}"
                          f"' does not fit the recipe's model, efficientnet_b0 (it was written by a run of "
                          'efficientnet_b0 with num_classes 10): missing key(s) '
                          'module.stages.1.0.depthwise.conv.blur_filter'), err


def test_a_run_fine_tunes_onto_new_classes_from_its_checkpoint(resumable, tmp_path, capsys):
    """load_path loads the whole model, so a new head is a one-line error that names the way that works: the
    checkpoint as the model's pretrained file, which keeps everything but the classifier."""
    checkpoint = resumable / 'checkpoints' / 'ep0-ba1-rank0.pt'
    new_head = {'model': {'efficientnet_b0': {'num_classes': 12}}, 'autoresume': False, 'run_name': 'new',
                'save_folder': None}
    assert _tiny_main(tmp_path, load_path=str(checkpoint), load_weights_only=True, **new_head) == 2
    assert 'size mismatch for module.classifier.weight' in capsys.readouterr().err
    model = composer_efficientnet('efficientnet_b0', num_classes=12, pretrained=checkpoint)
    trained = torch.load(checkpoint, map_location='cpu', weights_only=False)['state']['model']
    for name, value in model.state_dict().items():
        if not name.startswith('module.classifier.'):
            assert torch.equal(value, trained[name]), name


def test_resumed_runs_keep_only_save_num_checkpoints_to_keep(tmp_path):
    """Composer counts kept checkpoints from zero after a resume; across a resume the folder still holds one."""
    keep_one = {'save_num_checkpoints_to_keep': 1}
    assert _tiny_main(tmp_path, max_duration='2ba', **keep_one) == 0
    assert _tiny_main(tmp_path, max_duration='4ba', **keep_one) == 0  # resumes at step 2
    assert sorted(path.name for path in (tmp_path / 'checkpoints').iterdir()) == ['ep0-ba4-rank0.pt',
                                                                                 'latest-rank0.pt']


def test_training_curves_of_a_resumed_run_cover_the_whole_run(tmp_path):
    curves = {'callbacks': [{'training_curves': {}}]}
    assert _tiny_main(tmp_path, max_duration='2ba', **curves) == 0
    assert _tiny_main(tmp_path, max_duration='4ba', **curves) == 0  # resumes at step 2

    def losses(name: str) -> list:
        state = torch.load(tmp_path / 'checkpoints' / name, map_location='cpu', weights_only=False)['state']
        return state['callbacks']['TrainingCurves']['train_loss']

    first, whole = losses('ep0-ba2-rank0.pt'), losses('ep0-ba4-rank0.pt')
    assert [step for step, _ in whole] == [0, 1, 2, 3]
    assert whole[:2] == first


def test_training_curves_without_a_save_folder_write_nothing_and_say_so(tmp_path, monkeypatch, caplog):
    """They were written to ./<run_name>/ without a word."""
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger='composer_efficientnet.callbacks.training_curves'):
        tiny_trainer('2ba', callbacks=[TrainingCurves()]).fit()
    assert list(tmp_path.iterdir()) == []
    assert [record.getMessage() for record in caplog.records] == [
        "training_curves: no training_curves.png is written, as the run has no save_folder; set one, or the "
        "callback's folder"]


if __name__ == '__main__':
    sys.exit(_probe_main(sys.argv[1], sys.argv[2:]))
