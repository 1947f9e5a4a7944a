"""Which registered algorithms train with this package's models and data, decided before a run starts.

One table, :data:`SUPPORT`, holds what each algorithm does here, read from Composer 0.32's source: when it acts
(``composer/algorithms/*``) and what the Trainer has done to the batch by then (``trainer/trainer.py``). Our
DataSpecs, placed on the run's device, copy and normalize each batch before ``Event.AFTER_DATALOADER``
(:class:`~composer_efficientnet.data.loading.DeviceDataSpec`), so every algorithm that reads or changes the batch
(cutout, colout, progressive resizing and selective backprop at ``AFTER_DATALOADER``; mixup and cutmix at
``BEFORE_FORWARD``; label smoothing at ``BEFORE_LOSS``) sees normalized float images on the device, as with a
float dataloader. An algorithm is refused, with one line saying why and what to use instead, when it needs what
our models or datasets do not have, or when it would change nothing; the others get the parameter checks that
Composer only makes minutes into a run, or never (a traceback, or silently no effect).

:func:`check_algorithms` runs in :func:`composer_efficientnet.recipe.validate`; :func:`check_algorithms_fit_data`
checks the sizes of the batches the model will see, once the data is built.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from composer.core import DataSpec, Time, TimeUnit
from torch.utils.data import DataLoader, DistributedSampler

from composer_efficientnet.algorithms import progressive_learning
from composer_efficientnet.algorithms.sample_stochastic_depth import STOCHASTIC_DEPTH_TARGETS
from composer_efficientnet.data import BUILDERS
from composer_efficientnet.efficientnet import canonical_name
from composer_efficientnet.recipe import Entry, Recipe, RecipeError, RecipeErrors

__all__ = ['Support', 'SUPPORT', 'check_algorithms', 'check_algorithms_fit_data']


@dataclass(frozen=True)
class Support:
    """What one registered algorithm does with this package's models and data.

    Args:
        summary: what it does here, or why it cannot (the README's table).
        refusal: why a recipe may not use it, and what to use instead; None when supported.
        scope: whose lack the refusal is: ``'model'`` (applies with our EfficientNets) or ``'data'`` (with our
            datasets); a recipe with a model or dataset registered from elsewhere is left to Composer.
        check: the parameter checks Composer does not make up front: ``check(entry, recipe)`` raises
            :class:`~composer_efficientnet.recipe.RecipeError`.
    """
    summary: str
    refusal: Optional[str] = None
    scope: str = 'model'
    check: Optional[Callable[[Entry, Recipe], None]] = None


def _param(entry: Entry, name: str) -> Any:
    """The entry's value for ``name``, or the algorithm's default."""
    if name in entry.params:
        return entry.params[name]
    return inspect.signature(entry.target).parameters[name].default


def _refuse_unless(condition: bool, entry: Entry, name: str, message: str) -> None:
    if not condition:
        raise RecipeError(f'{entry.key}.{name}', f'{_param(entry, name)!r}: {message}')


def _accumulation(recipe: Recipe) -> Any:
    return recipe.settings.get('grad_accum')


def _check_stochastic_depth(entry: Entry, recipe: Recipe) -> None:
    name = _param(entry, 'target_layer_name')
    _refuse_unless(name in STOCHASTIC_DEPTH_TARGETS, entry, 'target_layer_name', "our models have no ResNet blocks "
                   "(Composer would change nothing); use target_layer_name: EfficientNetMBConv, "
                   "EfficientNetFusedMBConv or EfficientNetBlock (every block; V2's choice) with "
                   "stochastic_method: sample, or sample_stochastic_depth")
    _refuse_unless(_param(entry, 'stochastic_method') == 'sample', entry, 'stochastic_method',
                   "our blocks drop samples only: use stochastic_method: sample")
    _refuse_unless(0 <= _param(entry, 'drop_rate') < 1, entry, 'drop_rate', 'must be in [0, 1)')


def _check_label_smoothing(entry: Entry, recipe: Recipe) -> None:
    _refuse_unless(0 <= _param(entry, 'smoothing') < 1, entry, 'smoothing', 'must be in [0, 1) (1 makes every '
                   'target uniform, so nothing is learned)')


def _check_colout(entry: Entry, recipe: Recipe) -> None:
    _refuse_unless(_param(entry, 'batch'), entry, 'batch', "false adds a transform to a torchvision "
                   "VisionDataset, which our datasets are not; use batch: true (the default)")
    for name in ('p_row', 'p_col'):
        _refuse_unless(_param(entry, name) < 1, entry, name, 'drops every row or column; use a value below 1')


def _check_cutout(entry: Entry, recipe: Recipe) -> None:
    _refuse_unless(_param(entry, 'num_holes') >= 1, entry, 'num_holes', 'cuts no hole; use 1 or more')
    _refuse_unless(0 < _param(entry, 'length') <= 1, entry, 'length', 'must be in (0, 1], a fraction of the side')


def _check_alpha(entry: Entry, recipe: Recipe) -> None:
    _refuse_unless(_param(entry, 'alpha') > 0, entry, 'alpha', 'must be positive (0 mixes nothing; Composer '
                   'fails on a negative one at the first batch)')


def _check_progressive_resizing(entry: Entry, recipe: Recipe) -> None:
    increment = _param(entry, 'size_increment')
    _refuse_unless(increment >= 1, entry, 'size_increment', 'must be a positive number of pixels')
    side = _train_image_side(recipe)
    if side is not None:
        smallest = round(side * _param(entry, 'initial_scale') / increment) * increment
        _refuse_unless(smallest >= 1, entry, 'initial_scale', f'shrinks the {side}-pixel training images to '
                       f'{smallest} pixels (rounded to size_increment {increment}); raise it')


def _check_selective_backprop(entry: Entry, recipe: Recipe) -> None:
    _refuse_unless(0 < _param(entry, 'keep') < 1, entry, 'keep', 'must be in (0, 1): the share of each batch '
                   'kept for the backward pass (1 keeps all, and Composer then does nothing)')
    _refuse_unless(0 < _param(entry, 'scale_factor') <= 1, entry, 'scale_factor', 'must be in (0, 1]')
    _refuse_unless(_param(entry, 'interrupt') >= 0, entry, 'interrupt', 'must be 0 (never) or more')
    _refuse_unless(0 <= _param(entry, 'start') < 1, entry, 'start', 'must be in [0, 1), a fraction of the run')
    _refuse_unless(_param(entry, 'start') < _param(entry, 'end') <= 1, entry, 'end', 'must be in (start, 1], a '
                   'fraction of the run (Composer selects from start to end)')


def _check_ghost_batchnorm(entry: Entry, recipe: Recipe) -> None:
    _refuse_unless(_param(entry, 'ghost_batch_size') >= 1, entry, 'ghost_batch_size', 'must be positive')
    if _accumulation(recipe) == 'auto':
        raise RecipeError(f'{entry.key}', "with grad_accum: auto, Composer may shrink microbatches below "
                          'ghost_batch_size, where GhostBatchNorm fails; give grad_accum a number')


def _check_gyro_dropout(entry: Entry, recipe: Recipe) -> None:
    _refuse_unless(0 <= _param(entry, 'p') < 1, entry, 'p', 'must be in [0, 1)')
    for name in ('sigma', 'tau'):
        _refuse_unless(_param(entry, name) >= 1, entry, name, 'must be a positive integer')
    if _accumulation(recipe) == 'auto':
        raise RecipeError(f'{entry.key}', "with grad_accum: auto, Composer may change the microbatch size, which "
                          'GyroDropout needs to stay a multiple of tau; give grad_accum a number')
    duration = recipe.settings.get('max_duration')
    if duration is not None and _unit(duration) not in (None, TimeUnit.EPOCH):
        raise RecipeError('max_duration', f"{duration!r}: Composer's GyroDropout ({entry.key}) reads "
                          'max_duration as a number of epochs; give it in epochs, e.g. 10ep')
    device = recipe.settings.get('device')
    if (next(iter(device)) if isinstance(device, dict) else device) == 'mps':
        raise RecipeError(f'{entry.key}', "Composer's GyroDropout keeps its masks on the CPU on an Apple GPU "
                          '(mps); train on gpu or cpu')


def _unit(time: Any) -> Optional[TimeUnit]:
    """The unit of a recipe time (integers count epochs); None when it is not one, a mistake reported apart."""
    try:
        return Time.from_input(time, TimeUnit.EPOCH).unit
    except (ValueError, TypeError):
        return None


def _check_gradient_clipping(entry: Entry, recipe: Recipe) -> None:
    _refuse_unless(_param(entry, 'clipping_type') in ('norm', 'value', 'adaptive'), entry, 'clipping_type',
                   "must be 'norm', 'value' or 'adaptive'")
    _refuse_unless(_param(entry, 'clipping_threshold') > 0, entry, 'clipping_threshold', 'must be positive')


def _check_layer_freezing(entry: Entry, recipe: Recipe) -> None:
    _refuse_unless(0 <= _param(entry, 'freeze_start') < 1, entry, 'freeze_start', 'must be in [0, 1)')
    _refuse_unless(0 < _param(entry, 'freeze_level') <= 1, entry, 'freeze_level', 'must be in (0, 1]')


def _check_sam(entry: Entry, recipe: Recipe) -> None:
    _refuse_unless(_param(entry, 'rho') > 0, entry, 'rho', 'must be positive (0 repeats the same step at twice '
                   'the cost)')
    _refuse_unless(_param(entry, 'interval') >= 1, entry, 'interval', 'must be a positive number of steps')


def _check_swa(entry: Entry, recipe: Recipe) -> None:
    training = recipe.train_dataset is not None  # evaluating a recipe drops its schedulers
    if training and _param(entry, 'schedule_swa_lr') and len(recipe.schedulers) != 1:
        raise RecipeError(f'{entry.key}.schedule_swa_lr', f'true takes its learning rate from the one scheduler; '
                          f'the recipe has {len(recipe.schedulers)} (with none Composer would use a rate of 1.0)')


def _check_ema(entry: Entry, recipe: Recipe) -> None:
    smoothing = _param(entry, 'smoothing')
    if smoothing is None:
        return
    _refuse_unless(0 < smoothing < 1, entry, 'smoothing', 'must be in (0, 1)')
    _refuse_unless(_param(entry, 'update_interval') is not None, entry, 'update_interval', "with smoothing, "
                   "Composer's EMA needs it (e.g. '1ba'); it fails without")


def _check_weight_standardization(entry: Entry, recipe: Recipe) -> None:
    _refuse_unless(_param(entry, 'n_last_layers_ignore') >= 0, entry, 'n_last_layers_ignore', 'must be 0 or more')


_VISION_DATASET = ('adds a per-image transform to a torchvision VisionDataset, which {dataset} is not; augment '
                   'with the augment parameter of imagenet or streaming_imagenet instead: randaugment or autoaugment')
_NOTHING = "{model} has none (BatchNorm only), so it would change nothing; remove it"

#: Every registered algorithm, by its registered name. A refusal reads after "Composer's <class name> ".
SUPPORT: Dict[str, Support] = {
    'alibi': Support('refused: text transformers only', 'rewrites the attention of Hugging Face text '
                     'transformers (BERT, GPT-2); {model} has no attention layers, so it would change nothing; '
                     'remove it'),
    'augmix': Support('refused: VisionDataset only', _VISION_DATASET, scope='data'),
    'blurpool': Support('anti-aliases the strided depthwise convolutions (checkpoint keys change)'),
    'channels_last': Support('channels_last weights (our data already is)'),
    'colout': Support('drops rows and columns of the normalized batch', check=_check_colout),
    'cutmix': Support('per microbatch, on the normalized images', check=_check_alpha),
    'cutout': Support('zeroes squares of the normalized batch (the mean pixel)', check=_check_cutout),
    'ema': Support('an exponential moving average of the weights, for evaluation', check=_check_ema),
    'factorize': Support('factorizes the wide 1x1 convolutions and classifier (checkpoint keys change)'),
    'gated_linear_units': Support('refused: BERT only', 'replaces the feed-forward layers of Hugging Face BERT '
                                  'models; {model} has none, so it would change nothing; remove it'),
    'ghost_batchnorm': Support('BatchNorm over chunks of ghost_batch_size samples',
                               check=_check_ghost_batchnorm),
    'gradient_clipping': Support('clips gradients after each batch', check=_check_gradient_clipping),
    'gyro_dropout': Support('replaces the classifier dropout', check=_check_gyro_dropout),
    'label_smoothing': Support('ours: fused into the loss', check=_check_label_smoothing),
    'layer_freezing': Support('freezes the earliest layers as training goes', check=_check_layer_freezing),
    'low_precision_groupnorm': Support('refused: no GroupNorm', 'runs GroupNorm in low precision; ' + _NOTHING),
    'low_precision_layernorm': Support('refused: no LayerNorm', 'runs LayerNorm in low precision; ' + _NOTHING),
    'mixup': Support('per microbatch, on the normalized images', check=_check_alpha),
    'no_op_model': Support('refused: its dummy fails on class labels', 'swaps the model for a dummy whose binary '
                           'accuracy fails on our class labels at the first batch; to time the data pipeline, use '
                           'benchmarks/data_pipeline.py', scope='data'),
    'progressive_resizing': Support('shrinks the normalized batch early in training',
                                    check=_check_progressive_resizing),
    'randaugment': Support('refused: VisionDataset only', _VISION_DATASET, scope='data'),
    'sam': Support('sharpness-aware steps (two forward-backward passes a step)', check=_check_sam),
    'selective_backprop': Support('keeps the hardest samples of the normalized batch',
                                  check=_check_selective_backprop),
    'seq_length_warmup': Support('refused: Hugging Face models only', 'warms up the sequence length of a Hugging '
                                 'Face model (HuggingFaceModel); {model} takes images, not sequences; remove it'),
    'squeeze_excite': Support('adds squeeze-excite after wide convolutions (checkpoint keys change)'),
    'stochastic_depth': Support("Composer's, on our blocks (EfficientNetMBConv, EfficientNetFusedMBConv or "
                                'EfficientNetBlock), sample method', check=_check_stochastic_depth),
    'swa': Support('stochastic weight averaging', check=_check_swa),
    'weight_standardization': Support('standardizes convolution weights (checkpoint keys change)',
                                      check=_check_weight_standardization),
    'sample_stochastic_depth': Support('ours: sample-wise drop rates, no surgery'),
    'progressive_learning': Support('ours: image size in the workers and regularization by stage',
                                    check=progressive_learning.check_recipe),
}

#: Our batches are (images, labels): the keys algorithms index them with.
_BATCH_KEYS = {'input_key': 0, 'target_key': 1}


def _ours(recipe: Recipe, scope: str) -> bool:
    if scope == 'model':
        try:
            return recipe.model is not None and bool(canonical_name(recipe.model.name))
        except ValueError:
            return False
    return recipe.train_dataset is not None and recipe.train_dataset.target in BUILDERS.values()


def check_algorithms(recipe: Recipe) -> None:
    """Refuse each algorithm that cannot train with the recipe's model and data, or whose parameters would fail
    or do nothing there: a :class:`~composer_efficientnet.recipe.RecipeError` at its key, or
    :class:`~composer_efficientnet.recipe.RecipeErrors` naming each when there are several."""
    errors = []
    for entry in recipe.algorithms:
        try:
            _check_algorithm(entry, recipe)
        except RecipeError as error:
            errors.append(error)
    if len(errors) > 1:
        raise RecipeErrors(errors)
    if errors:
        raise errors[0]


def _check_algorithm(entry: Entry, recipe: Recipe) -> None:
    support = SUPPORT.get(entry.name)
    if support is None:  # registered from elsewhere: Composer decides
        return
    if support.refusal is not None and _ours(recipe, support.scope):
        context = {'model': recipe.model.name if recipe.model else 'the model',
                   'dataset': recipe.train_dataset.name if recipe.train_dataset else 'the dataset'}
        raise RecipeError(entry.key, f"Composer's {entry.target.__name__} {support.refusal.format(**context)}")
    for name, key in _BATCH_KEYS.items():
        if name in entry.params and entry.params[name] != key:
            raise RecipeError(f'{entry.key}.{name}', f'must be {key}: our batches are (images, labels)')
    if support.check is not None:
        support.check(entry, recipe)
    _check_made(entry)


def _check_made(entry: Entry) -> None:
    """What the algorithm checks itself when it is made (EMA's half_life or smoothing, progressive resizing's
    fractions, ...), now rather than once data is built; quietly, as the run makes it again and says its warnings."""
    previous = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        logging.disable(logging.CRITICAL)
        try:
            entry.target(**entry.params)
        except (ValueError, TypeError, NotImplementedError) as error:
            raise RecipeError(entry.key, str(error).strip().splitlines()[0] if str(error).strip()
                              else type(error).__name__) from None
        except Exception:  # noqa: BLE001 - anything else (a missing package, ...) is the run's to report
            pass
        finally:
            logging.disable(previous)


def _train_image_side(recipe: Recipe) -> Optional[int]:
    """The side of the training images, when the dataset's parameters say it (None default: the model's)."""
    entry = recipe.train_dataset
    if entry is None:
        return None
    parameters = inspect.signature(entry.target).parameters
    for name in ('image_size', 'crop_size'):
        if name in parameters:
            value = entry.params.get(name, parameters[name].default)
            return value if isinstance(value, int) else recipe.model_resolution
    return None


Sizes = Dict[int, str]  # sizes of the batches a model sees, each with where it comes from


def _loader_batches(spec: DataSpec, held_out: bool) -> Sizes:
    """The sizes of the batches a DataSpec's DataLoader yields on this process: full ones, and the last, shorter
    one of an epoch; for held-out data less the sample Composer removes there from the sampler's padding."""
    loader = spec.dataloader
    size = getattr(loader, 'batch_size', None)
    if not isinstance(loader, DataLoader) or not isinstance(size, int):
        return {}
    try:
        samples = len(loader.sampler)
    except TypeError:  # an iterable dataset: only full batches are known
        return {size: 'a batch'}
    sizes = {size: 'a batch'} if samples >= size else {}
    last = samples % size
    if last and not loader.drop_last:
        sampler = loader.sampler
        padded = isinstance(sampler, DistributedSampler) and sampler.total_size > len(sampler.dataset)
        last -= 1 if held_out and padded else 0
        sizes.setdefault(last, f'the last batch of an epoch of {samples} images')
    return sizes


