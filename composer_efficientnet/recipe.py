"""Composer-style YAML recipes: load with command-line overrides, then validate everything up front.

A recipe selects each pluggable piece by a registered name, as ``{name: {params}}`` or a list of such
single-key mappings. :func:`validate` checks the whole recipe (sections, names, parameters, types, data
directories, batch divisibility) before anything is built or written, so a mistake costs one line on
stderr instead of a traceback minutes into a run.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple, Union

import torch
import yaml
from composer.core import Time, TimeUnit
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from composer_efficientnet import registry
from composer_efficientnet.efficientnet import MEMBERS, canonical_name, check_arguments

__all__ = ['RecipeError', 'RecipeErrors', 'Entry', 'Recipe', 'load_recipe', 'validate', 'mistakes_of', 'PRECISIONS',
           'DATASET_CONTEXT']


class RecipeError(ValueError):
    """A recipe mistake: ``key`` locates it, the message says what was wrong and what is allowed."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f'{key}: {message}')
        self.key = key


class RecipeErrors(RecipeError):
    """Every mistake :func:`validate` found in one recipe, so that one run of the command reports them all."""

    def __init__(self, errors: Sequence[RecipeError]) -> None:
        ValueError.__init__(self, '\n'.join(str(error).splitlines()[0] for error in errors))
        self.key = errors[0].key
        self.errors = list(errors)


def mistakes_of(error: RecipeError) -> List[str]:
    """One line per mistake that ``error`` reports."""
    return [str(mistake).splitlines()[0] for mistake in getattr(error, 'errors', [error])]


class _Mistakes:
    """Collects the mistakes of independent checks instead of stopping at the first."""

    def __init__(self) -> None:
        self.errors: List[RecipeError] = []

    def check(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)``, or ``None`` after recording the mistakes it raised."""
        try:
            return function(*args, **kwargs)
        except RecipeError as error:
            self.errors.extend(getattr(error, 'errors', [error]))
            return None

    def raise_any(self) -> None:
        """Raise what was collected: the one mistake itself, or all of them."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise RecipeErrors(self.errors)


#: Legacy precision names of Composer's YAML recipes, and today's.
PRECISIONS = {'amp': 'amp_fp16', 'fp16': 'amp_fp16', 'fp32': 'fp32', 'bf16': 'amp_bf16', 'amp_fp16': 'amp_fp16',
              'amp_bf16': 'amp_bf16', 'amp_fp8': 'amp_fp8'}
#: Keyword-only arguments the runner gives dataset builders; never set by a recipe.
DATASET_CONTEXT = ('batch_size', 'seed', 'dataloader_kwargs', 'model_resolution', 'model_num_classes')
DATALOADER_KEYS = {'num_workers': int, 'pin_memory': bool, 'timeout': (int, float), 'prefetch_factor': int,
                   'persistent_workers': bool, 'multiprocessing_context': str}

_SCALARS: Dict[str, Tuple[type, ...]] = {
    'max_duration': (str, int), 'train_batch_size': (int,), 'eval_batch_size': (int,), 'seed': (int,),
    'grad_accum': (int, str), 'precision': (str,), 'eval_interval': (str, int), 'scale_schedule_ratio': (int, float),
    'save_folder': (str,), 'save_interval': (str, int), 'save_num_checkpoints_to_keep': (int,),
    'save_overwrite': (bool,), 'load_path': (str,), 'load_weights_only': (bool,), 'autoresume': (bool,),
    'run_name': (str,), 'deterministic_mode': (bool,), 'compile': (dict, bool), 'device': (dict, str),
    'dataloader': (dict,), 'train_subset_num_batches': (int,), 'eval_subset_num_batches': (int,),
    'dist_timeout': (int, float), 'progress_bar': (bool,), 'log_to_console': (bool,),
    'console_log_interval': (str, int), 'python_log_level': (str,), 'sync_free': (bool,),
    'cudnn_benchmark': (bool,), 'load_trusted': (bool,),
}
_SINGLE = {'model': registry.models, 'train_dataset': registry.datasets, 'val_dataset': registry.datasets,
           'optimizers': registry.optimizers}
_MANY = {'algorithms': registry.algorithms, 'callbacks': registry.callbacks, 'loggers': registry.loggers,
         'schedulers': registry.schedulers}
