"""Every output is checked before any work and written whole or not at all (composer_efficientnet.outputs).

A read-only folder and a full disk are real where this machine lets the tests make them, and stood in for
otherwise:

* Read-only: as root (the tests' usual user, for whom ``os.access`` says yes and permission bits are no
  obstacle), a read-only bind mount of a folder onto itself (``mount --bind`` then ``remount,bind,ro``), which
  fails every write with EROFS, as a read-only volume does; as another user, a folder without write permission
  (EACCES). As root where no mount can be made, creating anything in the folder is made to fail with EROFS
  (``os.open``, ``open``, ``os.mkdir``, ``os.access``). ``/proc`` is real everywhere: nothing can be created there
  even by root, although ``os.access('/proc', os.W_OK)`` says yes to root, so it checks that the probe file, not
  ``os.access``, decides (tests/bad_inputs_outputs.py's rows use it for that reason: they need no mount and no
  teardown).
* Full disk: a small tmpfs (``mount -t tmpfs -o size=...,nr_inodes=...``), really full, where the mount works;
  and everywhere, the file every output is written through (``composer_efficientnet.outputs.open``) replaced by
  one whose writes stop at a given number of bytes and then fail with ENOSPC, as on a full disk: every writer
  (json, matplotlib, onnx, torch.jit, torch.export) writes through that file object, so the failure comes from
  inside the writer, part way through the file.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Iterator, List, Optional

import pytest
import torch

from composer_efficientnet import benchmark, cli, evaluate, outputs, train
from composer_efficientnet.callbacks import AtomicCheckpointSaver, CheckpointWriteError
from composer_efficientnet.callbacks.checkpointing import (PARTIAL_PREFIX, is_complete_checkpoint, point_latest_at,
                                                           replace_symlink)
from composer_efficientnet.callbacks.training_curves import TrainingCurves
from composer_efficientnet.outputs import OutputError, atomic_output, folder_problem, output_problem
from composer_efficientnet.recipe import RecipeError, load_recipe, validate
from tests.conftest import tiny_trainer

QUICKSTART = str(Path(__file__).resolve().parent.parent / 'recipes' / 'quickstart.yaml')
TINY_RUN = ['train_dataset.digits.image_size=8', 'val_dataset.digits.image_size=8', 'progress_bar=false',
            'max_duration=2ba', 'callbacks=[]']
READ_ONLY = r"cannot write in folder '[^']+' \((Read-only file system|Permission denied)\)"
FULL = r"No space left on device \(\d+(\.\d)? [GM]iB free(, no free inodes)? in [^)]+\); nothing partial was left"


# -- a read-only folder and a full disk ----------------------------------------------------------------------

def _run(*command: str) -> bool:
    return subprocess.run(command, capture_output=True).returncode == 0


def _can_create_in(folder: Path) -> bool:
    try:
        (folder / '.can-create').touch()
    except OSError:
        return False
    (folder / '.can-create').unlink()
    return True


@contextlib.contextmanager
def _mounted(folder: Path, *mount: str) -> Iterator[bool]:
    """``mount`` onto ``folder`` (as root), unmounted afterwards; whether it was mounted."""
    mounted = os.geteuid() == 0 and _run('mount', *mount, str(folder))
    try:
        yield mounted
    finally:
        if mounted and not _run('umount', str(folder)):
            _run('umount', '-l', str(folder))


def _simulate_read_only(folder: Path, monkeypatch) -> None:
    """Where no read-only mount can be made as root: ``os.access`` says no for ``folder``, and creating anything
    under it fails with EROFS (``os.open``, ``open``, ``os.mkdir``)."""
    inside = (lambda path: isinstance(path, (str, os.PathLike)) and os.path.abspath(path).startswith(str(folder)))
    refused = OSError(errno.EROFS, os.strerror(errno.EROFS))

    def wrap(call, writes):
        def wrapped(path, *args, **kwargs):
            if inside(path) and writes(*args, **kwargs):
                raise refused
            return call(path, *args, **kwargs)
        return wrapped

    access = os.access
    monkeypatch.setattr(os, 'access', lambda path, mode, **kwargs: not (inside(path) and mode & os.W_OK) and access(
        path, mode, **kwargs))
    monkeypatch.setattr(os, 'open', wrap(os.open, lambda flags, *args, **kwargs: flags & (
        os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
    monkeypatch.setattr(os, 'mkdir', wrap(os.mkdir, lambda *args, **kwargs: True))
    monkeypatch.setattr('builtins.open', wrap(open, lambda mode='r', *args, **kwargs: set(mode) & set('wax+')))


@pytest.fixture
def read_only(tmp_path, monkeypatch) -> Iterator[Path]:
    """A folder nothing can be created in, holding ``earlier.json``: a read-only bind mount as root (simulated
    where none can be made), a folder without write permission for another user."""
    folder = tmp_path / 'read-only'
    folder.mkdir()
    (folder / 'earlier.json').write_text('{"earlier": true}')
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    with _mounted(folder, '--bind', str(folder)) as mounted:
        if not mounted or not _run('mount', '-o', 'remount,bind,ro', str(folder)) or _can_create_in(folder):
            _simulate_read_only(folder, monkeypatch)
        yield folder


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size, inodes)``: a tmpfs of ``size`` (mount's units) and ``inodes`` inodes (the root folder
    takes one), unmounted after the test; skipped where it cannot be mounted."""
    with contextlib.ExitStack() as stack:
        def mount(size: str, inodes: Optional[int] = None) -> Path:
            folder = tmp_path / f'disk-{size}'
            folder.mkdir()
            options = f'size={size}' + (f',nr_inodes={inodes}' if inodes else '')
            if not stack.enter_context(_mounted(folder, '-t', 'tmpfs', '-o', options, 'tmpfs')):
                pytest.skip('no tmpfs mount here (needs root and mount)')
            return folder

        yield mount


