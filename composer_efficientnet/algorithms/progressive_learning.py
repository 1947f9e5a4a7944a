"""Progressive learning with adaptive regularization (EfficientNetV2, Tan & Le 2021, section 4) as an algorithm.

Training is split into ``num_stages`` stages of whole epochs. Each stage sets the training images' size, the
classifier's dropout, the RandAugment magnitude and the mixup alpha, interpolated linearly from the first stage's
values to the last's. The image size and magnitude reach the DataLoader's workers through the training dataset's
shared :class:`~composer_efficientnet.data.transforms.StageSettings`: workers decode and crop at the stage's size,
with persistent workers and several processes, and the Trainer and DataLoader are never rebuilt. Evaluation keeps
the held-out dataset's own size. Each stage is a function of the epoch, so a resumed run is in the same stage.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from composer.algorithms import MixUp
from composer.core import Algorithm, Event, State, Time, TimeUnit
from composer.loggers import Logger
from torch.nn.parallel import DistributedDataParallel

from composer_efficientnet.data.transforms import StageSettings

__all__ = ['Stage', 'ProgressiveLearning', 'progressive_stages', 'apply_progressive_learning', 'check_recipe',
           'RANGES', 'MAX_MAGNITUDE']

log = logging.getLogger(__name__)

#: The largest RandAugment magnitude: torchvision's ``v2.RandAugment`` has 31 bins, 0 to 30.
MAX_MAGNITUDE = 30

#: The knobs a stage sets, each with what its two values must be.
RANGES = {
    'image_size': 'positive whole numbers of pixels, the first smaller than the last',
    'dropout': 'numbers in [0, 1), the first not larger than the last',
    'randaugment_magnitude': f'whole numbers in [0, {MAX_MAGNITUDE}] (torchvision\'s RandAugment bins), the first '
                             'not larger than the last',
    'mixup_alpha': 'numbers of at least 0, the first not larger than the last',
}

#: The datasets whose workers follow the stages' image size and RandAugment magnitude.
STAGED_DATASETS = ('imagenet', 'streaming_imagenet', 'digits')


@dataclass(frozen=True)
class Stage:
    """One stage: its number (from 0), its first epoch, and the value of each knob the recipe ranges (else None)."""
    index: int
    start_epoch: int
    image_size: Optional[int] = None
    dropout: Optional[float] = None
    randaugment_magnitude: Optional[int] = None
    mixup_alpha: Optional[float] = None

    def describe(self) -> str:
        """``image_size 214, dropout 0.167``: the knobs this stage sets."""
        return ', '.join(f'{name} {value:.4g}' for name, value in self.settings().items())

    def settings(self) -> Dict[str, Any]:
        """The knobs this stage sets, by name."""
        return {name: getattr(self, name) for name in RANGES if getattr(self, name) is not None}


def _is_number(value: Any, whole: bool) -> bool:
    return not isinstance(value, bool) and isinstance(value, int if whole else (int, float))


def range_problems(num_stages: Any, ranges: Dict[str, Any]) -> List[Tuple[str, str]]:
    """``(parameter, what is wrong)`` for each setting of the algorithm that is not allowed (none when all are)."""
    problems = []
    if not _is_number(num_stages, whole=True) or num_stages < 1:
        problems.append(('num_stages', f'{num_stages!r}: must be a whole number of at least 1'))
    if all(value is None for value in ranges.values()):
        problems.append(('num_stages', f'no range is set, so no stage changes anything; set at least one of '
                                       f'{", ".join(RANGES)}'))
    for name, value in ranges.items():
        if value is None:
            continue
        whole = name in ('image_size', 'randaugment_magnitude')
        if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
            problems.append((name, f'{value!r}: must be 2 values, the first and the last stage\'s: {RANGES[name]}'))
            continue
        first, last = value
        allowed = {'image_size': lambda v: v >= 1, 'dropout': lambda v: 0 <= v < 1,
                   'randaugment_magnitude': lambda v: 0 <= v <= MAX_MAGNITUDE, 'mixup_alpha': lambda v: v >= 0}[name]
        if not all(_is_number(v, whole) and allowed(v) for v in value):
            problems.append((name, f'{list(value)!r}: must be {RANGES[name]}'))
        elif first > last or (name == 'image_size' and first == last):
            problems.append((name, f'{list(value)!r}: must be {RANGES[name]} (progressive learning grows the images '
                                   'and the regularization)'))
    return problems


def progressive_stages(num_stages: int, max_epochs: int, image_size: Optional[Sequence[int]] = None,
                       dropout: Optional[Sequence[float]] = None,
                       randaugment_magnitude: Optional[Sequence[int]] = None,
                       mixup_alpha: Optional[Sequence[float]] = None) -> List[Stage]:
    """The stages of a run of ``max_epochs``: stage ``k`` starts at epoch ``k * max_epochs // num_stages`` (as
    Google's code splits them) and sets each ranged knob to ``first + (last - first) * k / (num_stages - 1)``
    (one stage: the last values, as in Google's code).

    The paper's first stage is at the first values and its last at the last; Google's released code starts its
    image-size line one stage in (its stage ``k`` is at ``(k + 1) / num_stages``). Image sizes and magnitudes are
    truncated to whole numbers, as Google's code truncates sizes; the members take any size.

    Example:
        >>> [stage.image_size for stage in progressive_stages(4, 20, image_size=[24, 48])]
        [24, 32, 40, 48]
    """
    if num_stages > max_epochs:
        raise ValueError(f'num_stages: {num_stages} stages need at least {num_stages} epochs; the run has '
                         f'{max_epochs}')
    stages, steps = [], max(num_stages - 1, 1)
    for k in range(num_stages):
        done = k if num_stages > 1 else 1  # of steps from the first values to the last
        values: Dict[str, Any] = {}
        for name, given in (('image_size', image_size), ('randaugment_magnitude', randaugment_magnitude)):
            if given is not None:  # whole numbers, truncated (exact integer arithmetic)
                values[name] = given[0] + (given[1] - given[0]) * done // steps
        for name, given in (('dropout', dropout), ('mixup_alpha', mixup_alpha)):
            if given is not None:
                values[name] = float(given[0] + (given[1] - given[0]) * done / steps)
        stages.append(Stage(k, k * max_epochs // num_stages, **values))
    return stages


def _classifier_dropout(model: torch.nn.Module) -> torch.nn.Dropout:
    """The classifier's dropout: ``model.module.dropout`` on our Composer models (``model.dropout`` on a bare one)."""
    module = model.module if isinstance(model, DistributedDataParallel) else model
    network = getattr(module, 'module', module)
    dropout = getattr(network, 'dropout', None)
    if not isinstance(dropout, torch.nn.Dropout):
        raise ValueError(f'progressive_learning: dropout needs the classifier dropout of an EfficientNet '
                         f'(model.module.dropout, a torch.nn.Dropout); {type(network).__name__} has '
                         f'{type(dropout).__name__}. Remove the dropout range.')
    return dropout


def _stage_settings(dataloader: Any) -> StageSettings:
    settings = getattr(getattr(dataloader, 'dataset', None), 'stage', None)
    if not isinstance(settings, StageSettings):
        raise ValueError('progressive_learning: image_size and randaugment_magnitude need a training dataset whose '
                         f'workers follow the stages ({", ".join(STAGED_DATASETS)}, is_train: true); this one has '
                         'no StageSettings. Remove those ranges.')
    return settings


def apply_progressive_learning(stage: Stage, model: Optional[torch.nn.Module] = None,
                               dataloader: Optional[Any] = None) -> None:
    """Put ``stage`` in force: its dropout on ``model``'s classifier, its image size and RandAugment magnitude
    on the workers of ``dataloader`` (from the batch each starts next). Mixup is :class:`ProgressiveLearning`'s.

    Example:
        >>> from composer_efficientnet import composer_efficientnet
        >>> from composer_efficientnet.data import build_digits_dataspec
        >>> model = composer_efficientnet('efficientnet_b0', num_classes=10)
        >>> loader = build_digits_dataspec(image_size=32, batch_size=8).dataloader
        >>> first = progressive_stages(2, 2, image_size=[16, 32], dropout=[0.1, 0.3])[0]
        >>> apply_progressive_learning(first, model, loader)
        >>> next(iter(loader))[0].shape[-1], model.module.dropout.p
        (16, 0.1)
    """
    if stage.dropout is not None and model is not None:
        _classifier_dropout(model).p = stage.dropout
    if (stage.image_size is not None or stage.randaugment_magnitude is not None) and dataloader is not None:
        _stage_settings(dataloader).set(stage.image_size, stage.randaugment_magnitude)


class ProgressiveLearning(Algorithm):
    """EfficientNetV2's progressive learning: small images and weak regularization first, larger images and
    stronger regularization later, in ``num_stages`` equal stages of whole epochs.

    Args:
        num_stages: how many stages ``max_duration`` (whole epochs) is split into; 1 trains at the last values.
        image_size: the first and the last stage's training image side, in pixels; the workers crop at it.
        dropout: the first and the last stage's classifier dropout.
        randaugment_magnitude: the first and the last stage's RandAugment magnitude (torchvision's bins, 0-30),
            for a training dataset with ``augment: randaugment``.
        mixup_alpha: the first and the last stage's mixup alpha: this algorithm runs Composer's ``MixUp`` with
            it, off while it is 0. Use it instead of a ``mixup`` algorithm.

    A knob left out keeps the recipe's setting. The settings of each stage are logged as
    ``progressive_learning/<knob>`` when it starts; at the end of ``fit`` the model's dropout and the dataset's
    own size and magnitude are put back.

    Example:
        >>> from composer_efficientnet.algorithms import ProgressiveLearning
        >>> ProgressiveLearning(num_stages=4, image_size=[128, 300], dropout=[0.1, 0.3])
        ProgressiveLearning(num_stages=4, image_size=[128, 300], dropout=[0.1, 0.3])
    """

    def __init__(self, num_stages: int = 4, image_size: Optional[List[int]] = None,
                 dropout: Optional[List[float]] = None, randaugment_magnitude: Optional[List[int]] = None,
                 mixup_alpha: Optional[List[float]] = None) -> None:
        self.ranges = {'image_size': image_size, 'dropout': dropout,
                       'randaugment_magnitude': randaugment_magnitude, 'mixup_alpha': mixup_alpha}
        problems = range_problems(num_stages, self.ranges)
        if problems:
            raise ValueError('; '.join(f'{name}: {message}' for name, message in problems))
        self.num_stages = num_stages
        self.ranges = {name: list(value) for name, value in self.ranges.items() if value is not None}
        self.mixup = MixUp(alpha=0.0) if mixup_alpha is not None else None
        self.stage: Optional[Stage] = None
        self._recipe_dropout: Optional[float] = None

    def __repr__(self) -> str:
        ranges = ''.join(f', {name}={value}' for name, value in self.ranges.items())
        return f'ProgressiveLearning(num_stages={self.num_stages}{ranges})'

    def stages(self, state: State) -> List[Stage]:
        """Every stage of this run (``state.max_duration`` in epochs)."""
        if state.max_duration is None or state.max_duration.unit != TimeUnit.EPOCH:
            raise ValueError(f'progressive_learning: stages are whole epochs; max_duration must be in epochs '
                             f'(like 20ep), got {state.max_duration}')
        return progressive_stages(self.num_stages, int(state.max_duration.value), **self.ranges)

    def stage_at(self, state: State) -> Stage:
        """The stage of the current epoch."""
        stages = self.stages(state)
        starts = [stage.start_epoch for stage in stages]
        return stages[bisect.bisect_right(starts, int(state.timestamp.epoch)) - 1]

    def match(self, event: Event, state: State) -> bool:
        if event in (Event.FIT_START, Event.EPOCH_START, Event.FIT_END):
            return True
        return self.mixup is not None and self.mixup.alpha > 0 and self.mixup.match(event, state)

    def apply(self, event: Event, state: State, logger: Logger) -> Optional[int]:
        if event == Event.FIT_START:
            if 'dropout' in self.ranges:
                self._recipe_dropout = _classifier_dropout(state.model).p
            self.stage = None
        if event in (Event.FIT_START, Event.EPOCH_START):
            stage = self.stage_at(state)
            if stage != self.stage:
                self._enter(stage, state, logger)
        elif event == Event.FIT_END:
            self._leave(state)
        elif self.mixup is not None:
            self.mixup.apply(event, state, logger)
        return None

    def _enter(self, stage: Stage, state: State, logger: Logger) -> None:
        # Composer makes the epoch's iterator after EPOCH_START (and FIT_START), so no worker is building a
        # training batch while the settings change.
        apply_progressive_learning(stage, state.model, state.train_dataloader)
        if stage.mixup_alpha is not None and self.mixup is not None:
            self.mixup.alpha = stage.mixup_alpha
        self.stage = stage
        logger.log_metrics({f'progressive_learning/{name}': value for name, value in stage.settings().items()})
        log.info('progressive_learning: stage %d of %d from epoch %d: %s', stage.index + 1, self.num_stages,
                 stage.start_epoch, stage.describe())

    def _leave(self, state: State) -> None:
        if self._recipe_dropout is not None:
            _classifier_dropout(state.model).p = self._recipe_dropout
        if 'image_size' in self.ranges or 'randaugment_magnitude' in self.ranges:
            _stage_settings(state.train_dataloader).set(None, None)
        self.stage = None


def check_recipe(entry: Any, recipe: Any) -> None:
    """The recipe checks of ``progressive_learning`` (:data:`~composer_efficientnet.algorithms.compatibility.SUPPORT`
    runs them): its settings, and, where the recipe trains, that the run and its data can follow the stages.
    Raises :class:`~composer_efficientnet.recipe.RecipeError` at the setting (RecipeErrors when several)."""
    from composer_efficientnet.recipe import RecipeError, RecipeErrors  # it imports the algorithms' table

    params = {name: entry.params.get(name) for name in RANGES}
    problems = range_problems(entry.params.get('num_stages', 4), params)
    if not problems and recipe.train_dataset is not None:
        problems = _context_problems(entry, recipe, params)
    errors = [RecipeError(f'{entry.key}.{name}', message) for name, message in problems]
    if len(errors) > 1:
        raise RecipeErrors(errors)
    if errors:
        raise errors[0]


def _context_problems(entry: Any, recipe: Any, params: Dict[str, Any]) -> List[Tuple[str, str]]:
    """What in the rest of the recipe stops the stages: the duration, the data, other algorithms."""
    problems = []
    num_stages = entry.params.get('num_stages', 4)
    duration = Time.from_input(recipe.settings.get('max_duration', f'{num_stages}ep'), TimeUnit.EPOCH)
    if duration.unit != TimeUnit.EPOCH:
        problems.append(('num_stages', f'stages are whole epochs; give max_duration in epochs (like 20ep), not '
                                       f'{recipe.settings.get("max_duration")}'))
    elif num_stages > duration.value:
        problems.append(('num_stages', f'{num_stages}: more stages than the run has epochs ({duration.value}); use '
                                       f'at most {duration.value}'))
    dataset = recipe.train_dataset
    staged = [name for name in ('image_size', 'randaugment_magnitude') if params[name] is not None]
    if staged and dataset.name not in STAGED_DATASETS:
        problems.append((staged[0], f'the training dataset {dataset.name} does not follow stages; use one of '
                                    f'{", ".join(STAGED_DATASETS)}, or remove {" and ".join(staged)}'))
    elif params['randaugment_magnitude'] is not None and dataset.params.get('augment') != 'randaugment':
        problems.append(('randaugment_magnitude', f'the training data ({dataset.key}) does not use RandAugment; '
                                                  'set its augment: randaugment, or remove randaugment_magnitude'))
    if params['image_size'] is not None and dataset.name == 'digits' and params['image_size'][0] < 8:
        problems.append(('image_size', f'{params["image_size"]!r}: digits are 8x8 scans; start at 8 or more'))
    others = {other.name for other in recipe.algorithms}
    for knob, other, why in (('image_size', 'progressive_resizing', 'resizes the images too'),
                             ('mixup_alpha', 'mixup', 'mixes the batch too (mixup_alpha runs mixup itself)'),
                             ('dropout', 'gyro_dropout', 'replaces the classifier dropout')):
        if params[knob] is not None and other in others:
            problems.append((knob, f'{other} {why}; remove {other} or {knob}'))
    return problems
