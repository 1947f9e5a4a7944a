"""Bad-input rows of issue 21's topic ``outputs``: an output path that cannot be written, refused before any work.

The folder nothing can be written in is ``/proc``: no file can be created there, by root either (the tests run as
root, for whom ``os.access('/proc', os.W_OK)`` says yes, so these rows also check that the probe file decides, not
``os.access``), it needs no mount and nothing to undo after the row, and nothing is written under the row's own
folder. A read-only mount and a full disk, which need a teardown, are in tests/test_outputs.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

from tests.bad_inputs import RUN, BadInput, _inference, recipe, with_run, write_recipe, write_text

#: The last line's reason: EACCES for another user, ENOENT for root (procfs has no such files).
CANNOT = r"cannot write in folder '/proc' \((No such file or directory|Permission denied)\)"


def _save_folder_in_a_file(tmp: Path) -> List[str]:
    write_text(tmp / 'notes.txt', 'a file')
    return ['train', write_recipe(tmp, with_run(save_folder='notes.txt/checkpoints'))]


def _benchmark_json_in_a_file(tmp: Path) -> List[str]:
    return ['benchmark', '--device', 'cpu', '--json', os.path.join(write_text(tmp / 'notes.txt', 'x'), 'b.json')]


ROWS: List[BadInput] = [
    *([] if not os.path.isdir('/proc') else [
        BadInput('cli', f'export --format {fmt} into a folder nothing can be written in',
                 _inference('export', '--format', fmt, '--out', f'/proc/model.{ending}'),
                 rf'^composer-efficientnet export: --out: {CANNOT}$') for fmt, ending in (
            ('onnx', 'onnx'), ('torchscript', 'ts'), ('export', 'pt2'))] + [
        BadInput('cli', 'predict --json into a folder nothing can be written in',
                 _inference('predict', '{tmp}/photo.jpg', '--json', '/proc/predictions.json'),
                 rf'^composer-efficientnet predict: --json: {CANNOT}$'),
        BadInput('cli', 'eval --json into a folder nothing can be written in',
                 lambda tmp: ['eval', write_recipe(tmp, RUN), '--json', '/proc/eval.json'],
                 rf'^composer-efficientnet: --json: {CANNOT}$'),
        BadInput('cli', 'benchmark --json into a folder nothing can be written in',
                 lambda tmp: ['benchmark', '--device', 'cpu', '--json', '/proc/benchmark.json'],
                 rf'error: --json: {CANNOT}$', usage=True),
        recipe('save_folder in a folder nothing can be written in', with_run(save_folder='/proc/checkpoints'),
               rf'save_folder: {CANNOT}; give a folder the run can write its checkpoints in, or null to write none'),
    ]),
    BadInput('cli', 'export --out into a directory', _inference('export', '--out', '{tmp}/empty'),
             r"export: --out: '.*empty' is a directory; give a file name, such as .*empty/model.onnx$"),
    BadInput('cli', 'export --out in a file', _inference('export', '--format', 'torchscript', '--out',
                                                        '{tmp}/photo.jpg/model.ts'),
             r"export: --out: '.*photo.jpg' is a file, not a folder$"),
    BadInput('cli', 'predict --json into a directory', _inference('predict', '{tmp}/photo.jpg', '--json', '{tmp}'),
             r"predict: --json: '.*' is a directory; give a file name, such as .*predictions.json$"),
    BadInput('cli', 'benchmark --json in a file', _benchmark_json_in_a_file,
             r"error: --json: '.*notes.txt' is a file, not a folder$", usage=True),
    BadInput('recipe', 'save_folder in a file', _save_folder_in_a_file,
             r"save_folder: 'notes.txt/checkpoints' is in '.*notes.txt', which is a file, not a folder; give a folder "
             r'the run can write its checkpoints in, or null to write none$'),
]
