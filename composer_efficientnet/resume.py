"""Checkpointing and autoresume for recipe runs: safe checkpoints, and a resume only of the same run.

With ``autoresume: true``, ``save_folder`` and ``run_name``, rerunning a command continues from the newest
complete checkpoint of its folder. Every checkpoint records its run's name and what the recipe trained (model
and its parameters, optimizer, training data, global batch size); resuming another run's checkpoint, or with a
recipe that differs there, stops with a :class:`ResumeMismatchError` naming each difference, before a model is
built.

No checkpoint runs code when loaded, unless the recipe sets ``load_trusted: true``: every file read here, and
every file Composer loads while :func:`checkpoint_must_fit` builds the Trainer (a local or downloaded
``load_path``, an autoresume checkpoint) or while :func:`loads_checked` is active (a fit, with its
``load_checkpoint`` callbacks), is read without unpickling anything but tensors and plain types
(:mod:`composer_efficientnet.safe_load`), and one that would run code is a one-line :class:`RecipeError`.
Archives (``.tar``, ``.pt.gz``) are unpacked into a private temporary folder after every member is checked
(:mod:`composer_efficientnet.archives`), ``load_trusted`` or not: one that would write outside it is a
:class:`RecipeError` too.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, TypeVar

import torch
from composer.core import Timestamp
from composer.utils import dist, ensure_folder_has_no_conflicting_files, format_name_with_dist, parse_uri
from torch.nn.parallel import DistributedDataParallel

from composer_efficientnet.callbacks.checkpointing import (CHECKPOINT_FILENAME, LATEST_FILENAME,
                                                           AtomicCheckpointSaver, checkpoint_pattern,
                                                           checkpoints_without_code, newest_complete_checkpoint,
                                                           point_latest_at)
from composer_efficientnet.efficientnet import canonical_name
from composer_efficientnet.recipe import Entry, Recipe, RecipeError
from composer_efficientnet.archives import ArchiveError, unpacked
from composer_efficientnet.safe_load import UnsafeCheckpointError, can_map, read_checkpoint

__all__ = ['ResumeMismatchError', 'checkpoint_savers', 'check_autoresume', 'check_checkpoint', 'check_no_earlier_run',
           'check_of_this_run', 'checkpoint_must_fit', 'loads_checked', 'newest_run_checkpoint', 'run_identity',
           'stored_identity']


T = TypeVar('T')


class ResumeMismatchError(RecipeError):
    """Autoresume with a recipe that trains something other than the run whose checkpoints it would load."""


def _resolved(entry: Entry) -> Dict[str, Any]:
    """The entry's name and every parameter, defaults filled in, as JSON would store them."""
    try:
        name = canonical_name(entry.name)
    except ValueError:  # not an EfficientNet member
        name = entry.name
    try:
        bound = inspect.signature(entry.target).bind_partial(**entry.params)
        bound.apply_defaults()
        params = {k: v for k, v in bound.arguments.items() if k != 'kwargs'}
    except (TypeError, ValueError):
        params = dict(entry.params)
    return json.loads(json.dumps({'': name, **params}, default=str, sort_keys=True))


#: Model parameters that change how a model computes, not what it learns: a run may resume with another value.
HOW_NOT_WHAT = ('memory_efficient',)


def run_identity(recipe: Recipe) -> Dict[str, Any]:
    """What a resumed run must share with the run that wrote the checkpoint, as flat ``key: value`` pairs."""
    model = _resolved(recipe.model)
    identity = {'model': model.pop('')}
    identity.update({f'model.{name}': value for name, value in model.items() if name not in HOW_NOT_WHAT})
    identity.update({'optimizers': recipe.optimizer.name, 'train_dataset': recipe.train_dataset.name,
                     'train_batch_size': recipe.settings['train_batch_size']})
    return identity


def checkpoint_savers(recipe: Recipe) -> List[AtomicCheckpointSaver]:
    """The recipe's ``save_*`` settings as an :class:`AtomicCheckpointSaver` with Composer's defaults (none
    without a ``save_folder``); its checkpoints record :func:`run_identity`."""
    settings = recipe.settings
    folder = settings.get('save_folder')
    if folder is None:
        return []
    _, _, path = parse_uri(folder)
    remote = (lambda name: str(Path(path) / name)) if path else (lambda name: name)
    return [AtomicCheckpointSaver(  # save_interval was checked with the recipe
        folder=folder, filename=CHECKPOINT_FILENAME, remote_file_name=remote(CHECKPOINT_FILENAME),
        latest_filename=LATEST_FILENAME, latest_remote_file_name=remote(LATEST_FILENAME),
        save_interval=settings.get('save_interval', '1ep'), overwrite=settings.get('save_overwrite', False),
        num_checkpoints_to_keep=settings.get('save_num_checkpoints_to_keep', -1),
        metadata={'recipe': run_identity(recipe)})]