def _split(sizes: Sizes, microbatch: Optional[int]) -> Sizes:
    """The sizes of the microbatches Composer splits batches of ``sizes`` into (``Tensor.split``)."""
    if not microbatch:
        return sizes
    pieces: Sizes = {}
    for size, where in sizes.items():
        if size <= microbatch:
            pieces.setdefault(size, where)
            continue
        pieces.setdefault(microbatch, f'a microbatch of {where}')
        if size % microbatch:
            pieces.setdefault(size % microbatch, f'the last microbatch of {where}')
    return pieces


def _training_forwards(recipe: Recipe, spec: DataSpec) -> Sizes:
    """The batch sizes the model sees in training mode: microbatches, and with selective backprop its selection
    pass over each whole batch and the microbatches of the samples it keeps."""
    batches = _loader_batches(spec, held_out=False)
    accum = _accumulation(recipe)
    microbatch = spec.dataloader.batch_size // accum if isinstance(accum, int) and batches else None
    forwards = _split(batches, microbatch)
    for entry in recipe.algorithms:
        if entry.name == 'selective_backprop':
            keep = _param(entry, 'keep')
            for size, where in batches.items():
                _refuse_unless(int(keep * size) >= 1, entry, 'keep', f'keeps no sample of {where} ({size} images)')
            kept = _split({int(keep * size): f'the samples {entry.key} keeps of {where}'
                           for size, where in batches.items()}, microbatch)
            forwards = {**kept, **batches, **forwards}  # the selection pass runs on whole batches
    return forwards


