"""The ``composer-efficientnet`` command: train, eval, export, predict, list, info, benchmark, convert-dataset."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Iterable, List, Optional

from composer_efficientnet.arguments import PARSERS, parse, positive

__all__ = ['main', 'family_table']


def family_table(names: Optional[Iterable[str]] = None) -> List[List[str]]:
    """Rows of the family table: ours beside the paper's parameters, FLOPs and top-1.

    Args:
        names: the members to list (default: all), each a row after the header.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from composer_efficientnet import EfficientNet
    from composer_efficientnet.efficientnet import MEMBERS
    rows = [['member', 'params', 'paper params', 'GMACs', 'paper FLOPs (B)*', 'GFLOPs (2/MAC)', 'train/eval px',
             'dropout', 'paper top-1']]
    for name in MEMBERS if names is None else names:
        member = MEMBERS[name]
        size = member.eval_transform()['crop_size']
        with torch.device('meta'):
            model = EfficientNet.from_name(name).eval()
            counter = FlopCounterMode(display=False)
            with counter:
                model(torch.empty(1, 3, size, size))
        flops = counter.get_total_flops() / 1e9
        params = sum(p.numel() for p in model.parameters())
        rows.append([name, f'{params / 1e6:.2f}M', f'{member.paper_params_m}M', f'{flops / 2:.2f}',
                     f'{member.paper_gflops}', f'{flops:.2f}', f'{member.resolution}/{size}', str(member.dropout),
                     f'{member.paper_top1}%'])
    return rows


MEMORY_BUDGET_BYTES = 80e9
#: Bytes per parameter a bf16-autocast SGD step holds besides activations: fp32 weight, gradient and momentum,
#: and the weight's bf16 copy.
STEP_BYTES_PER_PARAMETER = 4 + 4 + 4 + 2


