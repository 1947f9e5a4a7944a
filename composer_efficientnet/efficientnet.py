"""The EfficientNet family of Tan & Le: B0 to B7 (arXiv 1905.11946) and EfficientNetV2 S, M, L and XL
(arXiv 2104.00298), as one builder over small tables: stages, and the members built from them. The builder
makes the classifier (:class:`EfficientNet`) and, with no head, the feature-map network
(:class:`EfficientNetFeatures`, which :mod:`composer_efficientnet.backbones` puts under a detector's FPN)."""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from composer_efficientnet.layers import ActLayer, ConvNormAct, FusedMBConv, MBConv, NormLayer, ResidualBlock

__all__ = ['EfficientNet', 'StageConfig', 'MemberConfig', 'B0_STAGES', 'V2_S_STAGES', 'V2_M_STAGES', 'V2_L_STAGES',
           'V2_XL_STAGES', 'MEMBERS', 'canonical_name', 'block_drop_rates', 'EfficientNetFeatures', 'FeatureInfo',
           'LEVELS']


@dataclass(frozen=True)
class StageConfig:
    """One stage: its blocks' kind, expansion and kernel, the first block's stride, width and block count
    (B0's, before compound scaling; V2's tables are not scaled)."""
    expand_ratio: int
    kernel_size: int
    stride: int
    out_channels: int
    num_blocks: int
    fused: bool = False  # Fused-MBConv (no squeeze-excite) instead of MBConv (squeeze-excite SE_RATIO)