def check_algorithms_fit_data(recipe: Recipe, data: Dict[str, Optional[DataSpec]]) -> None:
    """Refuse algorithm settings that the sizes of this run's batches would make fail minutes in: the last,
    shorter batch of an epoch and the microbatches included. ``data`` holds the built ``train_dataset`` and
    ``val_dataset`` (either may be absent)."""
    train, held_out = data.get('train_dataset'), data.get('val_dataset')
    forwards = _training_forwards(recipe, train) if train is not None else {}
    evaluated = _loader_batches(held_out, held_out=True) if held_out is not None else {}
    for entry in recipe.algorithms:
        if entry.name == 'ghost_batchnorm':
            ghost = _param(entry, 'ghost_batch_size')
            seen = {**evaluated, **forwards}
            smallest = min(seen, default=ghost)
            _refuse_unless(smallest >= ghost, entry, 'ghost_batch_size', f'is more than the {smallest} images of '
                           f'{seen.get(smallest)}, where GhostBatchNorm fails; use at most {smallest}')
        if entry.name == 'gyro_dropout':
            tau = _param(entry, 'tau')
            for size, where in forwards.items():
                _refuse_unless(size % tau == 0, entry, 'tau', f'must divide the size of every training batch the '
                               f'model sees; {where} has {size} images')
            if train is not None:
                _check_gyro_steps(entry, recipe, train)


def _check_gyro_steps(entry: Entry, recipe: Recipe, train: DataSpec) -> None:
    """GyroDropout changes masks every ``batches per epoch x epochs / sigma`` steps, rounded down: at least 1."""
    try:
        per_epoch = len(train.dataloader)
    except TypeError:  # an iterable without a length
        return
    subset = recipe.settings.get('train_subset_num_batches', -1)
    per_epoch = min(per_epoch, subset) if subset > 0 else per_epoch
    epochs = Time.from_input(recipe.settings['max_duration'], TimeUnit.EPOCH).value
    _refuse_unless(per_epoch * epochs >= _param(entry, 'sigma'), entry, 'sigma', f'is more than the '
                   f"{per_epoch * epochs} training batches of the run ({per_epoch} an epoch), where Composer's "
                   f'GyroDropout divides by zero; use at most {per_epoch * epochs}')
