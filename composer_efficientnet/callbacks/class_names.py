"""Record the names of the classes a run trains on in its checkpoints, for ``composer-efficientnet predict``."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from composer import Callback, Event, Logger, State

from composer_efficientnet.weights import WeightsError

__all__ = ['ClassNames', 'ClassNamesError', 'class_names_in']

_SHOWN = 60  # characters of a malformed value an error message shows


class ClassNames(Callback):
    """Hold the training data's class names (an ImageFolder's class folder names, in label order) in its state
    dict, which Composer saves in every checkpoint under ``state.callbacks.ClassNames``.

    The names are the data's, not the checkpoint's: a resumed run keeps those of its own training data.

    Args:
        classes: the names, index ``i`` for label ``i``; ``None`` when the data has none.
    """

    def __init__(self, classes: Optional[Sequence[str]]) -> None:
        self.classes = None if classes is None else [str(name) for name in classes]

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        del event, state, logger  # nothing to do during the run

    def state_dict(self) -> Dict[str, Any]:
        return {'classes': self.classes}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        del state  # keep the names of the data this run trains on


class ClassNamesError(WeightsError):
    """A checkpoint whose recorded class names are not a list of strings: damaged, or not written by our
    :class:`ClassNames`. Refused rather than guessed at: a name made of the wrong thing would be printed, and
    written into predictions and exported files, as if the run had named its classes so.

    Attributes:
        where: the file, as the message names it (None when the caller did not say).
    """

    def __init__(self, reason: str, where: Optional[str] = None) -> None:
        super().__init__(f'{where}: {reason}' if where else reason)
        self.reason, self.where = reason, where


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN - 3] + '...'


def _kind(value: Any) -> str:
    name = type(value).__name__
    return 'null' if value is None else f'{"an" if name[0] in "aeiou" else "a"} {name}'


def class_names_in(checkpoint: Dict[str, Any], where: Optional[str] = None) -> Optional[List[str]]:
    """The class names a checkpoint (as :func:`~composer_efficientnet.safe_load.read_checkpoint` reads it)
    records; ``None`` for one written without :class:`ClassNames` (or with ``classes: None``, data without names).

    Raises :class:`ClassNamesError` (a ``WeightsError``: commands report it as one line), naming ``where`` (the
    file, for the message) when given, if the record is there but is not a list of strings: a dict, a string, a
    list holding numbers.
    """
    state = checkpoint.get('state') if isinstance(checkpoint, dict) else None
    callbacks = state.get('callbacks') if isinstance(state, dict) else None
    if not isinstance(callbacks, dict) or ClassNames.__qualname__ not in callbacks:
        return None
    recorded = callbacks[ClassNames.__qualname__]
    field = f'state.callbacks.{ClassNames.__qualname__}'
    expected = 'expected a list of strings, one class name per label, as training records them'
    if not isinstance(recorded, dict):
        raise ClassNamesError(f'the class names record ({field}) is {_kind(recorded)} ({_short(recorded)}), not a '
                              f"mapping with 'classes'; {expected}", where)
    classes = recorded.get('classes')
    if classes is None:
        return None
    if not isinstance(classes, (list, tuple)):
        raise ClassNamesError(f'the class names ({field}.classes) are {_kind(classes)} ({_short(classes)}); '
                              f'{expected}', where)
    wrong = [(i, name) for i, name in enumerate(classes) if not isinstance(name, str)]
    if wrong:
        index, name = wrong[0]
        entries = 'entry that is not a string' if len(wrong) == 1 else 'entries that are not strings'
        raise ClassNamesError(f'the class names ({field}.classes) hold {len(wrong)} {entries} (the first, index '
                              f'{index}: {_kind(name)}, {_short(name)}); {expected}', where)
    return list(classes)
