"""EfficientNet B0-B7 and EfficientNetV2 S/M/L/XL for MosaicML Composer: models, algorithms, data and YAML
recipes."""

import importlib
from typing import TYPE_CHECKING, Any, List

__version__ = '0.1.0'

#: The package's names and the submodule of each, imported at first use (PEP 562): importing the package, as the
#: command line does, imports neither torch nor Composer.
_LAZY = {'EfficientNet': 'efficientnet', 'EfficientNetClassifier': 'composer_model',
         'composer_efficientnet': 'composer_model', 'composer_efficientnetb0': 'composer_model',
         'SyncFreeTrainer': 'trainer', 'WeightsError': 'weights'}

__all__ = ['EfficientNet', 'EfficientNetClassifier', 'SyncFreeTrainer', 'composer_efficientnet',
           'composer_efficientnetb0', 'WeightsError', '__version__']


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    # As the model is: lets Composer's StochasticDepth target our blocks (see composer_efficientnet.algorithms)
    importlib.import_module(f'{__name__}.algorithms')
    value = getattr(importlib.import_module(f'{__name__}.{_LAZY[name]}'), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from composer_efficientnet.composer_model import (EfficientNetClassifier, composer_efficientnet,
                                                      composer_efficientnetb0)
    from composer_efficientnet.efficientnet import EfficientNet
    from composer_efficientnet.trainer import SyncFreeTrainer
    from composer_efficientnet.weights import WeightsError
