"""Composer callbacks of this package, registered by name in :data:`composer_efficientnet.registry.callbacks`."""

from composer_efficientnet.callbacks.training_curves import TrainingCurves

__all__ = ['TrainingCurves']
