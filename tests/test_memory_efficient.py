"""memory_efficient: a fraction of torchvision's activations, the same training (outputs, gradients, BatchNorm
statistics, stochastic depth), the same state dict, a plain evaluation path."""

import json
import pathlib

import pytest
import torch
import torchvision
import yaml

from composer_efficientnet import EfficientNet, benchmark, composer_efficientnet
from composer_efficientnet.benchmark import activation_bytes_per_image
from composer_efficientnet.cli import memory_table
from composer_efficientnet.recipe import RecipeError, validate
from composer_efficientnet.registry import REGISTRIES


def _pair(name, **kwargs):
    """A default model and a memory-efficient copy of it (same weights), both in training mode."""
    torch.manual_seed(0)
    default = EfficientNet.from_name(name, num_classes=10, **kwargs).train()
    lean = EfficientNet.from_name(name, num_classes=10, memory_efficient=True, **kwargs).train()
    lean.load_state_dict(default.state_dict())
    return default, lean


def _step(model, x, seed=3):
    """Output and parameter gradients of one training forward and backward, drawn with ``seed``."""
    torch.manual_seed(seed)
    out = model(x)
    model.zero_grad(set_to_none=True)
    (out.float() * torch.linspace(-1, 1, out.shape[1])).sum().backward()
    return out.detach(), {n: p.grad for n, p in model.named_parameters()}


def _assert_close(actual, expected, rtol=1e-5):
    """Relative error under ``rtol``, relative to the largest magnitude of ``expected``."""
    scale = expected.abs().max().clamp_min(1e-30)
    assert ((actual.float() - expected.float()).abs().max() / scale).item() < rtol


def test_b0_keeps_at_most_040_of_torchvision_activations():
    with torch.device('meta'):  # a count, not a computation: 64x64, per image
        ours = activation_bytes_per_image(EfficientNet.from_name('efficientnet_b0', memory_efficient=True), 64)
        default = activation_bytes_per_image(EfficientNet.from_name('efficientnet_b0'), 64)
        torchvision_bytes = activation_bytes_per_image(torchvision.models.efficientnet_b0(), 64)
    assert default == torchvision_bytes
    assert ours <= 0.40 * torchvision_bytes


def test_meta_count_equals_the_count_of_a_real_forward():
    torch.manual_seed(0)
    lean = EfficientNet.from_name('efficientnet_b0', num_classes=10, memory_efficient=True)
    with torch.device('meta'):
        meta = EfficientNet.from_name('efficientnet_b0', num_classes=10, memory_efficient=True)
    assert activation_bytes_per_image(lean, 32) == activation_bytes_per_image(meta, 32) > 0


@pytest.mark.parametrize('name', ['efficientnet_b0', 'efficientnet_v2_s'])  # every kind of block
def test_training_step_equals_the_default_modes(name):
    default, lean = _pair(name, drop_connect_rate=0.5)
    x = torch.randn(4, 3, 32, 32)
    out_default, grads_default = _step(default, x)
    out_lean, grads_lean = _step(lean, x)
    _assert_close(out_lean, out_default)
    assert grads_lean.keys() == grads_default.keys()
    for name_, grad in grads_default.items():
        _assert_close(grads_lean[name_], grad)
    for (key, a), (_, b) in zip(default.state_dict().items(), lean.state_dict().items()):
        assert torch.equal(a, b), key  # running statistics updated once, the same way (weights untouched)
    assert lean.stem.bn.num_batches_tracked.item() == 1


def test_stochastic_depth_drops_the_same_samples():
    default, lean = _pair('efficientnet_b0')
    for model in (default, lean):
        model.set_drop_rates([0.5] * len(model.blocks()))
    x = torch.randn(8, 3, 32, 32)
    _assert_close(_step(lean, x, seed=5)[0], _step(default, x, seed=5)[0])
    assert not torch.allclose(_step(lean, x, seed=6)[0], _step(lean, x, seed=7)[0])


@pytest.mark.parametrize('device_type,dtype', [('cpu', torch.bfloat16)])
def test_autocast_and_channels_last(device_type, dtype):
    default, lean = _pair('efficientnet_b0')
    x = torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)
    default, lean = (m.to(memory_format=torch.channels_last) for m in (default, lean))
    with torch.autocast(device_type, dtype):
        out_default, grads_default = _step(default, x)
        out_lean, grads_lean = _step(lean, x)
    assert out_lean.dtype == dtype
    _assert_close(out_lean, out_default, rtol=1e-2)  # bf16 rounding, not the mode
    for name, grad in grads_default.items():
        assert grads_lean[name].dtype == grad.dtype == torch.float32
        _assert_close(grads_lean[name], grad, rtol=5e-2)


