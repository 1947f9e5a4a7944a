"""Checkpoint archives (``.tar``, ``.tar.gz``, ``.pt.gz``) run no code and write nothing outside a private temporary
folder, for every path that takes a checkpoint; valid ones load, with the plain file's weights, in train, eval,
predict and export.

The attacks, each of which worked before: a ``load_checkpoint`` callback of an archive that runs ``os.system``
while fit loads it (here also one Composer downloads, during fit); members named ``../../x`` or ``/abs/path`` that
Composer's ``extractall`` wrote outside; a ``.pt.gz`` that Composer decompressed over the ``.pt`` beside it. The
refusals' messages are rows of tests/bad_inputs_archives.py.
"""

from __future__ import annotations

import contextlib
import gzip
import inspect
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from composer.utils import checkpoint as composer_checkpoint
from composer.utils.object_store import S3ObjectStore

from composer_efficientnet import archives, cli, evaluate, train
from composer_efficientnet.archives import ArchiveError, composer_unpacks_checked, unpack, unpacked
from composer_efficientnet.export import load_for_inference
from composer_efficientnet.recipe import load_recipe, validate
from composer_efficientnet.safe_load import read_checkpoint
from tests.bad_inputs import RunsCode
from tests.bad_inputs_archives import (STATES, code_running, escaping, gzipped, member, plain_checkpoint,
                                       states_member, write_tar)
from tests.data_trees import CLASSES, make_tree
from tests.test_recipe import BASE


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A two-step run on a three-class ImageFolder tree at 16 pixels: its recipe (as a dict), its checkpoint, and
    the checkpoint as Composer writes a .tar and a .tar.gz, and gzipped."""
    tmp = tmp_path_factory.mktemp('run')
    root = make_tree(tmp / 'tree', per_class=2)
    recipe = {**BASE, 'model': {'efficientnet_b0': {'num_classes': 3}}, 'train_batch_size': 2, 'eval_batch_size': 6,
              'max_duration': '2ba', 'save_folder': str(tmp / 'checkpoints'), 'save_interval': '2ba',
              'progress_bar': False, 'algorithms': [],
              **{f'{split}_dataset': {'imagenet': {'datadir': str(root), 'is_train': split == 'train', 'crop_size': 16,
                                                   'resize_size': 20}} for split in ('train', 'val')}}
    with contextlib.redirect_stdout(io.StringIO()):
        assert train.main([_write(tmp / 'recipe.yaml', recipe)]) == 0
    plain = tmp / 'checkpoints' / 'ep0-ba2-rank0.pt'
    content = torch.load(plain, map_location='cpu', weights_only=False)
    for name in ('c.tar', 'c.tar.gz'):
        composer_checkpoint._write_checkpoint_file(content, str(tmp / name))  # as Composer writes them
    gzipped(plain, tmp / 'c.pt.gz')
    return {'recipe': recipe, 'plain': plain, 'tree': root, 'folder': tmp,
            **{name: tmp / f'c.{name}' for name in ('tar', 'tar.gz', 'pt.gz')}}


def _write(path: Path, recipe: dict) -> str:
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _recipe(run, tmp: Path, **changes) -> str:
    return _write(tmp / 'recipe.yaml', {**run['recipe'], 'save_folder': None, **changes})


def _weights(model) -> dict:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def _assert_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


KINDS = ['tar', 'tar.gz', 'pt.gz']
#: Those the slower tests load (a .tar.gz unpacks as a .tar does once opened).
LOADED = ['tar', 'pt.gz']


# -- valid archives load as the plain file does -------------------------------------------------------------------

@pytest.mark.parametrize('kind', KINDS)
def test_an_archive_reads_as_the_file_it_holds(run, kind):
    plain = read_checkpoint(run['plain'])
    packed = read_checkpoint(run[kind], mmap=True)
    _assert_equal(packed['state']['model'], plain['state']['model'])
    assert packed['state']['callbacks']['ClassNames'] == plain['state']['callbacks']['ClassNames']


@pytest.mark.parametrize('kind', LOADED)
def test_export_and_predict_load_an_archive_with_the_plain_files_weights(run, tmp_path, kind, capsys):
    """Before: a traceback (read_checkpoint read the archive as a torch file)."""
    want = load_for_inference(_recipe(run, tmp_path, load_path=str(run['plain'])))
    got = load_for_inference(_recipe(run, tmp_path, load_path=str(run[kind])))
    _assert_equal(_weights(got.module), _weights(want.module))
    assert got.class_names == want.class_names == sorted(CLASSES)
    as_weights = load_for_inference(str(run[kind]))  # the archive given as a weights file
    _assert_equal(_weights(as_weights.module), _weights(want.module))
    assert as_weights.class_names == sorted(CLASSES)
    image = str(run['tree'] / 'val' / 'cat' / '0.jpg')
    assert cli.main(['predict', _recipe(run, tmp_path, load_path=str(run[kind])), image]) == 0
    assert cli.main(['predict', str(run[kind]), image]) == 0
    out = tmp_path / 'model.ts'
    assert cli.main(['export', str(run[kind]), '--format', 'torchscript', '--out', str(out)]) == 0
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(out))(images), want.module(images), atol=1e-5)
    capsys.readouterr()


@pytest.mark.parametrize('kind', LOADED)
def test_eval_and_train_load_an_archive_with_the_plain_files_weights(run, tmp_path, kind, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for build, purpose in ((evaluate.build_evaluator, 'eval'), (train.build_trainer, 'train')):
        trainers = [build(validate(load_recipe(_recipe(run, tmp_path, load_path=str(path))), purpose=purpose))
                    for path in (run['plain'], run[kind])]
        _assert_equal(_weights(trainers[1].state.model), _weights(trainers[0].state.model))
        for trainer in trainers:
            trainer.close()
    assert evaluate.main([_recipe(run, tmp_path, load_path=str(run[kind]))]) == 0
    assert train.main([_recipe(run, tmp_path, load_path=str(run[kind]), max_duration='3ba')]) == 0
    capsys.readouterr()


def test_a_load_checkpoint_callback_loads_a_valid_archive_during_fit(run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for kind in ('tar', 'pt.gz'):
        loading = {'load_checkpoint': {'load_path': str(run[kind]), 'event': 'fit_start', 'load_weights_only': True}}
        assert train.main([_recipe(run, tmp_path, callbacks=[loading])]) == 0, capsys.readouterr().err
    capsys.readouterr()


def test_a_legacy_format_checkpoint_is_read_whole_without_code(run, tmp_path, capsys):
    """Before: refused, with torch's message that mmap needs the zip format."""
    legacy = tmp_path / 'legacy.pt'
    torch.save(torch.load(run['plain'], map_location='cpu', weights_only=False), legacy,
               _use_new_zipfile_serialization=False)
    _assert_equal(read_checkpoint(legacy, mmap=True)['state']['model'], read_checkpoint(run['plain'])['state']['model'])
    assert evaluate.main([_recipe(run, tmp_path, load_path=str(legacy))]) == 0
    assert evaluate.main([_recipe(run, tmp_path, load_path=str(legacy), load_trusted=True)]) == 0
    code = tmp_path / 'legacy-code.pt'
    torch.save({'state': {'model': {}}, 'payload': RunsCode(tmp_path)}, code, _use_new_zipfile_serialization=False)
    assert evaluate.main([_recipe(run, tmp_path, load_path=str(code))]) == 2
    assert not (tmp_path / RunsCode.MARKER).exists()
    assert 'would run code when loaded: it needs posix.system' in capsys.readouterr().err


