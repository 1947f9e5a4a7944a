"""The command line as people type it: options anywhere on the line, --debug that keeps the exit status, and
--help and argument errors answered without importing torch or Composer (issue 22)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import catalogue
import pytest
import torch
import torchvision

from composer_efficientnet import arguments, cli
from composer_efficientnet.recipe import Entry, RecipeError
from tests.bad_inputs import with_run, write_recipe

QUICKSTART = str(Path(__file__).resolve().parent.parent / 'recipes' / 'quickstart.yaml')
SMALL = ['train_dataset.digits.image_size=16', 'val_dataset.digits.image_size=16', 'progress_bar=false',
         'callbacks=[]']
REPO = Path(__file__).resolve().parent.parent


# -- parsing: the lines people typed, option between positionals ------------------------------------------------

def test_predict_takes_an_option_between_images():
    args = arguments.parse(arguments.predict_parser(), ['recipe.yaml', 'a.jpg', '--top', '3', 'b.jpg'])
    assert (args.source, args.images, args.top) == ('recipe.yaml', ['a.jpg', 'b.jpg'], 3)


def test_eval_takes_an_option_between_the_recipe_and_its_overrides():
    args = arguments.parse(arguments.eval_parser(), ['recipes/quickstart.yaml', '--json', 'e.json',
                                                     'load_path=run/latest-rank0.pt'])
    assert (args.recipe, args.json, args.overrides) == ('recipes/quickstart.yaml', 'e.json',
                                                        ['load_path=run/latest-rank0.pt'])


def test_export_takes_options_between_the_recipe_and_its_overrides():
    args = arguments.parse(arguments.export_parser(), ['r.yaml', '--format', 'torchscript', '--out', 'x.ts',
                                                       'run_name=qs2', '--check', 'seed=3'])
    assert (args.source, args.format, args.out, args.check, args.overrides) == (
        'r.yaml', 'torchscript', 'x.ts', True, ['run_name=qs2', 'seed=3'])


def test_train_takes_debug_between_the_recipe_and_its_overrides():
    args = arguments.parse(arguments.train_parser(), ['r.yaml', '--debug', 'max_duration=2ba', 'seed=-1'])
    assert (args.recipe, args.debug, args.overrides) == ('r.yaml', True, ['max_duration=2ba', 'seed=-1'])


def test_benchmark_reads_its_options_as_before():
    args = arguments.parse(arguments.benchmark_parser(), ['--device', 'cpu', '--rows', 'ours,timm', '--report',
                                                          'a.json', 'b.json', '--steps', '2'])
    assert (args.device, args.rows, args.report, args.steps) == ('cpu', ('ours', 'timm'), ['a.json', 'b.json'], 2)


@pytest.mark.parametrize('command, line, message', [
    ('train', ['r.yaml', '--degub', 'max_duration=2ba'], 'unrecognized arguments: --degub (did you mean --debug?)'),
    ('predict', ['w.pt', 'a.jpg', '--tpo', '3', 'b.jpg'], 'unrecognized arguments: --tpo (did you mean --top?)'),
    ('eval', ['--json', 'e.json'], 'the following arguments are required: recipe'),
    ('export', ['r.yaml', '--format', 'tflite', 'run_name=x'], "invalid choice: 'tflite' (choose from 'onnx', "
     "'torchscript', 'export')"),
])
def test_a_mistyped_line_names_the_mistake_alone(command, line, message, capsys):
    with pytest.raises(SystemExit) as exit:
        arguments.parse(arguments.PARSERS[command](), line)
    assert exit.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)


def test_the_typed_lines_run(tmp_path, monkeypatch, capsys):
    """The four lines as a new user typed them, on the quickstart recipe at 16 pixels, two steps."""
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(['train', QUICKSTART, '--debug', 'max_duration=2ba', 'save_interval=2ba', 'run_name=qs2',
                         *SMALL]) == 0
    checkpoint = 'runs/qs2/checkpoints/ep0-ba2-rank0.pt'
    assert os.path.isfile(checkpoint)
    assert cli.main(['eval', QUICKSTART, '--json', 'e.json', f'load_path={checkpoint}', *SMALL]) == 0
    assert json.loads(Path('e.json').read_text())['weights'] == checkpoint
    assert cli.main(['export', QUICKSTART, '--format', 'torchscript', '--out', 'x.ts', 'run_name=qs2', *SMALL]) == 0
    assert torch.jit.load('x.ts')(torch.zeros(1, 3, 16, 16)).shape == (1, 10)
    for name in ('a.png', 'b.png'):
        torchvision.io.write_png(torch.zeros(3, 16, 16, dtype=torch.uint8), name)
    capsys.readouterr()
    assert cli.main(['predict', QUICKSTART, 'a.png', '--top', '3', 'b.png', 'run_name=qs2', *SMALL]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [printed[0], printed[4]] == ['a.png', 'b.png'] and len(printed) == 8  # three classes each


# -- --debug: the traceback, and the same exit status -----------------------------------------------------------

def test_debug_prints_the_traceback_and_keeps_exit_status_2(tmp_path, capsys):
    recipe = write_recipe(tmp_path, with_run(max_epochs=3))
    assert cli.main(['train', recipe, '--debug']) == 2
    err = capsys.readouterr().err
    assert 'Traceback (most recent call last)' in err and 'RecipeError' in err
    assert err.strip().splitlines()[-1].startswith('composer-efficientnet: recipe error: max_epochs: unknown section')
    assert cli.main(['train', recipe]) == 2
    assert 'Traceback' not in capsys.readouterr().err


# -- a registered constructor's AttributeError or KeyError: one line ---------------------------------------------

def _raises(error: Exception):
    def build(**params):
        raise error

    return build


@pytest.mark.parametrize('error, message', [
    (KeyError('mode is not one of sum, mean'), 'mode is not one of sum, mean'),
    (KeyError('mode'), "no entry 'mode' (KeyError)"),
    (AttributeError("'dict' object has no attribute 'lower'"), "'dict' object has no attribute 'lower'"),
])
def test_a_constructors_attribute_or_key_error_is_one_line(error, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(catalogue.REGISTRY, ('composer_efficientnet', 'callbacks', 'fragile'), _raises(error))
    assert cli.main(['train', write_recipe(tmp_path, with_run(callbacks=[{'fragile': {}}]))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f'composer-efficientnet: recipe error: callbacks.fragile: {message}']
    assert os.listdir(tmp_path) == ['recipe.yaml']


def test_entry_build_turns_key_errors_into_recipe_errors():
    with pytest.raises(RecipeError, match=r"^callbacks\.x: no entry 3 \(KeyError\)$"):
        Entry('x', _raises(KeyError(3)), {}, 'callbacks.x').build()


# -- --help and argument errors without torch or Composer -------------------------------------------------------

LINES = [['--help'], ['train', '--help'], ['eval', '--help'], ['export', '--help'], ['predict', '--help'],
         ['benchmark', '--help'], ['convert-dataset', '--help'], ['list', '--help'], ['info', '--help'], ['trian'],
         [], ['train'], ['eval', '--json', 'e.json'], ['predict', 'w.pt'], ['train', 'r.yaml', '--degub', 'seed=1'],
         ['benchmark', '--steps', '0'], ['convert-dataset', '--src', 'x']]
HEAVY = ('torch', 'composer', 'torchvision', 'timm', 'streaming', 'composer_efficientnet.efficientnet',
         'composer_efficientnet.registry')

#: Runs composer-efficientnet's main on each line in one fresh interpreter and prints, per line, its exit
#: status and the heavy modules imported so far; the package itself is imported first.
PROBE = f'''
import json, sys
import composer_efficientnet
found = [[None, None, sorted(m for m in {HEAVY!r} if m in sys.modules)]]
from composer_efficientnet.cli import main
for line in json.loads(sys.argv[1]):
    try:
        code = main(line)
    except SystemExit as exit:
        code = exit.code
    found.append([line, code, sorted(m for m in {HEAVY!r} if m in sys.modules)])
print('PROBE ' + json.dumps(found))
'''


def test_help_and_argument_errors_import_neither_torch_nor_composer():
    done = subprocess.run([sys.executable, '-c', PROBE, json.dumps(LINES)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    probe = [line for line in done.stdout.splitlines() if line.startswith('PROBE ')]
    assert done.returncode == 0 and probe, done.stderr
    found = json.loads(probe[-1][len('PROBE '):])
    assert found[0][2] == [], f'import composer_efficientnet imported {found[0][2]}'
    for line, code, heavy in found[1:]:
        assert code == (0 if '--help' in line else 2), line
        assert heavy == [], f'composer-efficientnet {" ".join(line)} imported {heavy}'


def test_the_package_names_still_import_with_the_algorithms():
    """The first of the package's names imports the algorithms, which let Composer's StochasticDepth target our
    blocks, as importing the package did."""
    code = """
import sys
from composer_efficientnet import EfficientNet
from composer.algorithms.stochastic_depth import stochastic_depth
assert 'composer_efficientnet.algorithms' in sys.modules
assert 'EfficientNetMBConv' in stochastic_depth._STOCHASTIC_LAYER_MAPPING
import composer_efficientnet
from composer_efficientnet import EfficientNetClassifier, SyncFreeTrainer, WeightsError, composer_efficientnetb0
assert composer_efficientnetb0(num_classes=3).module.num_classes == 3
assert {'EfficientNet', 'SyncFreeTrainer', 'WeightsError'} <= set(dir(composer_efficientnet))
try:
    composer_efficientnet.nothing
except AttributeError as error:
    assert 'nothing' in str(error)
else:
    raise SystemExit('no AttributeError')
"""
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