class FullDiskFile(io.FileIO):
    """A file on a disk with :attr:`room` bytes left: a write past that is cut short, then fails with ENOSPC."""
    room = 256

    def write(self, data) -> int:
        data = memoryview(data).cast('B')
        left = self.room - self.tell()
        if len(data) > left:
            if left > 0:
                super().write(data[:left])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def _open_on_full_disk(path, mode='r', *args, **kwargs):
    buffered = io.BufferedWriter(FullDiskFile(path, 'w'))
    return buffered if 'b' in mode else io.TextIOWrapper(buffered, encoding='utf-8')


@pytest.fixture
def full_disk(monkeypatch) -> None:
    """Every output is written through a file on a disk that fills up after 256 bytes."""
    monkeypatch.setattr(outputs, 'open', _open_on_full_disk, raising=False)


def _listing(folder: Path) -> List[str]:
    return sorted(os.listdir(folder))


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope='module')
def weights(tmp_path_factory) -> Path:
    """B0's weights (ImageNet's 1,000 classes, untrained) and a 24-pixel PNG beside them."""
    from PIL import Image

    from composer_efficientnet import EfficientNet
    folder = tmp_path_factory.mktemp('weights')
    torch.save(EfficientNet.from_name('efficientnet_b0').state_dict(), folder / 'b0.pt')
    Image.new('RGB', (24, 24), (200, 30, 30)).save(folder / 'red.png')
    return folder / 'b0.pt'


# -- the checks before any work --------------------------------------------------------------------------------

def test_a_path_that_is_a_folder_or_in_a_missing_folder_or_a_file(tmp_path):
    (tmp_path / 'notes.txt').write_text('a file')
    assert output_problem(str(tmp_path), 'eval.json') == (f"'{tmp_path}' is a directory; give a file name, such as "
                                                          f"{tmp_path / 'eval.json'}")
    assert output_problem(str(tmp_path / 'none' / 'x.json')) == f"folder '{tmp_path / 'none'}' does not exist"
    assert output_problem(str(tmp_path / 'notes.txt' / 'x.json')) == (f"'{tmp_path / 'notes.txt'}' is a file, not "
                                                                      'a folder')
    assert output_problem(str(tmp_path / 'x.json')) is None
    assert output_problem(str(tmp_path / 'new' / 'deeper' / 'x.json'), create=True) is None  # made when written
    assert folder_problem(str(tmp_path / 'notes.txt' / 'a' / 'b'), create=True) == (
        f"'{tmp_path / 'notes.txt' / 'a' / 'b'}' is in '{tmp_path / 'notes.txt'}', which is a file, not a folder")


