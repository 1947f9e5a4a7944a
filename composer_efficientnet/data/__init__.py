"""Data for EfficientNet training, each source a builder returning a Composer ``DataSpec``.

Builders take their own parameters from the recipe plus keyword-only context from the recipe runner:
``batch_size`` (per process), ``seed``, ``dataloader_kwargs`` (the recipe's ``dataloader`` section) and
``model_resolution`` (the model member's native resolution); each accepts only the context it needs.
Workers return uint8 images; the DataSpec normalizes them on the device (:class:`loading.DeviceDataSpec`).

``streaming_imagenet`` needs the optional ``mosaicml-streaming`` package only when it is used.
"""

from composer_efficientnet.data.bad_samples import BadSampleReport, BadSampleTracker
from composer_efficientnet.data.convert import convert_imagefolder_to_mds
from composer_efficientnet.data.digits import build_digits_dataspec
from composer_efficientnet.data.errors import (DATA_ERRORS, BrokenDatasetError, CorruptImageError,
                                               DatasetLayoutError, OptionalDependencyError, SplitNotFoundError)
from composer_efficientnet.data.imagefolder import ImageFolderDataset, build_imagenet_dataspec
from composer_efficientnet.data.streaming import build_streaming_imagenet_dataspec
from composer_efficientnet.data.synthetic import build_synthetic_dataspec
from composer_efficientnet.data.transforms import NormalizeOnDevice

__all__ = ['BUILDERS', 'DATA_ERRORS', 'BadSampleReport', 'BadSampleTracker', 'BrokenDatasetError',
           'CorruptImageError', 'DatasetLayoutError', 'ImageFolderDataset', 'NormalizeOnDevice',
           'OptionalDependencyError', 'SplitNotFoundError',
           'build_digits_dataspec', 'build_imagenet_dataspec', 'build_streaming_imagenet_dataspec',
           'build_synthetic_dataspec', 'convert_imagefolder_to_mds']

#: Registered by name in :data:`composer_efficientnet.registry.datasets`.
BUILDERS = {
    'digits': build_digits_dataspec,
    'imagenet': build_imagenet_dataspec,
    'streaming_imagenet': build_streaming_imagenet_dataspec,
    'synthetic': build_synthetic_dataspec,
}
