"""Divergence: a non-finite loss stops the run at that step, names the last good checkpoint, and no checkpoint
is ever written with non-finite weights; the check adds no host sync to the training step."""

import glob
import os
import re
from types import SimpleNamespace

import pytest
import torch
from composer.core import Callback

from composer_efficientnet import registry, train
from composer_efficientnet.callbacks import AtomicCheckpointSaver, DivergenceError, DivergenceGuard
from tests.conftest import tiny_trainer

RECIPES = os.path.join(os.path.dirname(__file__), '..', 'recipes')


class PoisonAt(Callback):
    """Make step ``step``'s loss NaN (through the model's output), or, with ``weights``, a weight Inf after it."""

    def __init__(self, step: int, weights: bool = False) -> None:
        self.step, self.weights = step, weights

    def after_forward(self, state, logger):
        if not self.weights and int(state.timestamp.batch) + 1 == self.step:
            state.outputs = state.outputs * float('nan')

    def batch_end(self, state, logger):
        if self.weights and int(state.timestamp.batch) == self.step:
            next(state.model.buffers()).fill_(float('inf'))  # a BatchNorm running mean: the loss stays finite


def fit(tmp_path, poison, check_interval=None, save_interval='4ba'):
    saver = AtomicCheckpointSaver(folder=str(tmp_path), save_interval=save_interval)
    trainer = tiny_trainer(max_duration='12ba', run_name='diverging',
                           callbacks=[DivergenceGuard(check_interval), poison, saver])
    with pytest.raises(DivergenceError) as info:
        trainer.fit()
    return str(info.value), trainer


def checkpoints(folder):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, 'ep*-ba*-rank0.pt')))


def assert_all_finite(folder):
    for path in glob.glob(os.path.join(folder, '*.pt')):
        model = torch.load(path, weights_only=False)['state']['model']
        assert all(torch.isfinite(t).all() for t in model.values() if t.is_floating_point()), path


def test_nan_loss_stops_at_its_step_and_names_the_last_good_checkpoint(tmp_path):
    message, trainer = fit(tmp_path, PoisonAt(6))
    assert re.fullmatch(r'training diverged: the training loss was not finite \(NaN or Inf\) at step 6; stopped at '
                        rf'step 6; last good checkpoint: {re.escape(str(tmp_path))}/ep0-ba4-rank0\.pt', message), message
    assert int(trainer.state.timestamp.batch) == 6
    assert checkpoints(tmp_path) == ['ep0-ba4-rank0.pt']
    assert_all_finite(tmp_path)


def test_sparse_checks_still_stop_before_the_next_checkpoint(tmp_path):
    message, trainer = fit(tmp_path, PoisonAt(6), check_interval=100)
    assert 'not finite (NaN or Inf) at step 6; stopped at step 8; last good checkpoint' in message
    assert message.endswith('ep0-ba4-rank0.pt')
    assert checkpoints(tmp_path) == ['ep0-ba4-rank0.pt']  # ep0-ba8 would have held NaN weights
    assert_all_finite(tmp_path)


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    message, _ = fit(tmp_path, PoisonAt(8, weights=True))
    assert 'the model weights were not finite (NaN or Inf) after step 8; stopped at step 8' in message
    assert checkpoints(tmp_path) == ['ep0-ba4-rank0.pt']
    assert_all_finite(tmp_path)


def test_divergence_before_any_checkpoint_says_so(tmp_path):
    message, _ = fit(tmp_path, PoisonAt(2))
    assert message.endswith('at step 2; stopped at step 2; no checkpoint had been written')
    assert checkpoints(tmp_path) == []


def test_the_training_step_has_no_host_sync(monkeypatch):
    guard = DivergenceGuard()
    guard.fit_start(SimpleNamespace(device=SimpleNamespace(name='gpu', tensor_to_device=lambda t: t)), None)
    assert guard._interval == 50

    def forbidden(*args, **kwargs):
        raise AssertionError('host sync in the training step')

    for name in ('item', 'tolist', '__bool__', 'cpu', 'numpy'):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for step, loss in enumerate([torch.tensor(1.0), torch.tensor(float('inf')), [torch.tensor(float('nan'))],
                                 {'a': torch.tensor(2.0)}]):
        guard.after_loss(SimpleNamespace(loss=loss, timestamp=SimpleNamespace(batch=step)), None)
    monkeypatch.undo()
    assert int(guard._first_bad) == 2  # the inf loss, of the second step


def test_flag_is_read_every_interval_and_at_the_end(monkeypatch):
    reads = []
    original = DivergenceGuard._check
    monkeypatch.setattr(DivergenceGuard, '_check',
                        lambda self, state, weights: reads.append(int(state.timestamp.batch)) or original(
                            self, state, weights))
    tiny_trainer(max_duration='7ba', callbacks=[DivergenceGuard(check_interval=3)]).fit()
    assert reads == [3, 6, 7]


def test_every_process_agrees_on_the_first_bad_step(monkeypatch):
    """The flag is reduced to the earliest bad step of all processes, so all stop at the same step."""
    guard = DivergenceGuard(check_interval=1)
    guard._first_bad = torch.tensor(torch.iinfo(torch.int64).max)
    monkeypatch.setattr('composer.utils.dist.all_reduce',
                        lambda tensor, reduce_operation: tensor.copy_(torch.minimum(tensor, torch.tensor([5, 9]))))
    state = SimpleNamespace(timestamp=SimpleNamespace(batch=7), callbacks=[], run_name='r', model=torch.nn.Linear(1, 1))
    with pytest.raises(DivergenceError, match='not finite .* at step 5; stopped at step 7'):
        guard._check(state, weights=True)


@pytest.mark.parametrize('value', [0, -1, 2.5, True])
def test_bad_check_interval(value):
    with pytest.raises(ValueError, match='check_interval must be a positive number of batches or null'):
        DivergenceGuard(check_interval=value)


def test_registered_and_on_in_every_shipped_recipe():
    assert registry.callbacks.get('divergence_guard') is DivergenceGuard
    assert issubclass(DivergenceGuard, __import__('composer').callbacks.NaNMonitor)
    recipes = glob.glob(os.path.join(RECIPES, '*.yaml'))
    assert len(recipes) >= 10
    for path in recipes:
        assert re.search(r'^  - divergence_guard: \{\}', open(path).read(), re.M), path


def test_quickstart_run_exits_3_with_one_line(tmp_path, monkeypatch, capsys):
    build = train.build_trainer

    def poisoned(recipe):
        trainer = build(recipe)
        trainer.state.callbacks.append(PoisonAt(3))
        return trainer

    monkeypatch.setattr(train, 'build_trainer', poisoned)
    folder = tmp_path / 'checkpoints'
    status = train.main([os.path.join(RECIPES, 'quickstart.yaml'), 'max_duration=6ba', 'save_interval=2ba',
                         f'save_folder={folder}', 'train_dataset.digits.image_size=8', 'val_dataset=null',
                         'eval_batch_size=null', 'progress_bar=false'])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 3
    assert err == [f'composer-efficientnet: training diverged: the training loss was not finite (NaN or Inf) at step '
                   f'3; stopped at step 3; last good checkpoint: {folder}/ep0-ba2-rank0.pt']
    assert checkpoints(folder) == ['ep0-ba2-rank0.pt']
    assert_all_finite(folder)