def test_a_torch_file_named_like_a_tar_is_read_as_a_torch_file(run, tmp_path, capsys):
    """``model_best.pth.tar``, an old PyTorch convention, is a torch.save file."""
    named = tmp_path / 'model_best.pth.tar'
    shutil.copyfile(run['plain'], named)
    _assert_equal(read_checkpoint(named)['state']['model'], read_checkpoint(run['plain'])['state']['model'])
    assert evaluate.main([_recipe(run, tmp_path, load_path=str(named))]) == 0
    capsys.readouterr()


# -- a .pt.gz never writes beside itself --------------------------------------------------------------------------

def test_a_pt_gz_load_path_leaves_the_pt_beside_it_as_it_was(run, tmp_path, monkeypatch, capsys):
    """Before: Composer decompressed ep0-ba4-rank0.pt.gz into ep0-ba4-rank0.pt, writing over that checkpoint."""
    monkeypatch.chdir(tmp_path)
    sibling = tmp_path / 'ep0-ba4-rank0.pt'
    shutil.copyfile(run['plain'], sibling)
    before = sibling.read_bytes()
    other = torch.load(run['plain'], map_location='cpu', weights_only=False)
    other['state']['model'] = {name: tensor + 1 if tensor.is_floating_point() else tensor
                               for name, tensor in other['state']['model'].items()}
    torch.save(other, tmp_path / 'other.pt')
    gzipped(tmp_path / 'other.pt', tmp_path / 'ep0-ba4-rank0.pt.gz')
    (tmp_path / 'other.pt').unlink()
    recipe = _recipe(run, tmp_path, load_path=str(tmp_path / 'ep0-ba4-rank0.pt.gz'))
    listing = sorted(os.listdir(tmp_path))
    assert evaluate.main([recipe]) == 0
    assert sibling.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == listing
    evaluator = evaluate.build_evaluator(validate(load_recipe(recipe), purpose='eval'))
    got = evaluator.state.model.state_dict()
    _assert_equal({name: got[name] for name in other['state']['model']}, other['state']['model'])
    evaluator.close()
    assert sibling.read_bytes() == before
    capsys.readouterr()