#: Table 1 of the paper: the stages between the stem (32 channels) and the head (1280 channels).
B0_STAGES = (
    StageConfig(1, 3, 1, 16, 1),
    StageConfig(6, 3, 2, 24, 2),
    StageConfig(6, 5, 2, 40, 2),
    StageConfig(6, 3, 2, 80, 3),
    StageConfig(6, 5, 1, 112, 3),
    StageConfig(6, 5, 2, 192, 4),
    StageConfig(6, 3, 1, 320, 1),
)
#: EfficientNetV2-S, Table 4 of the V2 paper (stem 24, head 1280), as torchvision and timm build it.
V2_S_STAGES = (
    StageConfig(1, 3, 1, 24, 2, fused=True),
    StageConfig(4, 3, 2, 48, 4, fused=True),
    StageConfig(4, 3, 2, 64, 4, fused=True),
    StageConfig(4, 3, 2, 128, 6),
    StageConfig(6, 3, 1, 160, 9),
    StageConfig(6, 3, 2, 256, 15),
)
#: V2-M, -L and -XL (Google's released configurations, as torchvision and timm build them).
V2_M_STAGES = (
    StageConfig(1, 3, 1, 24, 3, fused=True),
    StageConfig(4, 3, 2, 48, 5, fused=True),
    StageConfig(4, 3, 2, 80, 5, fused=True),
    StageConfig(4, 3, 2, 160, 7),
    StageConfig(6, 3, 1, 176, 14),
    StageConfig(6, 3, 2, 304, 18),
    StageConfig(6, 3, 1, 512, 5),
)
V2_L_STAGES = (
    StageConfig(1, 3, 1, 32, 4, fused=True),
    StageConfig(4, 3, 2, 64, 7, fused=True),
    StageConfig(4, 3, 2, 96, 7, fused=True),
    StageConfig(4, 3, 2, 192, 10),
    StageConfig(6, 3, 1, 224, 19),
    StageConfig(6, 3, 2, 384, 25),
    StageConfig(6, 3, 1, 640, 7),
)
V2_XL_STAGES = (
    StageConfig(1, 3, 1, 32, 4, fused=True),
    StageConfig(4, 3, 2, 64, 8, fused=True),
    StageConfig(4, 3, 2, 96, 8, fused=True),
    StageConfig(4, 3, 2, 192, 16),
    StageConfig(6, 3, 1, 256, 24),
    StageConfig(6, 3, 2, 512, 32),
    StageConfig(6, 3, 1, 640, 8),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
SE_RATIO = 0.25


@dataclass(frozen=True)
class MemberConfig:
    """One member: its stages and scaling, how it trains and evaluates, and the paper's figures for comparison.

    ``resolution`` is the training crop, and the crop datasets default to (B family: also the evaluation
    crop). The ``eval_*`` fields say how the member's published weights are evaluated: a center crop of
    ``eval_resolution`` (None: ``resolution``) from images resized to ``eval_resize`` on the shorter side (None:
    crop + 32, the EfficientNet reference's padding), with ``eval_interpolation`` and ``eval_mean``/``eval_std``
    (None: ImageNet's).
    """
    width: float
    depth: float
    resolution: int
    dropout: float
    paper_params_m: float
    paper_gflops: float  # the paper's "FLOPs": multiply-adds, in billions
    paper_top1: float
    stages: Tuple[StageConfig, ...] = B0_STAGES
    stem_channels: int = STEM_CHANNELS
    head_channels: int = HEAD_CHANNELS
    bn_eps: float = 1e-5
    eval_resolution: Optional[int] = None
    eval_resize: Optional[int] = None
    eval_interpolation: str = 'bilinear'
    eval_mean: Optional[Tuple[float, float, float]] = None
    eval_std: Optional[Tuple[float, float, float]] = None

    def eval_transform(self) -> Dict[str, Any]:
        """The held-out dataset parameters (``crop_size``, ``resize_size``, ``interpolation``, ``mean``, ``std``)
        that evaluate the member as its published weights were."""
        crop = self.eval_resolution or self.resolution
        return {'crop_size': crop, 'resize_size': self.eval_resize or crop + 32,
                'interpolation': self.eval_interpolation, 'mean': self.eval_mean and list(self.eval_mean),
                'std': self.eval_std and list(self.eval_std)}


_HALF = (0.5, 0.5, 0.5)
#: V2: torchvision's architecture defaults (dropout, BatchNorm eps 1e-3), the paper's last-stage training size,
#: and how torchvision's weights evaluate; XL, which torchvision lacks: Google's released configuration (train
#: 384, dropout 0.4) and evaluation (as timm's ports of its weights).
_V2 = partial(MemberConfig, 1.0, 1.0, bn_eps=1e-3)

MEMBERS = {
    'efficientnet_b0': MemberConfig(1.0, 1.0, 224, 0.2, 5.3, 0.39, 77.1),
    'efficientnet_b1': MemberConfig(1.0, 1.1, 240, 0.2, 7.8, 0.70, 79.1),
    'efficientnet_b2': MemberConfig(1.1, 1.2, 260, 0.3, 9.2, 1.0, 80.1),
    'efficientnet_b3': MemberConfig(1.2, 1.4, 300, 0.3, 12, 1.8, 81.6),
    'efficientnet_b4': MemberConfig(1.4, 1.8, 380, 0.4, 19, 4.2, 82.9),
    'efficientnet_b5': MemberConfig(1.6, 2.2, 456, 0.4, 30, 9.9, 83.6),
    'efficientnet_b6': MemberConfig(1.8, 2.6, 528, 0.5, 43, 19, 84.0),
    'efficientnet_b7': MemberConfig(2.0, 3.1, 600, 0.5, 66, 37, 84.3),
    'efficientnet_v2_s': _V2(300, 0.2, 22, 8.8, 83.9, V2_S_STAGES, stem_channels=24, eval_resolution=384,
                             eval_resize=384),
    'efficientnet_v2_m': _V2(380, 0.3, 54, 24, 85.1, V2_M_STAGES, stem_channels=24, eval_resolution=480,
                             eval_resize=480),
    'efficientnet_v2_l': _V2(380, 0.4, 120, 53, 85.7, V2_L_STAGES, eval_resolution=480, eval_resize=480,
                             eval_interpolation='bicubic', eval_mean=_HALF, eval_std=_HALF),
    'efficientnet_v2_xl': _V2(384, 0.4, 208, 94, 87.3, V2_XL_STAGES, eval_resolution=512, eval_resize=512,
                              eval_interpolation='bicubic', eval_mean=_HALF, eval_std=_HALF),
}


def canonical_name(name: str) -> str:
    """Map the spellings of a member (any case; ``-`` for ``_``; ``efficientnetb3``, ``efficientnetv2_s``,
    ``efficientnet-v2-s``) to its name in :data:`MEMBERS` (``efficientnet_b3``, ``efficientnet_v2_s``)."""
    key = str(name).strip().lower().replace('-', '_')
    if match := re.fullmatch(r'efficientnet_?(v2_?)?([a-z]\w*)', key):
        key = f"efficientnet_{'v2_' if match[1] else ''}{match[2]}"
    if key not in MEMBERS:
        close = difflib.get_close_matches(key, MEMBERS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ''
        raise ValueError(f"Unknown EfficientNet member '{name}'.{hint} Valid names: {', '.join(MEMBERS)} "
                         "(also spelled efficientnet-bN, efficientnetbN, efficientnetv2_s or efficientnet-v2-s).")
    return key


DROP_DISTRIBUTIONS = ('linear', 'uniform')


def block_drop_rates(num_blocks: int, drop_rate: float, drop_distribution: str = 'linear') -> List[float]:
    """Stochastic-depth rate of each of ``num_blocks`` blocks: ``drop_rate * i / n`` for block ``i`` (linear,
    the first block 0) or ``drop_rate`` for all (uniform)."""
    if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0.0 <= drop_rate < 1.0:
        raise ValueError(f'drop_rate must be a number in [0, 1), got {drop_rate!r}.')
    if drop_distribution not in DROP_DISTRIBUTIONS:
        raise ValueError(f"drop_distribution must be one of {', '.join(DROP_DISTRIBUTIONS)}, got {drop_distribution!r}.")
    if drop_distribution == 'uniform':
        return [float(drop_rate)] * num_blocks
    return [drop_rate * i / num_blocks for i in range(num_blocks)]


def make_divisible(channels: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor``, never more than 10% below ``channels``."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def check_arguments(*, num_classes: int = 1000, dropout: float = 0.2, drop_connect_rate: float = 0.2,
                    bn_momentum: Optional[float] = 0.1, bn_eps: float = 1e-5) -> None:
    """Refuse, with a ValueError naming the argument, what :class:`EfficientNet` would build but not train:
    ``num_classes`` an integer of at least 1; ``dropout`` and ``drop_connect_rate`` in [0, 1); ``bn_momentum`` in
    [0, 1] (or None, BatchNorm's cumulative average); ``bn_eps`` a finite number above 0. NaN and infinities are
    out of every range. Recipes run it when they are validated, before anything is built."""
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not (isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 1):
        raise ValueError(f'num_classes must be a positive integer, got {num_classes!r}.')
    for name, value in (('dropout', dropout), ('drop_connect_rate', drop_connect_rate)):
        if not (number(value) and 0.0 <= value < 1.0):
            raise ValueError(f'{name} must be a number in [0, 1), got {value!r}.')
    if bn_momentum is not None and not (number(bn_momentum) and 0.0 <= bn_momentum <= 1.0):
        raise ValueError(f'bn_momentum must be a number in [0, 1] (the weight of each batch in the BatchNorm '
                         f'running statistics), got {bn_momentum!r}.')
    if not (number(bn_eps) and bn_eps > 0.0):
        raise ValueError(f'bn_eps must be a positive number (BatchNorm divides by sqrt(variance + bn_eps)), got '
                         f'{bn_eps!r}.')


class EfficientNet(nn.Module):
    """An EfficientNet: stem, stages of MBConv or Fused-MBConv blocks, 1x1 head, pooling, dropout, classifier.

    ``stages`` is a table of :class:`StageConfig` (B0's by default), scaled by ``width`` and ``depth``; every
    member of both families is built by this one class (see :meth:`from_name`). Block ``i`` of ``n`` gets the
    stochastic-depth rate ``drop_connect_rate * i / n``; read or change the rates at run time with
    :meth:`drop_rates` and :meth:`set_drop_rates`. ``memory_efficient`` trains keeping about a third of the
    activations for backward, recomputing the rest (:mod:`composer_efficientnet.lean`), with the same results.

    Example:
        >>> from composer_efficientnet import EfficientNet
        >>> model = EfficientNet.from_name('efficientnet-b0', num_classes=10)
        >>> sum(p.numel() for p in model.parameters())
        4020358
    """

    def __init__(self, width: float = 1.0, depth: float = 1.0, num_classes: int = 1000, dropout: float = 0.2,
                 drop_connect_rate: float = 0.2, bn_momentum: float = 0.1, bn_eps: float = 1e-5,
                 norm_layer: Optional[NormLayer] = None, act_layer: ActLayer = nn.SiLU,
                 stages: Tuple[StageConfig, ...] = B0_STAGES, stem_channels: int = STEM_CHANNELS,
                 head_channels: int = HEAD_CHANNELS, memory_efficient: bool = False) -> None:
        super().__init__()
        check_arguments(num_classes=num_classes, dropout=dropout, drop_connect_rate=drop_connect_rate,
                        bn_momentum=bn_momentum, bn_eps=bn_eps)
        self.num_classes = num_classes
        norm_layer = norm_layer or partial(nn.BatchNorm2d, momentum=bn_momentum, eps=bn_eps)
        channels = make_divisible(stem_channels * width)
        self.stem = ConvNormAct(3, channels, 3, norm_layer, act_layer, stride=2, memory_efficient=memory_efficient)
        repeats = [math.ceil(stage.num_blocks * depth) for stage in stages]
        drop_rates = iter(block_drop_rates(sum(repeats), drop_connect_rate))
        stage_modules: List[nn.Sequential] = []
        for stage, num_blocks in zip(stages, repeats):
            out_channels = make_divisible(stage.out_channels * width)
            block = FusedMBConv if stage.fused else partial(MBConv, se_ratio=SE_RATIO)
            blocks = []
            for i in range(num_blocks):
                blocks.append(block(channels, out_channels, stage.kernel_size, stage.stride if i == 0 else 1,
                                    stage.expand_ratio, norm_layer=norm_layer, act_layer=act_layer,
                                    drop_rate=next(drop_rates), memory_efficient=memory_efficient))
                channels = out_channels
            stage_modules.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stage_modules)
        self.num_features = make_divisible(head_channels * width)
        self._build_head(channels, dropout, norm_layer, act_layer, memory_efficient)
        self.reset_parameters()

    def _build_head(self, channels: int, dropout: float, norm_layer: NormLayer, act_layer: ActLayer,
                    memory_efficient: bool) -> None:
        """After the stages (``channels`` out): the 1x1 head, pooling, dropout and classifier
        (:class:`EfficientNetFeatures` builds none)."""
        self.head = ConvNormAct(channels, self.num_features, 1, norm_layer, act_layer,
                                memory_efficient=memory_efficient)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.num_features, self.num_classes)

    @classmethod
    def from_name(cls, name: str, num_classes: int = 1000, features_only: bool = False,
                  out_indices: Sequence[int] = (0, 1, 2, 3, 4), **overrides: Any) -> 'EfficientNet':
        """Build member ``name`` (``efficientnet_b0`` ... ``efficientnet_b7``, ``efficientnet_v2_s`` ...
        ``efficientnet_v2_xl``) from its table: the B family with the paper's scaling.

        ``overrides`` replace any constructor argument, ``dropout``, ``drop_connect_rate`` and ``bn_eps``
        (the member's: 1e-5, V2's 1e-3 as torchvision's and TensorFlow's) included. With ``features_only`` it is
        an :class:`EfficientNetFeatures` returning the feature maps at levels
        ``out_indices`` (level i at stride 2**(i+1), as timm numbers them), with no head or classifier.
        """
        member = MEMBERS[canonical_name(name)]
        kwargs = {'width': member.width, 'depth': member.depth, 'dropout': member.dropout, 'bn_eps': member.bn_eps,
                  'stages': member.stages, 'stem_channels': member.stem_channels,
                  'head_channels': member.head_channels, **overrides}
        if features_only:
            return EfficientNetFeatures(out_indices=out_indices, **kwargs)
        return cls(num_classes=num_classes, **kwargs)

    def reset_parameters(self) -> None:
        """Initialize as the TF reference and timm do: conv std sqrt(2/fan_out) (fan-out per group), BN 1 and 0,
        classifier uniform in +-1/sqrt(num_classes)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.out_features)
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    def blocks(self) -> List[ResidualBlock]:
        """Every MBConv and Fused-MBConv block, in depth order."""
        return [block for stage in self.stages for block in stage]

    def drop_rates(self) -> List[float]:
        """The current stochastic-depth rate of every block (0 for blocks without a residual)."""
        return [block.drop_rate for block in self.blocks()]

    def set_drop_rates(self, rates: Union[float, Sequence[float]]) -> None:
        """Set each block's stochastic-depth rate; blocks without a residual ignore theirs.

        Args:
            rates: one rate per block, in depth order, or one number ``r``: the rates the constructor gives for
                ``drop_connect_rate=r`` (``r * i / n`` for block ``i`` of ``n``).
        """
        blocks = self.blocks()
        if isinstance(rates, (int, float)) and not isinstance(rates, bool):
            rates = block_drop_rates(len(blocks), rates)
        if isinstance(rates, (str, bytes)) or not isinstance(rates, Sequence):
            raise TypeError(f'set_drop_rates takes a number (the deepest block\'s rate, linear in depth) or a list '
                            f'of {len(blocks)} rates, one per block; got {type(rates).__name__}.')
        if len(rates) != len(blocks):
            raise ValueError(f'Expected {len(blocks)} drop rates, one per block, got {len(rates)}.')
        for block, rate in zip(blocks, rates):
            block.drop_rate = rate

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before dropout and the classifier."""
        return self.pool(self.head(self.stages(self.stem(x)))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.forward_features(x)))


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
    its schedules, work alike) with no head, pooling or classifier: its state dict is the classifier's less
    ``head.*`` and ``classifier.*``. Level ``i`` is the output of the last stage at stride ``2 ** (i + 1)``: B0's
    levels have 16, 24, 40, 112 and 320 channels, as timm's ``features_only`` model's. Build it with
    ``EfficientNet.from_name(name, features_only=True)``.

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
        super().__init__(**kwargs)  # the stem and stages: _build_head below adds nothing
        self.out_indices = _check_out_indices(out_indices)
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

    def _build_head(self, *args: Any) -> None:
        """No head, pooling, dropout or classifier: the maps are the stages' outputs."""

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
