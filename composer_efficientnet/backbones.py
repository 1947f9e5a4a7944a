"""EfficientNet feature maps for detection and segmentation: a torchvision detection backbone (the maps of an
:class:`EfficientNetFeatures` through torchvision's ``FeaturePyramidNetwork``, as its ``BackboneWithFPN`` gives
them).

The feature-map network itself (any member's stem and stages without its head, returning the maps at chosen
strides as timm's ``features_only`` models do) is built beside the classifier by the one EfficientNet builder, in
:mod:`composer_efficientnet.efficientnet`; it is importable from here too. This module builds on that one, never
the other way round.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from composer_efficientnet.efficientnet import LEVELS, EfficientNetFeatures, FeatureInfo

__all__ = ['EfficientNetFeatures', 'FeatureInfo', 'FPNBackbone', 'LEVELS']


class FPNBackbone(nn.Module):
    """A torchvision detection backbone: :class:`EfficientNetFeatures` through torchvision's
    ``FeaturePyramidNetwork`` (with its ``LastLevelMaxPool``), giving what ``torchvision.models.detection``
    models expect of a backbone: ``out_channels`` and an ordered mapping ``'0', '1', ..., 'pool'`` of maps,
    as torchvision's ``BackboneWithFPN`` does.

    Args:
        body: the feature maps (four levels, as ``out_indices=(1, 2, 3, 4)``, match the default anchor
            sizes and RoI pooling of torchvision's ``FasterRCNN``).
        out_channels: channels of every pyramid level.

    Example:
        >>> from torchvision.models.detection import FasterRCNN
        >>> from composer_efficientnet import EfficientNet
        >>> from composer_efficientnet.backbones import FPNBackbone
        >>> body = EfficientNet.from_name('efficientnet_b0', features_only=True, out_indices=(1, 2, 3, 4))
        >>> detector = FasterRCNN(FPNBackbone(body), num_classes=3, min_size=64, max_size=64)
    """

    def __init__(self, body: EfficientNetFeatures, out_channels: int = 256) -> None:
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> 'OrderedDict[str, torch.Tensor]':
        return self.fpn(OrderedDict((str(i), level) for i, level in enumerate(self.body(x))))