_REQUIRED = {'train': ('model', 'train_dataset', 'optimizers', 'max_duration', 'train_batch_size'),
             'eval': ('model', 'val_dataset', 'eval_batch_size')}
#: Sections only training uses; evaluating a recipe ignores them, so the recipe of a run evaluates its checkpoints.
TRAINING_ONLY = ('train_dataset', 'optimizers', 'schedulers', 'callbacks', 'max_duration', 'train_batch_size',
                 'grad_accum', 'eval_interval', 'scale_schedule_ratio', 'save_interval',
                 'save_num_checkpoints_to_keep', 'save_overwrite', 'autoresume', 'load_weights_only',
                 'train_subset_num_batches', 'sync_free')
SECTIONS = sorted([*_SCALARS, *_SINGLE, *_MANY])


@dataclass
class Entry:
    """One registered piece a recipe selected: its registered name, the object and the parameters."""
    name: str
    target: Callable[..., Any]
    params: Dict[str, Any]
    key: str  # where it sits in the recipe, for messages

    def build(self, *args: Any, **context: Any) -> Any:
        """Call the target with the recipe's parameters and whichever of ``context`` it accepts; a failure
        the parameters caused (a bad value, a missing file or package) is a :class:`RecipeError` at this key."""
        accepted = inspect.signature(self.target).parameters
        try:
            return self.target(*args, **self.params, **{k: v for k, v in context.items() if k in accepted})
        except (ValueError, TypeError, OSError, ImportError, AttributeError, KeyError) as error:
            raise RecipeError(self.key, _reason(error)) from error


def _reason(error: Exception) -> str:
    """One line for an error a constructor raised: a KeyError's message when it has one (its ``str()`` quotes
    it), else the key it names."""
    if isinstance(error, KeyError) and len(error.args) == 1:
        key = error.args[0]
        return key if isinstance(key, str) and ' ' in key.strip() else f'no entry {key!r} (KeyError)'
    return str(error) or type(error).__name__


@dataclass
class Recipe:
    """A validated recipe: every name resolved, every parameter checked."""
    model: Entry
    train_dataset: Optional[Entry] = None  # None when the recipe was validated for evaluation
    optimizer: Optional[Entry] = None
    val_dataset: Optional[Entry] = None
    algorithms: List[Entry] = field(default_factory=list)
    callbacks: List[Entry] = field(default_factory=list)
    loggers: List[Entry] = field(default_factory=list)
    schedulers: List[Entry] = field(default_factory=list)
    settings: Dict[str, Any] = field(default_factory=dict)  # the scalar sections, as written
    precision: Optional[str] = None
    world_size: int = 1

    @property
    def model_resolution(self) -> int:
        """Native resolution of the recipe's model member, 224 for models that are not a member."""
        try:
            return MEMBERS[canonical_name(self.model.name)].resolution
        except ValueError:
            return 224


class _OverrideLoader(yaml.SafeLoader):
    """Reads override values as OmegaConf reads recipe files: YAML, with exponents such as ``1e-3`` as floats
    (PyYAML alone reads those as strings)."""


_OverrideLoader.add_implicit_resolver('tag:yaml.org,2002:float', re.compile(r"""^(?:
    [-+]?[0-9]+(?:_[0-9]+)*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
   |[-+]?[0-9]+(?:_[0-9]+)*[eE][-+]?[0-9]+
   |\.[0-9]+(?:_[0-9]+)*(?:[eE][-+]?[0-9]+)?
   |[-+]?\.(?:inf|Inf|INF)
   |\.(?:nan|NaN|NAN))$""", re.X), list('-+0123456789.'))