# -- members that would escape are refused before anything is written ----------------------------------------------

@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The system's temporary folder, where Composer unpacks, as ``tmp_path/system/tmp``: a member named
    ``../../../escaped.pth`` unpacked there by ``extractall`` lands at ``tmp_path/escaped.pth``."""
    folder = tmp_path / 'system' / 'tmp'
    folder.mkdir(parents=True)
    monkeypatch.setattr(tempfile, 'tempdir', str(folder))
    monkeypatch.chdir(tmp_path)
    return folder


@pytest.mark.parametrize('command', ['train', 'eval', 'predict', 'export', 'pretrained'])
@pytest.mark.parametrize('name', ['../../../escaped.pth', 'ABSOLUTE'], ids=['dot-dot', 'absolute'])
def test_no_member_is_written_outside_for_any_command(run, tmp_path, private_tmp, command, name, capsys):
    """Before: train and eval wrote the member where it named (a .pth file in site-packages runs at startup)."""
    outside = tmp_path / 'elsewhere' / 'escaped.pth'
    outside.parent.mkdir()
    archive = escaping(tmp_path, str(outside) if name == 'ABSOLUTE' else name)
    image = str(run['tree'] / 'val' / 'cat' / '0.jpg')
    argv = {'train': lambda: ['train', _recipe(run, tmp_path, load_path=str(archive))],
            'eval': lambda: ['eval', _recipe(run, tmp_path, load_path=str(archive))],
            'predict': lambda: ['predict', str(archive), image],
            'export': lambda: ['export', str(archive), '--format', 'torchscript', '--out', str(tmp_path / 'm.ts')],
            'pretrained': lambda: ['train', _recipe(run, tmp_path), f'model.efficientnet_b0.pretrained={archive}'],
            }[command]()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    shown = name if name != 'ABSOLUTE' else str(outside)
    assert len(err) == 1 and f"slip.tar': member '{shown}' would be written outside the folder" in err[0], err
    assert not outside.exists() and not (tmp_path / 'escaped.pth').exists()
    assert not (tmp_path / RunsCode.MARKER).exists()
    assert os.listdir(private_tmp) == []  # every private folder removed


def test_load_trusted_opts_out_of_the_pickle_check_but_not_the_member_checks(run, tmp_path, private_tmp, capsys):
    outside = tmp_path / 'escaped.pth'
    archive = escaping(tmp_path, '../../../escaped.pth')
    assert evaluate.main([_recipe(run, tmp_path, load_path=str(archive), load_trusted=True)]) == 2
    assert not outside.exists()
    assert "member '../../../escaped.pth' would be written outside" in capsys.readouterr().err
    content = torch.load(run['plain'], map_location='cpu', weights_only=False)
    content['payload'] = RunsCode(tmp_path)
    torch.save(content, tmp_path / STATES)
    code = write_tar(tmp_path / 'code.tar', states_member(tmp_path / STATES))
    assert evaluate.main([_recipe(run, tmp_path, load_path=str(code))]) == 2
    assert not (tmp_path / RunsCode.MARKER).exists()
    assert evaluate.main([_recipe(run, tmp_path, load_path=str(code), load_trusted=True)]) == 0
    assert (tmp_path / RunsCode.MARKER).exists()  # the user's choice: the code ran
    capsys.readouterr()


def test_composer_never_unpacks_an_archive_itself(tmp_path, monkeypatch):
    """Composer's download_checkpoint is replaced while our loads are checked; it would extractall / decompress."""
    monkeypatch.setattr(tarfile.TarFile, 'extractall', _never)
    monkeypatch.setattr(composer_checkpoint, 'get_compressor', _never)
    sources = {}
    for archive in (write_tar(tmp_path / 'c.tar', states_member(plain_checkpoint(tmp_path / 'src' / STATES))),
                    gzipped(tmp_path / 'src' / STATES, tmp_path / 'c.pt.gz')):
        node = tmp_path / f'node-{archive.name}'
        node.mkdir()
        with composer_unpacks_checked(sources):
            states, _, _ = composer_checkpoint.download_checkpoint(str(archive), str(node), None, False)
        assert torch.equal(read_checkpoint(states)['state']['model']['w'], torch.ones(2))
        assert Path(states).is_relative_to(node) and sources[states] == f"'{archive}'"
    assert composer_checkpoint.download_checkpoint.__module__ == 'composer.utils.checkpoint'  # restored
    assert 'download_checkpoint(' in inspect.getsource(composer_checkpoint.load_checkpoint)


