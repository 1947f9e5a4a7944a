"""The argument parsers of the commands that run a model, ``train``, ``eval``, ``export``, ``predict`` and
``benchmark``, with their choices and defaults, built with the standard library alone.

``composer-efficientnet`` parses a command's line here before it imports the command's module, and with it
torch and Composer, so that ``--help`` and a mistyped line answer at once; the command's ``main`` parses the
same line the same way, so ``python -m composer_efficientnet.train`` and ``train.main([...])`` behave as the
command does. Options may stand anywhere on the line, before, between or after the positionals
(:func:`parse`). This module imports nothing but the standard library (tests/test_cli.py checks).
"""

from __future__ import annotations

import argparse
import difflib
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ['FORMATS', 'BENCHMARK_ROWS', 'BENCHMARK_DEFAULT_ROWS', 'BENCHMARK_DEVICE_DEFAULTS', 'PARSERS', 'parse',
           'positive', 'train_parser', 'eval_parser', 'export_parser', 'predict_parser', 'benchmark_parser']

#: Export formats and the file ending each is written with by default.
FORMATS = {'onnx': '.onnx', 'torchscript': '.ts', 'export': '.pt2'}

_ANYWHERE = 'Options may come anywhere on the line, before, between or after the positional arguments.'


def positive(what: str = 'integer') -> Callable[[str], int]:
    """An argparse ``type``: a whole number of at least 1, else ``expected a positive WHAT, got 'TEXT'``."""
    def parse_positive(text: str) -> int:
        if not text.strip().isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"expected a positive {what}, got '{text}'")
        return int(text)

    return parse_positive


def parse(parser: argparse.ArgumentParser, argv: Optional[List[str]] = None) -> argparse.Namespace:
    """``parser``'s reading of ``argv`` with options anywhere on the line (``parse_intermixed_args``); an unknown
    option is named alone, with the closest known one, and exits with argparse's status 2."""
    args, extras = parser.parse_known_intermixed_args(argv)
    if extras:
        # After an unknown option argparse leaves the positionals that follow it unread too: name the option.
        unknown = [text for text in extras if text.startswith('-')] or extras
        known = [option for action in parser._actions for option in action.option_strings]
        named = []
        for text in unknown:
            close = difflib.get_close_matches(text.split('=')[0], known, n=1)
            named.append(f'{text} (did you mean {close[0]}?)' if close else text)
        parser.error(f"unrecognized arguments: {' '.join(named)}")
    return args


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f'composer-efficientnet {command}', description=description,
                                   epilog=_ANYWHERE)


def _add_overrides(parser: argparse.ArgumentParser, example: str) -> None:
    # default=[]: without it argparse names the overrides among the missing arguments when the recipe is missing
    parser.add_argument('overrides', nargs='*', default=[], metavar='key=value',
                        help=f'dotted.key=value overrides of the recipe, e.g. {example}')


def _add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--debug', action='store_true',
                        help='also print the traceback of an error (the exit status stays the same)')


def train_parser() -> argparse.ArgumentParser:
    parser = _parser('train', 'Train from a YAML recipe. Batch sizes in the recipe are global; runs as one process '
                     'or under Composer\'s launcher (composer -n 8 -m composer_efficientnet.train RECIPE).')
    parser.add_argument('recipe', help='path to a YAML recipe')
    _add_overrides(parser, 'max_duration=2ep')
    _add_debug(parser)
    return parser


def eval_parser() -> argparse.ArgumentParser:
    parser = _parser('eval', 'Evaluate weights on held-out data from a YAML recipe: load_path, else the newest '
                     'checkpoint of its save_folder, else the model\'s pretrained file.')
    parser.add_argument('recipe', help='path to a YAML recipe')
    _add_overrides(parser, 'load_path=run/latest-rank0.pt')
    parser.add_argument('--json', metavar='PATH', help='also write the results to this JSON file')
    _add_debug(parser)
    return parser


def export_parser() -> argparse.ArgumentParser:
    parser = _parser('export', 'Export a model for deployment as ONNX, TorchScript or a torch.export program, '
                     'from a YAML recipe (the weights eval evaluates) or a weights file.')
    parser.add_argument('source', metavar='RECIPE|WEIGHTS', help='a YAML recipe (as for eval) or a weights file')
    _add_overrides(parser, 'run_name=quickstart')
    parser.add_argument('--format', choices=FORMATS, default='onnx', help='file format (default: onnx)')
    parser.add_argument('--out', metavar='PATH', help='the file to write (default: the member and the format\'s '
                        'ending, such as efficientnet_b0.onnx)')
    parser.add_argument('--check', action='store_true', help='run the written file on random images and print the '
                        'largest difference from the eager model')
    _add_debug(parser)
    return parser


