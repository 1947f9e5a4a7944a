"""Training step with our LabelSmoothing against Composer's, same model, interleaved (issue 3).

    python benchmarks/label_smoothing.py [--steps 12 --batch-size 32 --resolution 64 --threads 1]

Each round times one Trainer step of each in turn (ABAB), so both see the same background load; prints the
median step time of each and the median per-round ratio. Runs on a GPU when one is present.
"""

import argparse
import statistics
import time

import torch
from composer import Callback, Trainer
from composer.algorithms import LabelSmoothing as ComposerLabelSmoothing

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=12)
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
    ratios = [b / a for a, b in zip(ours, theirs)]
    print(f'device {"cuda" if torch.cuda.is_available() else "cpu"}, batch {args.batch_size}, '
          f'{args.resolution}x{args.resolution}, {args.threads} thread(s), {args.steps} rounds')
    print(f'ours LabelSmoothing:     median step {statistics.median(ours) * 1e3:.1f} ms')
    print(f"Composer's LabelSmoothing: median step {statistics.median(theirs) * 1e3:.1f} ms")
    print(f"median per-round speed ratio ours/Composer's: {statistics.median(ratios):.3f}")


if __name__ == '__main__':
    main()
