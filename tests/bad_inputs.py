"""The catalogue of bad inputs the project rejects, and what each gives.

One row per input: its kind (recipe, override, data tree, weight file, command line), the command line of
``composer-efficientnet`` that feeds it (after writing what it needs into an empty folder), and a regular
expression for the last line on stderr. Every row exits with status 2 and leaves the folder as it was:
tests/test_bad_inputs.py runs them all. Rows marked ``gap`` are inputs the project does not reject cleanly
yet (a traceback or a left-over folder); they run as strict expected failures.
"""

from __future__ import annotations

import copy
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
import yaml

from tests.data_trees import make_tree
from tests.test_recipe import BASE, MISTAKES

Setup = Callable[[Path], List[str]]


@dataclass(frozen=True)
class BadInput:
    kind: str  # recipe, override, data, weights, cli
    name: str
    setup: Setup  # writes what the case needs under the folder; returns the command line
    message: str  # regular expression for the last line on stderr
    usage: bool = False  # argparse errors print a usage line before the message
    gap: str = ''  # why the project does not reject it cleanly yet
    lines: int = 1  # mistakes reported, one line each (the last one is matched)


RUN = {**BASE, 'save_folder': 'checkpoints', 'progress_bar': False,
       'train_dataset': {'digits': {'is_train': True, 'image_size': 8}},
       'val_dataset': {'digits': {'is_train': False, 'image_size': 8}}}