def test_a_folder_nothing_can_be_created_in_is_found_by_the_probe_even_where_os_access_says_yes():
    if not os.path.isdir('/proc'):
        pytest.skip('no /proc here')
    assert output_problem('/proc/results.json') == (
        "cannot write in folder '/proc' (" + ('No such file or directory' if os.access('/proc', os.W_OK) else
                                              'Permission denied') + ')')


def test_a_read_only_folder_is_named_with_its_reason(read_only):
    assert re.fullmatch(READ_ONLY, output_problem(str(read_only / 'results.json'))), output_problem(
        str(read_only / 'results.json'))
    assert re.fullmatch(READ_ONLY, folder_problem(str(read_only / 'checkpoints'), create=True))


@pytest.mark.parametrize('unnamed', [True, False], ids=['O_TMPFILE probe', 'named probe'])
def test_the_check_leaves_the_folder_as_it_was(tmp_path, monkeypatch, unnamed):
    if not unnamed:
        monkeypatch.delattr(os, 'O_TMPFILE', raising=False)
    (tmp_path / 'earlier.json').write_text('{}')
    os.utime(tmp_path, ns=(1_000_000_000, 2_000_000_000))
    assert output_problem(str(tmp_path / 'results.json')) is None
    assert _listing(tmp_path) == ['earlier.json'] and os.stat(tmp_path).st_mtime_ns == 2_000_000_000


# -- writing whole or not at all --------------------------------------------------------------------------------

def test_a_file_is_written_by_a_rename_and_replaces_an_earlier_one(tmp_path, monkeypatch):
    (tmp_path / 'out.json').write_text('earlier')
    replaced = []
    replace = os.replace
    monkeypatch.setattr(os, 'replace', lambda a, b: replaced.append((Path(a).name, Path(b).name)) or replace(a, b))
    with atomic_output(str(tmp_path / 'out.json'), '--json', 'w') as file:
        file.write('{"new": 1}')
        assert _listing(tmp_path) == [f'{PARTIAL_PREFIX}{os.getpid()}-out.json', 'out.json']  # hidden, same ending
    assert (tmp_path / 'out.json').read_text() == '{"new": 1}' and _listing(tmp_path) == ['out.json']
    assert replaced == [(f'{PARTIAL_PREFIX}{os.getpid()}-out.json', 'out.json')]


def test_an_error_of_the_writer_passes_through_and_leaves_nothing(tmp_path):
    (tmp_path / 'out.json').write_text('earlier')
    with pytest.raises(ValueError, match='^not serializable$'):
        with atomic_output(str(tmp_path / 'out.json'), '--json', 'w') as file:
            file.write('{"half": ')
            raise ValueError('not serializable')
    assert _listing(tmp_path) == ['out.json'] and (tmp_path / 'out.json').read_text() == 'earlier'


def test_a_full_disk_is_one_line_and_leaves_the_earlier_file(tmp_path, full_disk):
    (tmp_path / 'out.json').write_text('earlier')
    with pytest.raises(OutputError) as info:
        with atomic_output(str(tmp_path / 'out.json'), '--json', 'w') as file:
            json.dump({'rows': list(range(10_000))}, file)
    message = str(info.value)
    assert re.fullmatch(rf"--json: could not write '{re.escape(str(tmp_path))}/out.json': {FULL}; the earlier "
                        r'out.json is unchanged', message), message
    assert _listing(tmp_path) == ['out.json'] and (tmp_path / 'out.json').read_text() == 'earlier'


