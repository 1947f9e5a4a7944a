"""Feature maps (features_only): timm parity, pretrained loading, stochastic depth, a torchvision detector."""

import logging

import pytest
import timm
import torch
import torchvision

from composer_efficientnet import EfficientNet, composer_efficientnet
from composer_efficientnet.algorithms.sample_stochastic_depth import apply_sample_stochastic_depth
from composer_efficientnet.backbones import EfficientNetFeatures
from composer_efficientnet.weights import to_native


def _randomize_batchnorm(model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


@pytest.mark.parametrize('ours, theirs, out_indices', [('efficientnet_b0', 'efficientnet_b0', (0, 1, 2, 3, 4)),
                                                      ('efficientnet_v2_s', 'efficientnetv2_s', (1, 3, 4))])
def test_maps_equal_timm_features_only(ours, theirs, out_indices):
    torch.manual_seed(0)
    reference = timm.create_model(theirs, features_only=True, out_indices=out_indices).eval()
    _randomize_batchnorm(reference)
    model = EfficientNet.from_name(ours, features_only=True, out_indices=out_indices, bn_eps=1e-5).eval()
    model.load_state_dict(to_native(reference.state_dict()))
    assert model.feature_info.channels() == reference.feature_info.channels()
    assert model.feature_info.reduction() == reference.feature_info.reduction()
    images = torch.randn(2, 3, 70, 90)  # neither side a multiple of 32
    with torch.no_grad():
        maps, expected = model(images), reference(images)
    assert [m.shape for m in maps] == [e.shape for e in expected]
    for got, want in zip(maps, expected):
        assert ((got - want).norm() / want.norm()).item() < 1e-5


def test_every_member_has_five_levels_at_strides_2_to_32():
    for name in ('efficientnet_b3', 'efficientnet_v2_m'):
        with torch.device('meta'):
            model = EfficientNet.from_name(name, features_only=True)
        assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
        assert not hasattr(model, 'head') and not hasattr(model, 'classifier')
        maps = model(torch.empty(1, 3, 64, 64, device='meta'))
        assert [m.shape[1] for m in maps] == model.feature_info.channels()
        assert [m.shape[-1] for m in maps] == [32, 16, 8, 4, 2]


def test_pretrained_full_model_loads_without_head_said_once(caplog):
    torchvision_model = torchvision.models.efficientnet_v2_s().eval()
    _randomize_batchnorm(torchvision_model)
    with caplog.at_level(logging.WARNING, logger='composer_efficientnet'):
        features = composer_efficientnet('efficientnet_v2_s', pretrained=torchvision_model.state_dict(),
                                         features_only=True, out_indices=(4,)).eval()
    assert isinstance(features, EfficientNetFeatures)
    assert [r.getMessage() for r in caplog.records if 'head' in r.getMessage()] == [
        'The feature-map model has no classifier or head: those pretrained weights are not loaded.']
    assert {m.eps for m in features.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}  # torchvision's
    images = torch.randn(1, 3, 40, 40)
    with torch.no_grad():  # torchvision's features[:-1] is the stem and stages, without the head
        expected = torchvision_model.features[:-1](images)
        assert torch.allclose(features(images)[0], expected, rtol=1e-4, atol=1e-5)


def test_out_indices_must_be_increasing_levels():
    with pytest.raises(ValueError, match=r'out_indices must be increasing feature levels out of 0, 1, 2, 3, 4'):
        EfficientNet.from_name('efficientnet_b0', features_only=True, out_indices=(5,))
    with pytest.raises(ValueError, match='out_indices'):
        EfficientNet.from_name('efficientnet_b0', features_only=True, out_indices=(3, 1))


def test_stochastic_depth_and_its_sampling_drive_the_features_model():
    model = EfficientNet.from_name('efficientnet_b0', features_only=True, drop_connect_rate=0.5)
    full = EfficientNet.from_name('efficientnet_b0', drop_connect_rate=0.5)
    assert model.drop_rates() == full.drop_rates() and max(model.drop_rates()) == pytest.approx(0.5 * 14 / 16)
    assert apply_sample_stochastic_depth(model, drop_rate=0.3) == apply_sample_stochastic_depth(full, 0.3) == 16
    assert model.drop_rates() == full.drop_rates() and max(model.drop_rates()) == pytest.approx(0.3 * 14 / 16)
    images = torch.randn(4, 3, 32, 32)
    model.train()
    first, second = model(images)[-1], model(images)[-1]
    assert not torch.equal(first, second)  # samples are dropped at random in training
    model.eval()
    assert torch.equal(model(images)[-1], model(images)[-1])


def test_readme_detection_example_trains_two_steps():
    # The README's example, as it is there: Faster R-CNN on B0's feature maps and a feature pyramid.
    from torchvision.models.detection import FasterRCNN

    from composer_efficientnet import EfficientNet
    from composer_efficientnet.backbones import FPNBackbone

    torch.manual_seed(0)
    body = EfficientNet.from_name('efficientnet_b0', features_only=True, out_indices=(1, 2, 3, 4))
    detector = FasterRCNN(FPNBackbone(body, out_channels=64), num_classes=3, min_size=64, max_size=64)
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [{'boxes': torch.tensor([[8.0, 8.0, 40.0, 40.0]]), 'labels': torch.tensor([1])},
               {'boxes': torch.tensor([[16.0, 20.0, 60.0, 50.0]]), 'labels': torch.tensor([2])}]
    optimizer = torch.optim.SGD(detector.parameters(), lr=0.01, momentum=0.9)
    detector.train()
    for step in range(2):
        losses = detector(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f'step {step}: loss {loss.item():.3f}')
    # what the example shows, checked
    assert set(losses) == {'loss_classifier', 'loss_box_reg', 'loss_objectness', 'loss_rpn_box_reg'}
    assert torch.isfinite(loss)
    pyramid = FPNBackbone(body, out_channels=64)(torch.zeros(1, 3, 64, 64))
    assert list(pyramid) == ['0', '1', '2', '3', 'pool']
    assert [m.shape[-1] for m in pyramid.values()] == [16, 8, 4, 2, 1]
    assert body.stem.conv.weight.grad is not None  # the backbone trains with the detector


def test_memory_efficient_features_equal_the_default_ones_and_their_gradients():
    lean = EfficientNet.from_name('efficientnet_b0', features_only=True, out_indices=(3, 4), memory_efficient=True,
                                  drop_connect_rate=0.0)
    default = EfficientNet.from_name('efficientnet_b0', features_only=True, out_indices=(3, 4), drop_connect_rate=0.0)
    default.load_state_dict(lean.state_dict())
    images = torch.randn(2, 3, 32, 32)
    for model in (lean, default):
        sum(level.square().sum() for level in model(images)).backward()
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(lean(images), default(images)))
    assert torch.allclose(lean.stem.conv.weight.grad, default.stem.conv.weight.grad, rtol=1e-4, atol=1e-6)