def memory_table(names: Optional[Iterable[str]] = None) -> List[List[str]]:
    """Rows of the activation-memory table: per member at its training resolution, the float32 MB per image kept
    for backward by the default and the memory-efficient mode, and the largest bf16 batch fitting 80 GB.

    The batch is an estimate: bf16 activations as half the float32 count, plus weights, gradients, momentum and
    bf16 weight copies (:data:`STEP_BYTES_PER_PARAMETER`); no allocator slack, workspaces or input batch.

    Args:
        names: the members to list (default: all), each a row after the header.
    """
    import torch

    from composer_efficientnet import EfficientNet
    from composer_efficientnet.efficientnet import MEMBERS
    from composer_efficientnet.memory import activation_bytes_per_image
    rows = [['member', 'px', 'default MB/img', 'lean MB/img', 'lean/default', 'bf16 batch @80GB default', 'lean']]
    for name in MEMBERS if names is None else names:
        size = MEMBERS[name].resolution
        counts, batches = [], []
        for lean in (False, True):
            with torch.device('meta'):
                model = EfficientNet.from_name(name, memory_efficient=lean)
                counts.append(activation_bytes_per_image(model, size))
            fixed = STEP_BYTES_PER_PARAMETER * sum(p.numel() for p in model.parameters())
            batches.append(int((MEMORY_BUDGET_BYTES - fixed) // (counts[-1] / 2)))
        rows.append([name, str(size), f'{counts[0] / 1e6:.1f}', f'{counts[1] / 1e6:.1f}',
                     f'{counts[1] / counts[0]:.2f}', str(batches[0]), str(batches[1])])
    return rows


def _print_table(rows: List[List[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print('  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print('  '.join('-' * width for width in widths))


def _info(args: argparse.Namespace) -> int:
    if args.memory:
        _print_table(memory_table())
        print('\nActivations: what autograd saves for backward in a float32 training step (parameters excluded),'
              '\ncounted with saved-tensor hooks on the meta device at each member\'s training resolution.'
              '\nBatch: an estimate, (80e9 bytes - 14 bytes/parameter for weights, gradients, SGD momentum and bf16'
              '\nweight copies) / (half the float32 activation count); allocator slack and workspaces not counted.')
        return 0
    _print_table(family_table())
    print('\n* The paper counts FLOPs as multiply-adds; torch.utils.flop_counter counts 2 FLOPs per multiply-add.'
          '\n  Convolutions and matmuls only, batch 1, at each member\'s evaluation resolution (B family: its native'
          '\n  one; V2: that of its published weights, as the paper counts). V2-XL\'s top-1 is with ImageNet-21k'
          '\n  pretraining.')
    return 0


def _list(args: argparse.Namespace) -> int:
    from composer_efficientnet.registry import REGISTRIES
    kinds = [args.kind] if args.kind else list(REGISTRIES)
    for kind in kinds:
        registry = REGISTRIES[kind]
        print(f'{kind}: {registry.description}')
        for name in registry.names():
            print(f'  {name}')
    return 0


def _convert(args: argparse.Namespace) -> int:
    from composer_efficientnet.data.convert import convert_imagefolder_to_mds
    try:
        summaries = convert_imagefolder_to_mds(args.src, args.out, split=args.split, workers=args.workers,
                                               strict=args.strict)
    except (ValueError, OSError, ImportError) as error:
        print(f'composer-efficientnet convert-dataset: {error}', file=sys.stderr)
        return 2
    for summary in summaries.values():
        print(summary)
    return 0


#: The commands that run a model, each in a module of its own (imported only to run it), by the name typed.
COMMANDS = {'train': 'train', 'eval': 'evaluate', 'export': 'export', 'predict': 'predict', 'benchmark': 'benchmark'}
KINDS = ('models', 'algorithms', 'callbacks', 'loggers', 'optimizers', 'schedulers', 'datasets')


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog='composer-efficientnet', description=__doc__.replace('``', ''))
    commands = parser.add_subparsers(dest='command', required=True)
    commands.add_parser('train', help='train from a YAML recipe (see composer-efficientnet train --help)',
                        add_help=False)
    commands.add_parser('eval', help='evaluate a checkpoint or pretrained weights on a recipe\'s held-out data '
                        '(see composer-efficientnet eval --help)', add_help=False)
    commands.add_parser('benchmark', help='time our training step beside torchvision and timm', add_help=False)
    commands.add_parser('export', help='write a recipe\'s or a weights file\'s model as ONNX, TorchScript or a '
                        'torch.export program (see composer-efficientnet export --help)', add_help=False)
    commands.add_parser('predict', help='classify images with a recipe\'s or a weights file\'s model (see '
                        'composer-efficientnet predict --help)', add_help=False)
    listing = commands.add_parser('list', help='print what is registered')
    listing.add_argument('kind', nargs='?', choices=KINDS)
    info = commands.add_parser('info', help='print the EfficientNet family table')
    info.add_argument('--memory', action='store_true', help='print activation MB per image, default and '
                      'memory_efficient, and the largest bf16 batch fitting 80 GB, per member')
    convert = commands.add_parser('convert-dataset', help='write an ImageFolder tree as MosaicML Streaming shards')
    convert.add_argument('--src', required=True, help='ImageFolder root (with train/ and/or val/ of <class>/<image>)')
    convert.add_argument('--out', required=True, help='output directory (or object store URL) for the MDS shards, '
                         'one folder per split')
    convert.add_argument('--split', metavar='NAME', help='convert --src as the single split NAME, laid out as '
                         '<class>/<image>, into OUT/NAME')
    convert.add_argument('--workers', type=positive('number of processes'), metavar='N', help='processes reading '
                         'and checking images (default: the cores of this machine); the shards are the same for any N')
    convert.add_argument('--strict', action='store_true', help='stop at the first unreadable image and remove what '
                         'was written, instead of skipping it and naming it in the summary')
    if argv and argv[0] in COMMANDS:
        # Parsed here first, so that --help and a mistyped line answer before the command's module imports torch
        # and Composer; its main parses the line again, the same way.
        parse(PARSERS[argv[0]](), argv[1:])
        return importlib.import_module(f'composer_efficientnet.{COMMANDS[argv[0]]}').main(argv[1:])
    args = parser.parse_args(argv)
    return {'list': _list, 'info': _info, 'convert-dataset': _convert}[args.command](args)


if __name__ == '__main__':
    sys.exit(main())