def test_a_really_full_disk(small_disk):
    disk = small_disk('64k')
    with pytest.raises(OutputError, match=rf"^--json: could not write '.*/out.json': {FULL}$"):
        with atomic_output(str(disk / 'out.json'), '--json', 'w') as file:
            file.write('x' * 200_000)
    assert _listing(disk) == []


def test_a_read_only_folder_at_write_time_is_one_line(read_only):
    with pytest.raises(OutputError, match=rf"^--json: could not write '.*/out.json': (Read-only file system|"
                                          r'Permission denied) \(.*\); nothing partial was left$'):
        with atomic_output(str(read_only / 'out.json'), '--json', 'w') as file:
            file.write('{}')
    assert _listing(read_only) == ['earlier.json']


# -- export ------------------------------------------------------------------------------------------------------

def _tiny_model():
    """An InferenceModel of a few hundred weights, exported in a moment in every format."""
    from composer_efficientnet.export import InferenceModel
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                 torch.nn.Linear(4, 3)).eval()
    return InferenceModel(module, 'tiny', 'none', {'crop_size': 16, 'resize_size': 16, 'interpolation': 'bilinear',
                                                   'mean': [0.5] * 3, 'std': [0.5] * 3}, None)


@pytest.mark.parametrize('fmt', ['onnx', 'torchscript', 'export'])
def test_export_on_a_full_disk_is_one_line_and_leaves_no_file(tmp_path, full_disk, fmt):
    from composer_efficientnet.export import FORMATS, export_model
    out = tmp_path / f'model{FORMATS[fmt]}'
    with pytest.raises(OutputError) as info:
        export_model(_tiny_model(), str(out), fmt, label='--out')
    assert re.fullmatch(rf"--out: could not write '{re.escape(str(out))}': {FULL}", str(info.value)), str(info.value)
    assert _listing(tmp_path) == []


@pytest.mark.parametrize('fmt', ['onnx', 'torchscript', 'export'])
def test_export_writes_the_file_by_a_rename(tmp_path, monkeypatch, fmt):
    from composer_efficientnet.export import FORMATS, export_model, read_metadata
    renamed = []
    replace = os.replace
    monkeypatch.setattr(os, 'replace', lambda a, b: renamed.append((Path(a).name, Path(b).name)) or replace(a, b))
    name = f'model{FORMATS[fmt]}'
    export_model(_tiny_model(), str(tmp_path / name), fmt)
    assert renamed == [(f'{PARTIAL_PREFIX}{os.getpid()}-{name}', name)] and _listing(tmp_path) == [name]
    assert read_metadata(str(tmp_path / name), fmt)['model'] == 'tiny'


@pytest.fixture
def full_folder(tmp_path, monkeypatch):
    """A folder on a full disk: a 1 MiB tmpfs where one can be mounted, else the simulated full disk."""
    folder = tmp_path / 'disk'
    folder.mkdir()
    with _mounted(folder, '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs') as mounted:
        if not mounted:
            monkeypatch.setattr(outputs, 'open', _open_on_full_disk, raising=False)
        yield folder


def test_the_export_command_on_a_full_disk_leaves_no_truncated_onnx(full_folder, weights, capsys):
    out = full_folder / 'model.onnx'  # B0's ONNX file is about 21 MB
    assert cli.main(['export', str(weights), '--out', str(out)]) == 4
    assert re.fullmatch(rf"composer-efficientnet export: --out: could not write '{re.escape(str(out))}': {FULL}",
                        _one_line(capsys))
    assert _listing(full_folder) == []


@pytest.mark.parametrize('fmt', ['onnx', 'torchscript', 'export'])
def test_export_into_a_read_only_folder_stops_before_loading(read_only, monkeypatch, capsys, fmt):
    from composer_efficientnet import export
    monkeypatch.setattr(export, 'load_for_inference', lambda *args: pytest.fail('loaded the weights'))
    assert cli.main(['export', 'weights.pt', '--format', fmt, '--out', str(read_only / 'model')]) == 2
    assert re.fullmatch(rf'composer-efficientnet export: --out: {READ_ONLY}', _one_line(capsys))
    assert _listing(read_only) == ['earlier.json']


