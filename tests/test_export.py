"""Export: ONNX (through onnxruntime), TorchScript and torch.export give eager's logits at any batch size, with
the eval transform in the file's metadata; the command takes what eval takes."""

import json
from pathlib import Path

import pytest
import torch
import torchvision

from composer_efficientnet import EfficientNet, cli
from composer_efficientnet.export import InferenceModel, export_model, read_metadata, run_exported

QUICKSTART = str(Path(__file__).resolve().parent.parent / 'recipes' / 'quickstart.yaml')


def _model(name: str, size: int) -> InferenceModel:
    torch.manual_seed(0)
    module = EfficientNet.from_name(name, num_classes=7).eval()
    torch.nn.init.normal_(module.classifier.weight, std=1.0)  # logits far from 0, so relative errors mean something
    transform = {'crop_size': size, 'resize_size': size, 'interpolation': 'bilinear', 'mean': [0.5] * 3,
                 'std': [0.5] * 3}
    return InferenceModel(module, name, 'random', transform, [f'c{i}' for i in range(7)])


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


@pytest.mark.parametrize('fmt, name', [('onnx', 'efficientnet_b0'), ('onnx', 'efficientnet_v2_s'),
                                       ('torchscript', 'efficientnet_b0'), ('export', 'efficientnet_b0')])
def test_exported_file_gives_eager_logits_at_any_batch_size(tmp_path, fmt, name):
    model = _model(name, 40)
    path = str(tmp_path / f'model.{fmt}')
    export_model(model, path, fmt)  # traced with a batch of 2
    for batch in (1, 3):
        images = torch.randn(batch, 3, 40, 40)
        with torch.no_grad():
            expected = model.module(images)
        got = run_exported(path, fmt, images)
        assert got.shape == (batch, 7) and _relative_error(got, expected) < 1e-4
    metadata = read_metadata(path, fmt)
    assert json.loads(metadata['input_size']) == [3, 40, 40] and metadata['model'] == name
    assert json.loads(metadata['eval_transform'])['mean'] == [0.5] * 3
    assert json.loads(metadata['class_names'])[:2] == ['c0', 'c1']


def test_command_exports_a_recipes_weights_at_its_eval_size_and_checks_them(tmp_path, capsys):
    start = tmp_path / 'start.pth'
    torch.manual_seed(0)
    torch.save(torchvision.models.efficientnet_b0(num_classes=10).state_dict(), start)
    out = tmp_path / 'quickstart.onnx'
    assert cli.main(['export', QUICKSTART, f'model.efficientnet_b0.pretrained={start}', 'save_folder=null',
                     'val_dataset.digits.image_size=24', '--out', str(out), '--check']) == 0
    printed = capsys.readouterr().out
    assert f'wrote {out} (onnx): efficientnet_b0, weights {start}, input (batch, 3, 24, 24)' in printed
    difference = float(printed.split('largest difference from eager ')[1].split()[0])
    assert 0 <= difference < 1e-4
    metadata = read_metadata(str(out), 'onnx')
    assert json.loads(metadata['input_size']) == [3, 24, 24] and metadata['weights'] == str(start)
    assert json.loads(metadata['eval_transform'])['resize_size'] == 24  # digits: whole images, not cropped
