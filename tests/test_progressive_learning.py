"""Progressive learning: the stages' values, the image size and RandAugment magnitude inside persistent
DataLoader workers of all three datasets, one size per batch, the algorithm in a Trainer with the algorithms it
composes with, exact resume across a stage boundary, and the recipes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from composer import Trainer
from composer.algorithms import EMA
from composer.core import Callback
from composer.loggers import InMemoryLogger
from torchvision.transforms import v2

from composer_efficientnet import registry
from composer_efficientnet.algorithms import (LabelSmoothing, ProgressiveLearning, SampleStochasticDepth,
                                              progressive_stages)
from composer_efficientnet.callbacks import TrainingCurves
from composer_efficientnet.data import (build_digits_dataspec, build_imagenet_dataspec,
                                        build_streaming_imagenet_dataspec, convert_imagefolder_to_mds)
from composer_efficientnet.data.transforms import StageSettings
from composer_efficientnet.recipe import load_recipe, validate
from tests.conftest import seeded_model
from tests.data_trees import make_tree
from tests.test_resume import _assert_same, _env, _training_state, _wait_for

ROOT = Path(__file__).resolve().parent.parent
WORKERS = {'num_workers': 2, 'persistent_workers': True}


def test_stages_split_epochs_as_googles_code_and_interpolate_from_first_to_last():
    stages = progressive_stages(4, 10, image_size=[128, 300], dropout=[0.1, 0.3], randaugment_magnitude=[5, 15],
                                mixup_alpha=[0.0, 0.2])
    assert [stage.start_epoch for stage in stages] == [0, 2, 5, 7]  # int(k / 4 * 10)
    assert [stage.image_size for stage in stages] == [128, 185, 242, 300]  # 128 + 172 k / 3, truncated
    assert [stage.randaugment_magnitude for stage in stages] == [5, 8, 11, 15]
    assert [stage.dropout for stage in stages] == pytest.approx([0.1, 0.1 + 0.2 / 3, 0.1 + 0.4 / 3, 0.3])
    assert [stage.mixup_alpha for stage in stages] == pytest.approx([0.0, 0.2 / 3, 0.4 / 3, 0.2])
    assert progressive_stages(2, 3, dropout=[0.1, 0.2])[1].settings() == {'dropout': 0.2}


def _spec(kind: str, tmp_path: Path, **kwargs):
    if kind == 'digits':
        return build_digits_dataspec(image_size=16, max_shift=2, batch_size=4, **kwargs)
    tree = make_tree(tmp_path / 'tree', per_class=4)
    common = dict(crop_size=16, augment='randaugment', batch_size=4, **kwargs)
    if kind == 'imagenet':
        return build_imagenet_dataspec(str(tree), **common)
    convert_imagefolder_to_mds(str(tree), str(tmp_path / 'mds'), workers=1)
    return build_streaming_imagenet_dataspec(remote=str(tmp_path / 'mds'), **common)


@pytest.mark.parametrize('kind', ['digits', 'imagenet', 'streaming_imagenet'])
def test_persistent_workers_crop_at_the_stage_size_and_magnitude(kind, tmp_path, monkeypatch):
    # Forked workers inherit this RandAugment, which paints every pixel with its magnitude.
    monkeypatch.setattr(v2.RandAugment, 'forward', lambda self, image: torch.full_like(image, self.magnitude))
    loader = _spec(kind, tmp_path, dataloader_kwargs=WORKERS).dataloader
    stage = loader.dataset.stage
    seen = []
    for size, magnitude in [(None, None), (8, 3), (24, 7), (None, None)]:  # one epoch each, same workers
        stage.set(size, magnitude)
        batches = [images for images, _ in loader]
        seen.append(({tuple(images.shape[-2:]) for images in batches},
                     {int(v) for images in batches for v in images.unique()} if kind != 'digits' else None))
    workers = loader._iterator._workers
    expected = [({(16, 16)}, {9}), ({(8, 8)}, {3}), ({(24, 24)}, {7}), ({(16, 16)}, {9})]  # 9: torchvision's
    assert seen == [(sizes, None if kind == 'digits' else values) for sizes, values in expected]
    assert len(workers) == 2 and all(worker.is_alive() for worker in workers)


@pytest.mark.parametrize('kind', ['digits', 'imagenet'])
def test_a_batch_keeps_one_size_when_the_stage_changes_while_it_is_built(kind, tmp_path, monkeypatch):
    dataset = _spec(kind, tmp_path).dataloader.dataset
    read = StageSettings.get

    def read_then_change(self):
        values = read(self)
        self.set(12, None)  # as if the main process wrote a new stage right after the batch started
        return values

    dataset.stage.set(8, None)
    monkeypatch.setattr(StageSettings, 'get', read_then_change)
    batch = dataset.__getitems__(list(range(6)))
    assert [tuple(image.shape[-2:]) for image, _ in batch] == [(8, 8)] * 6


class Probe(Callback):
    """Per training step: epoch, image side, classifier dropout, target dims; the side of each held-out batch."""

    def __init__(self) -> None:
        self.steps, self.eval_sides = [], set()

    def after_dataloader(self, state, logger):
        self.steps.append([int(state.timestamp.epoch), state.batch[0].shape[-1], state.model.module.dropout.p])

    def after_loss(self, state, logger):  # mixup's dense targets are set at BEFORE_LOSS
        self.steps[-1].append(state.batch[1].ndim)

    def eval_batch_start(self, state, logger):
        self.eval_sides.add(state.batch[0].shape[-1])


def test_stages_in_a_trainer_with_stochastic_depth_label_smoothing_and_ema(tmp_path):
    model, probe, memory, curves = seeded_model(), Probe(), InMemoryLogger(), TrainingCurves(folder=str(tmp_path))
    progressive = ProgressiveLearning(num_stages=2, image_size=[8, 16], dropout=[0.0, 0.4], mixup_alpha=[0.0, 0.5])
    trainer = Trainer(model=model, train_dataloader=build_digits_dataspec(image_size=16, batch_size=8,
                                                                          dataloader_kwargs=WORKERS),
                      eval_dataloader=build_digits_dataspec(is_train=False, image_size=16, batch_size=32),
                      train_subset_num_batches=2, eval_subset_num_batches=1, max_duration='4ep', seed=17,
                      algorithms=[progressive, SampleStochasticDepth(drop_rate=0.1), LabelSmoothing(0.1),
                                  EMA(half_life=None, smoothing=0.9, update_interval='1ba')],
                      optimizers=torch.optim.SGD(model.parameters(), lr=0.05), callbacks=[probe, curves],
                      loggers=[memory], device='cpu', progress_bar=False)
    trainer.fit()
    first, last = [0, 8, 0.0, 1], [16, 0.4, 2]  # stage 2 mixes: dense targets
    assert probe.steps == [[0, *first[1:]]] * 2 + [[1, *first[1:]]] * 2 + [[2, *last]] * 2 + [[3, *last]] * 2
    assert probe.eval_sides == {16}
    assert [value for _, value in memory.data['progressive_learning/image_size']] == [8, 16]
    assert [value for _, value in memory.data['progressive_learning/mixup_alpha']] == [0.0, 0.5]
    assert curves.stage_marks == [(4, 'stage 2: image_size 16, dropout 0.4, mixup_alpha 0.5')]
    assert model.module.dropout.p == 0.2 and trainer.state.train_dataloader.dataset.stage.get() == (None, None)


PROGRESSIVE = str(ROOT / 'recipes' / 'quickstart_progressive.yaml')
RESUMED = ['max_duration=4ep', 'save_interval=3ba', 'deterministic_mode=true', 'autoresume=true',
           'run_name=progressive', 'save_num_checkpoints_to_keep=-1', 'train_subset_num_batches=2',
           'progress_bar=false', 'train_dataset.digits.image_size=16', 'val_dataset.digits.image_size=16',
           'eval_subset_num_batches=1', 'eval_batch_size=64', 'algorithms.progressive_learning.num_stages=2',
           'algorithms.progressive_learning.image_size=[8,16]']


def _progressive_run(tmp: Path, name: str) -> list:
    return [sys.executable, '-m', 'tests.test_resume', str(tmp / f'{name}.jsonl'), PROGRESSIVE, *RESUMED,
            f'save_folder={tmp / name}']


@pytest.mark.slow
def test_killed_mid_stage_resumes_in_that_stage_and_ends_bitwise(tmp_path):
    reference = subprocess.run(_progressive_run(tmp_path, 'reference'), cwd=tmp_path, env=_env(),
                               capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr
    folder = tmp_path / 'run'
    process = subprocess.Popen(_progressive_run(tmp_path, 'run'), cwd=tmp_path, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(folder / 'latest-rank0.pt', process)  # step 3, in epoch 1 of 0-3: mid-epoch, in stage 1 of 2
    process.kill()
    assert process.wait(timeout=60) == -signal.SIGKILL
    finished = subprocess.run(_progressive_run(tmp_path, 'run'), cwd=tmp_path, env=_env(), capture_output=True,
                              text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert f'resumed from {folder}/latest-rank0.pt at step 3' in finished.stdout
    final = 'ep4-ba8-rank0.pt'
    _assert_same(_training_state(tmp_path / 'reference' / final), _training_state(folder / final))
    records = {r['step']: r for r in map(json.loads, (tmp_path / 'run.jsonl').read_text().splitlines())}
    expected = {r['step']: r for r in map(json.loads, (tmp_path / 'reference.jsonl').read_text().splitlines())}
    assert sorted(records) == sorted(expected) == list(range(1, 9)) and records == expected


@pytest.mark.parametrize('name', ['quickstart_progressive', 'efficientnet_v2_s_progressive',
                                  'efficientnet_v2_m_progressive', 'efficientnet_v2_l_progressive'])
def test_recipes_validate_with_the_papers_stages(name, tmp_path):
    data = [] if name.startswith('quickstart') else [f'{split}.imagenet.datadir={tmp_path}'
                                                     for split in ('train_dataset', 'val_dataset')]
    recipe = validate(load_recipe(ROOT / 'recipes' / f'{name}.yaml', data))
    entry, = [entry for entry in recipe.algorithms if entry.name == 'progressive_learning']
    algorithm = entry.build()
    assert isinstance(algorithm, ProgressiveLearning) and algorithm.num_stages == 4
    assert 'mixup' not in [entry.name for entry in recipe.algorithms]  # progressive_learning runs it
    if name != 'quickstart_progressive':
        end = {'s': (300, 0.3, 15, 0.0), 'm': (380, 0.4, 20, 0.2), 'l': (380, 0.5, 25, 0.4)}[name.split('_')[2]]
        assert algorithm.ranges == {'image_size': [128, end[0]], 'dropout': [0.1, end[1]],
                                    'randaugment_magnitude': [5, end[2]], 'mixup_alpha': [0.0, end[3]]}
    assert registry.algorithms.get('progressive_learning') is ProgressiveLearning
