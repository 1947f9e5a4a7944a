"""Label smoothing that, on this package's models, moves into the loss instead of building one-hot targets."""

from __future__ import annotations

from typing import Optional

import torch
from composer.algorithms import LabelSmoothing as ComposerLabelSmoothing
from composer.core import Event, State
from composer.loggers import Logger
from torch.nn.parallel import DistributedDataParallel

__all__ = ['LabelSmoothing', 'apply_label_smoothing']


def apply_label_smoothing(model: torch.nn.Module, smoothing: float) -> bool:
    """Make ``model``'s own loss smooth labels, if it can; returns whether it did.

    Models with a ``label_smoothing`` attribute read by their loss (this package's
    :class:`~composer_efficientnet.EfficientNetClassifier`) take it; their loss is then
    ``F.cross_entropy(logits, targets, label_smoothing=smoothing)`` on integer targets.

    Example:
        >>> from composer_efficientnet import composer_efficientnet
        >>> from composer_efficientnet.algorithms import apply_label_smoothing
        >>> apply_label_smoothing(composer_efficientnet('efficientnet_b0', num_classes=10), smoothing=0.1)
        True
    """
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f'smoothing must be in [0, 1], got {smoothing!r}.')
    if not hasattr(model, 'label_smoothing'):
        return False
    model.label_smoothing = smoothing
    return True


class LabelSmoothing(ComposerLabelSmoothing):
    """Composer's :class:`~composer.algorithms.LabelSmoothing`, fused into the loss on this package's models.

    Same parameters and the same loss value and gradients as Composer's; on models that accept
    :func:`apply_label_smoothing` it builds no dense targets and adds no events to the step. The model smooths
    from the start to the end of each ``fit``, so like Composer's algorithm it leaves the model as it found it.
    On any other model it is exactly Composer's algorithm.

    Example:
        >>> from composer_efficientnet.algorithms import LabelSmoothing
        >>> LabelSmoothing(smoothing=0.1)
        LabelSmoothing(smoothing=0.1)
    """

    def __init__(self, smoothing: float = 0.1, target_key=1) -> None:
        if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0.0 <= smoothing <= 1.0:
            raise ValueError(f'smoothing must be a number in [0, 1], got {smoothing!r}.')
        super().__init__(smoothing=smoothing, target_key=target_key)
        self._fused: Optional[bool] = None
        self._model_smoothing: float = 0.0  # the model's own, put back at the end of fit

    def __repr__(self) -> str:
        return f'LabelSmoothing(smoothing={self.smoothing})'

    def match(self, event: Event, state: State) -> bool:
        return event in (Event.FIT_START, Event.FIT_END) or (not self._fused and super().match(event, state))

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        model = state.model.module if isinstance(state.model, DistributedDataParallel) else state.model
        if event == Event.FIT_START:  # after Composer wraps the model for several processes
            self._model_smoothing = getattr(model, 'label_smoothing', 0.0)
            self._fused = apply_label_smoothing(model, self.smoothing)
        elif event == Event.FIT_END:
            if self._fused:
                model.label_smoothing = self._model_smoothing
        else:
            super().apply(event, state, logger)
