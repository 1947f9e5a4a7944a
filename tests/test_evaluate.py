"""The eval entry point: a run's checkpoint evaluates to the run's own held-out figures, a torchvision file to
torchvision's, two processes to one process's; mistakes are one line."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from composer_efficientnet import evaluate, train
from composer_efficientnet.data import build_digits_dataspec
from tests.processes import launch

QUICKSTART = str(Path(__file__).resolve().parent.parent / 'recipes' / 'quickstart.yaml')
SMALL = ['train_dataset.digits.image_size=16', 'val_dataset.digits.image_size=16', 'progress_bar=false']
HELD_OUT_IMAGES = 359  # 20% of scikit-learn's 1,797 digits: odd, so two processes need a padded last batch


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A two-step quickstart run that wrote one checkpoint, and the held-out figures it printed at its end."""
    tmp = tmp_path_factory.mktemp('run')
    folder = tmp / 'checkpoints'
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = train.main([QUICKSTART, *SMALL, 'max_duration=2ba', f'save_folder={folder}', 'save_interval=2ba',
                           'callbacks=[]'])
    assert code == 0
    printed = {title: float(value) for title, value in re.findall(r'held-out (top-\d) \(eval\): ([\d.]+)%',
                                                                     out.getvalue())}
    assert set(printed) == {'top-1', 'top-5'}
    yield {'folder': folder, 'checkpoint': folder / 'ep0-ba2-rank0.pt', 'printed': printed}
    shutil.rmtree(tmp)


def _evaluate(tmp_path, *overrides) -> dict:
    out = tmp_path / 'results.json'
    assert evaluate.main([QUICKSTART, *SMALL, *overrides, '--json', str(out)]) == 0
    return json.loads(out.read_text())


def test_a_runs_checkpoint_evaluates_to_the_runs_own_held_out_figures(tmp_path, run, capsys):
    results = _evaluate(tmp_path, f"load_path={run['checkpoint']}")
    assert (round(results['top-1'], 2), round(results['top-5'], 2)) == (run['printed']['top-1'],
                                                                         run['printed']['top-5'])
    assert results['images'] == HELD_OUT_IMAGES and results['weights'] == str(run['checkpoint'])
    assert results['cross-entropy'] > 0 and results['model'] == 'efficientnet_b0'
    out = capsys.readouterr().out
    assert f"top-1: {results['top-1']:.2f}%" in out and f'{HELD_OUT_IMAGES} held-out images' in out


def test_the_record_names_the_precision_the_evaluation_ran_in(tmp_path, run):
    results = _evaluate(tmp_path, f"load_path={run['checkpoint']}", 'precision=amp_bf16')
    assert results['precision'] == 'fp32'  # a CPU run falls back


def test_load_path_may_use_composers_placeholders(tmp_path, run):
    results = _evaluate(tmp_path, f"load_path={run['folder']}/latest-rank{{rank}}.pt")
    assert round(results['top-1'], 2) == run['printed']['top-1']


def test_without_load_path_the_newest_checkpoint_of_the_save_folder_is_evaluated(tmp_path, run):
    results = _evaluate(tmp_path, f"save_folder={run['folder']}")
    assert results['weights'] == str(run['checkpoint'])
    assert round(results['top-1'], 2) == run['printed']['top-1']


def test_a_fine_tuned_checkpoint_loads_over_the_pretrained_model_it_started_from(tmp_path, run):
    """A fine-tuning recipe names its pretrained file; with load_path, the run's checkpoint is what is evaluated."""
    start = tmp_path / 'start.pth'
    torch.save(_random_torchvision_b0(seed=0).state_dict(), start)
    results = _evaluate(tmp_path, f"load_path={run['checkpoint']}", f'model.efficientnet_b0.pretrained={start}')
    assert results['weights'] == str(run['checkpoint'])
    assert round(results['top-1'], 2) == run['printed']['top-1']


def test_training_sections_are_ignored(tmp_path, run):
    """The training data need not exist where the checkpoint is evaluated; nothing there is built."""
    results = _evaluate(tmp_path, f"load_path={run['checkpoint']}", "train_dataset={imagenet: {datadir: /absent}}",
                        'optimizers.adamw.lr=-1', 'max_duration=null')
    assert round(results['top-1'], 2) == run['printed']['top-1']