@pytest.mark.parametrize('name', ['efficientnet_b3', 'efficientnet_v2_m'])  # scaled widths, V2's last stage
def test_other_members_keep_at_most_040_with_the_default_state_dict_keys(name):
    with torch.device('meta'):
        default = EfficientNet.from_name(name)
        lean = EfficientNet.from_name(name, memory_efficient=True)
        assert lean.state_dict().keys() == default.state_dict().keys()
        assert all(block.memory_efficient for block in lean.blocks())
        peer = getattr(torchvision.models, name)()
        assert activation_bytes_per_image(lean, 64) <= 0.40 * activation_bytes_per_image(peer, 64)


def test_non_recomputable_norm_falls_back_to_the_plain_path():
    """A norm with buffers other than BatchNorm2d's (GhostBatchNorm, say) would update them twice: not rerun."""

    class CountingNorm(torch.nn.BatchNorm1d):  # stands in for any stateful norm
        calls = 0

        def forward(self, x):
            CountingNorm.calls += 1
            return torch.nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                                  True, 0.1, self.eps)

    torch.manual_seed(0)
    default = EfficientNet.from_name('efficientnet_b0', num_classes=10, norm_layer=CountingNorm).train()
    lean = EfficientNet.from_name('efficientnet_b0', num_classes=10, norm_layer=CountingNorm,
                                  memory_efficient=True).train()
    lean.load_state_dict(default.state_dict())
    x = torch.randn(2, 3, 32, 32)
    CountingNorm.calls = 0
    out_default, _ = _step(default, x)
    calls = CountingNorm.calls
    out_lean, _ = _step(lean, x)
    assert CountingNorm.calls == 2 * calls
    assert torch.equal(out_lean, out_default)


@pytest.mark.parametrize('convert', ['script', 'export'])
def test_eval_mode_converts_with_equal_outputs(convert):
    _, lean = _pair('efficientnet_b0')
    lean.eval()
    x = torch.randn(2, 3, 32, 32)
    converted = torch.jit.script(lean) if convert == 'script' else torch.export.export(lean, (x,)).module()
    assert torch.equal(converted(x), lean(x))


def test_composer_model_and_recipe_builders_take_the_option():
    model = composer_efficientnet('efficientnet_b0', num_classes=10, memory_efficient=True)
    assert model.module.stem.memory_efficient
    built = REGISTRIES['models'].get('efficientnet_v2_s')(num_classes=10, memory_efficient=True)
    assert all(block.memory_efficient for block in built.module.blocks())
    assert not REGISTRIES['models'].get('efficientnet_b0')(num_classes=10).module.stem.memory_efficient


def test_benchmark_memory_efficient_adds_lean_rows_with_activation_megabytes(tmp_path):
    path = tmp_path / 'bench.json'
    assert benchmark.main(['--device', 'cpu', '--resolution', '32', '--batch-size', '2', '--warmup', '1', '--steps',
                           '1', '--windows', '1', '--rows', 'ours-loop,torchvision', '--memory-efficient',
                           '--json', str(path)]) == 0
    rows = {row['impl']: row for row in json.loads(path.read_text())['rows']}
    assert list(rows) == ['ours-loop', 'torchvision', 'ours-lean', 'ours-lean-loop']
    assert all(row['error'] is None and row['images_per_s'] > 0 for row in rows.values())
    megabytes = {impl: row['activation_mb_per_image'] for impl, row in rows.items()}
    assert megabytes['ours-loop'] == megabytes['torchvision'] > 0
    assert megabytes['ours-lean'] == megabytes['ours-lean-loop'] <= 0.40 * megabytes['torchvision']


def test_info_memory_reports_b0_at_224_with_a_larger_lean_batch(capsys):
    header, b0 = memory_table(['efficientnet_b0'])
    assert header[:4] == ['member', 'px', 'default MB/img', 'lean MB/img']
    assert b0[:3] == ['efficientnet_b0', '224', '88.4']  # the figure torchvision's B0 keeps too (issue 17)
    assert float(b0[4]) <= 0.40 and int(b0[6]) > 2.5 * int(b0[5]) > 0
    with torch.device('meta'):
        model = EfficientNet.from_name('efficientnet_b0')
        activations = activation_bytes_per_image(model, 224)
    weights_and_state = 14 * sum(p.numel() for p in model.parameters())  # fp32 weight, grad, momentum; bf16 copy
    assert int(b0[5]) == int((80e9 - weights_and_state) // (activations / 2))


def test_recipes_take_memory_efficient_as_a_model_parameter():
    config = yaml.safe_load((pathlib.Path(__file__).parents[1] / 'recipes' / 'quickstart.yaml').read_text())
    config['model']['efficientnet_b0']['memory_efficient'] = True
    assert validate(config).model.params['memory_efficient'] is True
    config['model']['efficientnet_b0']['memory_efficient'] = 'yes'
    with pytest.raises(RecipeError, match='memory_efficient'):
        validate(config)
