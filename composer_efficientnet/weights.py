"""Import pretrained weights from torchvision or timm checkpoints, offline, with all-or-nothing checks.

Both libraries' ``efficientnet_bN``, torchvision's ``efficientnet_v2_{s,m,l}`` and timm's ``efficientnetv2_{s,m,l,xl}``
share our architecture exactly, so importing is renaming keys (and setting the BatchNorm eps the source used).
Users pass a file or a state dict; nothing is downloaded.
"""

from __future__ import annotations

import logging
import math
import os
import re
from typing import Callable, Dict, Iterable, Mapping, Tuple, Union

import torch
from torch import nn

from composer_efficientnet.backbones import EfficientNetFeatures
from composer_efficientnet.efficientnet import MEMBERS, EfficientNet, make_divisible
from composer_efficientnet.archives import ArchiveError
from composer_efficientnet.safe_load import UnsafeCheckpointError, read_checkpoint

__all__ = ['from_torchvision', 'from_timm', 'detect_format', 'read_state_dict', 'as_state_dict', 'to_native',
           'load_pretrained', 'source_bn_overrides', 'guess_member', 'WeightsError']

log = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]
_CONV_NORM = {'0': 'conv', '1': 'bn'}


class WeightsError(ValueError):
    """A weight file or state dict that cannot be loaded; the message names the offending keys."""


def _rename_all(state_dict: Mapping[str, torch.Tensor], rename: Callable[[str], str], source: str) -> StateDict:
    renamed, unknown = {}, []
    for key, value in state_dict.items():
        try:
            renamed[rename(key)] = value
        except KeyError:
            unknown.append(key)
    if unknown:
        raise WeightsError(f'{len(unknown)} key(s) of the {source} state dict have no counterpart in '
                           f'composer_efficientnet.EfficientNet: {_some(unknown)}')
    return renamed