def test_export_without_out_checks_the_current_folder_first(read_only, monkeypatch, capsys):
    from composer_efficientnet import export
    monkeypatch.chdir(read_only)
    monkeypatch.setattr(export, 'load_for_inference', lambda *args: pytest.fail('loaded the weights'))
    assert cli.main(['export', 'weights.pt', '--format', 'torchscript']) == 2
    assert re.fullmatch(rf"composer-efficientnet export: --out: cannot write in folder '\.' \(.*\)", _one_line(capsys))


def test_export_writes_the_file_by_a_rename(tmp_path, weights, monkeypatch, capsys):
    renamed = []
    replace = os.replace
    monkeypatch.setattr(os, 'replace', lambda a, b: renamed.append((Path(a).name, Path(b).name)) or replace(a, b))
    out = tmp_path / 'model.onnx'
    assert cli.main(['export', str(weights), '--out', str(out), '--check']) == 0
    assert renamed == [(f'{PARTIAL_PREFIX}{os.getpid()}-model.onnx', 'model.onnx')] and _listing(tmp_path) == [
        'model.onnx']
    assert 'check: largest difference from eager' in capsys.readouterr().out


# -- predict and eval --json ---------------------------------------------------------------------------------------

def test_predict_json_on_a_full_disk_prints_the_predictions_then_one_line(tmp_path, weights, full_disk, capsys):
    out = tmp_path / 'predictions.json'
    assert cli.main(['predict', str(weights), str(weights.parent / 'red.png'), '--json', str(out)]) == 4
    captured = capsys.readouterr()
    assert captured.out.startswith(str(weights.parent / 'red.png'))
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and re.fullmatch(rf"composer-efficientnet predict: --json: could not write "
                                          rf"'{re.escape(str(out))}': {FULL}", err[0]), err
    assert _listing(tmp_path) == []


def test_predict_json_into_a_read_only_folder_stops_first(read_only, weights, capsys):
    assert cli.main(['predict', str(weights), str(weights.parent / 'red.png'), '--json',
                     str(read_only / 'p.json')]) == 2
    assert re.fullmatch(rf'composer-efficientnet predict: --json: {READ_ONLY}', _one_line(capsys))
    assert _listing(read_only) == ['earlier.json']


def test_eval_json_into_a_read_only_folder_stops_before_evaluating(read_only, monkeypatch, capsys):
    monkeypatch.setattr(evaluate, 'build_evaluator', lambda recipe: pytest.fail('evaluated'))
    assert evaluate.main([QUICKSTART, '--json', str(read_only / 'eval.json')]) == 2
    assert re.fullmatch(rf'composer-efficientnet: --json: {READ_ONLY}', _one_line(capsys))
    assert _listing(read_only) == ['earlier.json']


def test_eval_json_on_a_full_disk_is_one_line(tmp_path, weights, full_disk, capsys):
    out = tmp_path / 'eval.json'
    status = evaluate.main([QUICKSTART, *TINY_RUN, 'save_folder=null', 'eval_subset_num_batches=1',
                            'model.efficientnet_b0.num_classes=1000', f'model.efficientnet_b0.pretrained={weights}',
                            'algorithms=[]', '--json', str(out)])
    captured = capsys.readouterr()
    assert status == 4 and 'top-1' in captured.out
    assert re.fullmatch(rf"composer-efficientnet: --json: could not write '{re.escape(str(out))}': {FULL}",
                        captured.err.strip()), captured.err
    assert _listing(tmp_path) == []


# -- benchmark --json ----------------------------------------------------------------------------------------------

