"""No checkpoint runs code when loaded, unless the recipe sets ``load_trusted: true``; what our runs write loads.

A crafted checkpoint whose pickle calls ``os.system('touch MARKER')``: the marker must not appear, whether train
or eval gets the file as ``load_path``, eval finds it in ``save_folder`` or autoresume would resume it (those are
rows of tests/bad_inputs.py, which also check that nothing appears on disk), or Composer downloads it from an
object store (here: Composer's S3 store with its download replaced by a copy of the file).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from composer.optim import DecoupledAdamW, DecoupledSGDW
from composer.utils import checkpoint as composer_checkpoint
from composer.utils.object_store import S3ObjectStore

from composer_efficientnet import evaluate, train
from composer_efficientnet.callbacks.checkpointing import COMPOSER_PRIVATE_NAMES
from composer_efficientnet.safe_load import UnsafeCheckpointError, disallowed_globals, read_checkpoint
from tests.bad_inputs import RunsCode, code_running_checkpoint
from tests.test_resume import _assert_same

RUN = {'model': {'efficientnet_b0': {'num_classes': 10}}, 'optimizers': {'rmsprop': {'lr': 0.01}},
       'train_dataset': {'digits': {'image_size': 8}}, 'val_dataset': {'digits': {'is_train': False, 'image_size': 8}},
       'schedulers': [{'cosine_decay_with_warmup': {'t_warmup': '1ep'}}],
       'algorithms': [{'ema': {}}, {'swa': {'swa_start': '1ep', 'swa_end': '2ep', 'update_interval': '1ep'}},
                      {'label_smoothing': {'smoothing': 0.1}}, {'sample_stochastic_depth': {'drop_rate': 0.1}}],
       'callbacks': [{'divergence_guard': {}}, {'training_curves': {}}, {'lr_monitor': {}}],
       'max_duration': '3ep', 'train_subset_num_batches': 1, 'eval_subset_num_batches': 1, 'train_batch_size': 16,
       'eval_batch_size': 16, 'device': 'cpu', 'progress_bar': False, 'run_name': 'run', 'save_interval': '3ep'}


def _main(command, tmp: Path, **changes) -> int:
    recipe = tmp / 'recipe.yaml'
    recipe.write_text(json.dumps({**RUN, 'save_folder': str(tmp / 'checkpoints'), **changes}))
    return command([str(recipe)])


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of a three-step run with every kind of state our runs save: EMA, SWA (its averaged model),
    RMSprop, a scheduler, our callbacks, the random states."""
    tmp = tmp_path_factory.mktemp('run')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert _main(train.main, tmp) == 0
    torch.set_num_threads(threads)
    return tmp / 'checkpoints' / 'ep3-ba3-rank0.pt'


def test_checkpoints_of_our_runs_load_without_code(checkpoint):
    assert disallowed_globals(checkpoint) == []
    safely = read_checkpoint(checkpoint)
    assert [name for name, _ in safely['state']['algorithms']] == ['EMA', 'SWA', 'LabelSmoothing',
                                                                    'SampleStochasticDepth']
    assert dict(safely['state']['algorithms'])['SWA']['swa_model']  # the averaged model was saved
    _assert_same(safely, torch.load(checkpoint, map_location='cpu', weights_only=False))


@pytest.mark.parametrize('optimizer', [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop,
                                       DecoupledAdamW, DecoupledSGDW])
def test_every_optimizers_state_loads_without_code(tmp_path, optimizer):
    layer = torch.nn.Linear(3, 2)
    step = optimizer(layer.parameters(), lr=0.1)
    layer(torch.ones(1, 3)).sum().backward()
    step.step()
    torch.save({'state': {'optimizers': {type(step).__qualname__: step.state_dict()}}}, tmp_path / 'opt.pt')
    assert disallowed_globals(tmp_path / 'opt.pt') == []
    _assert_same(read_checkpoint(tmp_path / 'opt.pt')['state']['optimizers'][type(step).__qualname__],
                 step.state_dict())