def _yaml_problem(error: Exception) -> str:
    """What a YAML error says was wrong and where, in one line."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        mark = error.problem_mark
        return error.problem + (f' (line {mark.line + 1}, column {mark.column + 1})' if mark else '')
    return str(error).splitlines()[0]


def load_recipe(path: Union[str, os.PathLike], overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Read a YAML recipe and apply ``dotted.key=value`` overrides (values parsed as YAML)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise RecipeError('recipe', f"'{path}' is a directory; give a recipe file, such as recipes/quickstart.yaml")
    if not os.path.isfile(path):
        raise RecipeError('recipe', f"file '{path}' does not exist")
    try:
        config = OmegaConf.load(path)
    except UnicodeDecodeError:
        raise RecipeError('recipe', f"'{path}' is not a YAML text file (a checkpoint? give it as load_path=PATH "
                          'after the recipe)') from None
    except (yaml.YAMLError, OmegaConfBaseException) as error:
        raise RecipeError('recipe', f"'{path}' is not valid YAML: {_yaml_problem(error)}") from None
    if not OmegaConf.is_dict(config):
        raise RecipeError('recipe', f"'{path}' must be a mapping of sections, got {type(config).__name__}")
    for override in overrides:
        _apply_override(config, override)
    try:
        return OmegaConf.to_container(config, resolve=True)
    except OmegaConfBaseException as error:
        raise RecipeError(str(getattr(error, 'full_key', None) or 'recipe'),
                          f'cannot resolve an interpolation: {str(error).splitlines()[0]}') from None


def _apply_override(config: Any, override: str) -> None:
    key, sep, raw = override.partition('=')
    if not sep or not key:
        raise RecipeError(override, "an override is written key=value, e.g. 'max_duration=2ep' or "
                          "'optimizers.rmsprop.lr=0.1'")
    if not all(key.split('.')):
        raise RecipeError(key, "an override key is names joined by single dots, e.g. 'optimizers.rmsprop.lr'")
    try:
        value = yaml.load(raw, Loader=_OverrideLoader) if raw else None
    except yaml.YAMLError as error:
        raise RecipeError(key, f'cannot apply override {override!r}: {_yaml_problem(error)}') from None
    if _replaces_entry(config, key, value):
        return
    key = _by_position(config, key)
    try:  # a one-entry section given whole replaces the recipe's: merged, it would hold two entries
        OmegaConf.update(config, key, value, merge=key not in _SINGLE, force_add=True)
    except (OmegaConfBaseException, TypeError, ValueError) as error:
        raise RecipeError(key, f'cannot apply override {override!r}: {str(error).splitlines()[0]}') from None


def _replaces_entry(config: Any, key: str, value: Any) -> bool:
    """``schedulers.0={constant: {}}`` replaces the first entry of a list section and ``schedulers.N=...``, N its
    length, appends one; a merge would leave an entry of two names."""
    section, _, position = key.partition('.')
    entries = config.get(section)
    if section not in _MANY or not position.isdigit() or not OmegaConf.is_list(entries):
        return False
    if int(position) > len(entries):
        held = f'positions 0 to {len(entries) - 1}' if entries else 'none'
        raise RecipeError(key, f'{section} has {len(entries)} entries ({held}); {section}.{len(entries)}=... '
                          'appends one')
    if int(position) == len(entries):
        entries.append(value)
    else:
        entries[int(position)] = value
    return True


def _by_position(config: Any, key: str) -> str:
    """``algorithms.label_smoothing.smoothing`` as ``algorithms.1.label_smoothing.smoothing``: list sections'
    entries can be named in an override, as mapping sections' are."""
    section, _, rest = key.partition('.')
    name = rest.split('.')[0]
    entries = config.get(section)
    if section not in _MANY or not name or name.isdigit() or not OmegaConf.is_list(entries):
        return key
    names = [next(iter(entry)) if OmegaConf.is_dict(entry) and len(entry) == 1 else entry for entry in entries]
    if names.count(name) != 1:
        found = 'no entry' if name not in names else f'{names.count(name)} entries'
        listed = ', '.join(map(str, names)) or 'none'
        raise RecipeError(key, f"{section} has {found} named '{name}' (it has: {listed}); name an entry it has "
                          f'once, or give its position ({section}.0...)')
    return f'{section}.{names.index(name)}.{rest}'


