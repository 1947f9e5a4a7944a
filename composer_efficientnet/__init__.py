"""EfficientNet B0-B7 and EfficientNetV2 S/M/L/XL for MosaicML Composer: models, algorithms, data and YAML
recipes."""

from composer_efficientnet.composer_model import EfficientNetClassifier, composer_efficientnet, composer_efficientnetb0
from composer_efficientnet.efficientnet import EfficientNet
from composer_efficientnet import algorithms  # noqa: F401  (lets Composer's StochasticDepth target our blocks)
from composer_efficientnet.trainer import SyncFreeTrainer
from composer_efficientnet.weights import WeightsError

__version__ = '0.1.0'

__all__ = ['EfficientNet', 'EfficientNetClassifier', 'SyncFreeTrainer', 'composer_efficientnet', 'composer_efficientnetb0',
           'WeightsError', '__version__']
