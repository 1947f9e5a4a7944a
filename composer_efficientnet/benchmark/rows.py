"""The benchmark's rows and what they share: the implementations timed (``ours`` through a Trainer, the peers and
diagnostic rows in a plain loop), the settings of a run, a row's figures, the plain-loop models, each row's
activation count, and the ratios to the fastest peer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
import torchvision
from composer import Trainer
from torch import nn

# The rows to choose from (name: description), the default rows and the defaults per device type are the
# command line's, with its parser (composer_efficientnet.arguments: no torch there, for --help).
from composer_efficientnet.arguments import BENCHMARK_DEFAULT_ROWS as DEFAULT_ROWS
from composer_efficientnet.arguments import BENCHMARK_DEVICE_DEFAULTS as DEVICE_DEFAULTS
from composer_efficientnet.arguments import BENCHMARK_ROWS as IMPLEMENTATIONS
from composer_efficientnet.efficientnet import MEMBERS, EfficientNet
from composer_efficientnet.memory import activation_bytes_per_image
from composer_efficientnet.trainer import SyncFreeTrainer

__all__ = ['IMPLEMENTATIONS', 'PEERS', 'TRAINERS', 'LEAN_ROWS', 'DEFAULT_ROWS', 'MODES', 'DROP_RATE', 'LABEL_SMOOTHING',
           'NUM_CLASSES', 'SGD_ARGS', 'DEVICE_DEFAULTS', 'Settings', 'Row', 'build_loop_model', 'row_activation_mb',
           'add_ratios']

PEERS = ('torchvision', 'timm')
TRAINERS = {'ours': SyncFreeTrainer, 'ours-composer': Trainer, 'ours-lean': SyncFreeTrainer}
LEAN_ROWS = ('ours-lean', 'ours-lean-loop')  # memory_efficient=True; --memory-efficient adds them
MODES = ('eager', 'compiled')
DROP_RATE = 0.2
LABEL_SMOOTHING = 0.1
NUM_CLASSES = 1000
SGD_ARGS = {'lr': 0.01, 'momentum': 0.9, 'weight_decay': 5e-5}


@dataclass(frozen=True)
class Settings:
    """What every row of one benchmark run shares."""
    model: str
    device: str
    batch_size: int
    resolution: int
    precision: str
    channels_last: bool
    warmup: int
    steps: int
    windows: int
    compile: bool
    rows: Tuple[str, ...]
    seed: int = 17
    cudnn_benchmark: bool = False

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps * self.windows

    @property
    def modes(self) -> Tuple[str, ...]:
        return MODES if self.compile else MODES[:1]

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


@dataclass
class Row:
    """One timed configuration; ``ratio`` and ``memory_ratio`` are relative to ``reference``, the fastest peer
    row of the same mode."""
    impl: str
    mode: str
    images_per_s: Optional[float] = None
    window_images_per_s: List[float] = field(default_factory=list)
    peak_memory_gib: Optional[float] = None
    wall_s: float = 0.0
    ratio: Optional[float] = None
    memory_ratio: Optional[float] = None
    reference: Optional[str] = None
    host_reads_per_step: Optional[int] = None
    activation_mb_per_image: Optional[float] = None
    error: Optional[str] = None

    @property
    def name(self) -> str:
        return f'{self.impl}:{self.mode}'


def build_loop_model(impl: str, name: str) -> nn.Module:
    """The member ``name`` from ``impl``, with stochastic depth 0.2 and the member's classifier dropout."""
    if impl in ('ours-loop', 'ours-lean-loop'):
        return EfficientNet.from_name(name, num_classes=NUM_CLASSES, drop_connect_rate=DROP_RATE,
                                      memory_efficient=impl in LEAN_ROWS)
    if impl == 'torchvision':  # its default stochastic depth: 0.2, sample-wise ('row'), linear over blocks
        return getattr(torchvision.models, name)(weights=None, num_classes=NUM_CLASSES)
    if impl == 'timm':  # timm spells V2 efficientnetv2_s
        import timm
        return timm.create_model(name.replace('efficientnet_v2_', 'efficientnetv2_'), pretrained=False,
                                 num_classes=NUM_CLASSES, drop_path_rate=DROP_RATE, drop_rate=MEMBERS[name].dropout)
    raise ValueError(f'No plain-loop model for {impl!r}.')


def row_activation_mb(impl: str, settings: Settings) -> float:
    """Megabytes (10**6 bytes) per image that ``impl``'s model keeps for backward at the settings' resolution and
    memory format, counted in float32 on the meta device: the same figure on every machine."""
    loop_impl = {'ours': 'ours-loop', 'ours-composer': 'ours-loop', 'ours-lean': 'ours-lean-loop'}.get(impl, impl)
    with torch.device('meta'):
        model = build_loop_model(loop_impl, settings.model)
    return activation_bytes_per_image(model, settings.resolution, settings.channels_last) / 1e6


def add_ratios(rows: Sequence[Row]) -> None:
    """Compare every timed row to the fastest peer row of its mode (images/s, and peak memory when known)."""
    for mode in MODES:
        peers = [r for r in rows if r.mode == mode and r.impl in PEERS and r.images_per_s]
        if not peers:
            continue
        best = max(peers, key=lambda r: r.images_per_s)
        for row in rows:
            if row.mode != mode or not row.images_per_s:
                continue
            row.reference = best.name
            row.ratio = row.images_per_s / best.images_per_s
            if row.peak_memory_gib and best.peak_memory_gib:
                row.memory_ratio = row.peak_memory_gib / best.peak_memory_gib
