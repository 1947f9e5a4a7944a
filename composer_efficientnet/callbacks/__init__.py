"""Composer callbacks of this package, registered by name in :data:`composer_efficientnet.registry.callbacks`."""

from composer_efficientnet.callbacks.checkpointing import AtomicCheckpointSaver, CheckpointWriteError
from composer_efficientnet.callbacks.divergence import DivergenceError, DivergenceGuard
from composer_efficientnet.callbacks.host_reads import HostReads
from composer_efficientnet.callbacks.replicas import SyncBuffers
from composer_efficientnet.callbacks.training_curves import TrainingCurves

__all__ = ['AtomicCheckpointSaver', 'CheckpointWriteError', 'DivergenceError', 'DivergenceGuard', 'HostReads',
           'SyncBuffers', 'TrainingCurves']