def _trusted(recipe: Recipe) -> bool:
    return bool(recipe.settings.get('load_trusted'))


def _load_lazily(checkpoint: str, trusted: bool, key: str) -> Any:
    """A checkpoint's contents, its tensors mapped from the file rather than read (read whole from a
    legacy-format file, which cannot be mapped); without running code it carries unless ``trusted``. An archive is
    unpacked into a private temporary folder, its members checked, ``trusted`` or not. A file that would run code,
    an archive that would write outside that folder, or a file that cannot be read, is a :class:`RecipeError` at
    ``key``."""
    try:
        if trusted:
            with unpacked(checkpoint) as plain:
                return torch.load(plain, map_location='cpu', mmap=can_map(plain), weights_only=False)
        return read_checkpoint(checkpoint, mmap=True)
    except (UnsafeCheckpointError, ArchiveError) as error:
        raise RecipeError(key, str(error)) from None
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
        raise RecipeError(key, f"cannot read checkpoint '{checkpoint}': {error}") from None


def _saved_state(checkpoint: Any) -> Dict[str, Any]:
    """A Composer checkpoint's ``state``; empty for a file that has none."""
    state = checkpoint.get('state') if isinstance(checkpoint, dict) else None
    return state if isinstance(state, dict) else {}


def _identity_in(state: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The identity our saver recorded in a checkpoint's ``state``: ``state.callbacks`` (Composer's mapping of
    callback names to states) -> ``AtomicCheckpointSaver`` -> ``metadata`` -> ``recipe``. ``None`` when anything on
    that path is missing or of another shape (``callbacks`` a list, say): such a file was not written by our saver,
    so it has no identity to compare, as a checkpoint of Composer's own saver has none."""
    found: Any = state
    for key in ('callbacks', AtomicCheckpointSaver.__qualname__, 'metadata', 'recipe'):
        found = found.get(key) if isinstance(found, dict) else None
    return found if isinstance(found, dict) else None


def stored_identity(checkpoint: str, trusted: bool = False) -> Optional[Dict[str, Any]]:
    """The :func:`run_identity` a checkpoint was written with; ``None`` for checkpoints that have none. Read
    without running code the file carries, unless ``trusted``."""
    return _identity_in(_saved_state(_load_lazily(checkpoint, trusted, 'autoresume')))


def _differences(stored: Dict[str, Any], current: Dict[str, Any]) -> str:
    keys = list(stored) + [key for key in current if key not in stored]
    return '; '.join(f'{key} was {stored.get(key)!r}, is {current.get(key)!r}' for key in keys
                     if stored.get(key) != current.get(key))


def newest_run_checkpoint(settings: Dict[str, Any]) -> Optional[str]:
    """The newest complete checkpoint in the recipe's local ``save_folder`` (``{run_name}`` filled in); ``None``
    without one, or for a remote folder, which is Composer's to search."""
    folder = settings.get('save_folder')
    if not folder or parse_uri(folder)[0]:
        return None
    return newest_complete_checkpoint(format_name_with_dist(folder, settings.get('run_name') or ''))


def check_autoresume(recipe: Recipe) -> Optional[str]:
    """For an autoresuming recipe with a local ``save_folder``: point ``latest`` at the newest complete
    checkpoint (rank 0), check that it is a checkpoint of this run (its ``run_name``) and that the recipe trains
    what it holds, and return its path.

    Raises :class:`ResumeMismatchError` naming each difference. Returns ``None`` when nothing is resumed.
    """
    settings = recipe.settings
    if not (settings.get('autoresume') and settings.get('run_name')):
        return None
    checkpoint = newest_run_checkpoint(settings)
    if checkpoint is None:
        return None
    state = _saved_state(_load_lazily(checkpoint, _trusted(recipe), 'autoresume'))
    check_of_this_run(recipe, checkpoint, state, 'continue that run', f"or start run '{settings['run_name']}' in "
                      'another save_folder (such as one containing {run_name})', ResumeMismatchError)
    stored = _identity_in(state)
    if stored is not None:
        difference = _differences(stored, run_identity(recipe))
        if difference:
            raise ResumeMismatchError('autoresume', f"this recipe differs from the run that wrote '{checkpoint}': "
                                      f'{difference}; resume with that recipe, or start a new run in another '
                                      'save_folder (or with another run_name, where save_folder contains '
                                      '{run_name})')
    if dist.get_global_rank() == 0:
        point_latest_at(checkpoint)
    return checkpoint


