"""Memory-lean training: normalization, activation and squeeze-excite recomputed in backward from the
convolution output they read, instead of keeping their outputs for it.

A training step of an EfficientNet keeps, per block, the output of every convolution, BatchNorm, SiLU and
squeeze-excite product for the backward pass; all but the convolution outputs are cheap elementwise functions
of them. :func:`norm_act_conv` computes ``conv(se(act(norm(e))))`` keeping only ``e`` (and the parameters):
backward recomputes the elementwise part from ``e`` and runs the convolution's own backward on it, so no
convolution is run twice. Forward outputs are computed by the same operations as the default path, BatchNorm
running statistics are updated once, in forward (the recomputation normalizes with the batch statistics and
touches no buffer), and the gradients are the default path's up to float32 rounding.

Only modules whose recomputation is exact are recomputed: a ``BatchNorm2d`` or a norm without buffers, and
a plain ``nn.Conv2d``; anything else (SyncBatchNorm, Composer's GhostBatchNorm or BlurConv2d) runs as in the
default path.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['norm_act', 'norm_act_conv']


def _recomputable(norm: nn.Module) -> bool:
    """Whether ``norm`` can be rerun in backward without changing state: BatchNorm2d (run on batch statistics,
    buffers untouched) or a norm with no buffers at all."""
    return isinstance(norm, nn.BatchNorm2d) or next(norm.buffers(), None) is None


def _normalize(norm: nn.Module, e: torch.Tensor, recompute: bool) -> torch.Tensor:
    """``norm(e)``; when recomputing a training BatchNorm, the same batch-statistics normalization without
    updating its running statistics again."""
    if recompute and isinstance(norm, nn.BatchNorm2d) and norm.training:
        return F.batch_norm(e, None, None, norm.weight, norm.bias, True, 0.0, norm.eps)
    return norm(e)


class _Elementwise:
    """The recomputable part ``se(act(norm(e)))``, each piece optional but the norm."""

    def __init__(self, norm: nn.Module, act: Optional[nn.Module], se: Optional[nn.Module]) -> None:
        self.norm, self.act, self.se = norm, act, se

    def __call__(self, e: torch.Tensor, recompute: bool) -> torch.Tensor:
        out = _normalize(self.norm, e, recompute)
        if self.act is not None:
            out = self.act(out)
        return self.se(out) if self.se is not None else out

    def parameters(self) -> List[nn.Parameter]:
        modules = [m for m in (self.norm, self.act, self.se) if m is not None]
        return [p for m in modules for p in m.parameters()]


def _autocast_state(device_type: str) -> Tuple[str, bool, Optional[torch.dtype]]:
    """The forward's autocast (device type, enabled, dtype), to recompute under the same one."""
    if device_type == 'meta':  # no autocast there; torch.amp.is_autocast_available would break compiled graphs
        return device_type, False, None
    return device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


def _uncached(state: Tuple[str, bool, Optional[torch.dtype]]) -> ContextManager:
    """The autocast of ``state`` without its weight-cast cache: a cast made under ``no_grad`` in forward would
    otherwise be reused, without its graph, by the recomputation in backward."""
    device_type, enabled, dtype = state
    return torch.autocast(device_type, dtype, cache_enabled=False) if enabled else nullcontext()


def _conv_args(conv: nn.Conv2d) -> Tuple:
    return conv.stride, conv.padding, conv.dilation, conv.groups


