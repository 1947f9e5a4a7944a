"""A ``composer.Trainer`` whose training step never makes the host wait for the device."""

from __future__ import annotations

import contextlib
import datetime
import functools
import inspect
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import torch
from composer import Trainer
from composer.core import Event
from composer.models import ComposerClassifier
from composer.trainer.trainer import TrainerMode
from composer.utils import dist, ensure_tuple
from torch.nn.parallel import DistributedDataParallel

from composer_efficientnet.callbacks.host_reads import earlier_step_read

__all__ = ['SyncFreeTrainer']

#: Composer 0.32.1's private names this module relies on, as (owner, name, the parameters we override or call it
#: with, or ``'attribute'`` for one set in ``__init__``); tests/test_composer_private_api.py checks each still exists
#: with those parameters. Overridden: the nine step and loop methods below; called: the last two, and the attributes.
COMPOSER_PRIVATE_API = (
    ('composer.Trainer', '_iter_dataloader', ('self', 'trainer_mode')),
    ('composer.Trainer', '_accumulate_time_across_ranks', ('self', 'num_samples', 'num_tokens', 'batch_time')),
    ('composer.Trainer', '_use_closures', ('self',)),
    ('composer.Trainer', '_train_microbatches', ('self', 'microbatches', 'total_loss_dict', 'ddp_sync')),
    ('composer.Trainer', '_eval_train_metrics', ('self', 'device_batch')),
    ('composer.Trainer', '_train_batch', ('self', 'use_grad_scaling')),
    ('composer.Trainer', '_compute_and_log_metrics', ('self', 'dataloader_label', 'metrics')),
    ('composer.Trainer', '_run_evaluators', ('self', 'event')),
    ('composer.Trainer', '_train_loop', ('self',)),
    ('composer.Trainer', '_use_grad_scaling', ('self', 'precision', 'scaler')),
    ('composer.Trainer', '_train_microbatch', ('self', 'use_grad_scaling', 'current_batch_size',
                                               'is_final_microbatch')),
    ('composer.Trainer', '_train_data_spec', 'attribute'),
    ('composer.Trainer', '_original_model', 'attribute'),
)

#: Optimizers whose ``step`` only calls a closure to return the loss: stepping them without one is the same
#: update, and saves Composer's ``.item()`` on the closure's loss.
CLOSURE_FREE_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop)


@dataclass
class _StepValues:
    """Device values to log for one step (loss, train metrics), copied to the host without waiting."""
    step: int
    tensors: Dict[str, torch.Tensor] = field(default_factory=dict)
    has_metrics: bool = False
    _host: Optional[torch.Tensor] = None
    _copied: Optional[torch.cuda.Event] = None

    def start_copy(self) -> None:
        """Queue the copy to the host behind the work that produces the values."""
        device = next((t.device for t in self.tensors.values() if t.is_cuda), torch.device('cpu'))
        stacked = torch.stack([t.detach().float().reshape(()).to(device) for t in self.tensors.values()])
        self._host = stacked.to('cpu', non_blocking=True)  # into pinned memory, behind the queued work
        if stacked.is_cuda:
            self._copied = torch.cuda.Event()
            self._copied.record()

    def read(self) -> Dict[str, float]:
        """The values as floats; waits for this step's copy only, never for work queued after it."""
        if not self.tensors:
            return {}
        if self._host is None:
            self.start_copy()
        if self._copied is not None:
            self._copied.synchronize()
        with earlier_step_read():
            return dict(zip(self.tensors, self._host.tolist()))


