"""A callback that draws training loss and validation metrics to a PNG beside the run's checkpoints."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
from composer.callbacks import CheckpointSaver
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist, format_name_with_dist

from composer_efficientnet.algorithms import ProgressiveLearning
from composer_efficientnet.outputs import OutputError, atomic_output, folder_problem, os_error_in

__all__ = ['TrainingCurves']

log = logging.getLogger(__name__)


class TrainingCurves(Callback):
    """Plot the training loss per batch and every validation metric per evaluation, rewritten at each
    evaluation and at the end of the run.

    Losses are kept on the device and read once per epoch, so the callback adds no host sync to the step. The
    curves so far are saved in every checkpoint, so a resumed run draws the whole run. With
    ``progressive_learning``, a dashed line marks the start of each stage reached, labelled with its settings.

    Args:
        filename: the PNG's name.
        folder: where to write it (``{run_name}`` is filled in); by default the checkpoint folder. A run with
            neither (``save_folder: null``) writes no PNG, and says so when it starts.

    The PNG is written whole or not at all (a temporary file renamed into place). A folder it cannot be written
    in (checked when the run starts) or a write that fails (a full disk) is one warning line, and the run goes
    on: the plot is a by-product, redrawn in full at the next evaluation (or by a resumed run) from the curves
    the checkpoints keep, while the checkpoints are the run's output, and a disk too full for them stops the
    run with their own one-line error.
    """

    def __init__(self, filename: str = 'training_curves.png', folder: Optional[str] = None) -> None:
        self.filename = filename
        self.folder = folder
        self._pending: List[Tuple[int, torch.Tensor]] = []
        self.train_loss: List[Tuple[int, float]] = []
        self.eval_metrics: Dict[str, List[Tuple[int, float]]] = {}
        self.stage_marks: List[Tuple[int, str]] = []  # (batch, label) of each progressive-learning stage begun
        self._unwritable: Optional[str] = None  # why the PNG's folder cannot be written, found when the run starts
        self._warned: Optional[int] = None  # the errno of the last write failure warned about, not repeated

    def state_dict(self) -> Dict[str, Any]:
        self._flush()
        return {'train_loss': list(self.train_loss), 'eval_metrics': dict(self.eval_metrics),
                'stage_marks': list(self.stage_marks)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.train_loss = [tuple(point) for point in state.get('train_loss', [])]
        self.eval_metrics = {name: [tuple(point) for point in points]
                             for name, points in state.get('eval_metrics', {}).items()}
        self.stage_marks = [tuple(mark) for mark in state.get('stage_marks', [])]

    def fit_start(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() != 0:
            return
        path = self.output_path(state)
        if path is None:
            log.warning('training_curves: no %s is written, as the run has no save_folder; set one, or the '
                        "callback's folder", self.filename)
            return
        self._unwritable = folder_problem(os.path.dirname(path), create=True)
        if self._unwritable:
            log.warning('training_curves: no %s is written: %s; training goes on without it', path, self._unwritable)

    def epoch_start(self, state: State, logger: Logger) -> None:
        # Algorithms run before callbacks at each event, so a stage that starts now is in force.
        stage = next((a.stage for a in state.algorithms if isinstance(a, ProgressiveLearning)), None)
        if stage is not None and stage.index > 0 and stage.start_epoch == int(state.timestamp.epoch):
            mark = (int(state.timestamp.batch), f'stage {stage.index + 1}: {stage.describe()}')
            if mark not in self.stage_marks:
                self.stage_marks.append(mark)

    def after_backward(self, state: State, logger: Logger) -> None:
        if isinstance(state.loss, torch.Tensor):
            self._pending.append((int(state.timestamp.batch), state.loss.detach().float().reshape(())))

    def epoch_end(self, state: State, logger: Logger) -> None:
        self._flush()

    def eval_end(self, state: State, logger: Logger) -> None:
        batch = int(state.timestamp.batch)
        for label, metrics in state.eval_metrics.items():
            for name, metric in metrics.items():
                self.eval_metrics.setdefault(f'{label}/{name}', []).append((batch, float(metric.compute())))
        self._write(state)

    def fit_end(self, state: State, logger: Logger) -> None:
        self._write(state)

    def _flush(self) -> None:
        if self._pending:
            values = torch.stack([loss for _, loss in self._pending]).cpu().tolist()
            self.train_loss.extend(zip((step for step, _ in self._pending), values))
            self._pending.clear()

    def output_path(self, state: State) -> Optional[str]:
        """Where the PNG goes for this run; ``None`` without a ``folder`` or a checkpoint folder."""
        folder = self.folder
        if folder is None:
            folder = next((cb.folder for cb in state.callbacks if isinstance(cb, CheckpointSaver)), None)
        return None if folder is None else os.path.join(format_name_with_dist(folder, state.run_name), self.filename)

    def _write(self, state: State) -> None:
        self._flush()
        path = self.output_path(state)
        if dist.get_global_rank() != 0 or path is None or self._unwritable:
            return
        import matplotlib
        matplotlib.use('Agg')
        from matplotlib import pyplot as plt
        fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(11, 4))
        if self.train_loss:
            loss_ax.plot(*zip(*self.train_loss), lw=0.8, label='train loss')
        loss_ax.set(xlabel='batch', ylabel='loss', title='Training loss')
        for name, points in self.eval_metrics.items():
            metric_ax.plot(*zip(*points), marker='o', label=name)
        metric_ax.set(xlabel='batch', title='Validation')
        for batch, label in self.stage_marks:
            for ax in (loss_ax, metric_ax):
                ax.axvline(batch, color='gray', ls='--', lw=0.8)
            loss_ax.annotate(label, (batch, 1), xycoords=('data', 'axes fraction'), rotation=90, fontsize=7,
                             va='top', ha='right', color='gray')
        for ax in (loss_ax, metric_ax):
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
        fig.tight_layout()
        try:
            with atomic_output(path, 'training_curves') as file:
                fig.savefig(file, dpi=100, format='png')
        except OutputError as error:
            reason = getattr(os_error_in(error), 'errno', None)
            if reason != self._warned:
                log.warning('%s; training goes on, and the next evaluation draws it again', error)
            self._warned = reason
        else:
            self._warned = None
        finally:
            plt.close(fig)
