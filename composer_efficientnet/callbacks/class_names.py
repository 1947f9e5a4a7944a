"""Record the names of the classes a run trains on in its checkpoints, for ``composer-efficientnet predict``."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from composer import Callback, Event, Logger, State

__all__ = ['ClassNames', 'class_names_in']


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


def class_names_in(checkpoint: Dict[str, Any]) -> Optional[List[str]]:
    """The class names a checkpoint (as :func:`~composer_efficientnet.safe_load.read_checkpoint` reads it)
    records; ``None`` for one written without :class:`ClassNames`."""
    state = checkpoint.get('state') if isinstance(checkpoint, dict) else None
    callbacks = state.get('callbacks') if isinstance(state, dict) else None
    recorded = callbacks.get(ClassNames.__qualname__) if isinstance(callbacks, dict) else None
    return recorded.get('classes') if isinstance(recorded, dict) else None