def _random_torchvision_b0(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.efficientnet_b0(num_classes=10)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # running statistics that make eval outputs differ per image
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_a_torchvision_file_evaluates_as_torchvision_does(tmp_path):
    source = _random_torchvision_b0(seed=3)
    path = tmp_path / 'torchvision_b0.pth'
    torch.save(source.state_dict(), path)
    results = _evaluate(tmp_path, f'model.efficientnet_b0.pretrained={path}', 'save_folder=null')

    data = build_digits_dataspec(is_train=False, image_size=16, batch_size=128)
    correct, loss_sum, count = 0, 0.0, 0
    with torch.no_grad():
        for batch in data.dataloader:
            images, targets = data.microbatch_transforms(batch)
            logits = source(images)
            correct += int((logits.argmax(1) == targets).sum())
            loss_sum += float(F.cross_entropy(logits, targets, reduction='sum'))
            count += len(targets)
    assert count == results['images'] == HELD_OUT_IMAGES
    assert round(results['top-1'] * count / 100) == correct  # the metric is float32: compare the count
    assert results['cross-entropy'] == pytest.approx(loss_sum / count, rel=1e-4)
    assert results['weights'] == str(path)


@pytest.mark.parametrize('overrides, message', [
    (['save_folder=null'], 'load_path: evaluation needs weights: set load_path=CHECKPOINT'),
    (['load_path=absent.pt'], "load_path: file 'absent.pt' does not exist"),
    (['val_dataset=null'], 'val_dataset: is required'),
])
def test_recipe_mistakes_are_one_line(tmp_path, capsys, overrides, message):
    assert evaluate.main([QUICKSTART, *SMALL, f'save_folder={tmp_path}', *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f'composer-efficientnet: recipe error: {message}'), err


def test_weights_that_do_not_fit_are_one_line(tmp_path, run, capsys):
    plain = tmp_path / 'plain.pth'
    torch.save(_random_torchvision_b0(seed=0).state_dict(), plain)
    cases = [
        ([f'load_path={plain}'], f"'{plain}' is not a Composer checkpoint; for a torchvision, timm or plain "
                                 f'state-dict file use model.efficientnet_b0.pretrained={plain} instead'),
        ([f"save_folder={run['folder']}", f'model.efficientnet_b0.pretrained={plain}'],
         f"load_path: is not set, and both model.efficientnet_b0.pretrained ({plain}) and the newest checkpoint in "
         f"save_folder ({run['checkpoint']}) could be the weights: set load_path={run['checkpoint']} to evaluate the "
         f'run, or save_folder=null to evaluate {plain}'),
        ([f"load_path={run['checkpoint']}", 'model.efficientnet_b0.num_classes=12'],
         "does not fit the recipe's model, efficientnet_b0 (it was written by a run of efficientnet_b0 with "
         'num_classes 10): size mismatch for module.classifier.weight'),
        ([f"load_path={run['checkpoint']}", 'algorithms=[{blurpool: {}}]'],
         "does not fit the recipe's model, efficientnet_b0 (it was written by a run of efficientnet_b0 with "
         'num_classes 10): Missing key(s)'),
    ]
    for overrides, message in cases:
        assert evaluate.main([QUICKSTART, *SMALL, *overrides]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.slow
def test_two_processes_count_every_image_once(tmp_path, run):
    """359 images over 2 processes: the sampler repeats one image to even the shares; it is counted once."""
    alone = _evaluate(tmp_path, f"load_path={run['checkpoint']}")
    out = tmp_path / 'two.json'
    code, output = launch('composer_efficientnet.evaluate', [QUICKSTART, *SMALL, f"load_path={run['checkpoint']}",
                                                             'eval_batch_size=64', '--json', str(out)], tmp_path)
    assert code == 0, output
    together = json.loads(out.read_text())
    assert together['processes'] == 2 and together['images'] == HELD_OUT_IMAGES
    for title in ('top-1', 'top-5'):  # as counts of images: the metrics are float32
        assert round(together[title] * HELD_OUT_IMAGES / 100) == round(alone[title] * HELD_OUT_IMAGES / 100)
    assert together['cross-entropy'] == pytest.approx(alone['cross-entropy'], rel=1e-5)