def test_a_file_that_would_run_code_is_refused_naming_the_global(tmp_path):
    code_running_checkpoint(tmp_path / 'crafted.pt')
    with pytest.raises(UnsafeCheckpointError) as refused:
        read_checkpoint(tmp_path / 'crafted.pt')
    assert refused.value.global_name == 'posix.system'
    assert str(refused.value) == (
        f"'{tmp_path / 'crafted.pt'}' would run code when loaded: it needs posix.system, which is not one of the "
        'plain types a Composer checkpoint holds; if you trust the file and where it came from, set load_trusted: '
        'true to load it as Composer does')
    assert not (tmp_path / RunsCode.MARKER).exists()
    torch.save({'payload': Evaluates()}, tmp_path / 'evaluates.pt')
    with pytest.raises(UnsafeCheckpointError, match='it needs builtins.eval, which'):  # torch's message says eval
        read_checkpoint(tmp_path / 'evaluates.pt')


class Evaluates:
    def __reduce__(self):
        return eval, ('1 + 1',)


def test_composer_private_names_are_still_used_as_relied_on():
    """Composer reads every monolithic checkpoint through _torch_load_with_validation, after its validation, and
    writes through _write_checkpoint_file: if 0.32.1's successor changes that, this fails, not a user's load."""
    for name in COMPOSER_PRIVATE_NAMES:
        assert callable(getattr(composer_checkpoint, name, None)), name
    assert list(inspect.signature(composer_checkpoint._torch_load_with_validation).parameters) == [
        'checkpoint_filepath', 'map_location']
    assert '_ensure_valid_checkpoint(' in inspect.getsource(composer_checkpoint._torch_load_with_validation)
    assert inspect.getsource(composer_checkpoint.safe_torch_load).count('_torch_load_with_validation(') == 2
    assert '_write_checkpoint_file(' in inspect.getsource(composer_checkpoint._save_checkpoint)


@pytest.fixture
def object_store(monkeypatch):
    """Composer's S3 store, offline: a download copies the file ``served['file']`` and is recorded."""
    served = {'downloads': []}
    monkeypatch.setattr(S3ObjectStore, 'get_object_size', lambda self, name: os.path.getsize(served['file']))

    def download_object(self, object_name, filename, overwrite=False, callback=None):
        served['downloads'].append(f's3://{self.bucket}/{object_name}')
        shutil.copyfile(served['file'], filename)

    monkeypatch.setattr(S3ObjectStore, 'download_object', download_object)
    return served


@pytest.mark.parametrize('command', [train.main, evaluate.main], ids=['train', 'eval'])
def test_a_downloaded_checkpoint_is_checked_before_composer_unpickles_it(tmp_path, object_store, capsys, command,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    object_store['file'] = code_running_checkpoint(tmp_path / 'crafted.pt')
    assert _main(command, tmp_path, load_path='s3://bucket/runs/crafted.pt', save_folder=None) == 2
    assert object_store['downloads'] == ['s3://bucket/runs/crafted.pt']
    assert capsys.readouterr().err.strip().splitlines() == [
        "composer-efficientnet: recipe error: load_path: 's3://bucket/runs/crafted.pt' would run code when loaded: "
        'it needs posix.system, which is not one of the plain types a Composer checkpoint holds; if you trust the '
        'file and where it came from, set load_trusted: true to load it as Composer does']
    assert not (tmp_path / RunsCode.MARKER).exists()


def _with_code(checkpoint: Path, folder: Path) -> Path:
    """A copy of a real checkpoint that also runs ``touch`` when loaded."""
    content = torch.load(checkpoint, map_location='cpu', weights_only=False)
    content['payload'] = RunsCode(folder)
    torch.save(content, folder / 'with-code.pt')
    return folder / 'with-code.pt'


def test_load_trusted_loads_as_composer_does(tmp_path, checkpoint, object_store, monkeypatch):
    """With load_trusted: true the file's code runs (the user's choice), locally and after a download."""
    monkeypatch.chdir(tmp_path)
    trusted = {'load_trusted': True, 'save_folder': None}
    local = _with_code(checkpoint, tmp_path)
    assert _main(evaluate.main, tmp_path, load_path=str(local)) == 2  # refused: nothing ran
    assert not (tmp_path / RunsCode.MARKER).exists()
    assert _main(evaluate.main, tmp_path, load_path=str(local), **trusted) == 0
    assert (tmp_path / RunsCode.MARKER).exists()
    (tmp_path / RunsCode.MARKER).unlink()
    object_store['file'] = local
    assert _main(evaluate.main, tmp_path, load_path='s3://bucket/with-code.pt', **trusted) == 0
    assert object_store['downloads'] == ['s3://bucket/with-code.pt'] and (tmp_path / RunsCode.MARKER).exists()