def test_benchmark_json_on_a_full_disk_is_one_line(tmp_path, full_disk, capsys):
    out = tmp_path / 'bench.json'
    assert benchmark.main(['--device', 'cpu', '--resolution', '32', '--batch-size', '2', '--warmup', '1', '--steps',
                           '1', '--windows', '1', '--no-compile', '--rows', 'ours', '--json', str(out)]) == 4
    assert re.fullmatch(rf"composer-efficientnet benchmark: --json: could not write '.*bench.json': {FULL}",
                        capsys.readouterr().err.strip().splitlines()[-1])
    assert _listing(tmp_path) == []


def test_benchmark_json_into_a_read_only_folder_stops_first(read_only, capsys):
    with pytest.raises(SystemExit) as info:
        benchmark.main(['--device', 'cpu', '--json', str(read_only / 'new' / 'bench.json')])
    assert info.value.code == 2
    assert re.search(rf'error: --json: {READ_ONLY}$', capsys.readouterr().err.strip())
    assert _listing(read_only) == ['earlier.json']


# -- train: save_folder, the latest link, the training curves ----------------------------------------------------

def test_train_into_a_read_only_save_folder_stops_before_anything_is_built(read_only, monkeypatch, capsys):
    monkeypatch.setattr(train, 'build_trainer', lambda recipe: pytest.fail('built the run'))
    for folder in (read_only, read_only / 'runs' / '{run_name}'):  # an existing folder, and one to be made
        assert train.main([QUICKSTART, f'save_folder={folder}']) == 2
        assert re.fullmatch(rf'composer-efficientnet: recipe error: save_folder: {READ_ONLY}; give a folder the run '
                            r'can write its checkpoints in, or null to write none', _one_line(capsys))
    assert _listing(read_only) == ['earlier.json']


def test_eval_reads_a_read_only_save_folder(read_only):
    recipe = validate(load_recipe(QUICKSTART, [f'save_folder={read_only}']), purpose='eval')
    assert recipe.settings['save_folder'] == str(read_only)
    with pytest.raises(RecipeError, match='save_folder: cannot write in folder'):
        validate(load_recipe(QUICKSTART, [f'save_folder={read_only}']))


def _failing_symlink(target, link):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_the_latest_link_on_a_full_disk_is_one_line_and_keeps_the_old_link(tmp_path, monkeypatch):
    (tmp_path / 'ep0-ba2-rank0.pt').write_bytes(b'old')
    (tmp_path / 'ep0-ba4-rank0.pt').write_bytes(b'new')
    replace_symlink(str(tmp_path / 'ep0-ba2-rank0.pt'), str(tmp_path / 'latest-rank0.pt'))
    monkeypatch.setattr(os, 'symlink', _failing_symlink)
    with pytest.raises(CheckpointWriteError) as info:
        replace_symlink(str(tmp_path / 'ep0-ba4-rank0.pt'), str(tmp_path / 'latest-rank0.pt'))
    assert re.fullmatch(rf'could not point latest-rank0.pt in {re.escape(str(tmp_path))} at ep0-ba4-rank0.pt: No '
                        r'space left on device \(.*\); ep0-ba4-rank0.pt is complete, latest-rank0.pt still points at '
                        r'ep0-ba2-rank0.pt; nothing partial was left', str(info.value)), str(info.value)
    assert os.readlink(tmp_path / 'latest-rank0.pt') == 'ep0-ba2-rank0.pt'
    assert _listing(tmp_path) == ['ep0-ba2-rank0.pt', 'ep0-ba4-rank0.pt', 'latest-rank0.pt']
    with pytest.raises(CheckpointWriteError, match='ep0-ba4-rank0.pt is complete'):  # autoresume's pointing too
        point_latest_at(str(tmp_path / 'ep0-ba4-rank0.pt'))


