"""Predict: a run's checkpoint names its ImageFolder classes, torchvision weights ImageNet's; the eval transform is
the recipe's or the source's."""

import contextlib
import io
import json

import pytest
import torch
import torchvision
import yaml

from composer_efficientnet import cli, train
from composer_efficientnet.callbacks.class_names import class_names_in
from composer_efficientnet.data.transforms import NormalizeOnDevice
from composer_efficientnet.export import with_imagenet_defaults, imagenet_class_names
from composer_efficientnet.efficientnet import MEMBERS
from composer_efficientnet.predict import read_images
from composer_efficientnet.safe_load import read_checkpoint
from tests.data_trees import CLASSES, make_tree, write_jpeg
from tests.test_recipe import BASE


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A two-step run on a three-class ImageFolder tree at 16 pixels, its recipe and checkpoint."""
    tmp = tmp_path_factory.mktemp('run')
    root = make_tree(tmp / 'tree', per_class=2)
    recipe = {**BASE, 'model': {'efficientnet_b0': {'num_classes': 3}}, 'train_batch_size': 2, 'eval_batch_size': 6,
              'max_duration': '2ba', 'save_folder': str(tmp / 'checkpoints'), 'save_interval': '2ba',
              'progress_bar': False, 'algorithms': [],
              **{f'{split}_dataset': {'imagenet': {'datadir': str(root), 'is_train': split == 'train', 'crop_size': 16,
                                                   'resize_size': 20}} for split in ('train', 'val')}}
    path = tmp / 'recipe.yaml'
    path.write_text(yaml.safe_dump(recipe))
    with contextlib.redirect_stdout(io.StringIO()):
        assert train.main([str(path)]) == 0
    return {'recipe': str(path), 'checkpoint': str(tmp / 'checkpoints' / 'ep0-ba2-rank0.pt'), 'tree': root}


def test_the_run_records_its_class_folder_names_and_predict_prints_them(run, tmp_path, capsys):
    assert class_names_in(read_checkpoint(run['checkpoint'])) == list(CLASSES)
    out = tmp_path / 'predictions.json'
    images = run['tree'] / 'val'
    assert cli.main(['predict', run['recipe'], str(images), '--top', '2', '--json', str(out)]) == 0
    results = json.loads(out.read_text())
    assert results['weights'] == run['checkpoint']  # the newest checkpoint of save_folder, as eval takes it
    predictions = results['predictions']
    assert [p['image'] for p in predictions] == sorted(str(p) for p in images.rglob('*.jpg'))
    for prediction in predictions:
        top = prediction['top']
        assert len(top) == 2 and {entry['class'] for entry in top} <= set(CLASSES)
        assert top[0]['probability'] >= top[1]['probability'] and top[0]['probability'] + top[1]['probability'] <= 1
    printed = capsys.readouterr().out
    assert f"{top[0]['probability']:7.2%}  {top[0]['class']}" in printed


def test_torchvision_weights_predict_imagenet_names_with_its_eval_transform(tmp_path, capsys):
    torch.manual_seed(0)
    reference = torchvision.models.efficientnet_b0().eval()
    torch.nn.init.normal_(reference.classifier[1].weight, std=0.5)
    weights = tmp_path / 'b0.pth'
    torch.save(reference.state_dict(), weights)
    image = str(write_jpeg(tmp_path / 'photo.jpg', seed=3, size=(300, 260)))
    out = tmp_path / 'p.json'
    assert cli.main(['predict', str(weights), image, '--top', '1', '--json', str(out)]) == 0
    top = json.loads(out.read_text())['predictions'][0]['top'][0]
    transform = with_imagenet_defaults(MEMBERS['efficientnet_b0'].eval_transform())
    batch, _ = NormalizeOnDevice(transform['mean'], transform['std'])((read_images([image], transform), None))
    assert batch.shape == (1, 3, 224, 224)
    with torch.no_grad():
        probabilities = reference(batch).softmax(1)[0]
    assert top['index'] == int(probabilities.argmax()) and top['class'] == imagenet_class_names()[top['index']]
    assert top['probability'] == pytest.approx(float(probabilities.max()), rel=1e-4)
    assert len(imagenet_class_names()) == 1000 and imagenet_class_names()[0] == 'tench'


def test_v2_l_weights_evaluate_with_torchvisions_mean_and_std():
    transform = with_imagenet_defaults(MEMBERS['efficientnet_v2_l'].eval_transform())
    assert transform == {'crop_size': 480, 'resize_size': 480, 'interpolation': 'bicubic', 'mean': [0.5] * 3,
                         'std': [0.5] * 3}


def test_a_runs_checkpoint_given_as_weights_names_its_classes(run, tmp_path):
    out = tmp_path / 'p.json'
    image = str(run['tree'] / 'val' / 'cat' / '0.jpg')
    assert cli.main(['predict', run['checkpoint'], image, '--top', '3', '--json', str(out)]) == 0
    top = json.loads(out.read_text())['predictions'][0]['top']
    assert sorted(entry['class'] for entry in top) == sorted(CLASSES)
    assert sum(entry['probability'] for entry in top) == pytest.approx(1.0, abs=1e-5)
