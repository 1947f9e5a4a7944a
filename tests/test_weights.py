"""Pretrained imports from torchvision and timm: exact outputs, all-or-nothing loading, clear errors."""

import re
import zipfile

import numpy as np
import pytest
import timm
import torch
import torchvision

from composer_efficientnet import EfficientNet, composer_efficientnet, weights
from composer_efficientnet.efficientnet import B0_STAGES, MEMBERS


def randomize_batchnorm(model: torch.nn.Module) -> None:
    """Give BN layers non-trivial statistics so a mis-mapped key changes the output."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            for tensor, low, high in ((module.running_mean, -0.5, 0.5), (module.running_var, 0.5, 2.0),
                                      (module.weight.data, 0.5, 1.5), (module.bias.data, -0.2, 0.2)):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


def source_model(library: str, name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)() if library == 'torchvision' else timm.create_model(name)
    randomize_batchnorm(model)
    return model.eval()


@pytest.mark.parametrize('library', ['torchvision', 'timm'])
@pytest.mark.parametrize('name', [name for name in MEMBERS if MEMBERS[name].stages is B0_STAGES])  # V2: test_v2.py
def test_imported_outputs_equal_source(library, name):
    source = source_model(library, name)
    convert = weights.from_torchvision if library == 'torchvision' else weights.from_timm
    state_dict = source.state_dict()
    ours = EfficientNet.from_name(name, **weights.source_bn_overrides(state_dict, name)).eval()
    ours.load_state_dict(convert(state_dict))
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert relative_error(source(x), ours(x)) < 1e-5


def test_detect_format():
    assert weights.detect_format(torchvision.models.efficientnet_b0().state_dict()) == 'torchvision'
    assert weights.detect_format(timm.create_model('efficientnet_b0').state_dict()) == 'timm'
    assert weights.detect_format(EfficientNet.from_name('efficientnet_b0').state_dict()) == 'composer_efficientnet'
    with pytest.raises(weights.WeightsError, match='Unrecognized EfficientNet state dict'):
        weights.detect_format({'fc.weight': torch.zeros(1)})


@pytest.mark.parametrize('library,suffix', [('torchvision', '.pth'), ('timm', '.safetensors')])
def test_composer_model_from_file(tmp_path, library, suffix):
    source = source_model(library, 'efficientnet_b0')
    path = tmp_path / f'weights{suffix}'
    if suffix == '.safetensors':
        from safetensors.torch import save_file
        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)
    model = composer_efficientnet('efficientnet_b0', pretrained=str(path)).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert relative_error(source(x), model((x, None))) < 1e-5


@pytest.fixture(scope='module')
def torchvision_b5():
    return source_model('torchvision', 'efficientnet_b5')


@pytest.mark.parametrize('path', ['composer_efficientnet file', 'composer_efficientnet bn_eps=1e-5',
                                  'load_pretrained'])
def test_torchvision_b5_import_uses_its_batchnorm_eps_on_every_path(tmp_path, caplog, torchvision_b5, path):
    """torchvision's B5 was trained with eps 1e-3; every loading path ends with its outputs."""
    file = tmp_path / 'b5.pth'
    torch.save(torchvision_b5.state_dict(), file)
    if path == 'load_pretrained':
        model = EfficientNet.from_name('efficientnet_b5')
        weights.load_pretrained(model, torchvision_b5.state_dict())
    else:
        overrides = {'bn_eps': 1e-5} if 'bn_eps' in path else {}
        model = composer_efficientnet('efficientnet_b5', pretrained=file, **overrides).module
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}
    changed = [r for r in caplog.records if 'Set BatchNorm eps to 0.001' in r.getMessage()]
    assert len(changed) == (0 if path == 'composer_efficientnet file' else 1)
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        assert relative_error(torchvision_b5(x), model.eval()(x)) < 1e-5


def test_weights_error_is_exported():
    from composer_efficientnet import WeightsError
    assert WeightsError is weights.WeightsError


def test_fine_tuning_keeps_all_but_classifier(tmp_path, caplog):
    source = source_model('torchvision', 'efficientnet_b0')
    path = tmp_path / 'tv.pth'
    torch.save({'state_dict': source.state_dict()}, path)  # wrapped, as many trainers save
    model = composer_efficientnet('efficientnet_b0', num_classes=10, pretrained=str(path))
    assert model.module.classifier.out_features == 10
    assert torch.equal(model.module.stem.conv.weight, source.features[0][0].weight)
    assert 'classifier keeps its initialization' in caplog.text


def test_a_backbone_without_classifier_fine_tunes(tmp_path, caplog):
    source = timm.create_model('efficientnet_b0', num_classes=0).eval()  # timm's headless backbone
    randomize_batchnorm(source)
    model = composer_efficientnet('efficientnet_b0', num_classes=7, pretrained=source.state_dict()).eval()
    assert 'no classifier (a backbone)' in caplog.text
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert relative_error(source(x), model.module.forward_features(x).flatten(1)) < 1e-5


