"""Sample-wise stochastic depth as a Composer algorithm that sets rates and never rewrites modules."""

from __future__ import annotations

import logging
from typing import List, Optional, Union

import torch
import torchvision
from composer.algorithms.stochastic_depth import stochastic_depth as composer_stochastic_depth
from composer.core import Algorithm, Event, State, Time, TimeUnit
from composer.loggers import Logger

from composer_efficientnet.efficientnet import DROP_DISTRIBUTIONS, block_drop_rates
from composer_efficientnet.layers import FusedMBConv, MBConv, ResidualBlock

#: Composer 0.32.1's private names this module relies on (tests/test_composer_private_api.py checks each): the table
#: of block kinds Composer's ``StochasticDepth`` targets, which gets our blocks at import (``'mapping'``: a dict).
COMPOSER_PRIVATE_API = (
    ('composer.algorithms.stochastic_depth.stochastic_depth', '_STOCHASTIC_LAYER_MAPPING', 'mapping'),
)

__all__ = ['SampleStochasticDepth', 'apply_sample_stochastic_depth', 'block_drop_rates', 'DROP_DISTRIBUTIONS']

log = logging.getLogger(__name__)

def _stochastic_blocks(model: torch.nn.Module) -> List[torch.nn.Module]:
    """Our (Fused-)MBConv blocks, or the StochasticDepth layers of torchvision's EfficientNet blocks, in depth
    order."""
    ours = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    if ours:
        return ours
    theirs = (torchvision.models.efficientnet.MBConv, torchvision.models.efficientnet.FusedMBConv)
    return [m.stochastic_depth for m in model.modules() if isinstance(m, theirs)]


def apply_sample_stochastic_depth(model: torch.nn.Module, drop_rate: float = 0.2,
                                  drop_distribution: str = 'linear') -> int:
    """Set the sample-wise stochastic depth rate of every EfficientNet block of ``model``; returns their number.

    Works on this package's models (no surgery: the state dict is unchanged) and on
    ``torchvision.models.EfficientNet`` (its ``StochasticDepth`` layers, switched to mode ``'row'``).

    Example:
        >>> from composer_efficientnet import EfficientNet
        >>> from composer_efficientnet.algorithms import apply_sample_stochastic_depth
        >>> model = EfficientNet.from_name('efficientnet_b0')
        >>> apply_sample_stochastic_depth(model, drop_rate=0.1, drop_distribution='uniform')
        16
    """
    blocks = _stochastic_blocks(model)
    for block, rate in zip(blocks, block_drop_rates(len(blocks), drop_rate, drop_distribution)):
        if isinstance(block, ResidualBlock):
            block.drop_rate = rate
        else:
            block.p, block.mode = rate, 'row'
    return len(blocks)