def _never(*args, **kwargs):
    raise AssertionError('Composer unpacked an archive itself')


# -- the member checks and bounds ----------------------------------------------------------------------------------

@pytest.mark.parametrize('bad, problem', [
    (member('/etc/escaped'), "member '/etc/escaped' would be written outside"),
    (member('a/../../escaped'), "member 'a/../../escaped' would be written outside"),
    (member('escape', kind=tarfile.SYMTYPE, target='/etc'), "member 'escape' is a symbolic link (to '/etc')"),
    (member('escape', kind=tarfile.LNKTYPE, target='/etc/passwd'), "member 'escape' is a hard link"),
    (member('escape', kind=tarfile.CHRTYPE), "member 'escape' is a device"),
    (member('escape', kind=tarfile.BLKTYPE), "member 'escape' is a device"),
    (member('escape', kind=tarfile.FIFOTYPE), "member 'escape' is a pipe"),
], ids=['absolute', 'dot-dot', 'symlink', 'hardlink', 'char-device', 'block-device', 'fifo'])
def test_every_member_is_checked_before_any_is_written(tmp_path, bad, problem):
    states = states_member(plain_checkpoint(tmp_path / 'src' / STATES))
    archive = write_tar(tmp_path / 'bad.tar', states, bad)  # the bad member after a good one
    folder = tmp_path / 'unpacked'
    folder.mkdir()
    with pytest.raises(ArchiveError) as refused:
        unpack(str(archive), str(folder))
    assert str(refused.value).startswith(f"'{archive}': {problem}")
    assert list(folder.iterdir()) == []  # not even the good member
    with pytest.raises(ArchiveError):
        read_checkpoint(archive)


def test_folders_and_dot_names_are_fine(tmp_path):
    states = plain_checkpoint(tmp_path / 'src' / STATES).read_bytes()
    archive = write_tar(tmp_path / 'ok.tar', member('', kind=tarfile.DIRTYPE), member('./' + STATES, states),
                        member('extra/', kind=tarfile.DIRTYPE), member('extra/notes.txt', b'notes'))
    with unpacked(str(archive)) as plain:
        folder = Path(plain).parent
        assert Path(plain).read_bytes() == states and (folder / 'extra' / 'notes.txt').read_bytes() == b'notes'
    assert not folder.exists()  # removed


def test_the_member_count_and_size_are_bounded(tmp_path, monkeypatch):
    states = states_member(plain_checkpoint(tmp_path / 'src' / STATES))
    monkeypatch.setattr(archives, 'MAX_MEMBERS', 3)
    many = write_tar(tmp_path / 'many.tar', states, *(member(f'f{i}', b'x') for i in range(3)))
    with pytest.raises(ArchiveError, match=f"'{many}' holds more than 3 members"):
        read_checkpoint(many)
    monkeypatch.setattr(archives, 'MAX_BYTES', 1000)
    with pytest.raises(ArchiveError, match=r"would unpack to more than .* \(at member 'composer_states.pt'\)"):
        read_checkpoint(write_tar(tmp_path / 'big.tar', states))
    bomb = tmp_path / 'bomb.pt.gz'
    bomb.write_bytes(gzip.compress(b'\0' * 10**6))
    with pytest.raises(ArchiveError, match=f"'{bomb}' decompresses to more than"):
        read_checkpoint(bomb)


@pytest.mark.parametrize('content, message', [
    (b'not a tar archive at all', 'cannot be read as a tar archive'),
    (gzip.compress(b'not a tar archive at all'), 'cannot be read as a tar archive'),
])
def test_a_damaged_tar_is_one_line(tmp_path, content, message):
    damaged = tmp_path / 'damaged.tar'
    damaged.write_bytes(content)
    with pytest.raises(ArchiveError, match=message):
        read_checkpoint(damaged)


