"""Every bad input in tests/bad_inputs.py: exit status 2, one clear line on stderr, nothing left on disk."""

import re
from collections import Counter
from pathlib import Path

import pytest

from composer_efficientnet import cli
from tests.bad_inputs import TABLE


def _snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder`` with its size and modification time."""
    return {str(path.relative_to(folder)): (path.is_dir(), path.lstat().st_size, path.lstat().st_mtime_ns)
            for path in folder.rglob('*')}


def _params():
    for case in TABLE:
        marks = [pytest.mark.xfail(strict=True, reason=case.gap)] if case.gap else []
        yield pytest.param(case, id=f'{case.kind}: {case.name}', marks=marks)


def test_the_catalogue_covers_every_kind():
    kinds = Counter(case.kind for case in TABLE if not case.gap)
    assert sum(kinds.values()) >= 30 and set(kinds) == {'recipe', 'override', 'data', 'weights', 'cli'}
    assert len({(case.kind, case.name) for case in TABLE}) == len(TABLE)


@pytest.mark.parametrize('case', _params())
def test_bad_input_is_rejected_cleanly(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = case.setup(tmp_path)
    before = _snapshot(tmp_path)
    try:
        status = cli.main(argv)
    except SystemExit as exit:  # argparse
        status = exit.code
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err and re.search(case.message, err[-1]), err
    assert err[0].startswith('usage:') if case.usage else len(err) == case.lines, err
    assert err[-1].startswith('composer-efficientnet'), err[-1]
    assert _snapshot(tmp_path) == before  # nothing written, nothing half-written
