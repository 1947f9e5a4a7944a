"""Composer algorithms for EfficientNet training, each with its functional form.

Importing this package also lets Composer's own ``StochasticDepth`` target our blocks as
``target_layer_name='EfficientNetMBConv'``, ``'EfficientNetFusedMBConv'`` or ``'EfficientNetBlock'`` (both
kinds, in depth order: EfficientNetV2's choice), sample method.
"""

from composer_efficientnet.algorithms.label_smoothing import LabelSmoothing, apply_label_smoothing
from composer_efficientnet.algorithms.progressive_learning import (ProgressiveLearning, apply_progressive_learning,
                                                                   progressive_stages)
from composer_efficientnet.algorithms.sample_stochastic_depth import (SampleStochasticDepth,
                                                                      apply_sample_stochastic_depth,
                                                                      block_drop_rates)

__all__ = ['SampleStochasticDepth', 'apply_sample_stochastic_depth', 'block_drop_rates', 'LabelSmoothing',
           'apply_label_smoothing', 'ProgressiveLearning', 'apply_progressive_learning', 'progressive_stages']