def test_a_disk_out_of_inodes_for_the_latest_link_stops_the_run_with_one_line(small_disk):
    disk = small_disk('64m', inodes=2)  # the folder and one checkpoint: no inode left for the link
    saver = AtomicCheckpointSaver(folder=str(disk), save_interval='2ba')
    trainer = tiny_trainer(max_duration='4ba', callbacks=[saver])
    with pytest.raises(CheckpointWriteError) as info:
        trainer.fit()
    assert re.fullmatch(r'could not point latest-rank0.pt in .* at ep0-ba2-rank0.pt: No space left on device '
                        r'\(\d+ MiB free, no free inodes\); ep0-ba2-rank0.pt is complete, there is no latest-rank0.pt '
                        r'yet; nothing partial was left', str(info.value)), str(info.value)
    assert _listing(disk) == ['ep0-ba2-rank0.pt'] and is_complete_checkpoint(str(disk / 'ep0-ba2-rank0.pt'))


def test_a_recipe_run_whose_latest_link_cannot_be_made_exits_4_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, 'symlink', _failing_symlink)
    folder = tmp_path / 'checkpoints'
    assert train.main([QUICKSTART, *TINY_RUN, 'val_dataset=null', 'eval_batch_size=null', 'save_interval=2ba',
                       f'save_folder={folder}']) == 4
    line = _one_line(capsys)
    assert line.startswith('composer-efficientnet: could not point latest-rank0.pt in ') and line.endswith(
        'ep0-ba2-rank0.pt is complete, there is no latest-rank0.pt yet; nothing partial was left; make room there, '
        'then rerun (with autoresume: true it continues from the last checkpoint)'), line
    assert _listing(folder) == ['ep0-ba2-rank0.pt']


def _curves_run(folder: Path, caplog, evaluations: bool = True) -> List[str]:
    """A 4-step run with training_curves in ``folder`` (drawn at steps 2 and 4 and at the end with
    ``evaluations``, else only at the end); the warnings the callback logged."""
    from composer_efficientnet.data import build_digits_dataspec
    evaluation = {'eval_dataloader': build_digits_dataspec(batch_size=64, image_size=8, is_train=False),
                  'eval_interval': '2ba', 'eval_subset_num_batches': 1} if evaluations else {}
    with caplog.at_level(logging.WARNING, logger='composer_efficientnet.callbacks.training_curves'):
        trainer = tiny_trainer(max_duration='4ba', callbacks=[TrainingCurves(folder=str(folder))], **evaluation)
        trainer.fit()
    assert int(trainer.state.timestamp.batch) == 4  # the run went on to its end
    return [record.getMessage() for record in caplog.records if record.name.endswith('training_curves')]


def test_training_curves_on_a_full_disk_warn_once_and_training_goes_on(tmp_path, full_disk, caplog):
    warnings = _curves_run(tmp_path, caplog)
    assert len(warnings) == 1, warnings  # three writes failed the same way: one line
    assert re.fullmatch(rf"training_curves: could not write '.*training_curves.png': {FULL}; training goes on, and "
                        r'the next evaluation draws it again', warnings[0]), warnings
    assert _listing(tmp_path) == []


def test_training_curves_in_a_read_only_folder_warn_at_the_start_and_training_goes_on(read_only, caplog):
    warnings = _curves_run(read_only / 'plots', caplog, evaluations=False)
    assert len(warnings) == 1 and re.fullmatch(rf"training_curves: no .*training_curves.png is written: {READ_ONLY}; "
                                               'training goes on without it', warnings[0]), warnings
    assert _listing(read_only) == ['earlier.json']


def test_training_curves_are_written_by_a_rename(tmp_path, monkeypatch):
    from types import SimpleNamespace
    renamed = []
    replace = os.replace
    monkeypatch.setattr(os, 'replace', lambda a, b: renamed.append((Path(a).name, Path(b).name)) or replace(a, b))
    curves = TrainingCurves(folder=str(tmp_path / '{run_name}'))
    curves.train_loss = [(1, 2.3), (2, 2.1)]
    curves.fit_end(SimpleNamespace(callbacks=[], run_name='run'), logger=None)
    assert renamed == [(f'{PARTIAL_PREFIX}{os.getpid()}-training_curves.png', 'training_curves.png')]
    assert _listing(tmp_path / 'run') == ['training_curves.png']
    assert (tmp_path / 'run' / 'training_curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