def check_of_this_run(recipe: Recipe, checkpoint: str, state: Dict[str, Any], action: str, way_out: str,
                      error: type = RecipeError) -> None:
    """Stop with ``error`` at ``run_name`` when ``checkpoint``, the newest in the recipe's ``save_folder`` (whose
    ``state`` is given), records another run's name: a folder without ``{run_name}`` holds every run's checkpoints.

    Args:
        recipe: the run's recipe; nothing is checked without a ``run_name``.
        checkpoint: the checkpoint's path, as the message names it.
        state: its saved state (``run_name`` in it).
        action: what setting the checkpoint's run name would do (``'continue that run'``).
        way_out: the other way out, after ``or``.
        error: the :class:`RecipeError` class to raise.
    """
    run_name, stored = recipe.settings.get('run_name'), state.get('run_name')
    if run_name and stored not in (None, run_name):
        raise error('run_name', f"is '{run_name}', but '{checkpoint}', the newest checkpoint in save_folder "
                    f"'{recipe.settings['save_folder']}', is of run '{stored}': set run_name={stored} to {action}, "
                    f'{way_out}')


def check_no_earlier_run(recipe: Recipe) -> None:
    """For a new run (no autoresume, no ``load_path``, no ``save_overwrite``) into a local ``save_folder``: stop
    before anything is built if the folder holds checkpoints the run would collide with, which Composer would
    report only once training starts, with a traceback."""
    settings = recipe.settings
    folder = settings.get('save_folder')
    if (not folder or settings.get('autoresume') or settings.get('save_overwrite') or settings.get('load_path')
            or parse_uri(folder)[0]
            or ('{run_name}' in folder and not settings.get('run_name'))):
        return
    folder = format_name_with_dist(folder, settings.get('run_name') or '')
    if not Path(folder).is_dir():
        return
    try:
        ensure_folder_has_no_conflicting_files(folder, CHECKPOINT_FILENAME, Timestamp())
    except FileExistsError:
        pattern = checkpoint_pattern(CHECKPOINT_FILENAME, dist.get_global_rank())
        found = sorted(path.name for path in Path(folder).iterdir() if pattern.match(path.name))
        raise RecipeError('save_folder', f"'{folder}' holds checkpoints of an earlier run ({', '.join(found[:3])}"
                          f"{', ...' if len(found) > 3 else ''}); set autoresume: true and a run_name to continue "
                          'it, save_overwrite: true to write over it, or choose another save_folder') from None


def _local_file(path: str, recipe: Recipe) -> Optional[str]:
    """The local file Composer loads for ``path`` (its ``{run_name}`` and ``{rank}`` filled in), or ``None`` for one
    it downloads."""
    return None if parse_uri(path)[0] else format_name_with_dist(path, recipe.settings.get('run_name') or '')


def check_checkpoint(path: str, recipe: Recipe, key: str = 'load_path') -> Dict[str, Any]:
    """Stop with a :class:`RecipeError` at ``key`` (the setting that chose ``path``) unless a local checkpoint is
    a readable Composer checkpoint that runs no code when loaded (or ``load_trusted: true``); a torchvision, timm
    or plain state-dict file is pointed to the model's ``pretrained``. A remote one is checked by
    :func:`checkpoint_must_fit`, once Composer has downloaded it. An archive (``.tar``, ``.pt.gz``) is read from
    a private temporary folder, its members checked first. Returns the checkpoint's saved state (its tensors
    mapped from the file), empty for one that Composer downloads."""
    local = _local_file(path, recipe)
    if local is None:
        return {}  # a remote checkpoint is Composer's to download
    if not os.path.isfile(local):
        raise RecipeError(key, f"file '{local}' does not exist")
    state = _saved_state(_load_lazily(local, _trusted(recipe), key))
    if 'model' not in state:
        raise RecipeError(key, f"'{local}' is not a Composer checkpoint; for a torchvision, timm or plain "
                          f'state-dict file use model.{recipe.model.name}.pretrained={local} instead')
    return state


