"""SampleStochasticDepth and LabelSmoothing: rates, warm-up, resumable checkpoints, fused loss parity."""

import logging

import pytest
import torch
import torchvision
from composer.algorithms import LabelSmoothing as ComposerLabelSmoothing
from composer.algorithms import StochasticDepth
from composer.core import Callback, Event
from composer.loggers import InMemoryLogger
from composer.models import ComposerClassifier

from composer_efficientnet import EfficientNet, composer_efficientnet, registry
from composer_efficientnet.algorithms import (LabelSmoothing, SampleStochasticDepth, apply_label_smoothing,
                                              apply_sample_stochastic_depth)
from composer_efficientnet.layers import MBConv
from tests.conftest import digits_trainer, seeded_model, tiny_trainer, weights_of


def residual_rates(model):
    return [b.drop_rate for b in model.modules() if isinstance(b, MBConv) and b.has_residual]


@pytest.mark.parametrize('distribution', ['linear', 'uniform'])
def test_functional_sets_rates_without_surgery(distribution):
    model = EfficientNet.from_name('efficientnet_b0', drop_connect_rate=0.0)
    keys = list(model.state_dict())
    modules_before = [type(m) for m in model.modules()]
    assert apply_sample_stochastic_depth(model, 0.4, distribution) == 16
    expected = [0.4 * i / 16 if distribution == 'linear' else 0.4 for i, b in enumerate(model.blocks())]
    assert model.drop_rates() == pytest.approx([r if b.has_residual else 0 for r, b in zip(expected, model.blocks())])
    assert list(model.state_dict()) == keys and [type(m) for m in model.modules()] == modules_before


def test_torchvision_efficientnet_rates():
    model = torchvision.models.efficientnet_b0(stochastic_depth_prob=0.0)
    assert apply_sample_stochastic_depth(model, 0.3, 'linear') == 16
    layers = [m for m in model.modules() if isinstance(m, torchvision.ops.StochasticDepth)]
    assert [layer.p for layer in layers] == pytest.approx([0.3 * i / 16 for i in range(16)])
    assert {layer.mode for layer in layers} == {'row'}


def test_bad_parameters():
    with pytest.raises(ValueError, match='drop_rate'):
        SampleStochasticDepth(drop_rate=1.5)
    with pytest.raises(ValueError, match="drop_distribution must be one of linear, uniform"):
        SampleStochasticDepth(drop_distribution='cubic')
    with pytest.raises(ValueError, match="drop_warmup must be a Composer time"):
        SampleStochasticDepth(drop_warmup='soon')


def test_warns_once_on_unsupported_model(caplog):
    model = ComposerClassifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)),
                               num_classes=10)
    with caplog.at_level(logging.WARNING):
        trainer = digits_trainer([SampleStochasticDepth()], model=model, max_duration='2ba')
        trainer.fit()
    assert caplog.text.count('found no EfficientNet blocks') == 1


def test_warmup_ramps_and_logs_rate():
    logger = InMemoryLogger()
    algorithm = SampleStochasticDepth(drop_rate=0.2, drop_warmup='4ba')
    trainer = digits_trainer([algorithm], max_duration='6ba', loggers=[logger])
    trainer.fit()
    logged = [value for _, value in logger.data['stochastic_depth/drop_rate']]
    assert logged == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.2])
    assert max(residual_rates(trainer.state.model)) == pytest.approx(0.2 * 14 / 16)  # block 15 has no residual


@pytest.mark.parametrize('warmup, max_duration', [('2ep', '3ep'), ('0.5dur', '4ep')])
def test_warmup_in_epochs_ramps_every_batch(warmup, max_duration):
    """Four batches an epoch: a warm-up of two epochs ramps as one of eight batches does."""
    logger = InMemoryLogger()
    tiny_trainer(max_duration, algorithms=[SampleStochasticDepth(drop_rate=0.2, drop_warmup=warmup)],
                 loggers=[logger], train_subset_num_batches=4).fit()
    logged = [value for _, value in logger.data['stochastic_depth/drop_rate']]
    assert logged[:10] == pytest.approx([0.2 * min(1, batch / 8) for batch in range(10)])


