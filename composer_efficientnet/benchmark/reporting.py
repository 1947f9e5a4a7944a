"""A run's record: the machine and versions, its JSON document (written whole by a rename), and the plain-text
table of one."""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import platform
from dataclasses import asdict
from typing import Any, Dict, Optional, Sequence

import composer
import torch
import torchvision

import composer_efficientnet
from composer_efficientnet.benchmark.rows import (DROP_RATE, IMPLEMENTATIONS, LABEL_SMOOTHING, NUM_CLASSES, SGD_ARGS,
                                                  Row, Settings)
from composer_efficientnet.outputs import atomic_output

__all__ = ['TRAIN_METRICS_NOTE', 'device_name', 'versions', 'report', 'format_table', 'write_json']

TRAIN_METRICS_NOTE = ('Trainer rows: the Composer model\'s train metric (MulticlassAccuracy) is updated, computed '
                      'and logged every step, as in any Trainer run; the plain loops compute no metric.')


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and core count."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open('/proc/cpuinfo') as cpuinfo:
            model = next((line.split(':', 1)[1].strip() for line in cpuinfo if line.startswith('model name')),
                         model)
    return f'{model} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)'


def versions() -> Dict[str, Optional[str]]:
    """Versions of everything that shapes the figures."""
    timm_version = None
    if importlib.util.find_spec('timm') is not None:
        import timm
        timm_version = timm.__version__
    return {'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.version.cuda,
            'cudnn': str(torch.backends.cudnn.version()) if torch.cuda.is_available() else None,
            'torchvision': torchvision.__version__, 'composer': composer.__version__, 'timm': timm_version,
            'composer_efficientnet': composer_efficientnet.__version__}


def report(settings: Settings, device: torch.device, rows: Sequence[Row], skipped: Dict[str, str],
           sync_check: Optional[Dict[str, str]], complete: bool) -> Dict[str, Any]:
    """The JSON document of a run: where, when, with what, and every row."""
    return {
        'benchmark': 'composer_efficientnet.benchmark',
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'device': device_name(device),
        'versions': versions(),
        'settings': {**asdict(settings), 'rows': list(settings.rows), 'modes': list(settings.modes),
                     'optimizer': {'name': 'SGD', **SGD_ARGS}, 'label_smoothing': LABEL_SMOOTHING,
                     'drop_rate': DROP_RATE, 'num_classes': NUM_CLASSES,
                     'tf32': torch.backends.cuda.matmul.allow_tf32 if device.type == 'cuda' else None,
                     'train_metrics': TRAIN_METRICS_NOTE},
        'rows': [{'name': row.name, 'description': IMPLEMENTATIONS[row.impl], **asdict(row)} for row in rows],
        'skipped': skipped,
        'sync_check': sync_check,
        'complete': complete,
    }


def format_table(result: Dict[str, Any]) -> str:
    """A plain-text table of a run's JSON document."""
    settings = result['settings']
    header = (f"{settings['model']} training step on {result['device']} ({result['date']}): batch "
              f"{settings['batch_size']}, {settings['resolution']}x{settings['resolution']}, {settings['precision']}"
              f"{', channels_last' if settings['channels_last'] else ''}"
              f"{', cudnn.benchmark' if settings.get('cudnn_benchmark') else ''}; "
              f"torch {result['versions']['torch']}, "
              f"composer {result['versions']['composer']}")
    lines = [header, f"{'row':<28}{'mode':<10}{'images/s':>10}{'spread':>8}{'peak GiB':>10}{'x peer':>8}"
                     f"{'mem x':>7}{'act MB':>8}{'reads':>7}  vs"]
    for row in result['rows']:
        lines.append(_format_row(row))
    for impl, why in result.get('skipped', {}).items():
        lines.append(f'{impl}: skipped ({why})')
    if result.get('sync_check'):
        lines.append('host-sync check: ' + ', '.join(f'{k} {v}' for k, v in result['sync_check'].items()))
    return '\n'.join(lines)


def _format_row(row: Dict[str, Any]) -> str:
    label = row['description']
    if row['error']:
        return f"{label:<28}{row['mode']:<10}  failed: {row['error']}"
    windows = row['window_images_per_s']
    spread = (max(windows) - min(windows)) / row['images_per_s']
    return (f"{label:<28}{row['mode']:<10}{row['images_per_s']:>10,.1f}{spread:>8.1%}"
            f"{_number(row['peak_memory_gib'], '.2f'):>10}{_number(row['ratio'], '.3f'):>8}"
            f"{_number(row['memory_ratio'], '.2f'):>7}{_number(row.get('activation_mb_per_image'), '.1f'):>8}"
            f"{_number(row.get('host_reads_per_step'), 'd'):>7}"
            f"  {row['reference'] or ''}")


def _number(value: Optional[float], spec: str) -> str:
    return 'n/a' if value is None else format(value, spec)


def write_json(result: Dict[str, Any], path: Optional[str]) -> None:
    """Write ``result`` to ``path`` (its folder made if missing) by a rename, so a run stopped at any moment
    leaves a whole file; a failed write raises :class:`~composer_efficientnet.outputs.OutputError`, one line."""
    if path:
        with atomic_output(path, '--json', 'w') as file:
            json.dump(result, file, indent=2)
            file.write('\n')
