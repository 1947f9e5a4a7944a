"""EfficientNet feature maps for detection and segmentation: the stem and stages of any member without its head,
returning the maps at chosen strides as timm's ``features_only`` models do, and a torchvision detection backbone
(the maps through torchvision's ``FeaturePyramidNetwork``, as its ``BackboneWithFPN`` gives them)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from composer_efficientnet.efficientnet import B0_STAGES, EfficientNet, make_divisible

__all__ = ['EfficientNetFeatures', 'FeatureInfo', 'FPNBackbone', 'LEVELS']

#: Feature levels, numbered as timm numbers them: level ``i`` is at stride ``2 ** (i + 1)``.
LEVELS = (0, 1, 2, 3, 4)


class FeatureInfo:
    """What each returned feature map is, as timm's ``feature_info``: its channels, its reduction (stride) and
    the stage that makes it (``module``), one entry per out index."""

    def __init__(self, entries: List[Dict[str, Any]]) -> None:
        self.entries = entries

    def _get(self, key: str, idx: Optional[int]) -> Union[Any, List[Any]]:
        return [entry[key] for entry in self.entries] if idx is None else self.entries[idx][key]

    def channels(self, idx: Optional[int] = None) -> Union[int, List[int]]:
        """Channels of every map (or of map ``idx``)."""
        return self._get('num_chs', idx)

    def reduction(self, idx: Optional[int] = None) -> Union[int, List[int]]:
        """Stride of every map relative to the input (or of map ``idx``)."""
        return self._get('reduction', idx)

    def module_name(self, idx: Optional[int] = None) -> Union[str, List[str]]:
        """The stage whose output each map is (``stages.4``)."""
        return self._get('module', idx)

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        return self.entries[idx]

    def __len__(self) -> int:
        return len(self.entries)


def _check_out_indices(out_indices: Sequence[int]) -> tuple:
    indices = tuple(out_indices) if isinstance(out_indices, Sequence) else (out_indices,)
    if not indices or any(isinstance(i, bool) or i not in LEVELS for i in indices) or list(indices) != sorted(
            set(indices)):
        raise ValueError(f'out_indices must be increasing feature levels out of {", ".join(map(str, LEVELS))} '
                         f'(level i at stride 2**(i+1)), got {out_indices!r}.')
    return indices


class EfficientNetFeatures(EfficientNet):
    """An EfficientNet's stem and stages, whose forward returns the feature maps at ``out_indices``.

    Built by the one EfficientNet builder (every constructor argument, so every member, stochastic depth and
    its schedules, work alike), less the head, pooling and classifier. Level ``i`` is the output of the last
    stage at stride ``2 ** (i + 1)``: B0's levels have 16, 24, 40, 112 and 320 channels, as timm's
    ``features_only`` model's. Build it with ``EfficientNet.from_name(name, features_only=True)``.

    Example:
        >>> import torch
        >>> from composer_efficientnet import EfficientNet
        >>> features = EfficientNet.from_name('efficientnet_b0', features_only=True, out_indices=(2, 3, 4))
        >>> [tuple(m.shape) for m in features(torch.zeros(1, 3, 64, 64))]
        [(1, 40, 8, 8), (1, 112, 4, 4), (1, 320, 2, 2)]
        >>> features.feature_info.channels(), features.feature_info.reduction()
        ([40, 112, 320], [8, 16, 32])
    """

    def __init__(self, out_indices: Sequence[int] = LEVELS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.out_indices = _check_out_indices(out_indices)
        del self.head, self.pool, self.dropout, self.classifier
        self.num_classes = 0
        table = kwargs.get('stages', B0_STAGES)
        stride, level_stage = 2, {}  # the stem has stride 2
        for index, stage in enumerate(table):
            stride *= stage.stride
            level_stage[stride.bit_length() - 2] = index  # the last stage at each stride
        self._map_after = {level_stage[level]: level for level in self.out_indices}
        width = kwargs.get('width', 1.0)
        self.feature_info = FeatureInfo([
            {'num_chs': make_divisible(table[level_stage[level]].out_channels * width),
             'reduction': 2 ** (level + 1), 'module': f'stages.{level_stage[level]}'} for level in self.out_indices])

    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The feature maps at ``out_indices``, shallowest first."""
        maps = []
        x = self.stem(x)
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in self._map_after:
                maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.forward_features(x)


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
