"""Building blocks of EfficientNet: sample-wise drop path, conv-norm-activation, squeeze-excite, MBConv and
EfficientNetV2's Fused-MBConv.

Blocks take their norm and activation layers as arguments so one implementation serves every member
and every normalization choice.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import nn

from composer_efficientnet.lean import norm_act, norm_act_conv

__all__ = ['drop_path', 'ConvNormAct', 'SqueezeExcite', 'ResidualBlock', 'MBConv', 'FusedMBConv']

NormLayer = Callable[[int], nn.Module]
ActLayer = Callable[[], nn.Module]


def _keep_scale(x: torch.Tensor, keep_prob: torch.Tensor) -> torch.Tensor:
    """Per-sample factor, 0 for dropped samples and 1/keep_prob for survivors, shaped to broadcast over x.

    The uniform draw and the comparison are done in float32 whatever ``x``'s dtype, so the drop
    probability is exact under bf16/fp16 autocast; only the final factor is cast to ``x.dtype``.
    """
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    keep_prob = keep_prob.float()
    keep = torch.rand(shape, dtype=torch.float32, device=x.device) < keep_prob
    return (keep.float() / keep_prob).to(x.dtype)


def drop_path(x: torch.Tensor, drop_rate: Union[float, torch.Tensor], training: bool) -> torch.Tensor:
    """Sample-wise stochastic depth: zero whole samples of a residual branch with probability ``drop_rate``.

    Survivors are scaled by ``1 / (1 - drop_rate)`` so the expectation is unchanged; in eval mode, or
    with a rate of zero given as a Python number, ``x`` is returned as it is, and a rate of 1 zeroes it.
    ``drop_rate`` may be a 0-d tensor (on ``x``'s device, below 1), which lets it change during training
    without a host sync or a ``torch.compile`` recompilation.

    Example:
        >>> import torch
        >>> from composer_efficientnet.layers import drop_path
        >>> y = drop_path(torch.ones(4, 8), drop_rate=0.5, training=True)
        >>> sorted(set(y[:, 0].tolist())) in ([0.0], [2.0], [0.0, 2.0])
        True
    """
    if not torch.is_tensor(drop_rate):
        if not 0.0 <= drop_rate <= 1.0:
            raise ValueError(f'drop_rate must be in [0, 1], got {drop_rate!r}.')
        if not training or drop_rate == 0:
            return x
        if drop_rate == 1:  # every sample dropped: no survivor to rescale
            return x * 0.0
        return x * _keep_scale(x, torch.tensor(1.0 - drop_rate))
    return x * _keep_scale(x, 1.0 - drop_rate) if training else x


class ConvNormAct(nn.Sequential):
    """Convolution without bias, normalization, and an optional activation (``act_layer=None``).

    With ``memory_efficient``, training keeps only the convolution's input and output for backward (the norm
    and activation are recomputed, see :mod:`composer_efficientnet.lean`); evaluation is the same either way.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm_layer: NormLayer,
                 act_layer: Optional[ActLayer], stride: int = 1, groups: int = 1,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        self.memory_efficient = memory_efficient
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=(kernel_size - 1) // 2,
                              groups=groups, bias=False)
        self.bn = norm_layer(out_channels)
        if act_layer is not None:
            self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.memory_efficient and self.training and torch.is_grad_enabled():
            return self._lean_forward(x)
        for module in self:
            x = module(x)
        return x

    @torch.jit.unused
    def _lean_forward(self, x):  # unannotated: TorchScript resolves no postponed hints here
        return norm_act(self.conv(x), self.bn, getattr(self, 'act', None))


