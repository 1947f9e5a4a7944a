"""Training step with our LabelSmoothing against Composer's, same model, interleaved (issue 3).

    python benchmarks/label_smoothing.py [--steps 40 --batch-size 32 --resolution 64 --threads 1]

Two measurements, each interleaved (ABAB) so both sides see the same background load:

1. the part of the step that differs: the loss on B0's logits and its backward, with Composer's dense smoothed
   targets (``smooth_labels`` + our soft cross-entropy, what its algorithm makes the loss do) against ours
   (``F.cross_entropy(label_smoothing=)`` on integer targets);
2. a whole Trainer step of B0 with each algorithm.

Prints medians and the quartiles of the per-round speed ratio (above 1: ours faster). Runs on a GPU when one
is present (bf16 autocast there).
"""

import argparse
import statistics
import time

import torch
from composer import Callback, Trainer
from composer.algorithms import LabelSmoothing as ComposerLabelSmoothing
from composer.algorithms.label_smoothing import smooth_labels

from composer_efficientnet import composer_efficientnet
from composer_efficientnet.algorithms import LabelSmoothing


class StepTimes(Callback):
    """Wall time of each Trainer step (synchronized on a GPU at step ends)."""

    def __init__(self) -> None:
        self.times, self._start = [], None

    def batch_start(self, state, logger) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def batch_end(self, state, logger) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


def trainer(algorithm, batch, timer: StepTimes) -> Trainer:
    torch.manual_seed(0)
    model = composer_efficientnet('efficientnet_b0', num_classes=1000)
    return Trainer(model=model, train_dataloader=iter(lambda: batch, None), max_duration='1000000ba',
                   algorithms=[algorithm], callbacks=[timer], optimizers=torch.optim.SGD(model.parameters(), lr=0.01),
                   progress_bar=False, log_to_console=False, device_train_microbatch_size=len(batch[1]),
                   device='gpu' if torch.cuda.is_available() else 'cpu',
                   precision='amp_bf16' if torch.cuda.is_available() else 'fp32')


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def loss_part_times(batch_size: int, rounds: int, repeats: int = 20) -> dict:
    """Seconds per loss + backward on (batch_size, 1000) logits, ours and Composer's, per interleaved round."""
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    model = composer_efficientnet('efficientnet_b0', num_classes=1000)
    logits = torch.randn(batch_size, 1000, device=device, requires_grad=True)
    targets = torch.randint(1000, (batch_size,), device=device)

    def ours() -> None:
        model.label_smoothing = 0.1
        model.loss(logits, (None, targets)).backward()

    def composer() -> None:
        model.label_smoothing = 0.0
        model.loss(logits, (None, smooth_labels(logits, targets.clone(), smoothing=0.1))).backward()

    times = {'ours': [], 'composer': []}
    for _ in range(rounds + 2):
        for name, step in (('ours', ours), ('composer', composer)):
            _sync()
            start = time.perf_counter()
            for _ in range(repeats):
                step()
            _sync()
            times[name].append((time.perf_counter() - start) / repeats)
    return {name: values[2:] for name, values in times.items()}


def _summary(label: str, ours: list, theirs: list) -> None:
    ratios = sorted(b / a for a, b in zip(ours, theirs))
    quartiles = statistics.quantiles(ratios, n=4)
    print(f'{label}: ours {statistics.median(ours) * 1e3:.3f} ms, Composer\'s {statistics.median(theirs) * 1e3:.3f} ms; '
          f'speed ratio ours/Composer\'s median {statistics.median(ratios):.3f} '
          f'(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}, ours faster in '
          f'{sum(r > 1 for r in ratios)}/{len(ratios)} rounds)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=40)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--resolution', type=int, default=64)
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch = (torch.randn(args.batch_size, 3, args.resolution, args.resolution),
             torch.randint(1000, (args.batch_size,)))
    timers = {'ours': StepTimes(), 'composer': StepTimes()}
    trainers = {'ours': trainer(LabelSmoothing(0.1), batch, timers['ours']),
                'composer': trainer(ComposerLabelSmoothing(0.1), batch, timers['composer'])}
    for _ in range(args.warmup + args.steps):
        for run in trainers.values():
            run.fit(duration='1ba')
    ours, theirs = (timers[k].times[args.warmup:] for k in ('ours', 'composer'))
    parts = loss_part_times(args.batch_size, args.steps)
    print(f'device {"cuda" if torch.cuda.is_available() else "cpu"}, batch {args.batch_size}, '
          f'{args.resolution}x{args.resolution}, {args.threads} thread(s), {args.steps} rounds')
    _summary('loss + backward (the part that differs)', parts['ours'], parts['composer'])
    _summary('whole Trainer step', ours, theirs)


if __name__ == '__main__':
    main()
