"""The EfficientNet family: names, scaling, parameter parity with torchvision, forward/backward, state dicts."""

import math

import pytest
import timm
import torch
import torchvision

from composer_efficientnet import EfficientNet
from composer_efficientnet.efficientnet import B0_STAGES, MEMBERS, block_drop_rates, canonical_name, make_divisible
from composer_efficientnet.layers import MBConv

REFERENCE_PARAMS = {  # torchvision's weights metadata; XL: timm's efficientnetv2_xl
    'efficientnet_b0': 5_288_548, 'efficientnet_b1': 7_794_184, 'efficientnet_b2': 9_109_994,
    'efficientnet_b3': 12_233_232, 'efficientnet_b4': 19_341_616, 'efficientnet_b5': 30_389_784,
    'efficientnet_b6': 43_040_704, 'efficientnet_b7': 66_347_960, 'efficientnet_v2_s': 21_458_488,
    'efficientnet_v2_m': 54_139_356, 'efficientnet_v2_l': 118_515_272, 'efficientnet_v2_xl': 208_119_808,
}
B_FAMILY = [name for name in MEMBERS if MEMBERS[name].stages is B0_STAGES]


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('name', list(MEMBERS))
def test_parameter_count_equals_torchvision_and_timm(name):
    with torch.device('meta'):
        ours = EfficientNet.from_name(name)
        reference = (getattr(torchvision.models, name)() if hasattr(torchvision.models, name) else
                     timm.create_model(name.replace('efficientnet_v2_', 'efficientnetv2_')))
    assert num_params(ours) == num_params(reference) == REFERENCE_PARAMS[name]
    assert math.isclose(num_params(ours) / 1e6, MEMBERS[name].paper_params_m, rel_tol=0.05)


@pytest.mark.parametrize('name', [*B_FAMILY, 'efficientnet_v2_s'])
def test_forward_backward_small_resolution(name):
    torch.manual_seed(0)
    model = EfficientNet.from_name(name, num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.stem.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize('spelling', ['efficientnet_b3', 'efficientnet-b3', 'efficientnetb3', 'EfficientNet-B3'])
def test_name_spellings(spelling):
    assert canonical_name(spelling) == 'efficientnet_b3'


@pytest.mark.parametrize('spelling', ['efficientnet_v2_s', 'efficientnetv2_s', 'efficientnet-v2-s', 'EfficientNetV2-S'])
def test_v2_name_spellings(spelling):
    assert canonical_name(spelling) == 'efficientnet_v2_s'


@pytest.mark.parametrize('bad', ['efficientnet_b8', 'resnet50', 'efficientnet_b', '', 'efficientnet_v2_b0',
                                 'tf_efficientnetv2_s'])
def test_bad_name_is_a_clear_error(bad):
    with pytest.raises(ValueError, match='Unknown EfficientNet member') as info:
        EfficientNet.from_name(bad)
    assert 'efficientnet_b0' in str(info.value)


def test_bad_name_suggests_closest():
    with pytest.raises(ValueError, match="Did you mean 'efficientnet_b2'"):
        canonical_name('efficientnet_b22')


def test_scaling_rules():
    assert make_divisible(32 * 1.1) == 32  # 35.2 rounds to 32, within 90%
    assert make_divisible(16 * 1.8) == 32  # 28.8 -> 32
    assert make_divisible(24 * 1.4) == 32  # 33.6 -> 32 (not below 90%)
    assert make_divisible(10) == 16  # 8 would be below 90% of 10
    b7 = EfficientNet.from_name('efficientnet_b7')
    assert [len(stage) for stage in b7.stages] == [math.ceil(n * 3.1) for n in (1, 2, 2, 3, 3, 4, 1)]
    assert b7.num_features == 2560 and b7.stem.conv.out_channels == 64


def test_block_details():
    model = EfficientNet.from_name('efficientnet_b0')
    first = model.stages[0][0]
    assert isinstance(first.expand, torch.nn.Identity)  # depthwise-separable first stage
    assert not hasattr(first.project, 'act')  # no activation after the projection
    block = model.stages[1][1]
    assert block.se.reduce.out_channels == block.expand.conv.in_channels // 4  # SE ratio of the block input
    bn = model.stem.bn
    assert (bn.momentum, bn.eps) == (0.1, 1e-5)
    custom = EfficientNet.from_name('efficientnet_b0', bn_momentum=0.01, bn_eps=1e-3)
    assert (custom.stem.bn.momentum, custom.stem.bn.eps) == (0.01, 1e-3)
    assert isinstance(model.head.act, torch.nn.SiLU) and model.dropout.p == 0.2
    assert EfficientNet.from_name('efficientnet_b7').dropout.p == 0.5


def test_initialization_statistics():
    torch.manual_seed(0)
    model = EfficientNet.from_name('efficientnet_b0')
    conv = model.stages[5][0].expand.conv  # 1x1: fan_out is its output channels
    expected_std = math.sqrt(2.0 / conv.out_channels)
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.03)
    dw = model.stages[5][0].depthwise.conv  # depthwise 5x5: fan_out per group = 25
    assert dw.weight.std().item() == pytest.approx(math.sqrt(2.0 / 25), rel=0.05)
    bound = 1 / math.sqrt(1000)
    assert model.classifier.weight.abs().max().item() <= bound and model.classifier.weight.abs().max() > 0.9 * bound
    assert model.classifier.bias.abs().sum() == 0
    assert all((m.weight == 1).all() and (m.bias == 0).all() for m in model.modules()
               if isinstance(m, torch.nn.BatchNorm2d))