def test_zero_rate_is_bitwise_no_algorithm():
    plain = digits_trainer(model=seeded_model(drop_connect_rate=0.0))
    plain.fit()
    with_algorithm = digits_trainer([SampleStochasticDepth(drop_rate=0.0)])  # model built with rate 0.2
    with_algorithm.fit()
    a, b = weights_of(plain), weights_of(with_algorithm)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_resumes_and_loads_without_algorithm(tmp_path):
    algorithms = lambda: [SampleStochasticDepth(0.2), LabelSmoothing(0.1)]
    full = digits_trainer(algorithms(), max_duration='6ba')
    full.fit()
    first = digits_trainer(algorithms(), max_duration='6ba', save_folder=str(tmp_path), save_interval='3ba')
    first.fit(duration='3ba')
    checkpoint = tmp_path / 'ep0-ba3-rank0.pt'
    assert checkpoint.exists()
    resumed = digits_trainer(algorithms(), max_duration='6ba', load_path=str(checkpoint))
    resumed.fit()
    assert int(resumed.state.timestamp.batch) == 6
    a, b = weights_of(full), weights_of(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    bare = composer_efficientnet('efficientnet_b0', num_classes=10, drop_connect_rate=0.0)
    bare.load_state_dict(torch.load(checkpoint, weights_only=False)['state']['model'])


def test_composer_stochastic_depth_targets_our_blocks():
    algorithm = StochasticDepth(target_layer_name='EfficientNetMBConv', stochastic_method='sample', drop_rate=0.2)
    trainer = digits_trainer([algorithm], max_duration='2ba', model=seeded_model(drop_connect_rate=0.0))
    trainer.fit()
    blocks = [m for m in trainer.state.model.modules() if isinstance(m, MBConv)]
    assert [b.drop_rate for b in blocks] == pytest.approx(
        [0.2 * (i + 1) / 16 if b.has_residual else 0.0 for i, b in enumerate(blocks)])


def test_fused_label_smoothing_matches_composer():
    torch.manual_seed(0)
    model = composer_efficientnet('efficientnet_b0', num_classes=10)
    logits = torch.randn(32, 10, requires_grad=True)
    targets = torch.randint(10, (32,))
    assert apply_label_smoothing(model, 0.1)
    ours = model.loss(logits, (None, targets))
    grad_ours, = torch.autograd.grad(ours, logits)
    from composer.algorithms.label_smoothing import smooth_labels
    from composer.loss import soft_cross_entropy
    theirs = soft_cross_entropy(logits, smooth_labels(logits, targets, 0.1))
    grad_theirs, = torch.autograd.grad(theirs, logits)
    assert abs(ours.item() - theirs.item()) <= 1e-6 * abs(theirs.item())
    assert torch.allclose(grad_ours, grad_theirs, rtol=1e-5, atol=1e-8)


def test_label_smoothing_training_equals_composer():
    runs = []
    for algorithm in (LabelSmoothing(0.1), ComposerLabelSmoothing(0.1)):
        logger = InMemoryLogger()
        trainer = digits_trainer([algorithm], max_duration='1ba', loggers=[logger])
        trainer.fit()
        runs.append(([float(v) for _, v in logger.data['loss/train/total']], weights_of(trainer)))
    (ours_loss, ours), (theirs_loss, theirs) = runs
    assert ours_loss == pytest.approx(theirs_loss, rel=1e-5)
    # one step: later steps of a randomly initialized net amplify the two kernels' float rounding chaotically
    for key, value in ours.items():
        difference = (value.float() - theirs[key].float()).norm()
        assert difference <= 1e-4 * max(value.float().norm(), 1.0), key


def test_fused_label_smoothing_adds_no_loss_events_and_leaves_the_model_as_it_was():
    algorithm = LabelSmoothing(0.1)
    seen = []
    watch = Callback()
    watch.batch_end = lambda state, logger: seen.append(state.model.label_smoothing)
    trainer = digits_trainer([algorithm], max_duration='1ba', callbacks=[watch])
    trainer.fit()
    assert seen == [0.1] and trainer.state.model.label_smoothing == 0.0  # smoothing in fit only, as Composer's
    assert not algorithm.match(Event.BEFORE_LOSS, trainer.state)
    trainer.fit(duration='1ba')
    assert seen == [0.1, 0.1] and trainer.state.model.label_smoothing == 0.0


def test_label_smoothing_checks_its_argument_when_built():
    for bad in (-0.1, 1.2, 'x', True):
        with pytest.raises(ValueError, match=r'smoothing must be a number in \[0, 1\]'):
            LabelSmoothing(smoothing=bad)
    assert repr(LabelSmoothing(0.2)) == 'LabelSmoothing(smoothing=0.2)'


def test_label_smoothing_on_other_models_is_composers():
    model = ComposerClassifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)),
                               num_classes=10)
    algorithm = LabelSmoothing(0.1)
    trainer = digits_trainer([algorithm], model=model, max_duration='1ba')
    seen = []
    original_loss = model.loss
    model.loss = lambda outputs, batch: seen.append(batch[1].clone()) or original_loss(outputs, batch)
    trainer.fit()
    assert seen[0].shape == (16, 10)  # dense, smoothed targets, as Composer's algorithm builds
    assert torch.allclose(seen[0].sum(1), torch.ones(16)) and seen[0].min() == pytest.approx(0.01)


def test_registered_by_name():
    assert registry.algorithms.get('sample_stochastic_depth') is SampleStochasticDepth
    assert registry.algorithms.get('label_smoothing') is LabelSmoothing