def predict_parser() -> argparse.ArgumentParser:
    parser = _parser('predict', 'Classify images with a YAML recipe\'s model (the weights eval evaluates) or a '
                     'weights file\'s.')
    parser.add_argument('source', metavar='RECIPE|WEIGHTS', help='a YAML recipe (as for eval) or a weights file')
    parser.add_argument('images', nargs='+', metavar='IMAGE_OR_DIR', help='image files or folders of images; a '
                        "recipe's dotted.key=value overrides may stand among them (an existing file or folder is "
                        'an image even with = in its name)')
    parser.add_argument('--top', type=positive('number of classes'), default=5,
                        help='classes to print per image (default: 5)')
    parser.add_argument('--json', metavar='PATH', help='also write the predictions to this JSON file')
    parser.add_argument('--max-image-pixels', type=positive('number of pixels'), default=89_478_485, metavar='N',
                        help='refuse an image whose header gives more pixels, before decoding it (default: '
                        "89478485, Pillow's limit: a quarter GiB of RGB)")
    _add_debug(parser)
    return parser


#: The benchmark's rows (``--rows``), each with its description.
BENCHMARK_ROWS = {
    'ours': 'ours, SyncFreeTrainer',
    'ours-loop': 'ours, plain loop',
    'ours-composer': 'ours, composer.Trainer',
    'ours-lean': 'ours lean, SyncFreeTrainer',
    'ours-lean-loop': 'ours lean, plain loop',
    'torchvision': 'torchvision, plain loop',
    'timm': 'timm, plain loop',
}
BENCHMARK_DEFAULT_ROWS = ('ours', 'torchvision', 'timm')
#: The benchmark's defaults per device type, for the options left unset: the issue's GPU setting, and a CPU
#: setting that runs in about a minute on 2 cores.
BENCHMARK_DEVICE_DEFAULTS: Dict[str, Dict[str, Any]] = {
    'cuda': {'batch_size': 256, 'resolution': None, 'precision': 'bf16', 'channels_last': True, 'warmup': 20,
             'steps': 20, 'windows': 3, 'compile': True, 'cudnn_benchmark': True},
    'cpu': {'batch_size': 8, 'resolution': 128, 'precision': 'fp32', 'channels_last': False, 'warmup': 2,
            'steps': 4, 'windows': 3, 'compile': False, 'cudnn_benchmark': False},
}


def _row_list(text: str) -> Tuple[str, ...]:
    rows = tuple(dict.fromkeys(part.strip() for part in text.split(',') if part.strip()))
    unknown = [row for row in rows if row not in BENCHMARK_ROWS]
    if unknown or not rows:
        raise argparse.ArgumentTypeError(f"unknown rows {unknown}; choose from {', '.join(BENCHMARK_ROWS)}")
    return rows


def benchmark_parser() -> argparse.ArgumentParser:
    defaults = BENCHMARK_DEVICE_DEFAULTS
    parser = _parser('benchmark', "Training-step throughput of EfficientNet: this package's model through its "
                     "composer.Trainer against torchvision's and timm's in a plain PyTorch loop.")
    parser.epilog = (f"Defaults on a GPU: {defaults['cuda']} (resolution: the member's own). On the CPU: "
                     f"{defaults['cpu']}.")
    count = positive()
    parser.add_argument('--model', default='efficientnet_b0', help='member, efficientnet_b0 ... efficientnet_b7')
    parser.add_argument('--device', choices=('auto', 'cuda', 'cpu'), default='auto')
    parser.add_argument('--batch-size', type=count)
    parser.add_argument('--resolution', type=count, help="image side in pixels")
    parser.add_argument('--precision', choices=('bf16', 'fp32'), help='bf16 autocast needs CUDA')
    parser.add_argument('--channels-last', action=argparse.BooleanOptionalAction)
    parser.add_argument('--warmup', type=count, help='untimed steps first (compilation happens there)')
    parser.add_argument('--steps', type=count, help='steps per timing window')
    parser.add_argument('--windows', type=count, help='timing windows; images/s is their median')
    parser.add_argument('--compile', action=argparse.BooleanOptionalAction,
                        help='also run every row compiled (default: on a GPU only)')
    parser.add_argument('--cudnn-benchmark', action=argparse.BooleanOptionalAction,
                        help='let cuDNN time convolution algorithms, for every row (default: on a GPU)')
    parser.add_argument('--rows', type=_row_list, default=BENCHMARK_DEFAULT_ROWS,
                        help=f"comma-separated, from {', '.join(BENCHMARK_ROWS)} "
                        f"(default: {','.join(BENCHMARK_DEFAULT_ROWS)})")
    parser.add_argument('--memory-efficient', action='store_true',
                        help='add the rows of our memory-efficient mode: ours-lean (and ours-lean-loop with ours-loop)')
    parser.add_argument('--sync-check', action=argparse.BooleanOptionalAction, default=True,
                        help='check on CUDA that our model step makes no host-device sync (default: on)')
    parser.add_argument('--json', metavar='PATH', help='write the results there as JSON')
    parser.add_argument('--report', nargs='+', metavar='JSON', help='print the tables of earlier JSON results and exit')
    return parser


#: Each command's parser, by the name it is typed with.
PARSERS: Dict[str, Callable[[], argparse.ArgumentParser]] = {
    'train': train_parser, 'eval': eval_parser, 'export': export_parser, 'predict': predict_parser,
    'benchmark': benchmark_parser}