def validate(config: Dict[str, Any], world_size: int = 1, purpose: Literal['train', 'eval'] = 'train') -> Recipe:
    """Check the whole recipe and resolve its names; raises :class:`RecipeError` for a mistake, and
    :class:`RecipeErrors` naming every one when there are several.

    For ``purpose='eval'`` the sections in :data:`TRAINING_ONLY` are dropped unchecked (a run's training data
    need not exist where its checkpoint is evaluated) and the held-out data is required instead.
    """
    mistakes = _Mistakes()
    for key in config:
        if key not in SECTIONS:
            mistakes.errors.append(RecipeError(key, f'unknown section{_closest(key, SECTIONS)}; valid sections: '
                                               f'{", ".join(SECTIONS)}'))
    config = {key: value for key, value in config.items() if key in SECTIONS}
    if purpose == 'eval':
        config = {key: value for key, value in config.items() if key not in TRAINING_ONLY}
    for key in _REQUIRED[purpose]:
        if config.get(key) is None:
            mistakes.errors.append(RecipeError(key, 'is required'))
    for key, types in _SCALARS.items():
        if config.get(key) is not None and (not isinstance(config[key], types) or isinstance(config[key], bool)
                                            and bool not in types):
            mistakes.errors.append(RecipeError(key, f'must be {" or ".join(t.__name__ for t in types)}, got '
                                               f'{config[key]!r}'))
            config.pop(key)  # the checks below read only well-typed settings
        elif config.get(key) is not None and (non_finite := _non_finite(key, config[key])):
            mistakes.errors.extend(non_finite)  # the dataloader's options and compile's included
            config.pop(key)
    singles = {key: mistakes.check(_entries, config, key, reg, single=True) or [None]
               for key, reg in _SINGLE.items() if config.get(key)}
    many = {key: mistakes.check(_entries, config, key, reg, single=False) or [] for key, reg in _MANY.items()}
    recipe = Recipe(model=singles.get('model', [None])[0], train_dataset=singles.get('train_dataset', [None])[0],
                    optimizer=singles.get('optimizers', [None])[0], val_dataset=singles.get('val_dataset', [None])[0],
                    settings={k: config[k] for k in _SCALARS if config.get(k) is not None}, world_size=world_size,
                    **many)
    for check in (_check_batches, _check_times, _check_model, _check_optimizer, _check_schedulers, _check_algorithms):
        mistakes.check(check, recipe)
    mistakes.check(_check_dataloader, recipe.settings.get('dataloader', {}))
    recipe.precision = mistakes.check(_precision, recipe.settings.get('precision'))
    mistakes.check(_check_device, recipe.settings.get('device'))
    mistakes.check(_check_autoresume, recipe.settings)
    mistakes.check(_check_run_settings, recipe.settings)
    if purpose == 'train':
        mistakes.check(_check_save_folder_writable, recipe.settings)
    level = recipe.settings.get('python_log_level')
    if level is not None and level.upper() not in _LOG_LEVELS:
        mistakes.errors.append(RecipeError('python_log_level', f'unknown level {level!r}; valid: '
                                           f'{", ".join(_LOG_LEVELS).lower()}'))
    if recipe.settings.get('cudnn_benchmark') and recipe.settings.get('deterministic_mode'):
        mistakes.errors.append(RecipeError('cudnn_benchmark', 'true picks convolution algorithms by timing them, '
                                           'which deterministic_mode: true forbids; set one of them to false'))
    mistakes.raise_any()
    return recipe


def _entries(config: Dict[str, Any], key: str, reg: registry.Registry, single: bool) -> List[Entry]:
    value = config.get(key) or []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list) and all(isinstance(item, dict) and len(item) == 1 for item in value):
        items = [next(iter(item.items())) for item in value]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = [(item, {}) for item in value]
    else:
        raise RecipeError(key, 'must be a mapping {name: {params}} or a list of such single-key mappings')
    mistakes = _Mistakes()
    entries = [mistakes.check(_entry, f'{key}.{name}', reg, str(name), params) for name, params in items]
    if single and len(items) != 1 and all(str(name) in reg for name, _ in items):  # else the name is the mistake
        names = [str(name) for name, _ in items]
        swap = (f"; to swap one for another in an override, give the whole section: {key}='{{{names[-1]}: {{...}}}}'"
                if len(items) > 1 else '')
        mistakes.errors.append(RecipeError(key, f'selects exactly one {reg.kind[:-1]}, got {len(items)}: '
                                           f'{", ".join(names)}{swap}'))
    mistakes.raise_any()
    return entries


def _entry(key: str, reg: registry.Registry, name: str, params: Any) -> Entry:
    try:
        target = reg.get(name)
    except registry.RegistryError as error:
        raise RecipeError(key, str(error)) from None
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RecipeError(key, f'parameters must be a mapping of names to values, got {params!r}')
    _check_params(key, target, params, reg)
    return Entry(name, target, params, key)


