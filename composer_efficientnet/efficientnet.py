"""The EfficientNet family of Tan & Le: B0 to B7 (arXiv 1905.11946) and EfficientNetV2 S, M, L and XL
(arXiv 2104.00298), as one builder over small tables: stages, and the members built from them."""

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
           'V2_XL_STAGES', 'MEMBERS', 'canonical_name', 'block_drop_rates']


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
        if num_classes < 1:
            raise ValueError(f'num_classes must be a positive integer, got {num_classes}.')
        if not 0.0 <= drop_connect_rate < 1.0:
            raise ValueError(f'drop_connect_rate must be a number in [0, 1), got {drop_connect_rate!r}.')
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
        self.head = ConvNormAct(channels, self.num_features, 1, norm_layer, act_layer,
                                memory_efficient=memory_efficient)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.num_features, num_classes)
        self.reset_parameters()

    @classmethod
    def from_name(cls, name: str, num_classes: int = 1000, features_only: bool = False,
                  out_indices: Sequence[int] = (0, 1, 2, 3, 4), **overrides: Any) -> 'EfficientNet':
        """Build member ``name`` (``efficientnet_b0`` ... ``efficientnet_b7``, ``efficientnet_v2_s`` ...
        ``efficientnet_v2_xl``) from its table: the B family with the paper's scaling.

        ``overrides`` replace any constructor argument, ``dropout``, ``drop_connect_rate`` and ``bn_eps``
        (the member's: 1e-5, V2's 1e-3 as torchvision's and TensorFlow's) included. With ``features_only`` it is
        a :class:`~composer_efficientnet.backbones.EfficientNetFeatures` returning the feature maps at levels
        ``out_indices`` (level i at stride 2**(i+1), as timm numbers them), with no head or classifier.
        """
        member = MEMBERS[canonical_name(name)]
        kwargs = {'width': member.width, 'depth': member.depth, 'dropout': member.dropout, 'bn_eps': member.bn_eps,
                  'stages': member.stages, 'stem_channels': member.stem_channels,
                  'head_channels': member.head_channels, **overrides}
        if features_only:
            from composer_efficientnet.backbones import EfficientNetFeatures  # it builds on this class
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
