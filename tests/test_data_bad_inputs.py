"""Bad data: unreadable images are skipped, counted and reported (or fail in strict mode); a wrong tree layout
is a clear error when the dataset is built."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
import yaml

from composer_efficientnet import train
from composer_efficientnet.data import (BadSampleTracker, BrokenDatasetError, CorruptImageError, DatasetLayoutError,
                                        SplitNotFoundError, build_imagenet_dataspec)
from composer_efficientnet.data.bad_samples import load_or_replace
from composer_efficientnet.data.loading import loader_kwargs
from tests.data_trees import corrupt, make_tree


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / 'imagenet')


@pytest.mark.parametrize('num_workers', [0, 2])
def test_corrupt_image_is_replaced_and_counted_across_worker_processes(tree, num_workers):
    bad = corrupt(tree / 'train' / 'dog' / '2.jpg')
    (tree / 'train' / 'eel' / '0.jpg').write_bytes(b'')  # an empty file is unreadable too
    spec = build_imagenet_dataspec(str(tree), crop_size=32, batch_size=4, drop_last=False,
                                   dataloader_kwargs={'num_workers': num_workers})
    batches = list(spec.dataloader)
    assert [images.shape[0] for images, _ in batches] == [4, 4, 4]  # 12 samples still, none dropped
    tracker = spec.dataloader.dataset.bad_samples
    count, names = tracker.snapshot()
    assert count == 2
    assert sorted(names) == sorted([str(bad), str(tree / 'train' / 'eel' / '0.jpg')])
    tracker.reset()
    assert tracker.snapshot() == (0, [])


def test_replacement_is_the_next_readable_sample_and_keeps_its_label(tree):
    corrupt(tree / 'val' / 'cat' / '3.jpg')  # index 3; index 4 is dog/0.jpg
    spec = build_imagenet_dataspec(str(tree), is_train=False, crop_size=32, batch_size=1)
    dataset = spec.dataloader.dataset
    image, label = dataset[3]
    expected_image, expected_label = dataset[4]
    assert torch.equal(image, expected_image) and label == expected_label == 1


def test_strict_mode_raises_naming_the_file(tree):
    bad = corrupt(tree / 'train' / 'cat' / '1.jpg')
    spec = build_imagenet_dataspec(str(tree), crop_size=32, batch_size=4, strict=True)
    with pytest.raises(CorruptImageError, match=str(bad)):
        list(spec.dataloader)


def test_strict_mode_error_crosses_worker_processes(tree):
    bad = corrupt(tree / 'train' / 'cat' / '1.jpg')
    spec = build_imagenet_dataspec(str(tree), crop_size=32, batch_size=4, strict=True,
                                   dataloader_kwargs={'num_workers': 1})
    with pytest.raises(CorruptImageError, match=str(bad)):
        list(spec.dataloader)


@pytest.mark.parametrize('num_workers', [0, 1])
def test_strict_mode_ends_a_recipe_run_with_one_line_naming_the_file(tree, tmp_path, capsys, num_workers):
    bad = corrupt(tree / 'train' / 'cat' / '1.jpg')
    recipe = tmp_path / 'strict.yaml'
    recipe.write_text(yaml.safe_dump({
        'model': {'efficientnet_b0': {'num_classes': 3}}, 'optimizers': {'sgd': {'lr': 0.1}},
        'train_dataset': {'imagenet': {'datadir': str(tree), 'crop_size': 32, 'strict': True}},
        'max_duration': '1ep', 'train_batch_size': 4, 'device': 'cpu', 'progress_bar': False,
        'dataloader': {'num_workers': num_workers}}))
    assert train.main([str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f'composer-efficientnet: {bad}: cannot read or decode this image'), err


def test_dataloader_options_that_need_workers_are_dropped_without_workers():
    options = {'num_workers': 0, 'pin_memory': True, 'prefetch_factor': 2, 'persistent_workers': True, 'timeout': 5,
               'multiprocessing_context': 'spawn'}
    assert loader_kwargs(options) == {'num_workers': 0, 'pin_memory': True}
    assert loader_kwargs({**options, 'num_workers': 2}) == {**options, 'num_workers': 2}
    unset = loader_kwargs({**options, 'num_workers': 2, 'timeout': None, 'prefetch_factor': None})
    assert unset == {'num_workers': 2, 'pin_memory': True, 'persistent_workers': True,
                     'multiprocessing_context': 'spawn'}  # a recipe's null leaves the DataLoader's default


def test_a_dataset_of_only_bad_samples_fails_instead_of_looping():
    def load(index):
        raise RuntimeError('not an image')

    with pytest.raises(BrokenDatasetError, match=r'3 consecutive samples starting at item 1 could not be read '
                                           r'\(last: not an image\)'):
        load_or_replace(1, 3, load, lambda i: f'item {i}', BadSampleTracker(), strict=False)


def test_tracker_keeps_the_first_paths_and_counts_all():
    tracker = BadSampleTracker(max_paths=2)
    for i in range(5):
        tracker.record(f'/data/{i}.jpg')
    assert tracker.snapshot() == (5, ['/data/0.jpg', '/data/1.jpg'])


def test_missing_split_is_a_file_not_found_error_naming_it(tree):
    shutil.rmtree(tree / 'val')
    with pytest.raises(FileNotFoundError, match=f"{tree / 'val'}: split directory not found") as info:
        build_imagenet_dataspec(str(tree), is_train=False, batch_size=2)
    assert isinstance(info.value, SplitNotFoundError)
    assert 'one subfolder per class' in str(info.value)


def test_missing_datadir_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist either'):
        build_imagenet_dataspec(str(tmp_path / 'nowhere'), batch_size=2)


def test_empty_class_folder_is_a_value_error_naming_it(tree):
    for image in (tree / 'train' / 'dog').iterdir():
        image.unlink()
    with pytest.raises(ValueError, match=f"{tree / 'train' / 'dog'}: empty class folder") as info:
        build_imagenet_dataspec(str(tree), batch_size=2)
    assert isinstance(info.value, DatasetLayoutError)


def test_non_image_file_is_a_value_error_naming_it(tree):
    (tree / 'train' / 'eel' / 'notes.txt').write_text('not an image')
    with pytest.raises(DatasetLayoutError, match=r'1 file\(s\) that are not images \(eel/notes.txt\); '
                                                 r'expected only files ending in .jpeg, .jpg'):
        build_imagenet_dataspec(str(tree), batch_size=2)


def test_loose_file_in_split_directory_is_an_error(tree):
    (tree / 'val' / 'labels.csv').write_text('a,b')
    with pytest.raises(DatasetLayoutError, match=r'labels.csv.*expected only one subfolder per class'):
        build_imagenet_dataspec(str(tree), is_train=False, batch_size=2)


def test_train_and_val_with_different_classes_is_an_error(tree):
    shutil.copytree(tree / 'val' / 'eel', tree / 'val' / 'fox')
    with pytest.raises(DatasetLayoutError, match=r"only in train: none; only in val: \['fox'\]"):
        build_imagenet_dataspec(str(tree), batch_size=2)


def test_hidden_files_are_ignored(tree):
    (tree / 'train' / '.DS_Store').write_bytes(b'\0')
    (tree / 'train' / 'cat' / '._0.jpg').write_bytes(b'\0')
    spec = build_imagenet_dataspec(str(tree), batch_size=2)
    assert len(spec.dataloader.dataset) == 12


def test_bad_samples_are_reported_at_epoch_and_eval_end(tree, caplog):
    from composer import Trainer
    from composer.loggers import InMemoryLogger

    from composer_efficientnet import composer_efficientnet
    from composer_efficientnet.data import BadSampleReport

    corrupt(tree / 'train' / 'dog' / '0.jpg')
    corrupt(tree / 'val' / 'cat' / '2.jpg')
    corrupt(tree / 'val' / 'eel' / '1.jpg')
    workers = {'num_workers': 1, 'persistent_workers': True}  # counts must survive reuse of the same worker
    kwargs = {'crop_size': 32, 'batch_size': 6, 'dataloader_kwargs': workers}
    model = composer_efficientnet('efficientnet_b0', num_classes=3)
    in_memory = InMemoryLogger()
    trainer = Trainer(model=model, train_dataloader=build_imagenet_dataspec(str(tree), **kwargs),
                      eval_dataloader=build_imagenet_dataspec(str(tree), is_train=False, **kwargs),
                      max_duration='2ep', callbacks=[BadSampleReport()], loggers=[in_memory], device='cpu',
                      optimizers=torch.optim.SGD(model.parameters(), lr=0.01), progress_bar=False)
    with caplog.at_level(logging.WARNING, logger='composer_efficientnet.data.bad_samples'):
        trainer.fit()
    train_counts = [value for _, value in in_memory.data['data/train/bad_samples']]
    eval_counts = [value for _, value in in_memory.data['data/eval/bad_samples']]
    assert train_counts == [1, 1] and eval_counts == [2, 2]  # per epoch, not cumulative
    messages = [r.getMessage() for r in caplog.records]
    assert any('skipped 1 unreadable image(s) in train' in m and str(tree / 'train' / 'dog' / '0.jpg') in m
               for m in messages)
    assert any('skipped 2 unreadable image(s) in eval' in m for m in messages)