def test_a_damaged_pt_gz_is_one_line(tmp_path):
    damaged = tmp_path / 'damaged.pt.gz'
    damaged.write_bytes(gzip.compress(os.urandom(10000))[:5000])
    with pytest.raises(ArchiveError, match=r"'.*damaged.pt.gz' cannot be decompressed as gz"):
        read_checkpoint(damaged)


# -- downloaded archives: Composer downloads, we unpack -----------------------------------------------------------

@pytest.fixture
def object_store(monkeypatch):
    """Composer's S3 store, offline: a download copies the file ``served[object name]`` and is recorded."""
    served = {'downloads': []}
    monkeypatch.setattr(S3ObjectStore, 'get_object_size', lambda self, name: os.path.getsize(served[name]))

    def download_object(self, object_name, filename, overwrite=False, callback=None):
        served['downloads'].append(f's3://{self.bucket}/{object_name}')
        shutil.copyfile(served[object_name], filename)

    monkeypatch.setattr(S3ObjectStore, 'download_object', download_object)
    return served


@pytest.mark.parametrize('kind', KINDS)
def test_a_downloaded_archive_loads_with_the_plain_files_weights(run, tmp_path, object_store, kind, monkeypatch,
                                                                 capsys):
    monkeypatch.chdir(tmp_path)
    object_store[f'runs/c.{kind}'] = run[kind]
    recipe = validate(load_recipe(_recipe(run, tmp_path, load_path=f's3://bucket/runs/c.{kind}')), purpose='eval')
    evaluator = evaluate.build_evaluator(recipe)
    want = read_checkpoint(run['plain'])['state']['model']
    _assert_equal({name: tensor for name, tensor in evaluator.state.model.state_dict().items()}, want)
    evaluator.close()
    assert object_store['downloads'] == [f's3://bucket/runs/c.{kind}']
    capsys.readouterr()


def test_a_downloaded_archive_is_unpacked_with_the_member_checks(run, tmp_path, private_tmp, object_store, capsys):
    outside = tmp_path / 'escaped.pth'
    object_store['runs/slip.tar'] = escaping(tmp_path, '../../../escaped.pth')
    assert evaluate.main([_recipe(run, tmp_path, load_path='s3://bucket/runs/slip.tar')]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "composer-efficientnet: recipe error: load_path: 's3://bucket/runs/slip.tar': member '../../../escaped.pth' "
        'would be written outside the folder the archive is unpacked into (an absolute name or one with \'..\'); a '
        'checkpoint archive holds only files and folders under its own folder, so it was not unpacked']
    assert not outside.exists() and os.listdir(private_tmp) == []
    object_store['runs/code.pt.gz'] = gzipped(code_running(tmp_path), tmp_path / 'code.pt.gz')
    assert evaluate.main([_recipe(run, tmp_path, load_path='s3://bucket/runs/code.pt.gz')]) == 2
    assert "load_path: 's3://bucket/runs/code.pt.gz' would run code" in capsys.readouterr().err
    assert not (tmp_path / RunsCode.MARKER).exists()


@pytest.mark.parametrize('kind', ['tar', 'pt.gz', 'pt'])
def test_a_callback_that_downloads_code_during_fit_is_refused(run, tmp_path, object_store, kind, monkeypatch,
                                                              capsys):
    """Before: the up-front check skipped downloads, and the callback loaded during fit, outside the guard."""
    monkeypatch.chdir(tmp_path)
    states = code_running(tmp_path)
    object_store[f'crafted.{kind}'] = {'tar': lambda: write_tar(tmp_path / 'crafted.tar', states_member(states)),
                                       'pt.gz': lambda: gzipped(states, tmp_path / 'crafted.pt.gz'),
                                       'pt': lambda: states}[kind]()
    loading = {'load_checkpoint': {'load_path': f's3://bucket/crafted.{kind}', 'event': 'fit_start'}}
    assert train.main([_recipe(run, tmp_path, callbacks=[loading])]) == 2
    assert object_store['downloads'] == [f's3://bucket/crafted.{kind}']
    assert capsys.readouterr().err.strip().splitlines()[-1:] == [
        f"composer-efficientnet: recipe error: callbacks.load_checkpoint.load_path: 's3://bucket/crafted.{kind}' "
        'would run code when loaded: it needs posix.system, which is not one of the plain types a Composer '
        'checkpoint holds; if you trust the file and where it came from, set load_trusted: true to load it as '
        'Composer does']
    assert not (tmp_path / RunsCode.MARKER).exists()