def test_drop_rates_grow_linearly_and_can_be_set():
    model = EfficientNet.from_name('efficientnet_b0', drop_connect_rate=0.2)
    blocks = model.blocks()
    assert len(blocks) == 16
    expected = [0.2 * i / 16 if b.has_residual else 0.0 for i, b in enumerate(blocks)]
    assert model.drop_rates() == pytest.approx(expected)
    keys = list(model.state_dict())
    model.set_drop_rates([0.1] * 16)
    assert model.drop_rates() == pytest.approx([0.1 if b.has_residual else 0.0 for b in blocks])
    assert list(model.state_dict()) == keys
    assert block_drop_rates(4, 0.2) == pytest.approx([0.0, 0.05, 0.1, 0.15])
    with pytest.raises(ValueError, match='drop_rate'):
        blocks[1].drop_rate = 1.0


def test_drop_rates_set_from_one_number_as_the_constructor_does():
    model = EfficientNet.from_name('efficientnet_b0', drop_connect_rate=0.0)
    model.set_drop_rates(0.3)
    assert model.drop_rates() == EfficientNet.from_name('efficientnet_b0', drop_connect_rate=0.3).drop_rates()
    assert max(model.drop_rates()) == pytest.approx(0.3 * 14 / 16)  # the last block has no residual
    with pytest.raises(TypeError, match=r'a number .* or a list of 16 rates, one per block; got str'):
        model.set_drop_rates('0.3')


def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    model = EfficientNet.from_name('efficientnet_b0', num_classes=10)
    model.train()
    model(torch.randn(4, 3, 32, 32))  # move BN running stats away from their init
    path = tmp_path / 'model.pt'
    torch.save(model.state_dict(), path)
    restored = EfficientNet.from_name('efficientnet_b0', num_classes=10)
    restored.load_state_dict(torch.load(path, weights_only=True))
    model.eval(), restored.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), restored(x))
    assert not any('drop_rate' in key for key in model.state_dict())


def test_mbconv_without_residual_ignores_rate():
    block = MBConv(16, 24, 3, 2, 6, 0.25, torch.nn.BatchNorm2d, torch.nn.SiLU, drop_rate=0.5)
    assert block.drop_rate == 0.0 and not block.has_residual


@pytest.mark.parametrize('convert,name', [('script', 'efficientnet_b0'), ('trace', 'efficientnet_b0'),
                                          ('export', 'efficientnet_b0'), ('script', 'efficientnet_v2_s'),
                                          ('export', 'efficientnet_v2_s')])
def test_model_converts_for_deployment_with_equal_outputs(convert, name):
    torch.manual_seed(0)
    model = EfficientNet.from_name(name, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    converted = {'script': lambda: torch.jit.script(model),
                 'trace': lambda: torch.jit.trace(model, x),
                 'export': lambda: torch.export.export(model, (x,)).module()}[convert]()
    assert torch.equal(converted(x), model(x))


def test_scripted_model_drops_samples_as_the_eager_one():
    model = EfficientNet.from_name('efficientnet_b0', num_classes=10, drop_connect_rate=0.2).train()
    model.set_drop_rates([0.5] * len(model.blocks()))
    scripted = torch.jit.script(model)
    x = torch.randn(8, 3, 32, 32)
    torch.manual_seed(1)
    eager_out = model(x)
    torch.manual_seed(1)
    scripted_out = scripted(x)
    torch.manual_seed(2)
    other_draw = model(x)
    assert torch.allclose(scripted_out, eager_out, atol=1e-6)
    assert not torch.allclose(other_draw, eager_out, atol=1e-3)  # the draws matter, so equality is not vacuous