class _RecomputeElementwise(torch.autograd.Function):
    """``conv(pre(e))`` (or ``pre(e)`` without a conv) saving ``e``; ``params`` are ``pre``'s parameters
    then the conv's weight and bias, passed as inputs so their gradients flow."""

    @staticmethod
    def forward(ctx, pre: _Elementwise, conv: Optional[nn.Conv2d], e: torch.Tensor,
                *params: torch.Tensor) -> torch.Tensor:
        ctx.pre, ctx.conv = pre, conv
        ctx.autocast = _autocast_state(e.device.type)
        ctx.save_for_backward(e)
        with torch.no_grad(), _uncached(ctx.autocast):
            out = pre(e, recompute=False)  # updates BatchNorm running statistics, once
            if conv is not None:
                out = F.conv2d(out, conv.weight, conv.bias, *_conv_args(conv))
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        (e,) = ctx.saved_tensors
        pre, conv = ctx.pre, ctx.conv
        device_type, autocast, dtype = ctx.autocast
        e = e.detach().requires_grad_(ctx.needs_input_grad[2])
        pre_params = pre.parameters()
        conv_grads: List[Optional[torch.Tensor]] = []
        with torch.enable_grad(), _uncached(ctx.autocast):
            p = pre(e, recompute=True)
        if conv is not None:
            grad_p, conv_grads = _conv_backward(conv, p.detach(), grad_out, dtype if autocast else p.dtype,
                                                ctx.needs_input_grad[3 + len(pre_params):])
        else:
            grad_p = grad_out
        wanted = [t for t, needed in zip([e, *pre_params], ctx.needs_input_grad[2:]) if needed]
        grads = iter(torch.autograd.grad(p, wanted, grad_p, allow_unused=True) if wanted else ())
        pre_grads = [next(grads) if needed else None for needed in ctx.needs_input_grad[2:3 + len(pre_params)]]
        return (None, None, *pre_grads, *conv_grads)


def _conv_backward(conv: nn.Conv2d, p: torch.Tensor, grad_out: torch.Tensor, dtype: torch.dtype,
                   needs: Sequence[bool]) -> Tuple[torch.Tensor, List[Optional[torch.Tensor]]]:
    """Gradients of ``conv(p)`` for its input, weight and bias, in the dtype the forward ran it in."""
    weight = conv.weight
    stride, padding, dilation, groups = _conv_args(conv)
    bias_sizes = [weight.shape[0]] if conv.bias is not None else None
    grad_p, grad_w, grad_b = torch.ops.aten.convolution_backward(
        grad_out.to(dtype), p.to(dtype), weight.to(dtype), bias_sizes, stride, padding, dilation, False, [0, 0],
        groups, [True, bool(needs[0]), conv.bias is not None and bool(needs[1])])
    grads = [grad_w.to(weight.dtype) if needs[0] else None]
    if conv.bias is not None:
        grads.append(grad_b.to(conv.bias.dtype) if needs[1] else None)
    return grad_p, grads


def norm_act_conv(e: torch.Tensor, norm: nn.Module, act: Optional[nn.Module], conv: Optional[nn.Module],
                  se: Optional[nn.Module] = None) -> torch.Tensor:
    """``conv(se(act(norm(e))))`` keeping only ``e`` for backward (``conv``, ``act``, ``se`` optional).

    Falls back to the plain composition, which keeps every intermediate, for a norm whose rerun would change
    state; a convolution other than a plain ``nn.Conv2d`` is run as it is after the lean elementwise part.

    Args:
        e: the convolution output that ``norm`` reads.
        norm: a normalization layer (BatchNorm2d in training mode: its running statistics are updated once).
        act: the activation after it, or None.
        conv: the convolution reading the (squeeze-excited) activation, or None.
        se: a squeeze-excite module between activation and convolution, or None.
    """
    pre = _Elementwise(norm, act, se)
    if not _recomputable(norm):
        out = pre(e, recompute=False)
        return conv(out) if conv is not None else out
    if conv is not None and type(conv) is not nn.Conv2d:
        return conv(norm_act_conv(e, norm, act, None, se))
    conv_params = [] if conv is None else [conv.weight] + ([conv.bias] if conv.bias is not None else [])
    return _RecomputeElementwise.apply(pre, conv, e, *pre.parameters(), *conv_params)


def norm_act(e: torch.Tensor, norm: nn.Module, act: Optional[nn.Module]) -> torch.Tensor:
    """``act(norm(e))`` keeping only ``e`` for backward (see :func:`norm_act_conv`)."""
    return norm_act_conv(e, norm, act, None)