def _check_params(key: str, target: Callable[..., Any], params: Dict[str, Any], reg: registry.Registry) -> None:
    signature = inspect.signature(target)
    skip = {'params'} if reg is registry.optimizers else set(DATASET_CONTEXT) if reg is registry.datasets else set()
    accepted = {n: p for n, p in signature.parameters.items() if n not in skip and n != 'self' and p.kind not in (
        inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
    takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    mistakes = _Mistakes()
    for name in params:
        if name not in accepted and not takes_any:
            mistakes.errors.append(RecipeError(f'{key}.{name}', f'unknown parameter{_closest(name, accepted)}; valid '
                                               f'parameters: {", ".join(accepted) or "none"}'))
    for name, parameter in accepted.items():
        if parameter.default is inspect.Parameter.empty and name not in params:
            mistakes.errors.append(RecipeError(f'{key}', f"missing required parameter '{name}'"))
    hints = _type_hints(target)
    for name, value in params.items():
        hint = hints.get(name)
        if hint is not None and not _matches(value, hint):
            mistakes.errors.append(RecipeError(f'{key}.{name}', f'must be {_describe(hint)}, got {value!r}'))
        else:
            default = accepted[name].default if name in accepted else None
            mistakes.errors.extend(_non_finite(f'{key}.{name}', value, default))
    if reg is registry.datasets and 'datadir' in params and not os.path.isdir(str(params['datadir'])):
        mistakes.errors.append(RecipeError(f'{key}.datadir', f"directory '{params['datadir']}' does not exist"))
    mistakes.raise_any()


def _floats(key: str, value: Any) -> List[Tuple[str, float]]:
    """Every float in ``value`` (a number, or lists and mappings of them), each with its dotted key."""
    if isinstance(value, float):
        return [(key, value)]
    items = enumerate(value) if isinstance(value, (list, tuple)) else value.items() if isinstance(value, dict) else ()
    return [found for name, item in items for found in _floats(f'{key}.{name}', item)]


def _non_finite(key: str, value: Any, default: Any = None) -> List[RecipeError]:
    """The recipe's one check of non-finite numbers: a mistake for each NaN in ``value``, which no parameter
    means, and for each infinity unless the parameter's ``default`` is infinite itself (no registered target's
    is; one registered from elsewhere may have one)."""
    infinite_ok = any(math.isinf(number) for _, number in _floats('', default))
    return [RecipeError(where, f'must be a finite number, got {number!r}') for where, number in _floats(key, value)
            if math.isnan(number) or math.isinf(number) and not infinite_ok]


def _type_hints(target: Callable[..., Any]) -> Dict[str, Any]:
    function = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - unresolvable annotations only mean fewer checks
        return {}


_PRIMITIVES = (int, float, bool, str, type(None), list, dict, tuple)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a type hint; hints beyond plain types are not second-guessed."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return any(_matches(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if origin in (list, tuple, Sequence, typing.Sequence):
        return isinstance(value, (list, tuple))
    if origin in (dict, typing.Mapping):
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is torch.Tensor:  # YAML has no tensors; where one is accepted (a learning rate), a number is
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in _PRIMITIVES:
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Union:
        return ' or '.join(_describe(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        return 'one of ' + ', '.join(repr(a) for a in typing.get_args(hint))
    return 'null' if hint is type(None) else getattr(hint, '__name__', str(hint))


def _closest(name: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ''


def _check_batches(recipe: Recipe) -> None:
    for key in ('train_batch_size', 'eval_batch_size'):
        size = recipe.settings.get(key)
        if size is None:
            continue
        if size < 1:
            raise RecipeError(key, f'must be a positive integer, got {size}')
        if size % recipe.world_size:
            raise RecipeError(key, f'{size} is global across processes and must be divisible by the number of '
                              f'processes ({recipe.world_size})')
    if recipe.val_dataset is not None and 'eval_batch_size' not in recipe.settings:
        raise RecipeError('eval_batch_size', 'is required when val_dataset is set')
    accum = recipe.settings.get('grad_accum')
    if accum is None or 'train_batch_size' not in recipe.settings:  # a missing batch size is its own mistake
        return
    if isinstance(accum, str) and accum != 'auto':
        raise RecipeError('grad_accum', f"must be a positive integer or 'auto', got {accum!r}")
    per_rank = recipe.settings['train_batch_size'] // recipe.world_size
    if isinstance(accum, int) and (accum < 1 or per_rank % accum):
        raise RecipeError('grad_accum', f'must be a positive integer dividing the per-process batch ({per_rank}), '
                          f'got {accum}')


_DURATION_EXAMPLES = "'400ep' or '5000ba'"


def _time(key: str, value: Union[str, int], examples: str) -> Time:
    """A recipe's time value, integers counting epochs as Composer counts them."""
    try:
        time = Time.from_input(value, TimeUnit.EPOCH)
    except (ValueError, TypeError):
        raise RecipeError(key, f'must be a Composer time such as {examples}, or an integer (epochs; ep, ba and sp '
                          f'count whole units), got {value!r}') from None
    if time.unit == TimeUnit.TOKEN:  # Composer counts none in image batches: the time would never come
        raise RecipeError(key, f'{value!r} counts tokens, which image batches do not have; use ep, ba or sp')
    return time


def _check_times(recipe: Recipe) -> None:
    settings = recipe.settings
    intervals = {key: _time(key, settings[key], "'1ep', '500ba' or '0.5dur'")
                 for key in ('eval_interval', 'console_log_interval', 'save_interval') if settings.get(key) is not None}
    if 'save_interval' in intervals and intervals['save_interval'].value <= 0:
        raise RecipeError('save_interval', f"must be positive, got {settings['save_interval']!r} (save_folder: null "
                          'writes no checkpoints)')
    duration = settings.get('max_duration')
    if duration is not None:
        duration = _time('max_duration', duration, _DURATION_EXAMPLES)
        if duration.unit == TimeUnit.DURATION or duration.value <= 0:
            raise RecipeError('max_duration', f'must be a positive length of training such as {_DURATION_EXAMPLES}, '
                              f"got {settings['max_duration']!r}")
        _check_warmup_units(recipe, duration)
    ratio = settings.get('scale_schedule_ratio')
    if ratio is not None and ratio <= 0:
        raise RecipeError('scale_schedule_ratio', f'must be a positive number, got {ratio!r}')
    if ratio is not None and duration is not None and (duration * ratio).value == 0:
        unit = duration.unit.value
        raise RecipeError('scale_schedule_ratio', f'{ratio!r} scales max_duration {duration.value}{unit} to 0{unit} '
                          f'(Composer rounds down); use a ratio of at least {1 / duration.value:.3g} or a longer '
                          'max_duration')


def _check_warmup_units(recipe: Recipe, duration: Time) -> None:
    """Composer's warm-up schedulers count ``t_warmup`` and ``t_max`` in one unit once epochs are batches and
    ``dur`` is a share of ``max_duration``; otherwise they fail on the first step."""
    def counted_in(time: Time) -> TimeUnit:
        unit = duration.unit if time.unit == TimeUnit.DURATION else time.unit
        return TimeUnit.BATCH if unit == TimeUnit.EPOCH else unit

    for entry in recipe.schedulers:
        defaults = inspect.signature(entry.target).parameters
        if 't_warmup' not in defaults or 't_max' not in defaults:
            continue
        try:
            times = {name: _time(f'{entry.key}.{name}', entry.params.get(name, defaults[name].default),
                                 "'1ep', '500ba'") for name in ('t_warmup', 't_max')}
        except RecipeError:  # a time that is not one: _check_schedulers says so
            continue
        if counted_in(times['t_warmup']) != counted_in(times['t_max']):
            raise RecipeError(f'{entry.key}.t_warmup', f"{times['t_warmup']} and t_max {times['t_max']} (with "
                              f'max_duration {duration}) count different units; Composer needs both in epochs or '
                              'batches, or both in samples (dur is a share of max_duration)')


def _check_model(recipe: Recipe) -> None:
    """Our members' numbers in range (``num_classes``, ``dropout``, ``drop_connect_rate``, ``bn_momentum``,
    ``bn_eps``), by the check the model builder makes itself
    (:func:`~composer_efficientnet.efficientnet.check_arguments`), here before data or a model is built."""
    entry = recipe.model
    if entry is None:
        return
    try:
        canonical_name(entry.name)
    except ValueError:  # a model registered from elsewhere checks its own
        return
    names = inspect.signature(check_arguments).parameters
    try:  # None: the member's own value
        check_arguments(**{name: value for name, value in entry.params.items() if name in names and value is not None})
    except ValueError as error:
        raise RecipeError(entry.key, str(error)) from None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _optimizer_problem(name: str, value: Any) -> Optional[str]:
    """What is wrong with an optimizer's ``lr``, ``weight_decay``, ``momentum``, ``eps`` or ``betas`` (torch's and
    Composer's names), if anything."""
    if name in ('lr', 'weight_decay', 'momentum', 'eps') and _number(value) and value < 0:
        return 'must be 0 or more'
    if name == 'betas' and not (isinstance(value, (list, tuple)) and len(value) == 2
                                and all(_number(beta) and 0 <= beta < 1 for beta in value)):
        return 'must be two numbers in [0, 1), the decay rates of the gradient\'s running averages'
    return None


def _check_optimizer(recipe: Recipe) -> None:
    """The optimizer's numbers in range, then what the optimizer itself checks when it is made (torch's Nesterov
    momentum needs a momentum, ...), on a stand-in parameter: refused before the model is built."""
    entry = recipe.optimizer
    if entry is None:
        return
    mistakes = _Mistakes()
    for name, value in entry.params.items():
        problem = _optimizer_problem(name, value)
        if problem:
            mistakes.errors.append(RecipeError(f'{entry.key}.{name}', f'{problem}, got {value!r}'))
    mistakes.raise_any()
    try:
        entry.target([torch.zeros(1, requires_grad=True)], **entry.params)
    except ValueError as error:
        raise RecipeError(entry.key, str(error).splitlines()[0] if str(error) else repr(error)) from None
    except Exception:  # noqa: BLE001 - anything else may depend on the real parameters or device: the run's
        pass


#: Composer's schedulers: multipliers of the learning rate and how they change, with their lowest values.
_SCHEDULER_NUMBERS = {
    'alpha': (0, 'a multiplier of the learning rate: 0 or more'),
    'alpha_i': (0, 'a multiplier of the learning rate: 0 or more'),
    'alpha_f': (0, 'a multiplier of the learning rate: 0 or more'),
    'gamma': (0, 'must be 0 or more (a negative one makes the learning rate negative, or complex)'),
    'power': (0, "must be 0 or more (a negative one divides by zero at the schedule's end)"),
    't_mult': (1, 'must be 1 or more (Composer rounds each cycle down, so shorter ones shrink to 0 batches, '
                  'where it fails mid-run)'),
}
#: Composer's schedulers' times: lengths must be positive; t_warmup and milestones may be 0.
_SCHEDULER_LENGTHS = ('t_max', 't_0', 'decay_period', 'step_size')
_SCHEDULER_TIMES = (*_SCHEDULER_LENGTHS, 't_warmup')
_SCHEDULER_EXAMPLES = "'1ep', '500ba' or '0.5dur'"


def _scheduler_time(key: str, value: Any, length: bool) -> None:
    if isinstance(value, Time):
        return
    if not isinstance(value, str):  # Composer's schedulers parse only strings
        raise RecipeError(key, f'must be a time such as {_SCHEDULER_EXAMPLES} (a string: Composer\'s schedulers take '
                          f'no bare numbers), got {value!r}')
    try:
        time = Time.from_timestring(value)
    except (ValueError, TypeError):
        raise RecipeError(key, f'must be a Composer time such as {_SCHEDULER_EXAMPLES} (ep, ba and sp count whole '
                          f'units), got {value!r}') from None
    if time.unit in (TimeUnit.SECOND, TimeUnit.TOKEN):
        raise RecipeError(key, f"{value!r} counts {time.unit.name.lower()}s, which Composer's schedulers do not "
                          'take here; use ep, ba, sp or dur')
    if time.value < 0 or length and time.value == 0:
        raise RecipeError(key, f'must be {"positive" if length else "0 or more"}, got {value!r}')


def _check_schedulers(recipe: Recipe) -> None:
    """Each scheduler's multipliers and times in range (Composer checks none, and fails mid-run or trains with a
    negative learning rate)."""
    mistakes = _Mistakes()
    for entry in recipe.schedulers:
        if not getattr(entry.target, '__module__', '').startswith('composer.'):
            continue  # registered from elsewhere: its names may mean other things
        for name, value in entry.params.items():
            key = f'{entry.key}.{name}'
            if name in _SCHEDULER_NUMBERS and _number(value) and value < _SCHEDULER_NUMBERS[name][0]:
                mistakes.errors.append(RecipeError(key, f'{_SCHEDULER_NUMBERS[name][1]}, got {value!r}'))
            elif name in _SCHEDULER_TIMES:
                mistakes.check(_scheduler_time, key, value, name in _SCHEDULER_LENGTHS)
            elif name == 'milestones' and isinstance(value, (list, tuple)):
                for position, milestone in enumerate(value):
                    mistakes.check(_scheduler_time, f'{key}.{position}', milestone, False)
    mistakes.raise_any()


def _check_algorithms(recipe: Recipe) -> None:
    from composer_efficientnet.algorithms.compatibility import check_algorithms  # it imports this module
    check_algorithms(recipe)


def _check_dataloader(options: Dict[str, Any]) -> None:
    for name, value in options.items():
        if value is None:  # unsets a recipe's option: the DataLoader's default
            continue
        if name not in DATALOADER_KEYS:
            raise RecipeError(f'dataloader.{name}', f'unknown option{_closest(name, DATALOADER_KEYS)}; valid options: '
                              f'{", ".join(DATALOADER_KEYS)}')
        types = DATALOADER_KEYS[name]
        if not isinstance(value, types) or (isinstance(value, bool) and types is not bool):
            raise RecipeError(f'dataloader.{name}', f'must be {getattr(types, "__name__", "a number")}, got {value!r}')


_LOG_LEVELS = ('CRITICAL', 'ERROR', 'WARNING', 'INFO', 'DEBUG')


def _check_run_settings(settings: Dict[str, Any]) -> None:
    seed = settings.get('seed')
    if seed is not None and not 0 <= seed < 2**32:
        raise RecipeError('seed', f'must be in [0, 2**32 - 1], got {seed}')
    for key in ('train_subset_num_batches', 'eval_subset_num_batches'):
        if settings.get(key) is not None and settings[key] < 1 and settings[key] != -1:
            raise RecipeError(key, f'must be a positive number of batches, or -1 for all, got {settings[key]}')
    folder = settings.get('save_folder')
    if folder is not None and (not folder.strip() or os.path.isfile(folder)):
        problem = 'is empty' if not folder.strip() else f"'{folder}' is a file"
        raise RecipeError('save_folder', f'{problem}; give a directory for the checkpoints, or null to write none')


def _check_save_folder_writable(settings: Dict[str, Any]) -> None:
    """A training run's local ``save_folder`` must be a folder it can write checkpoints in, or one it can create
    (Composer makes it): checked before anything is built, as the first checkpoint would fail only after training
    to it (``eval`` only reads the folder, so a read-only one is fine there)."""
    from composer_efficientnet.outputs import folder_problem
    folder = settings.get('save_folder')
    if not folder or not folder.strip() or '://' in folder or os.path.isfile(folder):
        return  # no checkpoints, an object store, or a mistake _check_run_settings names
    problem = folder_problem(folder, create=True)
    if problem:
        raise RecipeError('save_folder', f'{problem}; give a folder the run can write its checkpoints in, or null to '
                          'write none')


def _check_autoresume(settings: Dict[str, Any]) -> None:
    if settings.get('autoresume'):
        missing = [key for key in ('save_folder', 'run_name') if not settings.get(key)]
        if missing:
            raise RecipeError('autoresume', f'true needs {" and ".join(missing)}: a run resumes from the checkpoints '
                              'in save_folder of the run with that run_name')


def _precision(name: Optional[str]) -> Optional[str]:
    if name is None:
        return None
    if name.lower() not in PRECISIONS:
        raise RecipeError('precision', f'unknown precision {name!r}; valid: {", ".join(sorted(PRECISIONS))} '
                          '(any case)')
    return PRECISIONS[name.lower()]


def _check_device(device: Any) -> None:
    name = next(iter(device), None) if isinstance(device, dict) else device
    if device is not None and (name not in ('gpu', 'cpu', 'mps') or isinstance(device, dict) and len(device) != 1):
        raise RecipeError('device', f"must be one of gpu, cpu, mps (as 'gpu' or {{gpu: {{}}}}), got {device!r}")
