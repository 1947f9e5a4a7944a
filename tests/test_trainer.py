"""SyncFreeTrainer: the same training as Composer's Trainer, without host reads in the step."""

from typing import Any, Dict, List

import pytest
import torch
from composer import Trainer
from composer.algorithms import SAM
from composer.core import Evaluator
from composer.loggers import LoggerDestination
from torchmetrics.classification import MulticlassAccuracy

from composer_efficientnet import registry
from composer_efficientnet.algorithms import LabelSmoothing, SampleStochasticDepth
from composer_efficientnet.callbacks import HostReads
from composer_efficientnet.trainer import SyncFreeTrainer
from tests.conftest import seeded_model

BATCHES_PER_EPOCH = 5


class StepLog(LoggerDestination):
    """Every logged loss and train metric, by the step it was logged for; and every name logged, in order, with
    its step and the timestamp's batch at the time (which destinations such as ``InMemoryLogger`` record)."""

    def __init__(self) -> None:
        self.values: Dict[str, Dict[int, float]] = {}
        self.calls: List[tuple] = []

    def init(self, state: Any, logger: Any) -> None:
        self.state = state

    def log_metrics(self, metrics: Dict[str, Any], step: Any = None) -> None:
        for name, value in metrics.items():
            self.calls.append((step, int(self.state.timestamp.batch), name))
            if name.startswith(('loss/train', 'metrics/')):
                self.values.setdefault(name, {})[step] = value.tolist() if torch.is_tensor(value) else value


def fit(trainer_class: type, microbatch: int = 4, algorithms: Any = (), epochs: int = 2,
        train_metric: Any = None, **trainer_kwargs: Any) -> Dict[str, Any]:
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 32, 32, generator=generator), torch.randint(0, 10, (4,), generator=generator))
               for _ in range(BATCHES_PER_EPOCH)]
    model = seeded_model(3)
    if train_metric is not None:
        model.train_metrics = train_metric
    log, reads = StepLog(), HostReads(skip=1)
    trainer = trainer_class(model=model, train_dataloader=batches, device_train_microbatch_size=microbatch,
                            max_duration=f'{epochs}ep', optimizers=torch.optim.SGD(model.parameters(), lr=0.02,
                                                                                   momentum=0.9),
                            algorithms=[SampleStochasticDepth(0.2), LabelSmoothing(0.1), *algorithms],
                            callbacks=[reads], loggers=[log], device='cpu', seed=5, progress_bar=False,
                            **trainer_kwargs)
    trainer.fit()
    return {'weights': {k: v.clone() for k, v in model.state_dict().items()}, 'log': log.values,
            'calls': log.calls, 'reads': reads.per_step, 'total_loss_dict': dict(trainer.state.total_loss_dict)}


@pytest.fixture(scope='module')
def composer_run() -> Dict[str, Any]:
    torch.set_num_threads(1)
    return fit(Trainer)


@pytest.fixture(scope='module')
def our_run() -> Dict[str, Any]:
    torch.set_num_threads(1)
    return fit(SyncFreeTrainer)


def assert_same_training(ours: Dict[str, Any], composer: Dict[str, Any]) -> None:
    assert ours['weights'].keys() == composer['weights'].keys()
    different = [k for k in ours['weights'] if not torch.equal(ours['weights'][k], composer['weights'][k])]
    assert not different, f'{len(different)} tensors differ, first {different[:3]}'
    assert ours['log'] == composer['log']
    assert ours['total_loss_dict'] == composer['total_loss_dict']


def test_same_weights_and_logged_values_as_composer(our_run, composer_run):
    assert_same_training(our_run, composer_run)
    steps = 2 * BATCHES_PER_EPOCH
    assert sorted(our_run['log']['loss/train/total']) == list(range(steps))  # every step, the last ones too
    assert len(our_run['log']['metrics/train/MulticlassAccuracy']) == steps + 1  # + Composer's epoch-end value


def test_loggers_see_every_step_in_order_with_its_timestamp(our_run, composer_run):
    """A destination like wandb's drops values for a step below one it has seen; none arrives late here."""
    steps = [step for step, _, _ in our_run['calls']]
    assert steps == sorted(steps)
    assert our_run['calls'] == composer_run['calls']  # names, steps and timestamps, in Composer's order


def test_no_host_read_in_a_training_step(our_run, composer_run):
    counted = 2 * BATCHES_PER_EPOCH - 1 - 2  # less the first step and each epoch's last
    assert len(our_run['reads']) == len(composer_run['reads']) == counted
    assert all(sum(step.values()) == 0 for step in our_run['reads']), our_run['reads']
    # the counter sees Composer's reads: the end-of-data flag, batch size, closure loss, logged loss, sample count
    assert all(step['item'] >= 6 and step['cpu'] >= 3 for step in composer_run['reads']), composer_run['reads']


def test_gradient_accumulation_matches_composer():
    assert_same_training(fit(SyncFreeTrainer, microbatch=2, epochs=1), fit(Trainer, microbatch=2, epochs=1))


def test_optimizer_that_needs_a_closure_matches_composer():
    """SAM steps twice through its closure, so the Trainer keeps Composer's closure for it."""
    ours = fit(SyncFreeTrainer, algorithms=[SAM(rho=0.05)], epochs=1)
    assert_same_training(ours, fit(Trainer, algorithms=[SAM(rho=0.05)], epochs=1))


def test_evaluation_mid_epoch_logs_as_composer():
    generator = torch.Generator().manual_seed(2)
    held_out = [(torch.randn(4, 3, 32, 32, generator=generator), torch.randint(0, 10, (4,), generator=generator))]
    ours = fit(SyncFreeTrainer, eval_dataloader=Evaluator(label='eval', dataloader=held_out,
                                                          device_eval_microbatch_size=4), eval_interval='2ba')
    composer = fit(Trainer, eval_dataloader=Evaluator(label='eval', dataloader=held_out,
                                                      device_eval_microbatch_size=4), eval_interval='2ba')
    assert_same_training(ours, composer)
    assert sorted(ours['log']['metrics/eval/MulticlassAccuracy']) == [2, 4, 6, 8, 10]


def test_metric_of_several_numbers_is_logged_as_composer_logs_it():
    ours = fit(SyncFreeTrainer, epochs=1, train_metric=MulticlassAccuracy(num_classes=10, average=None))
    composer = fit(Trainer, epochs=1, train_metric=MulticlassAccuracy(num_classes=10, average=None))
    assert_same_training(ours, composer)
    assert all(len(per_class) == 10 for per_class in ours['log']['metrics/train/MulticlassAccuracy'].values())


def test_host_reads_is_registered():
    assert registry.callbacks.get('host_reads') is HostReads


def test_host_reads_counts_only_reads_on_the_trainer_device():
    from composer_efficientnet.callbacks.host_reads import _ReadCounter, earlier_step_read
    values: List[float] = []
    with _ReadCounter('cpu') as counter:
        tensor = torch.arange(3.0)
        values += [tensor.sum().item(), float(tensor[0]), *tensor.tolist()]
        _ = bool(tensor[1] > 0)
        with earlier_step_read():
            values.append(tensor[2].item())
    assert dict(counter.reads) == {'item': 1, '__float__': 1, 'tolist': 1, '__bool__': 1}
    with _ReadCounter('cuda') as counter:
        values.append(torch.ones(2).sum().item())
    assert not counter.reads