class SampleStochasticDepth(Algorithm):
    """Sample-wise stochastic depth (drop connect) for EfficientNets, with an optional linear warm-up.

    Each residual block drops whole samples of its branch with its rate and scales survivors by
    ``1 / (1 - rate)``. Unlike Composer's ``StochasticDepth`` this only sets rates, so checkpoints keep
    their keys, resume, and load into a model built without the algorithm. The current base rate is
    logged as ``stochastic_depth/drop_rate``.

    Args:
        drop_rate: base rate in [0, 1); block ``i`` of ``n`` gets ``drop_rate * i / n`` (``'linear'``) or
            ``drop_rate`` (``'uniform'``).
        drop_distribution: ``'linear'`` or ``'uniform'``.
        drop_warmup: time (``'5ep'``, ``'0.1dur'``, a :class:`~composer.core.Time`, or a fraction of the run)
            over which the rate ramps linearly from 0.

    Example:
        >>> from composer_efficientnet.algorithms import SampleStochasticDepth
        >>> algorithm = SampleStochasticDepth(drop_rate=0.2, drop_distribution='linear', drop_warmup='0.1dur')
    """

    def __init__(self, drop_rate: float = 0.2, drop_distribution: str = 'linear',
                 drop_warmup: Union[str, Time, float] = '0dur') -> None:
        block_drop_rates(0, drop_rate, drop_distribution)  # validates
        self.drop_rate = drop_rate
        self.drop_distribution = drop_distribution
        self.drop_warmup = _as_time(drop_warmup)
        self._current_rate: Optional[float] = None

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(drop_rate={self.drop_rate}, drop_distribution={self.drop_distribution!r}, '
                f"drop_warmup='{self.drop_warmup}')")

    def match(self, event: Event, state: State) -> bool:
        return event == Event.INIT or (event == Event.BATCH_START and self._current_rate is not None)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.INIT:
            self._current_rate = None
            if not _stochastic_blocks(state.model):
                log.warning('SampleStochasticDepth found no EfficientNet blocks in %s; it does nothing.',
                            type(state.model).__name__)
                return
        rate = self.drop_rate * self._warmup_fraction(state)
        if rate != self._current_rate:
            apply_sample_stochastic_depth(state.model, rate, self.drop_distribution)
            self._current_rate = rate
        if event == Event.BATCH_START:
            logger.log_metrics({'stochastic_depth/drop_rate': rate})

    def _warmup_fraction(self, state: State) -> float:
        if self.drop_warmup.value == 0 or state.max_duration is None:
            return 1.0
        if self.drop_warmup.unit == TimeUnit.DURATION:
            max_duration = state.max_duration
            elapsed = _elapsed(state, max_duration.unit) / max_duration.value
        else:
            elapsed = _elapsed(state, self.drop_warmup.unit)
        return min(1.0, elapsed / self.drop_warmup.value)


def _elapsed(state: State, unit: TimeUnit) -> float:
    """Time trained, in ``unit``; in epochs the current epoch's batches count as a fraction, so a warm-up in
    epochs ramps every batch rather than once an epoch."""
    elapsed = float(state.timestamp.get(unit).value)
    if unit == TimeUnit.EPOCH and state.dataloader_len:
        elapsed += int(state.timestamp.batch_in_epoch) / int(state.dataloader_len)
    return elapsed


#: Units a training run advances on image batches; a warm-up in tokens, seconds or iterations would never end.
_WARMUP_UNITS = (TimeUnit.EPOCH, TimeUnit.BATCH, TimeUnit.SAMPLE, TimeUnit.DURATION)


def _as_time(value: Union[str, Time, float, int]) -> Time:
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            time = Time(float(value), TimeUnit.DURATION)
        else:
            time = value if isinstance(value, Time) else Time.from_timestring(value)
    except (ValueError, TypeError):
        time = None
    if time is None or time.unit not in _WARMUP_UNITS or time.value < 0 or (
            time.unit == TimeUnit.DURATION and time.value > 1):
        raise ValueError(f"drop_warmup must be a Composer time in ep, ba or sp, such as '5ep' or '1000ba', or a "
                         f"fraction of the run in [0, 1] ('0.1dur' or 0.1); got {value!r}.")
    return time


def _make_mbconv_stochastic(module: ResidualBlock, module_index: int, module_count: int, drop_rate: float,
                            drop_distribution: str, stochastic_method: str) -> ResidualBlock:
    """Composer ``StochasticDepth`` policy for our blocks: set the rate Composer computes, keep the module."""
    if stochastic_method != 'sample':
        raise ValueError(f"target_layer_name {', '.join(STOCHASTIC_DEPTH_TARGETS)}: our blocks support "
                         f"stochastic_method='sample' only, got {stochastic_method!r}.")
    module.drop_rate = drop_rate * (module_index + 1) / module_count if drop_distribution == 'linear' else drop_rate
    return module


#: Composer ``StochasticDepth`` targets: each block kind, or every block of a model in depth order (V2's).
STOCHASTIC_DEPTH_TARGETS = {'EfficientNetMBConv': MBConv, 'EfficientNetFusedMBConv': FusedMBConv,
                            'EfficientNetBlock': ResidualBlock}
for _name, _block in STOCHASTIC_DEPTH_TARGETS.items():
    composer_stochastic_depth._STOCHASTIC_LAYER_MAPPING[_name] = (_block, _make_mbconv_stochastic)
