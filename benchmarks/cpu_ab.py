"""Interleaved A/B timing of the training step on a shared CPU: this package's member through a Trainer
(``--trainer ours``: :class:`~composer_efficientnet.trainer.SyncFreeTrainer`, the default; ``ours-composer``:
Composer's own ``Trainer``) and a peer's plain-loop step take turns, one step each, so both see the same
background load.

``python -m composer_efficientnet.benchmark`` times rows one after another, which on a machine shared with other
jobs mixes the load's changes into the ratio. Here each Trainer step is followed by one peer step run from a
Trainer callback (outside the Trainer step's timing), and the ratio is taken per pair. Settings and models are the
benchmark's own (``composer_efficientnet.benchmark``).

Usage (from the repository root): ``python benchmarks/cpu_ab.py --pairs 12 --batch-size 32 --resolution 224
[--model efficientnet_v2_s] [--threads 1] [--peer torchvision] [--trainer ours] [--memory-efficient] [--json PATH]``.
It also reports the activation MB (10**6 bytes, float32) per image each model keeps for its backward pass.
``--memory-efficient`` builds the Trainer's model memory-efficient; ``--lean-ab`` instead times our default and
memory-efficient models against each other in the plain loop (issue 17's cost of the lean mode).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from typing import Dict, List, Optional

import torch
from composer import Callback, State
from composer.algorithms import ChannelsLast
from composer.loggers import Logger

from composer_efficientnet import benchmark as bench
from composer_efficientnet.algorithms import LabelSmoothing, SampleStochasticDepth
from composer_efficientnet.composer_model import composer_efficientnet


class PeerTurns(Callback):
    """At each Trainer batch end: note the end of the Trainer step, run and time one peer step, and note when
    the Trainer resumes."""

    def __init__(self, peer: str, settings: bench.Settings) -> None:
        self.settings = settings
        self.model = bench.build_loop_model(peer, settings.model).to(memory_format=settings.memory_format).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), **bench.SGD_ARGS)
        self.batch = bench.make_batch(settings, torch.device('cpu'))
        self.trainer_s: List[float] = []
        self.peer_s: List[float] = []
        self._resumed = time.perf_counter()

    def batch_end(self, state: State, logger: Logger) -> None:
        ended = time.perf_counter()
        self.trainer_s.append(ended - self._resumed)
        bench.loop_step(self.model, self.optimizer, self.batch, self.settings)
        self._resumed = time.perf_counter()
        self.peer_s.append(self._resumed - ended)


def run_pairs(settings: bench.Settings, trainer_row: str, peer: str, pairs: int, warmup: int,
              memory_efficient: bool = False) -> Dict[str, object]:
    """Alternate ``warmup + pairs`` Trainer and peer steps; the per-pair ratios skip the warm-up pairs."""
    turns = PeerTurns(peer, settings)
    model = composer_efficientnet(settings.model, num_classes=bench.NUM_CLASSES, memory_efficient=memory_efficient)
    algorithms = [SampleStochasticDepth(drop_rate=bench.DROP_RATE), LabelSmoothing(smoothing=bench.LABEL_SMOOTHING)]
    if settings.channels_last:
        algorithms.append(ChannelsLast())
    trainer = bench.TRAINERS[trainer_row](
        model=model, train_dataloader=bench.RepeatBatch(turns.batch), max_duration=f'{warmup + pairs}ba',
        optimizers=torch.optim.SGD(model.parameters(), **bench.SGD_ARGS), algorithms=algorithms, callbacks=[turns],
        device='cpu', precision='fp32', progress_bar=False, log_to_console=False, loggers=[], seed=settings.seed,
        device_train_microbatch_size=settings.batch_size)
    trainer.fit()
    trainer.close()
    ours, theirs = turns.trainer_s[warmup:], turns.peer_s[warmup:]
    ratios = [t / o for o, t in zip(ours, theirs)]  # > 1: ours is faster
    return {'ours_images_per_s': settings.batch_size / statistics.median(ours),
            'peer_images_per_s': settings.batch_size / statistics.median(theirs),
            'median_pair_ratio': statistics.median(ratios), 'pair_ratios': ratios,
            'ours_step_s': ours, 'peer_step_s': theirs}


def run_lean_pairs(settings: bench.Settings, pairs: int, warmup: int) -> Dict[str, object]:
    """Plain-loop steps of our default and memory-efficient models (same weights), taking turns (the first of a
    pair alternating); the per-pair ratios ``lean / default`` of step times skip the warm-up pairs."""
    models = {impl: bench.build_loop_model(impl, settings.model).to(memory_format=settings.memory_format).train()
              for impl in ('ours-loop', 'ours-lean-loop')}
    models['ours-lean-loop'].load_state_dict(models['ours-loop'].state_dict())
    optimizers = {impl: torch.optim.SGD(model.parameters(), **bench.SGD_ARGS) for impl, model in models.items()}
    batch = bench.make_batch(settings, torch.device('cpu'))
    seconds: Dict[str, List[float]] = {impl: [] for impl in models}
    for pair in range(warmup + pairs):
        for impl in list(models)[::-1 if pair % 2 else 1]:
            start = time.perf_counter()
            bench.loop_step(models[impl], optimizers[impl], batch, settings)
            seconds[impl].append(time.perf_counter() - start)
    default, lean = seconds['ours-loop'][warmup:], seconds['ours-lean-loop'][warmup:]
    ratios = [b / a for a, b in zip(default, lean)]  # > 1: the lean step is slower
    return {'default_images_per_s': settings.batch_size / statistics.median(default),
            'lean_images_per_s': settings.batch_size / statistics.median(lean),
            'median_pair_ratio_lean_over_default': statistics.median(ratios), 'pair_ratios': ratios,
            'default_step_s': default, 'lean_step_s': lean}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='efficientnet_b0')
    parser.add_argument('--peer', choices=('torchvision', 'timm', 'ours-loop', 'ours-lean-loop'), default='torchvision')
    parser.add_argument('--memory-efficient', action='store_true', help='the Trainer\'s model memory_efficient')
    parser.add_argument('--trainer', choices=tuple(bench.TRAINERS), default='ours')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--resolution', type=int, default=224)
    parser.add_argument('--pairs', type=int, default=12)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--threads', type=int, help='torch threads (default: torch\'s own)')
    parser.add_argument('--channels-last', action='store_true', help='channels_last input and peer model')
    parser.add_argument('--lean-ab', action='store_true', help='instead: our default and memory-efficient models '
                        'in a plain loop, taking turns (issue 17\'s cost of the lean mode)')
    parser.add_argument('--json', metavar='PATH')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = bench.Settings(model=args.model, device='cpu', batch_size=args.batch_size, resolution=args.resolution,
                              precision='fp32', channels_last=args.channels_last, warmup=args.warmup, steps=1,
                              windows=args.pairs, compile=False, rows=(args.trainer, args.peer))
    torch.manual_seed(settings.seed)
    if args.lean_ab:
        return lean_ab(settings, args)
    ours = 'ours-lean-loop' if args.memory_efficient else 'ours-loop'
    activations = {'ours': bench.row_activation_mb(ours, settings),
                   args.peer: bench.row_activation_mb(args.peer, settings)}
    result = {**_context(args, activations), 'peer': args.peer,
              **run_pairs(settings, args.trainer, args.peer, args.pairs, args.warmup, args.memory_efficient)}
    print(f"{result['device']}, batch {args.batch_size}, {args.resolution}x{args.resolution}, fp32: {args.trainer}"
          f"{' (memory_efficient)' if args.memory_efficient else ''} "
          f"{result['ours_images_per_s']:.2f} images/s, {args.peer} (plain loop) {result['peer_images_per_s']:.2f}; "
          f"median per-pair ratio ours/{args.peer} {result['median_pair_ratio']:.3f} over {args.pairs} pairs; "
          f"activations per image: ours {activations['ours']:.1f} MB, {args.peer} {activations[args.peer]:.1f} MB")
    _write(result, args.json)
    return 0


def _context(args: argparse.Namespace, activations: dict) -> dict:
    """What every result records besides its timings: date, machine, versions, settings, activations."""
    return {'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            'device': bench.device_name(torch.device('cpu')), 'versions': bench.versions(), 'settings': vars(args),
            'activation_mb_per_image': activations}


def _write(result: dict, path: str | None) -> None:
    if path:
        with open(path, 'w') as file:
            json.dump(result, file, indent=2)


def lean_ab(settings: bench.Settings, args: argparse.Namespace) -> int:
    """``--lean-ab``: run and print :func:`run_lean_pairs`, with both models' activation MB per image."""
    activations = {impl: bench.row_activation_mb(impl, settings) for impl in ('ours-loop', 'ours-lean-loop')}
    result = {**_context(args, activations), **run_lean_pairs(settings, args.pairs, args.warmup)}
    print(f"{result['device']}, batch {args.batch_size}, {args.resolution}x{args.resolution}, fp32, plain loop: "
          f"default {result['default_images_per_s']:.2f} images/s, memory_efficient {result['lean_images_per_s']:.2f}; "
          f"median per-pair step-time ratio lean/default {result['median_pair_ratio_lean_over_default']:.3f} over "
          f"{args.pairs} pairs; activations per image: default {activations['ours-loop']:.1f} MB, lean "
          f"{activations['ours-lean-loop']:.1f} MB")
    _write(result, args.json)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
