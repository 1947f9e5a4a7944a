"""Sample-wise drop path: exact rate (4-sigma bound) in float32 and bf16, survivor scaling, eval identity."""

import math

import pytest
import torch

from composer_efficientnet.layers import MBConv, drop_path

NUM_SAMPLES = 40_000


def four_sigma(rate: float, n: int) -> float:
    return 4 * math.sqrt(rate * (1 - rate) / n)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('rate', [0.01, 0.2, 0.5])
def test_dropped_fraction_and_survivor_scale(dtype, rate):
    torch.manual_seed(0)
    x = torch.ones(NUM_SAMPLES, 2, dtype=dtype)
    y = drop_path(x, rate, training=True)
    assert y.dtype == dtype
    dropped = (y[:, 0] == 0)
    assert abs(dropped.float().mean().item() - rate) < four_sigma(rate, NUM_SAMPLES)
    survivors = y[~dropped]
    expected = torch.tensor(1 / (1 - rate), dtype=dtype)
    assert torch.equal(survivors, expected.expand_as(survivors))
    assert torch.equal(y[:, 0], y[:, 1])  # whole samples are dropped, not elements


def test_expectation_is_preserved():
    torch.manual_seed(1)
    rate = 0.3
    x = torch.rand(NUM_SAMPLES, 3) + 1  # values in [1, 2): mean 1.5, second moment 7/3
    ratio = drop_path(x, rate, training=True).sum(0) / x.sum(0)
    # std of the ratio is sqrt(rate / (1 - rate) * E[x^2] / (N * E[x]^2)); allow 4 of them
    bound = 4 * math.sqrt(rate / (1 - rate) * (7 / 3) / (NUM_SAMPLES * 1.5**2))
    assert torch.allclose(ratio, torch.ones(3), atol=bound)


def test_eval_and_zero_rate_are_identity():
    x = torch.randn(8, 4)
    assert drop_path(x, 0.5, training=False) is x
    assert drop_path(x, 0.0, training=True) is x


def test_rate_one_zeroes_and_rates_outside_zero_one_are_refused():
    x = torch.randn(8, 4, requires_grad=True)
    y = drop_path(x, 1.0, training=True)
    assert torch.equal(y, torch.zeros(8, 4))  # as torchvision's stochastic_depth and timm's drop_path, not NaN
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros(8, 4))
    for bad in (1.5, -0.5):
        with pytest.raises(ValueError, match=r'drop_rate must be in \[0, 1\]'):
            drop_path(x, bad, training=True)


def test_tensor_rate():
    torch.manual_seed(0)
    y = drop_path(torch.ones(NUM_SAMPLES, 1), torch.tensor(0.25), training=True)
    assert abs((y == 0).float().mean().item() - 0.25) < four_sigma(0.25, NUM_SAMPLES)


@pytest.mark.parametrize('autocast', [False, True])
def test_block_drops_samples_at_its_rate(autocast):
    torch.manual_seed(0)
    rate, batch = 0.3, 4096
    block = MBConv(8, 8, 3, 1, 2, 0.25, torch.nn.BatchNorm2d, torch.nn.SiLU, drop_rate=rate).train()
    x = torch.randn(batch, 8, 4, 4)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        block.drop_rate = 0.0
        branch = block(x) - x
        block.drop_rate = rate
        out = block(x)
    delta = out - x
    dropped = delta.flatten(1).abs().amax(1) == 0
    assert abs(dropped.float().mean().item() - rate) < four_sigma(rate, batch)
    tolerance = 5e-2 if autocast else 1e-5
    assert torch.allclose(delta[~dropped].float(), branch[~dropped].float() / (1 - rate), atol=tolerance,
                          rtol=tolerance)


def test_block_eval_is_deterministic():
    block = MBConv(8, 8, 3, 1, 2, 0.25, torch.nn.BatchNorm2d, torch.nn.SiLU, drop_rate=0.5).eval()
    x = torch.randn(16, 8, 4, 4)
    assert torch.equal(block(x), block(x))