def _some(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f' ... and {len(keys) - limit} more' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def from_torchvision(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename a ``torchvision.models.efficientnet_bN`` or ``efficientnet_v2_*`` state dict to this package's
    keys, and nothing more.

    A state dict does not hold BatchNorm's eps, and torchvision's B5-B7 and V2 were trained with 1e-3: a model
    that loads this renaming by hand must be built with :func:`source_bn_overrides` (or ``bn_eps=1e-3``) to give
    torchvision's outputs. :func:`load_pretrained` and ``composer_efficientnet(..., pretrained=...)`` set it.

    Example:
        >>> import torchvision
        >>> from composer_efficientnet import EfficientNet, weights
        >>> ours = EfficientNet.from_name('efficientnet_b0')
        >>> ours.load_state_dict(weights.from_torchvision(torchvision.models.efficientnet_b0().state_dict()))
        <All keys matched successfully>
    """
    head_index = max((int(k.split('.')[1]) for k in state_dict if k.startswith('features.')), default=-1)
    expanded_blocks = {k.split('.block.')[0] for k in state_dict if re.match(r'features\.\d+\.\d+\.block\.3\.', k)}
    se_blocks = {k.split('.block.')[0] for k in state_dict if '.fc1.' in k}  # MBConv; the others are Fused-MBConv

    def rename(key: str) -> str:
        if match := re.fullmatch(r'features\.(\d+)\.([01])\.(\w+)', key):
            part = {'0': 'stem', str(head_index): 'head'}[match[1]]
            return f'{part}.{_CONV_NORM[match[2]]}.{match[3]}'
        if match := re.fullmatch(r'(features\.(\d+)\.(\d+))\.block\.(\d)\.(\w+)\.(\w+)', key):
            layers = (['fused', 'project'] if match[1] not in se_blocks else
                      ['expand', 'depthwise', 'se', 'project'] if match[1] in expanded_blocks else
                      ['depthwise', 'se', 'project'])
            layer = layers[int(match[4])]
            child = {'fc1': 'reduce', 'fc2': 'expand'}[match[5]] if layer == 'se' else _CONV_NORM[match[5]]
            return f'stages.{int(match[2]) - 1}.{match[3]}.{layer}.{child}.{match[6]}'
        if match := re.fullmatch(r'classifier\.1\.(\w+)', key):
            return f'classifier.{match[1]}'
        raise KeyError(key)

    return _rename_all(state_dict, rename, 'torchvision')


_TIMM_INVERTED_RESIDUAL = {'conv_pw': 'expand.conv', 'bn1': 'expand.bn', 'conv_dw': 'depthwise.conv',
                           'bn2': 'depthwise.bn', 'conv_pwl': 'project.conv', 'bn3': 'project.bn'}
_TIMM_DEPTHWISE_SEPARABLE = {'conv_dw': 'depthwise.conv', 'bn1': 'depthwise.bn', 'conv_pw': 'project.conv',
                             'bn2': 'project.bn'}
_TIMM_EDGE_RESIDUAL = {'conv_exp': 'fused.conv', 'bn1': 'fused.bn', 'conv_pwl': 'project.conv',
                       'bn2': 'project.bn'}  # timm's Fused-MBConv
_TIMM_CONV_BN_ACT = {'conv': 'fused.conv', 'bn1': 'fused.bn'}  # timm's Fused-MBConv without expansion
_TIMM_TOP = {'conv_stem': 'stem.conv', 'bn1': 'stem.bn', 'conv_head': 'head.conv', 'bn2': 'head.bn',
             'classifier': 'classifier'}


def from_timm(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename a ``timm`` ``efficientnet_bN`` or ``efficientnetv2_*`` state dict to this package's keys, and nothing
    more (timm trains every member with PyTorch's default BatchNorm eps, 1e-5)."""
    block_layers: Dict[str, set] = {}
    for key in state_dict:
        if match := re.match(r'(blocks\.\d+\.\d+)\.(\w+)\.', key):
            block_layers.setdefault(match[1], set()).add(match[2])

    def table(block: str) -> Dict[str, str]:
        layers = block_layers[block]
        if 'conv_exp' in layers:
            return _TIMM_EDGE_RESIDUAL
        if 'conv_dw' not in layers:
            return _TIMM_CONV_BN_ACT
        return _TIMM_INVERTED_RESIDUAL if 'conv_pwl' in layers else _TIMM_DEPTHWISE_SEPARABLE

    def rename(key: str) -> str:
        if match := re.fullmatch(r'(blocks\.(\d+)\.(\d+))\.(se\.conv_reduce|se\.conv_expand|\w+)\.(\w+)', key):
            prefix = f'stages.{match[2]}.{match[3]}'
            if match[4].startswith('se.'):
                return f'{prefix}.se.{match[4][len("se.conv_"):]}.{match[5]}'
            return f'{prefix}.{table(match[1])[match[4]]}.{match[5]}'
        if match := re.fullmatch(r'(\w+)\.(\w+)', key):
            return f'{_TIMM_TOP[match[1]]}.{match[2]}'
        raise KeyError(key)

    return _rename_all(state_dict, rename, 'timm')


_FORMATS: Dict[str, Tuple[str, Callable[[Mapping[str, torch.Tensor]], StateDict]]] = {
    'torchvision': ('features.0.0.weight', from_torchvision),
    'timm': ('conv_stem.weight', from_timm),
    'composer_efficientnet': ('stem.conv.weight', dict),
}


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Say whether a state dict comes from torchvision, timm or this package, by its stem's key."""
    for name, (stem_key, _) in _FORMATS.items():
        if stem_key in state_dict:
            return name
    raise WeightsError('Unrecognized EfficientNet state dict: expected a torchvision (features.0.0.weight), timm '
                       f'(conv_stem.weight) or composer_efficientnet (stem.conv.weight) checkpoint; its first keys '
                       f'are: {_some(list(state_dict)[:8])}')


def read_state_dict(path: Union[str, os.PathLike]) -> StateDict:
    """Read a state dict from a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file, or a Composer ``.tar`` or
    ``.pt.gz`` archive (unpacked into a private temporary folder, its members checked), unwrapping the usual
    containers (``state_dict``, ``model``, a Composer checkpoint's ``state.model`` and ``module.`` prefixes)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise WeightsError(f"Pretrained weights '{path}' is a directory; give the weights file in it.")
    if not os.path.isfile(path):
        raise WeightsError(f"Pretrained weights file '{path}' does not exist.")
    if re.match(r'tf[_-]efficientnet', os.path.basename(path)) or 'models--timm--tf_efficientnet' in path:
        raise WeightsError(f"'{path}' looks like timm's tf_efficientnet weights, ported from TensorFlow: those "
                           "models pad convolutions as TensorFlow's 'same' and use BatchNorm eps 1e-3, which this "
                           'architecture does not; their keys match, so they would load and give wrong outputs. Use '
                           "timm's efficientnet_bN or torchvision's efficientnet_bN or efficientnet_v2_* weights.")
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            loaded = load_file(path)
        else:
            loaded = read_checkpoint(path, shown=f"Pretrained weights file '{path}'")
    except ArchiveError as error:  # a .tar or .pt.gz that would write outside its private folder, ...
        raise WeightsError(str(error)) from None
    except UnsafeCheckpointError as error:
        raise WeightsError(f"Pretrained weights file '{path}' would run code when loaded (it needs "
                           f'{error.global_name}): a weights file is a state dict saved with torch.save or '
                           'safetensors; a pickled whole model, or anything else that runs code, is refused.'
                           ) from None
    except Exception as error:  # noqa: BLE001 - any reader failure means the same thing to the user
        reason = re.sub(r'\x1b\[[0-9;]*m', '', str(error)).strip().splitlines()
        raise WeightsError(f"Could not read pretrained weights file '{path}' ({type(error).__name__}: "
                           f"{reason[0] if reason else 'no detail'}): a weights file is a state dict saved with "
                           'torch.save or safetensors; a pickled whole model is refused, as it could run code.'
                           ) from None
    for container in ('state', 'model', 'state_dict'):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(container), Mapping):
            loaded = loaded[container]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"Pretrained weights file '{path}' does not hold a state dict of tensors.")
    return {re.sub(r'^(module\.|model\.)+', '', key): value for key, value in loaded.items()}


def as_state_dict(source: Union[str, os.PathLike, Mapping[str, torch.Tensor]]) -> Mapping[str, torch.Tensor]:
    """``source`` itself when it is a state dict, else the one :func:`read_state_dict` reads from the file."""
    return read_state_dict(source) if isinstance(source, (str, os.PathLike)) else source


def to_native(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Convert a torchvision, timm or native state dict to this package's keys."""
    return _FORMATS[detect_format(state_dict)][1](state_dict)


#: BatchNorm eps of the members each source trained with another eps than PyTorch's 1e-5.
_SOURCE_BN_EPS = {
    'torchvision': {'efficientnet_b5': 1e-3, 'efficientnet_b6': 1e-3, 'efficientnet_b7': 1e-3,
                    'efficientnet_v2_s': 1e-3, 'efficientnet_v2_m': 1e-3, 'efficientnet_v2_l': 1e-3},
    'timm': {},
}


def source_bn_overrides(state_dict: Mapping[str, torch.Tensor], name: str) -> Dict[str, float]:
    """The BatchNorm eps torchvision or timm trained member ``name`` with, as ``{'bn_eps': eps}`` (empty for
    this package's own weights, whose eps is the model's); building with it gives the source's eval outputs."""
    source = detect_format(state_dict)
    if source not in _SOURCE_BN_EPS:
        return {}
    return {'bn_eps': _SOURCE_BN_EPS[source].get(name, 1e-5)}


def _set_bn_eps(model: nn.Module, eps: float, why: str) -> None:
    """Give every BatchNorm layer of ``model`` the eps ``eps``, saying so once if any had another."""
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if changed := [m for m in layers if m.eps != eps]:
        log.warning('Set BatchNorm eps to %g on %d of %d layers (was %s), as %s.', eps, len(changed), len(layers),
                    ', '.join(sorted({f'{m.eps:g}' for m in changed})), why)
        for layer in changed:
            layer.eps = eps


def _layout(member: str) -> Tuple[int, int, int]:
    """Block count, stem and head widths of a member: what tells members' state dicts apart."""
    config = MEMBERS[member]
    return (sum(math.ceil(stage.num_blocks * config.depth) for stage in config.stages),
            make_divisible(config.stem_channels * config.width), make_divisible(config.head_channels * config.width))


def guess_member(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The member whose block count, stem and head widths match a native state dict, or 'no EfficientNet
    member'."""
    if 'stem.conv.weight' not in state_dict or 'head.conv.weight' not in state_dict:
        return 'no EfficientNet member'
    layout = (len({'.'.join(k.split('.')[:3]) for k in state_dict if k.startswith('stages.')}),
              state_dict['stem.conv.weight'].shape[0], state_dict['head.conv.weight'].shape[0])
    return next((name for name in MEMBERS if _layout(name) == layout), 'no EfficientNet member')


def load_pretrained(model: nn.Module, source: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
                    skip_prefixes: Tuple[str, ...] = ()) -> None:
    """Load torchvision, timm or native weights into ``model``, all or nothing, giving the source's outputs.

    Keys under ``skip_prefixes`` (``('classifier.',)`` to fine-tune on other classes) keep their
    initialization. Missing, unexpected or differently shaped keys raise :class:`WeightsError` naming them,
    before any parameter is changed. Weights from torchvision or timm also set the BatchNorm eps their source
    trained with (see :func:`source_bn_overrides`; a warning says so when the model had another). A feature-map
    model (:class:`~composer_efficientnet.backbones.EfficientNetFeatures`) loads all but the head and classifier,
    saying so once.
    """
    if not isinstance(model, EfficientNet) and isinstance(getattr(model, 'module', None), EfficientNet):
        model = model.module  # the Composer model's network
    state_dict = as_state_dict(source)
    native = to_native(state_dict)
    if isinstance(model, EfficientNetFeatures):  # a backbone: no head or classifier to load
        skip_prefixes = (*skip_prefixes, 'head.', 'classifier.')
        if skipped := sorted({k.split('.')[0] for k in native if k.startswith(('head.', 'classifier.'))}):
            log.warning('The feature-map model has no %s: those pretrained weights are not loaded.',
                        ' or '.join(skipped))
    incoming = {k: v for k, v in native.items() if not k.startswith(skip_prefixes)}
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(skip_prefixes)}
    problems = []
    # BatchNorm fills a missing step counter itself, as it does for torchvision's models; many ported files lack it
    if missing := {k for k in expected.keys() - incoming.keys() if not k.endswith('.num_batches_tracked')}:
        problems.append(f'missing {_some(missing)}')
    if unexpected := incoming.keys() - expected.keys():
        problems.append(f'unexpected {_some(unexpected)}')
    if mismatched := [f'{k} {tuple(incoming[k].shape)} vs {tuple(v.shape)}' for k, v in expected.items()
                      if k in incoming and incoming[k].shape != v.shape]:
        problems.append(f'shape (checkpoint vs model) {_some(mismatched)}')
    if problems:
        raise WeightsError(f'Pretrained weights do not fit this model (the checkpoint looks like '
                           f'{guess_member(native)}): ' + '; '.join(problems))
    model.load_state_dict(incoming, strict=not skip_prefixes)
    member = guess_member(native)
    if eps := source_bn_overrides(state_dict, member).get('bn_eps'):
        _set_bn_eps(model, eps, f'{detect_format(state_dict)} trained {member} with it')
