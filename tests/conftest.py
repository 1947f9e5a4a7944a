"""Shared helpers: a tiny Composer fit on the embedded digits; one intra-op thread per test process."""

import os
import platform
import shutil
import socket
import tempfile
from typing import Any, List, Optional

import pytest
import torch
from composer import Trainer

from composer_efficientnet import composer_efficientnet
from composer_efficientnet.data import build_digits_dataspec


def pytest_report_header(config: pytest.Config) -> List[str]:
    """What a failure on another machine needs first: its cores, load, memory, disk and how its name resolves."""
    tmp = tempfile.gettempdir()
    free_gib = shutil.disk_usage(tmp).free / 2**30
    free_memory_gib = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError as error:
        address = f'unresolved ({error})'
    return [f'machine: {platform.machine()}, torch {torch.__version__}, {len(os.sched_getaffinity(0))} cores, '
            f'load {os.getloadavg()[0]:.1f}, {free_memory_gib:.1f} GiB free memory, {free_gib:.1f} GiB free in {tmp}, '
            f'{socket.gethostname()} -> {address}']


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a loaded 2-core machine, two threads per process run up to 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seeded_model(seed: int = 17, **kwargs: Any) -> torch.nn.Module:
    """EfficientNet-B0 for the 10 digits, initialized from ``seed`` so two builds are identical."""
    torch.manual_seed(seed)
    return composer_efficientnet('efficientnet_b0', num_classes=10, **kwargs)


def digits_trainer(algorithms: Optional[List[Any]] = None, model: Optional[torch.nn.Module] = None,
                   max_duration: str = '4ba', seed: int = 17, **trainer_kwargs: Any) -> Trainer:
    """A CPU Trainer of EfficientNet-B0 on 32x32 digits, batch 16, deterministic."""
    model = model or seeded_model(seed)
    return Trainer(model=model, train_dataloader=build_digits_dataspec(batch_size=16, seed=seed),
                   max_duration=max_duration, algorithms=algorithms or [], seed=seed, device='cpu',
                   optimizers=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                   progress_bar=False, log_to_console=False, **trainer_kwargs)


def tiny_trainer(max_duration: str, **kwargs: Any) -> Trainer:
    """Like ``digits_trainer``, on 8x8 digits in batches of 8: the same code paths, a fraction of the compute."""
    model = seeded_model()
    return Trainer(model=model, train_dataloader=build_digits_dataspec(batch_size=8, image_size=8),
                   max_duration=max_duration, seed=17, device='cpu', progress_bar=False,
                   optimizers=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), **kwargs)


def weights_of(trainer: Trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.state.model.state_dict().items()}