def write_recipe(folder: Path, recipe: Dict[str, Any]) -> str:
    path = folder / 'recipe.yaml'
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def write_text(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def recipe(name: str, content: Dict[str, Any], message: str, gap: str = '') -> BadInput:
    return BadInput('recipe', name, lambda tmp: ['train', write_recipe(tmp, content)], message, gap=gap)


def override(name: str, overrides: List[str], message: str, gap: str = '') -> BadInput:
    return BadInput('override', name, lambda tmp: ['train', write_recipe(tmp, RUN), *overrides], message, gap=gap)


def with_run(**changes: Any) -> Dict[str, Any]:
    return {**copy.deepcopy(RUN), **changes}


# -- data trees: an ImageFolder tree, broken one way each ------------------------------------------------------

def imagenet_recipe(tmp: Path, breaking: Callable[[Path], None]) -> List[str]:
    root = make_tree(tmp / 'imagenet', per_class=2)
    breaking(root)
    datasets = {f'{split}_dataset': {'imagenet': {'datadir': str(root), 'is_train': split == 'train',
                                                  'crop_size': 16}} for split in ('train', 'val')}
    return ['train', write_recipe(tmp, with_run(**datasets))]


def data(name: str, breaking: Callable[[Path], None], message: str, lines: int = 1) -> BadInput:
    return BadInput('data', name, lambda tmp: imagenet_recipe(tmp, breaking), message, lines=lines)


def _empty_class(root: Path) -> None:
    for image in (root / 'train' / 'dog').iterdir():
        image.unlink()


def streaming_data(name: str, columns: Dict[str, str], message: str, **params: Any) -> BadInput:
    """A recipe reading MDS shards of the tree's train split written with ``columns`` (image, label, pickle)."""
    def setup(tmp: Path) -> List[str]:
        from streaming import MDSWriter
        image, label, extra = columns
        with MDSWriter(out=str(tmp / 'mds' / 'train'), columns=columns) as writer:
            for number, path in enumerate(sorted(make_tree(tmp / 'imagenet', per_class=1).rglob('train/*/*'))):
                writer.write({image: path.read_bytes(), label: number, extra: {'source': path.name}})
        dataset = {'streaming_imagenet': {'remote': str(tmp / 'mds'), 'crop_size': 16, **params}}
        return ['train', write_recipe(tmp, with_run(train_dataset=dataset))]

    return BadInput('data', name, setup, message)


# -- weight files for model.efficientnet_b0.pretrained ----------------------------------------------------------

def weights(name: str, content: Callable[[Path], None], message: str) -> BadInput:
    def setup(tmp: Path) -> List[str]:
        path = tmp / 'weights.pt'
        content(path)
        return ['train', write_recipe(tmp, RUN), f'model.efficientnet_b0.pretrained={path}']

    return BadInput('weights', name, setup, message)


def _member_weights(member: str) -> Callable[[Path], None]:
    def save(path: Path) -> None:
        from composer_efficientnet import EfficientNet
        torch.save(EfficientNet.from_name(member).state_dict(), path)

    return save


def _inference(command: str, *args: str, backbone: bool = False) -> Setup:
    """``composer-efficientnet COMMAND weights.pt ARGS`` (``{tmp}`` in ARGS: the folder), with B0's weights
    (without the classifier for a ``backbone``)."""
    def setup(tmp: Path) -> List[str]:
        from composer_efficientnet import EfficientNet
        state = EfficientNet.from_name('efficientnet_b0').state_dict()
        torch.save({k: v for k, v in state.items() if not (backbone and k.startswith('classifier.'))},
                   tmp / 'weights.pt')
        (tmp / 'photo.jpg').write_text('not an image')
        (tmp / 'empty').mkdir()
        return [command, str(tmp / 'weights.pt'), *(arg.format(tmp=tmp) for arg in args)]

    return setup


# -- composer-efficientnet's own arguments ------------------------------------------------------------------------

def cli(name: str, setup: Setup, message: str, usage: bool = True) -> BadInput:
    return BadInput('cli', name, setup, message, usage=usage)


def _earlier_run(tmp: Path) -> List[str]:
    (tmp / 'checkpoints').mkdir()
    (tmp / 'checkpoints' / 'ep1-ba23-rank0.pt').write_bytes(b'a checkpoint of another run')
    return ['train', write_recipe(tmp, RUN)]


def _converted_source(tmp: Path) -> List[str]:
    make_tree(tmp / 'src', per_class=1)
    (tmp / 'out' / 'train').mkdir(parents=True)
    (tmp / 'out' / 'train' / 'shard.00000.mds').write_bytes(b'earlier shards')
    return ['convert-dataset', '--src', str(tmp / 'src'), '--out', str(tmp / 'out')]


def _half_bad_source(tmp: Path) -> List[str]:
    root = make_tree(tmp / 'src', per_class=1)
    shutil.rmtree(root / 'val' / 'eel')
    (root / 'val' / 'eel').mkdir()
    return ['convert-dataset', '--src', str(root), '--out', str(tmp / 'out')]


def _convert(*options: str, breaking: Callable[[Path], None] = lambda root: None) -> Setup:
    def setup(tmp: Path) -> List[str]:
        root = make_tree(tmp / 'src', per_class=1)
        breaking(root)
        return ['convert-dataset', '--src', str(root), '--out', str(tmp / 'out'), *options]

    return setup


def _binary(path: Path) -> Path:
    torch.save({'state': {'model': {'w': torch.ones(3)}}}, path)
    return path


# -- checkpoints that would run code when loaded, and a checkpoint of another run ---------------------------------

class RunsCode:
    """Pickled as a call of ``os.system`` that creates :attr:`MARKER` in ``folder``: unpickling it runs that."""
    MARKER = 'code-ran'

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __reduce__(self):
        return os.system, (f'touch {shlex.quote(str(self.folder / self.MARKER))}',)


def code_running_checkpoint(path: Path) -> Path:
    """A file shaped like a Composer checkpoint that creates a file beside itself when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'state': {'model': {}}, 'payload': RunsCode(path.parent)}, path)
    return path


def _code_in(command: str, name: str, as_load_path: bool, **changes: Any) -> Setup:
    """``command`` on RUN with ``changes``, where the file ``name`` would run code (and is ``load_path``)."""
    def setup(tmp: Path) -> List[str]:
        path = code_running_checkpoint(tmp / name)
        return [command, write_recipe(tmp, with_run(**changes, **({'load_path': str(path)} if as_load_path else {})))]

    return setup


def _code_in_a_callback(tmp: Path) -> List[str]:
    loading = {'load_checkpoint': {'load_path': str(code_running_checkpoint(tmp / 'crafted.pt')), 'event': 'fit_start'}}
    return ['train', write_recipe(tmp, with_run(callbacks=[loading]))]


def _another_run(command: str, **changes: Any) -> Setup:
    """``command`` of run 'second' on RUN with ``changes``, where save_folder holds a checkpoint of run 'first'."""
    def setup(tmp: Path) -> List[str]:
        (tmp / 'checkpoints').mkdir()
        torch.save({'state': {'model': {}, 'run_name': 'first'}}, tmp / 'checkpoints' / 'ep1-ba8-rank0.pt')
        return [command, write_recipe(tmp, with_run(run_name='second', **changes))]

    return setup


RUNS_CODE = (r" would run code when loaded: it needs posix.system, which is not one of the plain types a Composer "
             r'checkpoint holds; if you trust the file and where it came from, set load_trusted: true to load it as '
             r'Composer does$')


def _save_folder_a_file(tmp: Path) -> List[str]:
    (tmp / 'checkpoints').write_text('a file, not a folder')
    return ['train', write_recipe(tmp, RUN)]


def _held_out_augment(tmp: Path) -> List[str]:
    root = make_tree(tmp / 'imagenet', per_class=2)
    datasets = {f'{split}_dataset': {'imagenet': {'datadir': str(root), 'is_train': split == 'train',
                                                  'crop_size': 16}} for split in ('train', 'val')}
    datasets['val_dataset']['imagenet']['augment'] = 'randaugment'
    return ['train', write_recipe(tmp, with_run(**datasets))]


TABLE: List[BadInput] = [
    # Recipe mistakes, as tests/test_recipe.py lists them, here through the command line.
    *(recipe(label, content, message) for label, content, message in MISTAKES),
    BadInput('recipe', 'not YAML', lambda tmp: ['train', write_text(tmp / 'bad.yaml', 'model: [unclosed\n')],
             r"recipe: '.*bad.yaml' is not valid YAML"),
    BadInput('recipe', 'not a mapping', lambda tmp: ['train', write_text(tmp / 'list.yaml', '- model\n')],
             r"recipe: '.*list.yaml' must be a mapping of sections, got ListConfig"),
    recipe('bad save_interval', with_run(save_interval='soon'),
           r"save_interval: must be a Composer time such as '1ep', '500ba' or '0.5dur', .* got 'soon'"),
    recipe('divergence_guard check_interval', with_run(callbacks=[{'divergence_guard': {'check_interval': 0}}]),
           r'callbacks.divergence_guard: check_interval must be a positive number of batches or null, got 0'),
    recipe('checkpoint_saver parameter', with_run(callbacks=[{'checkpoint_saver': {'folderr': 'x'}}]),
           r"callbacks.checkpoint_saver.folderr: unknown parameter \(did you mean 'folder'\?\)"),
    recipe('zero batch size', with_run(train_batch_size=0), r'train_batch_size: must be a positive integer, got 0'),
    recipe('negative workers', with_run(dataloader={'num_workers': -1}),
           r'train_dataset.digits: num_workers option should be non-negative'),
    recipe('bad max_duration', with_run(max_duration='forever'), r"max_duration: must be a Composer time .* 'forever'"),
    recipe('bad eval_interval', with_run(eval_interval='soon'), r"eval_interval: must be a Composer time .* 'soon'"),
    recipe('cudnn_benchmark with deterministic_mode', with_run(cudnn_benchmark=True, deterministic_mode=True),
           r'cudnn_benchmark: true picks convolution algorithms by timing them, which deterministic_mode: true '
           r'forbids; set one of them to false'),
    recipe('sync_free not a boolean', with_run(sync_free='yes'), r"sync_free: must be bool, got 'yes'"),
    recipe('negative scale_schedule_ratio', with_run(scale_schedule_ratio=-1),
           r'scale_schedule_ratio: must be a positive number, got -1'),
    recipe('scale_schedule_ratio that leaves no training', with_run(max_duration='2ba', scale_schedule_ratio=0.1),
           r'scale_schedule_ratio: 0.1 scales max_duration 2ba to 0ba \(Composer rounds down\); use a ratio of at '
           r'least 0.5 or a longer max_duration'),
    recipe('max_duration as a fraction of itself', with_run(max_duration='0.5dur'),
           r"max_duration: must be a positive length of training such as '400ep' or '5000ba', got '0.5dur'"),
    recipe('zero max_duration', with_run(max_duration=0), r'max_duration: must be a positive length .* got 0$'),
    BadInput('recipe', 'save_folder holding an earlier run', _earlier_run,
             r"save_folder: 'checkpoints' holds checkpoints of an earlier run \(ep1-ba23-rank0.pt\); set "
             r'autoresume: true and a run_name to continue it, save_overwrite: true to write over it, or choose '
             r'another save_folder'),
    recipe('autoresume without a run_name', with_run(autoresume=True),
           r'autoresume: true needs run_name: a run resumes from the checkpoints in save_folder of the run with that '
           r'run_name'),
    recipe('unknown python_log_level', with_run(python_log_level='loud'),
           r"python_log_level: unknown level 'loud'; valid: critical, error, warning, info, debug"),
    recipe('bad console_log_interval', with_run(console_log_interval='often'),
           r"console_log_interval: must be a Composer time .* 'often'"),
    recipe('grad_accum auto on a CPU', with_run(grad_accum='auto'),
           r"grad_accum: auto sizes microbatches to a GPU's memory; this run is on the cpu"),
    *([] if torch.cuda.is_available() else [recipe('device gpu without one', with_run(device='gpu'),
                                                   r'device: gpu, but torch sees no CUDA device here')]),
    *([] if torch.backends.mps.is_available() else [recipe('device mps without one', with_run(device='mps'),
                                                           r'device: mps, but torch sees no Apple GPU here')]),
    recipe('fractional epochs', with_run(max_duration='1.5ep'),
           r"max_duration: must be a Composer time .* \(epochs; ep, ba and sp count whole units\), got '1.5ep'"),
    recipe('max_duration in tokens', with_run(max_duration='5tok'),
           r"max_duration: '5tok' counts tokens, which image batches do not have; use ep, ba or sp"),
    recipe('warm-up counted in other units than max_duration', with_run(max_duration='128sp'),
           r'schedulers.cosine_decay_with_warmup.t_warmup: 1ep and t_max 1.0dur \(with max_duration 128sp\) count '
           r'different units; Composer needs both in epochs or batches, or both in samples'),
    recipe('negative seed', with_run(seed=-1), r'seed: must be in \[0, 2\*\*32 - 1\], got -1'),
    recipe('no evaluation batches', with_run(eval_subset_num_batches=0),
           r'eval_subset_num_batches: must be a positive number of batches, or -1 for all, got 0'),
    recipe('save_interval of zero', with_run(save_interval='0ba'), r"save_interval: must be positive, got '0ba'"),
    BadInput('recipe', 'save_folder that is a file', _save_folder_a_file,
             r"save_folder: 'checkpoints' is a file; give a directory for the checkpoints, or null to write none"),
    recipe('unresolvable interpolation', with_run(seed='${nope}'),
           r"seed: cannot resolve an interpolation: Interpolation key 'nope' not found"),
    BadInput('recipe', 'duplicate section', lambda tmp: ['train', write_text(tmp / 'dup.yaml', 'seed: 1\nseed: 2\n')],
             r"recipe: '.*dup.yaml' is not valid YAML: found duplicate key seed \(line 2, column 1\)"),
    recipe('fewer outputs than classes', with_run(model={'efficientnet_b0': {'num_classes': 5}}),
           r'model.efficientnet_b0.num_classes: is 5, but train_dataset has 10 classes; set num_classes: 10'),
    recipe('batch larger than the training set', with_run(train_batch_size=4096, train_dataset={'digits': {
        'is_train': True, 'image_size': 8, 'drop_last': True}}),
        r'train_batch_size: 4096 \(global\) leaves no whole batch in the training data of 1438 images on 1 '
        r'process\(es\) with drop_last: true'),
    recipe('digits of no pixels', with_run(train_dataset={'digits': {'image_size': 0}}),
           r'train_dataset.digits: image_size must be a positive number of pixels, got 0'),
    recipe('mean on the 0-255 scale', with_run(val_dataset={'digits': {
        'is_train': False, 'image_size': 8, 'mean': [123.7, 116.3, 103.5]}}),
        r'val_dataset.digits: mean: must be 3 numbers in \[0, 1\] \(red, green, blue, for pixels scaled to \[0, 1\]'),
    recipe('drop_connect_rate of 1 or more', with_run(model={'efficientnet_b0': {'drop_connect_rate': 1.5}}),
           r'model.efficientnet_b0: drop_connect_rate must be a number in \[0, 1\), got 1.5'),
    BadInput('recipe', 'augmenting held-out images', _held_out_augment,
             r"val_dataset.imagenet: augment: 'randaugment' augments training images only"),
    # Overrides on the command line.
    override('override without =', ['max_duration'], r"max_duration: an override is written key=value"),
    override('override of an unknown parameter', ['optimizers.sgd.lrr=0.1'],
             r"optimizers.sgd.lrr: unknown parameter \(did you mean 'lr'\?\)"),
    override('override of the wrong type', ['seed=[1, 2]'], r'seed: must be int, got \[1, 2\]'),
    override('override of a list entry it does not have', ['algorithms.blurpool.replace_convs=false'],
             r"algorithms.blurpool.replace_convs: algorithms has no entry named 'blurpool'"),
    override('load_path that does not exist', ['load_path=absent.pt'], r"load_path: file 'absent.pt' does not exist"),
    override('load_path that is not a Composer checkpoint', [f'load_path={__file__}'],
             r"load_path: cannot read checkpoint '.*bad_inputs.py'"),
    BadInput('override', 'train load_path that would run code', _code_in('train', 'crafted.pt', True),
             r"load_path: '.*/crafted.pt'" + RUNS_CODE),
    BadInput('override', 'eval load_path that would run code', _code_in('eval', 'crafted.pt', True),
             r"load_path: '.*/crafted.pt'" + RUNS_CODE),
    BadInput('override', 'eval of a save_folder whose newest checkpoint would run code',
             _code_in('eval', 'checkpoints/ep1-ba8-rank0.pt', False), r"save_folder: 'checkpoints/ep1-ba8-rank0.pt'"
             + RUNS_CODE),
    BadInput('override', 'autoresume of a checkpoint that would run code',
             _code_in('train', 'checkpoints/ep1-ba8-rank0.pt', False, autoresume=True, run_name='crafted'),
             r"autoresume: 'checkpoints/ep1-ba8-rank0.pt'" + RUNS_CODE),
    BadInput('recipe', 'load_checkpoint callback of a file that would run code', _code_in_a_callback,
             r"callbacks.load_checkpoint.load_path: '.*/crafted.pt'" + RUNS_CODE),
    BadInput('recipe', 'autoresume of another run', _another_run('train', autoresume=True),
             r"run_name: is 'second', but 'checkpoints/ep1-ba8-rank0.pt', the newest checkpoint in save_folder "
             r"'checkpoints', is of run 'first': set run_name=first to continue that run, or start run 'second' in "
             r'another save_folder \(such as one containing \{run_name\}\)$'),
    BadInput('recipe', "eval of another run's newest checkpoint", _another_run('eval'),
             r"run_name: is 'second', but 'checkpoints/ep1-ba8-rank0.pt', the newest checkpoint in save_folder "
             r"'checkpoints', is of run 'first': set run_name=first to evaluate that run, or "
             r'load_path=checkpoints/ep1-ba8-rank0.pt to evaluate it$'),
    override('override key with an empty part', ['.max_duration=1ba'],
             r"\.max_duration: an override key is names joined by single dots"),
    override('position into a one-entry section', ['model.0.num_classes=5'], r"model.0: Unknown model '0'"),
    override('list entry past the end', ['algorithms.2={blurpool: {}}'],
             r'algorithms.2: algorithms has 1 entries \(positions 0 to 0\); algorithms.1=... appends one'),
    # Algorithms that cannot train with our models and data, or whose parameters would fail minutes in.
    override('a text-only algorithm', ['algorithms=[{seq_length_warmup: {}}]'],
             r"algorithms.seq_length_warmup: Composer's SeqLengthWarmup warms up the sequence length of a Hugging "
             r'Face model .*; efficientnet_b0 takes images'),
    override('a VisionDataset augmentation on our data', ['algorithms=[{augmix: {}}]'],
             r"algorithms.augmix: Composer's AugMix adds a per-image transform to a torchvision VisionDataset"),
    override('stochastic depth of ResNet blocks', ['algorithms=[{stochastic_depth: {target_layer_name: '
                                                   'ResNetBottleneck}}]'],
             r"stochastic_depth.target_layer_name: 'ResNetBottleneck': our models have no ResNet blocks"),
    override('ghost batches larger than the last batch', ['algorithms=[{ghost_batchnorm: {ghost_batch_size: 32}}]'],
             r'ghost_batchnorm.ghost_batch_size: 32: is more than the 30 images of the last batch of an epoch of '
             r'1438 images, where GhostBatchNorm fails; use at most 30'),
    override('ghost batches larger than a microbatch', ['grad_accum=4',
                                                        'algorithms=[{ghost_batchnorm: {ghost_batch_size: 16}}]'],
             r'ghost_batch_size: 16: is more than the 14 images of the last microbatch of the last batch of an '
             r'epoch of 1438 images'),
    override('gyro dropout groups that do not divide the batch', ['algorithms=[{gyro_dropout: {tau: 16}}]'],
             r'gyro_dropout.tau: 16: must divide the size of every training batch the model sees; the last batch of '
             r'an epoch of 1438 images has 30 images'),
    override('selective backprop keeping no sample', ['algorithms=[{selective_backprop: {keep: 0.01}}]'],
             r'selective_backprop.keep: 0.01: keeps no sample of a batch \(64 images\)'),
    # Progressive learning settings (the run has 1 epoch; 8-pixel digits).
    override('more progressive-learning stages than epochs', ['algorithms=[{progressive_learning: {num_stages: 2, '
                                                              'image_size: [8, 16]}}]'],
             r'progressive_learning.num_stages: 2: more stages than the run has epochs \(1\); use at most 1'),
    override('progressive image sizes that shrink', ['max_duration=2ep', 'algorithms=[{progressive_learning: '
                                                     '{num_stages: 2, image_size: [16, 8]}}]'],
             r'progressive_learning.image_size: \[16, 8\]: must be positive whole numbers of pixels, the first '
             r'smaller than the last \(progressive learning grows'),
    override('a progressive image size that is not positive', ['max_duration=2ep', 'algorithms=[{progressive_learning'
                                                               ': {num_stages: 2, image_size: [0, 8]}}]'],
             r'progressive_learning.image_size: \[0, 8\]: must be positive whole numbers of pixels'),
    override('a progressive range of three values', ['max_duration=2ep', 'algorithms=[{progressive_learning: '
                                                     '{num_stages: 2, dropout: [0.1, 0.2, 0.3]}}]'],
             r'progressive_learning.dropout: \[0.1, 0.2, 0.3\]: must be 2 values, the first and the last stage'),
    override('a RandAugment range without RandAugment', ['max_duration=2ep', 'algorithms=[{progressive_learning: '
                                                         '{num_stages: 2, randaugment_magnitude: [5, 15]}}]'],
             r'progressive_learning.randaugment_magnitude: the training data \(train_dataset.digits\) does not use '
             r'RandAugment; set its augment: randaugment'),
    override('exponent that is not a number', ['optimizers.sgd.lr=1e-3x'],
             r"optimizers.sgd.lr: must be float or Tensor, got '1e-3x'"),
    override('override into a scalar', ['max_duration.epochs=3'],
             r"max_duration: must be str or int, got \{'epochs': 3\}"),
    # Data trees.
    data('missing datadir', lambda root: shutil.rmtree(root), r"val_dataset.imagenet.datadir: directory '.*' does "
         r'not exist', lines=2),  # train_dataset's too
    data('missing val split', lambda root: shutil.rmtree(root / 'val'), r'val_dataset.imagenet: .*/val: split '
         r'directory not found'),
    data('empty class folder', _empty_class, r'train_dataset.imagenet: .*/train/dog: empty class folder'),
    data('non-image file', lambda root: (root / 'train' / 'eel' / 'notes.txt').write_text('x'),
         r'train_dataset.imagenet: .*1 file\(s\) that are not images \(eel/notes.txt\)'),
    data('loose file in a split', lambda root: (root / 'train' / 'labels.csv').write_text('a,b'),
         r'train_dataset.imagenet: .*labels.csv.*expected only one subfolder per class'),
    data('train and val classes differ', lambda root: shutil.copytree(root / 'val' / 'eel', root / 'val' / 'fox'),
         r"only in train: none; only in val: \['fox'\]"),
    streaming_data('MDS shards without the named columns', {'img': 'jpeg', 'cls': 'int', 'meta': 'json'},
                   r"train_dataset.streaming_imagenet: .*mds/train: no column 'x' \(image_key\); the shards have "
                   r'columns cls \(int\), img \(jpeg\), meta \(json\)\. Set image_key and label_key'),
    streaming_data('MDS shards with a pickled column', {'x': 'jpeg', 'y': 'int', 'meta': 'pkl'},
                   r'train_dataset.streaming_imagenet: .*mds/train: column\(s\) meta are pickled \(pkl\), and '
                   r'Streaming opens shards with pickled columns only from trusted data; .* allow_unsafe_types: true'),
    streaming_data('MDS shards with a pickled image column', {'img': 'pkl', 'y': 'int', 'meta': 'json'},
                   r"train_dataset.streaming_imagenet: .*mds/train: column 'img' \(image_key\) is pickled \(pkl\), "
                   r'which is not supported', image_key='img', allow_unsafe_types=True),
    # Weight files.
    weights('missing weight file', lambda path: None, r"model.efficientnet_b0: Pretrained weights file '.*weights.pt' "
            r'does not exist'),
    weights('weights path is a directory', lambda path: path.mkdir(),
            r"model.efficientnet_b0: Pretrained weights '.*weights.pt' is a directory; give the weights file in it"),
    weights('not a torch file', lambda path: path.write_bytes(b'not a checkpoint'),
            r"model.efficientnet_b0: Could not read pretrained weights file '.*weights.pt'"),
    weights('weights that would run code', code_running_checkpoint,
            r"model.efficientnet_b0: Pretrained weights file '.*weights.pt' would run code when loaded \(it needs "
            r'posix.system\): a weights file is a state dict'),
    weights('not a state dict', lambda path: torch.save([1, 2, 3], path),
            r"model.efficientnet_b0: Pretrained weights file '.*' does not hold a state dict of tensors"),
    weights('unknown format', lambda path: torch.save({'encoder.weight': torch.zeros(1)}, path),
            r'model.efficientnet_b0: Unrecognized EfficientNet state dict: .* first keys are: encoder.weight'),
    weights('torchvision keys without a counterpart', lambda path: torch.save(
        {'features.0.0.weight': torch.zeros(1), 'features.9.weight': torch.zeros(1)}, path),
        r'1 key\(s\) of the torchvision state dict have no counterpart .*: features.9.weight'),
    weights('another member', _member_weights('efficientnet_b1'),
            r'model.efficientnet_b0: Pretrained weights do not fit this model \(the checkpoint looks like '
            r'efficientnet_b1\)'),
    # composer-efficientnet's command line.
    cli('no command', lambda tmp: [], r'the following arguments are required: command'),
    cli('unknown command', lambda tmp: ['trian'], r"argument command: invalid choice: 'trian'"),
    cli('unknown kind to list', lambda tmp: ['list', 'widgets'], r"argument kind: invalid choice: 'widgets'"),
    cli('train without a recipe', lambda tmp: ['train'], r'the following arguments are required: recipe'),
    cli('train with an unknown option', lambda tmp: ['train', write_recipe(tmp, RUN), '--resume'],
        r'unrecognized arguments: --resume'),
    cli('eval --json into a missing folder', lambda tmp: ['eval', write_recipe(tmp, RUN), '--json',
                                                          str(tmp / 'missing' / 'results.json')],
        r"--json: folder '.*missing' does not exist", usage=False),
    cli('eval --json into a directory', lambda tmp: ['eval', write_recipe(tmp, RUN), '--json', str(tmp)],
        r"--json: '.*' is a directory; give a file name, such as .*eval.json", usage=False),
    cli('recipe path is a directory', lambda tmp: ['train', str(tmp)], r"recipe: '.*' is a directory; give a recipe "
        r'file', usage=False),
    cli('a checkpoint given as the recipe', lambda tmp: ['train', str(_binary(tmp / 'run.pt'))],
        r"recipe: '.*run.pt' is not a YAML text file \(a checkpoint\? give it as load_path=PATH after the recipe\)",
        usage=False),
    cli('missing recipe file', lambda tmp: ['train', str(tmp / 'nope.yaml')], r"recipe: file '.*nope.yaml' does not "
        r'exist', usage=False),
    cli('convert without --src', lambda tmp: ['convert-dataset', '--out', str(tmp / 'out')],
        r'the following arguments are required: --src'),
    cli('convert a missing tree', lambda tmp: ['convert-dataset', '--src', str(tmp / 'none'), '--out',
                                               str(tmp / 'out')], r'none of the splits .* exists there', usage=False),
    cli('convert into shards already there', _converted_source, r'out/train: output directory is not empty',
        usage=False),
    cli('convert into a file', lambda tmp: ['convert-dataset', '--src', str(make_tree(tmp / 'src', per_class=1)),
                                            '--out', write_text(tmp / 'out', 'a file')],
        r'out: .*/out is a file; expected a directory \(empty or missing\) for the shards of each split\.$',
        usage=False),
    cli('benchmark on an unknown device', lambda tmp: ['benchmark', '--device', 'tpu'],
        r"argument --device: invalid choice: 'tpu'"),
    cli('benchmark with a zero batch', lambda tmp: ['benchmark', '--batch-size', '0'], r'argument --batch-size: '),
    cli('benchmark --json into a directory', lambda tmp: ['benchmark', '--device', 'cpu', '--json', str(tmp)],
        r"--json: '.*' is a directory; give a file name, such as .*benchmark.json"),
    cli('benchmark --report of a missing file', lambda tmp: ['benchmark', '--report', str(tmp / 'none.json')],
        r"--report: cannot read '.*none.json' as this benchmark's JSON \(FileNotFoundError"),
    cli('benchmark --report of another file', lambda tmp: ['benchmark', '--report', write_text(tmp / 'a.json', '{}')],
        r"--report: cannot read '.*a.json' as this benchmark's JSON \(KeyError"),
    BadInput('cli', 'convert a tree whose val split is bad', _half_bad_source, r'val/eel: empty class folder'),
    cli('convert --strict with an unreadable image', _convert('--strict', '--workers', '1', breaking=lambda root: (
        root / 'val' / 'dog' / '0.jpg').write_bytes(b'not a JPEG')),
        r'src/val/dog/0.jpg: cannot read or decode this image .* or convert without --strict', usage=False),
    cli('convert with zero workers', _convert('--workers', '0'),
        r"argument --workers: expected a positive number of processes, got '0'"),
    cli('convert --split of a tree with splits', _convert('--split', 'train'),
        r'src: holds the split folder\(s\) train, val, but --split train reads .*; drop --split', usage=False),
    cli('convert --split of a missing folder', lambda tmp: ['convert-dataset', '--src', str(tmp / 'none'), '--out',
                                                          str(tmp / 'out'), '--split', 'train'],
        r'none: split directory not found', usage=False),
    cli('predict an unreadable image', _inference('predict', '{tmp}/photo.jpg'),
        r"predict: '.*photo.jpg': cannot be read as an image \(.*\); expected a JPEG, PNG, WebP or GIF file",
        usage=False),
    cli('predict a folder without images', _inference('predict', '{tmp}/empty'),
        r"predict: '.*empty': folder holds no images; expected files ending in .jpeg", usage=False),
    cli('predict with weights without a classifier', _inference('predict', '{tmp}/photo.jpg', backbone=True),
        r"predict: Weights '.*weights.pt' are not those of a whole EfficientNet classifier \(they look like "
        r'efficientnet_b0, without a classifier\)', usage=False),
    cli('export into a missing folder', _inference('export', '--out', '{tmp}/none/model.onnx'),
        r"export: --out: folder '.*none' does not exist", usage=False),
]

# Rows of issue-21 topics, one file each (archives, shards, run lock, outputs, values, images), so that each
# topic's rows stand beside its helpers; every row is a BadInput as above.
for _topic in ('archives', 'shards', 'run_lock', 'outputs', 'values', 'images', 'cli'):
    try:
        _module = __import__(f'tests.bad_inputs_{_topic}', fromlist=['ROWS'])
    except ModuleNotFoundError as _error:
        if _error.name != f'tests.bad_inputs_{_topic}':
            raise
        continue
    TABLE.extend(_module.ROWS)