def test_files_without_batchnorm_step_counters_load(tmp_path):
    """Many ported checkpoints drop num_batches_tracked; BatchNorm fills it, as torchvision's models accept."""
    source = source_model('torchvision', 'efficientnet_b0')
    state_dict = {k: v for k, v in source.state_dict().items() if not k.endswith('num_batches_tracked')}
    torch.save(state_dict, tmp_path / 'no_counters.pth')
    model = composer_efficientnet('efficientnet_b0', pretrained=tmp_path / 'no_counters.pth').eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert relative_error(source(x), model.module(x)) < 1e-5


def test_load_pretrained_takes_the_composer_model_too():
    source = source_model('torchvision', 'efficientnet_b0')
    model = composer_efficientnet('efficientnet_b0')
    weights.load_pretrained(model, source.state_dict())
    assert torch.equal(model.module.stem.conv.weight, source.features[0][0].weight)


def test_wrong_member_names_mismatched_keys_and_loads_nothing():
    ours = EfficientNet.from_name('efficientnet_b0')
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(weights.WeightsError) as info:
        weights.load_pretrained(ours, torchvision.models.efficientnet_b2().state_dict())
    message = str(info.value)
    assert 'looks like efficientnet_b2' in message and 'shape (checkpoint vs model)' in message
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())


def test_unknown_and_missing_keys_are_named():
    state_dict = torchvision.models.efficientnet_b0().state_dict()
    state_dict['features.1.0.block.9.weight'] = torch.zeros(1)
    with pytest.raises(weights.WeightsError, match=r'features\.1\.0\.block\.9\.weight'):
        weights.from_torchvision(state_dict)
    partial = weights.from_timm(timm.create_model('efficientnet_b0').state_dict())
    del partial['head.bn.running_var']
    with pytest.raises(weights.WeightsError, match=r'missing head\.bn\.running_var'):
        weights.load_pretrained(EfficientNet.from_name('efficientnet_b0'), partial)


def test_tensorflow_ported_timm_weights_are_refused_by_name(tmp_path):
    """timm's tf_efficientnet_bN share the keys of efficientnet_bN but not the padding and eps: refuse them."""
    folder = tmp_path / 'models--timm--tf_efficientnet_b0.ns_jft_in1k'
    folder.mkdir()
    for path in (tmp_path / 'tf_efficientnet_b0_aa-827b6e33.pth', folder / 'model.safetensors'):
        torch.save(timm.create_model('efficientnet_b0').state_dict(), path)
        with pytest.raises(weights.WeightsError, match="looks like timm's tf_efficientnet weights"):
            composer_efficientnet('efficientnet_b0', pretrained=path)


def test_a_folder_named_after_tf_efficientnet_does_not_refuse_other_weights(tmp_path):
    folder = tmp_path / 'tf-efficientnet-comparison'
    folder.mkdir()
    torch.save(timm.create_model('efficientnet_b0').state_dict(), folder / 'efficientnet_b0.pth')
    assert composer_efficientnet('efficientnet_b0', pretrained=folder / 'efficientnet_b0.pth').num_classes == 1000


def test_composer_checkpoints_from_numpy_1_and_2_are_read(tmp_path):
    """A Composer checkpoint pickles numpy's random state; numpy 1 and 2 name its reconstructor differently."""
    state_dict = EfficientNet.from_name('efficientnet_b0', num_classes=10).state_dict()
    checkpoint = {'state': {'model': {f'module.{k}': v for k, v in state_dict.items()}},
                  'rng': [{'numpy': np.random.get_state(), 'python': (3, (1, 2), None)}]}
    path = tmp_path / 'ep1-ba10-rank0.pt'
    torch.save(checkpoint, path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    pickle_name = next(name for name in members if name.endswith('data.pkl'))
    for module in (b'numpy.core.multiarray', b'numpy._core.multiarray'):
        pickled = re.sub(rb'numpy\._?core\.multiarray', module, members[pickle_name])
        written = tmp_path / f'{module.decode()}.pt'
        with zipfile.ZipFile(written, 'w', zipfile.ZIP_STORED) as archive:
            for name, data in members.items():
                archive.writestr(name, pickled if name == pickle_name else data)
        loaded = weights.read_state_dict(written)
        assert torch.equal(loaded['classifier.weight'], state_dict['classifier.weight']), module


@pytest.mark.parametrize('content,message', [
    (b'not a checkpoint', 'Could not read pretrained weights file'),
    (None, 'does not exist'),
])
def test_bad_weight_files(tmp_path, content, message):
    path = tmp_path / 'weights.pth'
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(weights.WeightsError, match=message):
        composer_efficientnet('efficientnet_b0', pretrained=str(path))


def test_file_without_tensors(tmp_path):
    path = tmp_path / 'weights.pth'
    torch.save({'epoch': 3}, path)
    with pytest.raises(weights.WeightsError, match='does not hold a state dict'):
        weights.read_state_dict(path)


def test_classifier_notice_only_when_the_rest_loads(caplog):
    with pytest.raises(weights.WeightsError, match='looks like efficientnet_b2'):
        composer_efficientnet('efficientnet_b0', num_classes=10,
                              pretrained=torchvision.models.efficientnet_b2().state_dict())
    assert 'classifier keeps its initialization' not in caplog.text