class SyncFreeTrainer(Trainer):
    """Composer's :class:`~composer.Trainer` without the host-device synchronizations of its training step.

    Composer 0.32's loop reads device values back to the host several times per batch: the end-of-data flag,
    the batch size, the loss inside the optimizer closure and again for logging, the sample count. Each read
    makes the host wait for the step it has just queued, so the accelerator idles while Python does the
    bookkeeping and launches the next step; the shorter the step (compiled, bf16), the larger that share.
    Here values the host already knows stay on the host (with several processes they are reduced across
    processes on the host, through a gloo process group), standard optimizers step without a closure, and the
    logged loss and train metrics of batch ``n`` are published (under batch ``n``'s step number, in
    ``state.total_loss_dict`` and to the loggers) while batch ``n + 1`` runs. At the last batch of an epoch and
    of the run they are published at once, so epoch-end callbacks, evaluators and checkpoints see complete
    values. Loggers still receive every step in order: what is logged for step ``n + 1`` meanwhile (Composer's
    time counters, callbacks at batch end) is held back and passed on right after step ``n``'s values, and
    destinations that read the timestamp rather than the step (``InMemoryLogger``) see step ``n``'s. The train
    metrics are updated from the training outputs without switching the model to eval mode and back, when the
    model is a :class:`~composer.models.ComposerClassifier` (whose ``eval_forward`` would return those outputs
    unchanged).

    Everything else is Composer's Trainer, and the weights after each step are the same. With automatic
    microbatching or token-based accumulation, which need the reads, it is exactly Composer's loop. fp16
    mixed precision keeps the read of its gradient scaler. With several processes it creates one gloo process
    group beside Composer's (on clusters where gloo needs it, set ``GLOO_SOCKET_IFNAME`` as for any gloo job).

    Example:
        >>> from composer_efficientnet import composer_efficientnetb0
        >>> from composer_efficientnet.trainer import SyncFreeTrainer
        >>> trainer = SyncFreeTrainer(model=composer_efficientnetb0(num_classes=10), max_duration='2ba',
        ...                           train_dataloader=loader)  # doctest: +SKIP
        >>> trainer.fit()  # doctest: +SKIP
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pending: Optional[_StepValues] = None
        self._held: List[Callable[[], None]] = []
        self._host_group: Optional[Any] = None
        super().__init__(*args, **kwargs)
        for name in ('log_metrics', 'log_images'):  # every caller (loop, callbacks, algorithms) shares this Logger
            setattr(self.logger, name, self._in_step_order(getattr(self.logger, name)))
        if dist.get_world_size() > 1:  # every process builds its Trainer, so every process joins
            timeout = datetime.timedelta(seconds=kwargs.get('dist_timeout', 300.0))
            self._host_group = torch.distributed.new_group(backend='gloo', timeout=timeout)

    @property
    def _sync_free(self) -> bool:
        return not (self.state.auto_microbatching or self.accumulate_train_batch_on_tokens
                    or self.state.device.dist_backend == 'xla')

    def _host_reduce(self, values: List[float], op: Any = torch.distributed.ReduceOp.SUM) -> List[float]:
        """Reduce host numbers across processes, on the host: no device work to wait for."""
        if self._host_group is None:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(tensor, op=op, group=self._host_group)
        return tensor.tolist()

    # -- the reads Composer makes every step -------------------------------------------------------------------

    def _iter_dataloader(self, trainer_mode: TrainerMode) -> Iterator[Any]:
        if not self._sync_free:
            yield from super()._iter_dataloader(trainer_mode)
            return
        loader = self.state.dataloader
        length = self.state.dataloader_len
        batches = iter(loader) if length is None else itertools.islice(loader, int(length))
        training = trainer_mode == TrainerMode.TRAIN
        while True:
            if training:
                self.engine.run_event(Event.BEFORE_DATALOADER)
            try:
                batch, finished = next(batches), 0.0
            except StopIteration:
                if training:
                    self.engine.run_marker_only_event(Event.AFTER_DATALOADER)
                finished = 1.0
            if self._host_reduce([finished], torch.distributed.ReduceOp.MAX)[0]:  # all stop when any runs out
                return
            yield batch

    def _accumulate_time_across_ranks(self, num_samples: Union[int, float], num_tokens: int,
                                      batch_time: datetime.timedelta) -> tuple:
        if not self._sync_free or not isinstance(num_samples, int):
            return super()._accumulate_time_across_ranks(num_samples, num_tokens, batch_time)
        samples, tokens = self._host_reduce([num_samples, num_tokens])
        if self._host_group is not None:  # the batch time is rank 0's
            seconds = torch.tensor([batch_time.total_seconds()], dtype=torch.float64)
            torch.distributed.broadcast(seconds, src=0, group=self._host_group)
            batch_time = datetime.timedelta(seconds=seconds.item())
        return int(samples), int(tokens), batch_time

    def _use_closures(self) -> bool:
        if self._sync_free and all(isinstance(o, CLOSURE_FREE_OPTIMIZERS) for o in ensure_tuple(self.state.optimizers)):
            return False
        return super()._use_closures()

    def _global_batch_size(self, microbatches: Sequence[Any]) -> float:
        """Samples in this batch on all processes, averaged per process, as Composer scales the loss by."""
        assert self._train_data_spec is not None
        size = sum(self._train_data_spec.get_num_samples_in_batch(b) for b in microbatches)
        return self._host_reduce([size])[0] / dist.get_world_size()

    def _train_microbatches(self, microbatches: Sequence[Any], total_loss_dict: Dict[str, torch.Tensor],
                            ddp_sync: bool = True) -> torch.Tensor:
        if not self._sync_free:
            return super()._train_microbatches(microbatches, total_loss_dict, ddp_sync)
        assert self._train_data_spec is not None and self.state.scaler is not None
        no_sync = not ddp_sync and isinstance(self.state.model, DistributedDataParallel)
        with self.state.model.no_sync() if no_sync else contextlib.nullcontext():
            self.engine.run_event(Event.BEFORE_TRAIN_BATCH)
            use_grad_scaling = self._use_grad_scaling(self.state.precision, self.state.scaler)
            for optimizer in self.state.optimizers:
                optimizer.zero_grad(set_to_none=True)
            batch_size = self._global_batch_size(microbatches)
            whole_batch = self.state.batch
            for index, microbatch in enumerate(microbatches):
                self.state.batch = self._train_data_spec.microbatch_transforms(
                    self.state.device.batch_to_device(microbatch))
                losses = self._train_microbatch(use_grad_scaling, batch_size, index + 1 == len(microbatches))
                for name, loss in losses.items():
                    key = f'loss/train/{name}'
                    if key not in total_loss_dict:
                        total_loss_dict[key] = self.state.device.tensor_to_device(torch.zeros(size=(1,)))
                    total_loss_dict[key] += loss
            self.state.batch = whole_batch
            if use_grad_scaling:
                for optimizer in ensure_tuple(self.state.optimizers):
                    self.state.scaler.unscale_(optimizer)
            self.engine.run_event(Event.AFTER_TRAIN_BATCH)
            return total_loss_dict['loss/train/total']

    def _eval_train_metrics(self, device_batch: Any) -> None:
        model = self._original_model
        if not (isinstance(model, ComposerClassifier) and type(model).eval_forward is ComposerClassifier.eval_forward):
            return super()._eval_train_metrics(device_batch)
        assert self.state.train_metrics is not None
        with torch.no_grad():
            for metric in self.state.train_metrics.values():
                model.update_metric(device_batch, self.state.outputs, metric)

    # -- logging one step late ---------------------------------------------------------------------------------

    def _train_batch(self, use_grad_scaling: bool) -> Any:
        if not self._sync_free:
            return super()._train_batch(use_grad_scaling)
        previous = self._pending
        if previous is not None and previous.tensors:
            previous.start_copy()  # behind step n-1's work, ahead of step n's
        losses = super()._train_batch(use_grad_scaling)
        self._publish(previous)
        self._pending = _StepValues(int(self.state.timestamp.batch))
        if losses is not None:
            world_size = dist.get_world_size()
            for name, loss in losses.items():
                if world_size > 1:
                    dist.all_reduce(loss, reduce_operation='SUM')
                    loss = loss / world_size
                self._pending.tensors[name] = loss
        return None  # the loop logs nothing; this step's values are published during the next one

    def _compute_and_log_metrics(self, dataloader_label: str, metrics: Dict[str, Any]) -> None:
        pending = self._pending
        if (dataloader_label != 'train' or pending is None or pending.has_metrics
                or pending.step != int(self.state.timestamp.batch)):
            self._flush()
            return super()._compute_and_log_metrics(dataloader_label, metrics)
        values = {name: metric.compute() for name, metric in metrics.items()}
        if not all(torch.is_tensor(value) and value.numel() == 1 for value in values.values()):
            self._flush()  # a metric that is not one number is logged as Composer logs it, at once
            return super()._compute_and_log_metrics(dataloader_label, metrics)
        assert self.state.train_metrics is not None
        for name, metric in metrics.items():
            self.state.train_metrics[name] = metric
            self.state.train_metric_values[name] = values[name]
            pending.tensors[f'metrics/train/{name}'] = values[name]
        pending.has_metrics = True

    def _run_evaluators(self, event: Event) -> None:
        if event == Event.BATCH_END and self._ends_epoch_or_run():
            self._flush()
        super()._run_evaluators(event)

    def _train_loop(self) -> None:
        try:
            super()._train_loop()
        except BaseException:
            self._pending = None  # reading a failed step's values could raise again and hide why it failed
            self._held = []
            raise
        self._flush()

    def _ends_epoch_or_run(self) -> bool:
        timestamp, length = self.state.timestamp, self.state.dataloader_len
        assert self.state.max_duration is not None
        return (length is not None and timestamp.batch_in_epoch >= length) or timestamp >= self.state.max_duration

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        self._publish(pending)

    def _publish(self, values: Optional[_StepValues]) -> None:
        if values is not None and values.tensors:
            host_values = values.read()
            self.state.total_loss_dict = {k: v for k, v in host_values.items() if k.startswith('loss/')}
            with self._timestamp_of(values.step):
                self.logger.log_metrics(host_values, step=values.step)
        held, self._held = self._held, []
        for log in held:
            log()

    def _in_step_order(self, log: Callable[..., None]) -> Callable[..., None]:
        """``log`` (a Logger method taking ``step``), holding back calls for steps after the unpublished one."""
        signature = inspect.signature(log)

        @functools.wraps(log)
        def log_in_step_order(*args: Any, **kwargs: Any) -> None:
            arguments = signature.bind(*args, **kwargs).arguments
            step = arguments.pop('step', None)
            step = int(self.state.timestamp.batch) if step is None else step
            call = functools.partial(log, **arguments, step=step)
            pending = self._pending
            if pending is not None and pending.tensors and step > pending.step:
                self._held.append(call)
            else:
                call()

        return log_in_step_order

    @contextlib.contextmanager
    def _timestamp_of(self, step: int) -> Iterator[None]:
        """The state's timestamp as it was during ``step``, for destinations that read it instead of the step."""
        now, previous = self.state.timestamp, self.state.previous_timestamp
        if int(now.batch) == step or previous is None or int(previous.batch) != step:
            yield
            return
        self.state.timestamp = previous
        try:
            yield
        finally:
            self.state.timestamp = now
