"""The ``composer-efficientnet`` command: train, eval, list, info, benchmark, convert-dataset."""

from __future__ import annotations

import argparse
import sys
from typing import Iterable, List, Optional

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


def _print_table(rows: List[List[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print('  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print('  '.join('-' * width for width in widths))


def _info(args: argparse.Namespace) -> int:
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


def _workers(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of processes, got '{text}'")
    return int(text)


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
    listing = commands.add_parser('list', help='print what is registered')
    listing.add_argument('kind', nargs='?', choices=KINDS)
    commands.add_parser('info', help='print the EfficientNet family table')
    convert = commands.add_parser('convert-dataset', help='write an ImageFolder tree as MosaicML Streaming shards')
    convert.add_argument('--src', required=True, help='ImageFolder root (with train/ and/or val/ of <class>/<image>)')
    convert.add_argument('--out', required=True, help='output directory (or object store URL) for the MDS shards, '
                         'one folder per split')
    convert.add_argument('--split', metavar='NAME', help='convert --src as the single split NAME, laid out as '
                         '<class>/<image>, into OUT/NAME')
    convert.add_argument('--workers', type=_workers, metavar='N', help='processes reading and checking images '
                         '(default: the cores of this machine); the shards are the same for any N')
    convert.add_argument('--strict', action='store_true', help='stop at the first unreadable image and remove what '
                         'was written, instead of skipping it and naming it in the summary')
    if argv and argv[0] == 'train':
        from composer_efficientnet import train
        return train.main(argv[1:])
    if argv and argv[0] == 'eval':
        from composer_efficientnet import evaluate
        return evaluate.main(argv[1:])
    if argv and argv[0] == 'benchmark':
        from composer_efficientnet import benchmark
        return benchmark.main(argv[1:])
    args = parser.parse_args(argv)
    return {'list': _list, 'info': _info, 'convert-dataset': _convert}[args.command](args)


if __name__ == '__main__':
    sys.exit(main())