class SqueezeExcite(nn.Module):
    """Channel attention: global average pool, reduce, activate, expand, sigmoid gate."""

    def __init__(self, channels: int, reduced_channels: int, act_layer: ActLayer) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced_channels, 1)
        self.act = act_layer()
        self.expand = nn.Conv2d(reduced_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.expand(self.act(self.reduce(scale)))
        return x * scale.sigmoid()


class ResidualBlock(nn.Module):
    """A block whose output is added to its input when it keeps resolution and width, with sample-wise
    stochastic depth on that residual branch; subclasses build the branch and call :meth:`add_residual`.

    With ``memory_efficient``, the branch keeps only its convolutions' outputs for backward in training
    (:mod:`composer_efficientnet.lean`); outputs, gradients, state dict and the evaluation path are unchanged.

    ``drop_rate`` is a property backed by a non-persistent buffer: it can be read and set at run time
    (by a schedule, say) without touching the state dict's keys, and setting it costs no host sync.
    """

    def __init__(self, has_residual: bool, memory_efficient: bool = False) -> None:
        super().__init__()
        self.has_residual = has_residual
        self.memory_efficient = memory_efficient
        self.register_buffer('_keep_prob', torch.tensor(1.0), persistent=False)
        self.drop_rate = 0.0

    @property
    def drop_rate(self) -> float:
        """Probability that a sample skips this block's branch in training (0 without a residual)."""
        return self._drop_rate

    @drop_rate.setter
    def drop_rate(self, rate: float) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f'drop_rate must be in [0, 1), got {rate}.')
        self._drop_rate = float(rate) if self.has_residual else 0.0
        self._drop_active = self._drop_rate > 0  # the only Python value forward reads: torch.compile guards on it
        with torch.no_grad():
            self._keep_prob.fill_(1.0 - self._drop_rate)

    def add_residual(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``x + out`` (``out``'s samples dropped or rescaled in training), or ``out`` without a residual."""
        if not self.has_residual:
            return out
        if self.training and self._drop_active:
            return torch.addcmul(x, out, _keep_scale(out, self._keep_prob))
        return x + out


class MBConv(ResidualBlock):
    """Mobile inverted bottleneck with squeeze-excite and sample-wise stochastic depth.

    With ``expand_ratio == 1`` it is the depthwise-separable block of EfficientNet's first stage (no
    expansion convolution). The projection has no activation. The residual connection, and with it
    stochastic depth, exists when the block keeps resolution and width.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int,
                 se_ratio: float, norm_layer: NormLayer, act_layer: ActLayer, drop_rate: float = 0.0,
                 memory_efficient: bool = False) -> None:
        super().__init__(stride == 1 and in_channels == out_channels, memory_efficient)
        mid_channels = in_channels * expand_ratio
        self.expand = (ConvNormAct(in_channels, mid_channels, 1, norm_layer, act_layer)
                       if expand_ratio != 1 else nn.Identity())
        self.depthwise = ConvNormAct(mid_channels, mid_channels, kernel_size, norm_layer, act_layer, stride=stride,
                                     groups=mid_channels)
        self.se = SqueezeExcite(mid_channels, max(1, int(in_channels * se_ratio)), act_layer)
        self.project = ConvNormAct(mid_channels, out_channels, 1, norm_layer, act_layer=None)
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.memory_efficient and self.training and torch.is_grad_enabled():
            return self.add_residual(x, self._lean_branch(x))
        return self.add_residual(x, self.project(self.se(self.depthwise(self.expand(x)))))

    @torch.jit.unused
    def _lean_branch(self, x):  # unannotated: TorchScript resolves no postponed hints here
        """The branch keeping the expansion, depthwise and projection outputs (and ``x``) for backward."""
        if isinstance(self.expand, ConvNormAct):
            x = norm_act_conv(self.expand.conv(x), self.expand.bn, self.expand.act, self.depthwise.conv)
        else:
            x = self.depthwise.conv(x)
        x = norm_act_conv(x, self.depthwise.bn, self.depthwise.act, self.project.conv, se=self.se)
        return self.project.bn(x)


class FusedMBConv(ResidualBlock):
    """EfficientNetV2's Fused-MBConv: one full ``kernel_size`` convolution (``fused``) in place of MBConv's
    1x1 expansion and depthwise convolutions, then the 1x1 projection; no squeeze-excite.

    With ``expand_ratio == 1`` (V2's first stage) the fused convolution maps straight to ``out_channels``,
    with its activation, and there is no projection. Residual and stochastic depth as :class:`MBConv`'s.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int,
                 norm_layer: NormLayer, act_layer: ActLayer, drop_rate: float = 0.0,
                 memory_efficient: bool = False) -> None:
        super().__init__(stride == 1 and in_channels == out_channels, memory_efficient)
        mid_channels = in_channels * expand_ratio if expand_ratio != 1 else out_channels
        self.fused = ConvNormAct(in_channels, mid_channels, kernel_size, norm_layer, act_layer, stride=stride)
        self.project = (ConvNormAct(mid_channels, out_channels, 1, norm_layer, act_layer=None)
                        if expand_ratio != 1 else nn.Identity())
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.memory_efficient and self.training and torch.is_grad_enabled():
            return self.add_residual(x, self._lean_branch(x))
        return self.add_residual(x, self.project(self.fused(x)))

    @torch.jit.unused
    def _lean_branch(self, x):  # unannotated: TorchScript resolves no postponed hints here
        """The branch keeping the fused and projection convolutions' outputs (and ``x``) for backward."""
        if not isinstance(self.project, ConvNormAct):
            return norm_act(self.fused.conv(x), self.fused.bn, self.fused.act)
        x = norm_act_conv(self.fused.conv(x), self.fused.bn, self.fused.act, self.project.conv)
        return self.project.bn(x)