def checkpoint_must_fit(recipe: Recipe, path: Optional[str], build: Callable[[], T], key: str = 'load_path') -> T:
    """``build()``, a Trainer that loads the checkpoint ``path``, checked: a checkpoint that does not fit the recipe's
    model (another member or ``num_classes``, an algorithm that changes the model added or left out) is a
    :class:`RecipeError` at ``key`` (the setting that chose the checkpoint) naming the first mismatch. Composer's
    resume loads a model whose keys the checkpoint lacks without a word (``State.load_state_dict`` loads the model
    with ``strict=False``), leaving those weights as initialized; this catches it.

    Unless the recipe sets ``load_trusted: true``, every checkpoint Composer loads meanwhile (``path``, downloaded
    or not, or one autoresume finds) is read without running code it carries: one that would is a
    :class:`RecipeError` at ``key``. The local files of ``load_checkpoint`` callbacks, which may load during
    ``fit``, are checked first."""
    for entry in recipe.callbacks:
        if entry.name == 'load_checkpoint' and isinstance(entry.params.get('load_path'), str):
            check_checkpoint(entry.params['load_path'], recipe, key='callbacks.load_checkpoint.load_path')
    try:
        trainer = _build_without_code(recipe, path, build, key)
    except (RuntimeError, KeyError) as error:
        if path is None or not _names_model_weights(error):
            raise
        details = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        detail = (details[0] if details else f'{error} not in the checkpoint' if isinstance(error, KeyError)
                  else str(error))
        raise RecipeError(key, _misfit(path, recipe, detail)) from error
    local = None if path is None else _local_file(path, recipe)
    if local is not None:
        model = trainer.state.model
        model = model.module if isinstance(model, DistributedDataParallel) else model
        stored = _load_lazily(local, _trusted(recipe), key)['state']['model']
        expected = model.state_dict().keys()
        mismatches = {'missing': sorted(expected - stored.keys()), 'unexpected': sorted(stored.keys() - expected)}
        if any(mismatches.values()):
            trainer.close()
            detail = '; '.join(f'{what} key(s) {", ".join(keys[:3])}{" ..." if len(keys) > 3 else ""}'
                               for what, keys in mismatches.items() if keys)
            raise RecipeError(key, _misfit(path, recipe, detail))
    return trainer


def _build_without_code(recipe: Recipe, path: Optional[str], build: Callable[[], T], key: str) -> T:
    """``build()``, during which Composer loads no checkpoint that would run code, unless ``load_trusted``, and
    unpacks no archive that breaks a rule of :mod:`composer_efficientnet.archives`, trusted or not."""
    settings = recipe.settings
    if path is None and settings.get('autoresume') and settings.get('save_folder'):
        shown, key = f"the latest checkpoint of save_folder '{settings['save_folder']}'", 'autoresume'
    else:
        shown = None if path is None else f"'{path}'"
    try:
        with checkpoints_without_code(shown, trusted=_trusted(recipe)):
            return build()
    except (UnsafeCheckpointError, ArchiveError) as error:
        raise RecipeError(key, str(error)) from None


@contextlib.contextmanager
def loads_checked(recipe: Recipe, key: str = 'callbacks.load_checkpoint.load_path') -> Iterator[None]:
    """While active (around ``trainer.fit()``), every checkpoint Composer loads, such as a ``load_checkpoint``
    callback's at any event, downloaded or not, is read as while :func:`checkpoint_must_fit` builds the Trainer:
    without running code unless ``load_trusted``, archives unpacked with their members checked. One that is
    refused is a :class:`RecipeError` at ``key``."""
    try:
        with checkpoints_without_code(trusted=_trusted(recipe)):
            yield
    except (UnsafeCheckpointError, ArchiveError) as error:
        raise RecipeError(key, str(error)) from None


def _names_model_weights(error: BaseException) -> bool:
    """Whether a failure while building a Trainer came from loading weights: torch's ``load_state_dict`` report,
    or a ``KeyError`` for a model parameter (the optimizer state of a parameter the checkpoint does not have)."""
    if isinstance(error, KeyError):
        return bool(error.args) and str(error.args[0]).startswith('module.')
    return 'Error(s) in loading state_dict' in str(error)


def _misfit(path: str, recipe: Recipe, detail: str) -> str:
    detail = detail if len(detail) <= 240 else detail[:240] + ' ...'
    local = _local_file(path, recipe)
    stored = stored_identity(local, _trusted(recipe)) if local is not None else None
    path = local or path
    written_by = (f" (it was written by a run of {stored['model']} with num_classes {stored.get('model.num_classes')})"
                  if stored and 'model' in stored else '')
    return (f"'{path}' does not fit the recipe's model, {recipe.model.name}{written_by}: {detail}; the model, its "
            'num_classes and the algorithms that change the model (blurpool, squeeze_excite, ...) must be those of '
            'the run that wrote it')
