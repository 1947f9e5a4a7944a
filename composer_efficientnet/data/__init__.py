"""Data for EfficientNet training, each source a builder returning a Composer ``DataSpec``.

Builders take their own parameters from the recipe plus keyword-only context from the recipe runner:
``batch_size`` (per process), ``seed``, ``dataloader_kwargs`` (the recipe's ``dataloader`` section) and
``model_resolution`` (the model member's native resolution); each accepts only the context it needs.
"""

from composer_efficientnet.data.digits import build_digits_dataspec
from composer_efficientnet.data.transforms import NormalizeOnDevice

__all__ = ['BUILDERS', 'build_digits_dataspec', 'NormalizeOnDevice']

#: Registered by name in :data:`composer_efficientnet.registry.datasets`.
BUILDERS = {
    'digits': build_digits_dataspec,
}
