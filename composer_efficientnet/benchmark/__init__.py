"""Training-step throughput of EfficientNet: this package's model through its ``composer.Trainer`` against
torchvision's and timm's in a plain PyTorch loop.

Every row runs in this one process, on the same device, batch, resolution, precision and memory format,
on one synthetic batch made once and already on the device, so the rows differ only by model and training
loop, never by data loading. Rows:

* ``ours``: this package's member through :class:`~composer_efficientnet.trainer.SyncFreeTrainer` (the
  ``composer.Trainer`` that recipes use) with :class:`SampleStochasticDepth` (0.2), :class:`LabelSmoothing`
  (0.1) and, with channels_last, Composer's ``ChannelsLast``; its train metric (accuracy, part of the
  Composer model) is updated, computed and logged every step, as in any real run.
* ``torchvision`` and ``timm`` (the peers): the same member in a plain loop with
  ``F.cross_entropy(label_smoothing=0.1)``, each with its own stochastic depth at 0.2.
* ``ours-loop`` (diagnostic, not run by default): this package's module in the same plain loop, which
  splits the Trainer's cost from the model's.
* ``ours-composer`` (diagnostic, not run by default): as ``ours``, through Composer's own ``Trainer``.
* ``ours-lean`` and ``ours-lean-loop`` (``--memory-efficient`` adds them): as ``ours`` and ``ours-loop``, the
  model built with ``memory_efficient=True``.

Every row also reports the activation megabytes per image its model keeps for backward (float32, counted with
saved-tensor hooks on the meta device, so the figure is the same on every machine), beside images/s and peak memory.

Trainer rows also count the host reads of device values per step (``HostReads``), in a few untimed steps
after the timed ones, eager only (the counter intercepts every torch call, which compiled code would guard on).

Each row runs eager and, with ``--compile``, compiled (``compile_config={}`` for the Trainer,
``torch.compile(model)`` for the loops). Time is taken at step ends (CUDA events on a GPU, ``perf_counter``
on the CPU), after warm-up steps, over several windows; a row's images/s is the median window. Each row
is compared to the fastest peer row of the same mode.

Example:
    >>> from composer_efficientnet.benchmark import main
    >>> main(['--device', 'cpu', '--resolution', '32', '--batch-size', '2', '--steps', '1', '--warmup', '1',
    ...       '--windows', '1', '--rows', 'ours-loop,torchvision'])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from typing import Any, Dict, List, Optional

import torch
import torchvision

# The parser is the command line's, built without torch (composer-efficientnet benchmark --help needs no more).
from composer_efficientnet.arguments import benchmark_parser as build_parser
from composer_efficientnet.arguments import parse
# Each submodule's names, used here or not: every name of the benchmark when it was one module stays importable
# from the package (the tests, benchmarks/cpu_ab.py).
from composer_efficientnet.benchmark.reporting import (TRAIN_METRICS_NOTE, _number, device_name,  # noqa: F401
                                                    format_table, report, versions, write_json)
from composer_efficientnet.benchmark.rows import (DEFAULT_ROWS, DEVICE_DEFAULTS, DROP_RATE,  # noqa: F401
                                                  IMPLEMENTATIONS, LABEL_SMOOTHING, LEAN_ROWS, MODES, NUM_CLASSES,
                                                  PEERS, SGD_ARGS, TRAINERS, Row, Settings, add_ratios,
                                                  build_loop_model, row_activation_mb)
from composer_efficientnet.benchmark.sync_check import (SYNC_CHECK_STEPS, _checked_host_sync,  # noqa: F401
                                                        _SyncErrorSteps, check_host_sync)
from composer_efficientnet.benchmark.timing import (READ_COUNT_STEPS, RepeatBatch, WindowTimer,  # noqa: F401
                                                    autocast, free_memory, loop_step, make_batch, match_trainer_math,
                                                    run_loop, run_row, run_trainer)
from composer_efficientnet.efficientnet import MEMBERS, canonical_name
from composer_efficientnet.memory import activation_bytes_per_image  # noqa: F401
from composer_efficientnet.outputs import OutputError, output_problem

__all__ = ['Settings', 'Row', 'main', 'run_benchmark', 'format_table']


def run_benchmark(settings: Settings, json_path: Optional[str] = None, sync_check: bool = True) -> Dict[str, Any]:
    """Run (with ``sync_check``) the host-sync check, then every selected row in every selected mode; the JSON
    file is rewritten after each, so an interrupted run keeps what it measured. The check runs first: it is
    short, and the row a time limit would cut off is the last one."""
    device = torch.device(settings.device)
    match_trainer_math(device)
    if device.type == 'cuda':  # every row alike: our recipes and torchvision's and timm's scripts turn it on
        torch.backends.cudnn.benchmark = settings.cudnn_benchmark
    skipped = {} if 'timm' not in settings.rows or importlib.util.find_spec('timm') else {'timm': 'not installed'}
    if 'torchvision' in settings.rows and not hasattr(torchvision.models, settings.model):
        skipped['torchvision'] = f'has no {settings.model}'
    rows: List[Row] = []
    checked = _checked_host_sync(settings, device) if sync_check else None
    write_json(report(settings, device, rows, skipped, checked, complete=False), json_path)
    for mode in settings.modes:
        for impl in settings.rows:
            if impl in skipped:
                continue
            rows.append(run_row(impl, mode, settings, device))
            add_ratios(rows)
            write_json(report(settings, device, rows, skipped, checked, complete=False), json_path)
            print(f'{rows[-1].name}: {_number(rows[-1].images_per_s, ",.1f")} images/s '
                  f'({rows[-1].wall_s:.0f} s)', flush=True)
    result = report(settings, device, rows, skipped, checked, complete=True)
    write_json(result, json_path)
    return result


def settings_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Settings:
    """Fill unset options with the defaults of the chosen device."""
    device = ('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto' else args.device
    if device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available')
    try:
        model = canonical_name(args.model)
    except ValueError as error:
        parser.error(str(error))
    defaults = DEVICE_DEFAULTS[device]
    chosen = {key: defaults[key] if getattr(args, key) is None else getattr(args, key) for key in defaults}
    chosen['resolution'] = chosen['resolution'] or MEMBERS[model].resolution
    if chosen['precision'] == 'bf16' and device != 'cuda':
        parser.error('--precision bf16 is measured with CUDA autocast; use fp32 on the CPU')
    rows = args.rows
    if args.memory_efficient:
        rows = tuple(dict.fromkeys(rows + ('ours-lean',) + (('ours-lean-loop',) if 'ours-loop' in rows else ())))
    return Settings(model=model, device=device, rows=rows, **chosen)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark (or print earlier results with ``--report``); 1 if any row failed."""
    parser = build_parser()
    args = parse(parser, argv)
    if args.report:
        for path in args.report:
            try:
                with open(path) as file:
                    print(format_table(json.load(file)), end='\n\n')
            except (OSError, ValueError, KeyError, TypeError) as error:
                parser.error(f"--report: cannot read '{path}' as this benchmark's JSON ({type(error).__name__}: "
                             f'{error})')
        return 0
    problem = args.json and output_problem(args.json, 'benchmark.json', create=True)
    if problem:
        parser.error(f'--json: {problem}')
    settings = settings_from_args(args, parser)
    try:
        result = run_benchmark(settings, args.json, args.sync_check)
    except OutputError as error:  # the rows measured so far are in the last whole file written
        print(f'composer-efficientnet benchmark: {error}', file=sys.stderr)
        return 4
    print(format_table(result))
    return 1 if any(row['error'] for row in result['rows']) else 0
