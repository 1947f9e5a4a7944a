"""What a person sees in a terminal or a log file: status lines on lines of their own beside Composer's progress
bars (which leave the cursor at the end of a bar)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ['train_dataset.digits.image_size=8', 'val_dataset.digits.image_size=8', 'eval_subset_num_batches=1',
        'train_subset_num_batches=2', 'progress_bar=true', 'autoresume=true', 'save_interval=1ep', 'callbacks=[]']


def _shown_lines(text: str) -> list:
    """The lines a terminal shows: each from its last carriage return on (what was written over the bar)."""
    return [line.rsplit('\r', 1)[-1] for line in text.split('\n')]


def _train(folder: Path, *overrides: str) -> str:
    """A run's stdout and stderr in one file, as a terminal shows them."""
    path = folder / f'console-{len(list(folder.glob("console-*")))}.txt'
    with open(path, 'w') as console:
        subprocess.run([sys.executable, '-m', 'composer_efficientnet.train', str(ROOT / 'recipes' / 'quickstart.yaml'),
                        *TINY, f'save_folder={folder / "run"}', *overrides], cwd=folder, stdout=console,
                       stderr=subprocess.STDOUT, env={**os.environ, 'OMP_NUM_THREADS': '1'}, check=True, timeout=300)
    return path.read_text()


@pytest.mark.slow
def test_status_lines_start_a_line_of_their_own(tmp_path):
    _train(tmp_path, 'max_duration=1ep')
    resumed_run = _train(tmp_path, 'max_duration=2ep')
    assert '\x1b[A' in resumed_run and 'eval           Epoch' in resumed_run  # the bars were drawn
    lines = _shown_lines(resumed_run)
    resumed = [line for line in lines if 'resumed from' in line]
    held_out = [line for line in lines if 'held-out top-1' in line]
    assert resumed and re.fullmatch(r'resumed from .*latest-rank0\.pt at step 2', resumed[0]), resumed
    assert held_out and re.fullmatch(r'held-out top-1 \(eval\): \d+\.\d\d%', held_out[0]), held_out


def test_package_warnings_go_around_the_bars(capsys):
    import logging

    from tqdm import tqdm

    from composer_efficientnet.runner import log_around_progress_bars
    log_around_progress_bars()
    bar = tqdm(total=2, file=sys.stderr)
    bar.update(1)
    logging.getLogger('composer_efficientnet.data.bad_samples').warning('Rank 0 skipped 1 unreadable image(s)')
    bar.close()
    shown = _shown_lines(capsys.readouterr().err)
    assert 'Rank 0 skipped 1 unreadable image(s)' in shown, shown


def test_an_error_during_fit_starts_a_line_of_its_own(capsys):
    """A strict-mode image error (or a divergence, a full disk, a lost process) ends the run while the bars are
    drawn: its one line must not be glued to the end of a bar."""
    from types import SimpleNamespace

    from tqdm import tqdm

    from composer_efficientnet.data import CorruptImageError
    from composer_efficientnet.train import _fit

    bars = []

    def fit():
        bars.append(tqdm(total=2, file=sys.stderr, desc='train'))  # left open, as when a worker's error ends the fit
        bars[0].update(1)
        raise CorruptImageError('sample 2 of mds/train: cannot read or decode this image')

    trainer = SimpleNamespace(fit=fit, state=SimpleNamespace(load_path=None, get_elapsed_duration=lambda: None))
    assert _fit(trainer, debug=False) == 2
    shown = _shown_lines(capsys.readouterr().err)
    assert 'composer-efficientnet: sample 2 of mds/train: cannot read or decode this image' in shown, shown
