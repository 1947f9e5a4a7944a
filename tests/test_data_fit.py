"""A short Composer fit on each real data path (digits, ImageFolder, MDS) and on synthetic batches, checking
that the model sees float, normalized, channels_last images made on the device from uint8 batches."""

from __future__ import annotations

import pytest
import torch
from composer import Callback, Trainer

from composer_efficientnet import composer_efficientnet
from composer_efficientnet.data import (BadSampleReport, build_digits_dataspec, build_imagenet_dataspec,
                                        build_streaming_imagenet_dataspec, build_synthetic_dataspec,
                                        convert_imagefolder_to_mds)
from tests.data_trees import make_tree


class RecordInputs(Callback):
    """Keeps what the model is given, after the DataSpec's microbatch transform."""

    def __init__(self) -> None:
        self.inputs = []

    def before_forward(self, state, logger) -> None:
        images, labels = state.batch
        self.inputs.append((images.shape, images.dtype, images.is_contiguous(memory_format=torch.channels_last),
                            labels.dtype, float(images.mean())))

    eval_before_forward = before_forward


def fit(train, val, num_classes: int, **kwargs) -> RecordInputs:
    model = composer_efficientnet('efficientnet_b0', num_classes=num_classes)
    record = RecordInputs()
    trainer = Trainer(model=model, train_dataloader=train, eval_dataloader=val, max_duration='2ba',
                      eval_interval='2ba', eval_subset_num_batches=1, callbacks=[record, BadSampleReport()],
                      optimizers=torch.optim.SGD(model.parameters(), lr=0.01), device='cpu', progress_bar=False,
                      log_to_console=False, seed=17, **kwargs)
    trainer.fit()
    assert int(trainer.state.timestamp.batch) == 2
    assert 'MulticlassAccuracy' in trainer.state.eval_metrics['eval']
    return record


def check_inputs(record: RecordInputs, shape) -> None:
    assert len(record.inputs) >= 3  # two training steps, one evaluation batch
    for got_shape, dtype, channels_last, label_dtype, mean in record.inputs:
        assert tuple(got_shape) == shape and dtype == torch.float32 and channels_last
        assert label_dtype == torch.int64 and -2.2 < mean < 2.7  # normalized, not 0..255


def test_fit_on_digits():
    common = {'image_size': 32, 'batch_size': 8, 'seed': 17}
    record = fit(build_digits_dataspec(is_train=True, **common), build_digits_dataspec(is_train=False, **common),
                 num_classes=10)
    check_inputs(record, (8, 3, 32, 32))


def test_fit_on_imagefolder(tmp_path):
    tree = make_tree(tmp_path / 'imagenet')
    common = {'datadir': str(tree), 'batch_size': 4, 'model_resolution': 32, 'dataloader_kwargs': {'num_workers': 1}}
    record = fit(build_imagenet_dataspec(is_train=True, **common), build_imagenet_dataspec(is_train=False, **common),
                 num_classes=3)
    check_inputs(record, (4, 3, 32, 32))


def test_fit_on_mds_shards(tmp_path):
    pytest.importorskip('streaming')
    convert_imagefolder_to_mds(str(make_tree(tmp_path / 'imagenet')), str(tmp_path / 'mds'))
    common = {'remote': str(tmp_path / 'mds'), 'batch_size': 4, 'model_resolution': 32}
    record = fit(build_streaming_imagenet_dataspec(is_train=True, local=str(tmp_path / 'cache'), **common),
                 build_streaming_imagenet_dataspec(is_train=False, **common), num_classes=3)
    check_inputs(record, (4, 3, 32, 32))


def test_fit_on_synthetic_with_microbatches():
    common = {'num_classes': 5, 'batch_size': 4, 'model_resolution': 32, 'num_samples': 64}
    record = fit(build_synthetic_dataspec(**common), build_synthetic_dataspec(**common), num_classes=5,
                 device_train_microbatch_size=2)
    train_shapes = {tuple(shape) for shape, *_ in record.inputs[:4]}
    assert train_shapes == {(2, 3, 32, 32)}  # each 4-sample batch split into two microbatches on the device
