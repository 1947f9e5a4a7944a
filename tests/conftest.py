"""Shared helpers: a tiny Composer fit on the embedded digits; one intra-op thread per test process."""

from typing import Any, List, Optional

import pytest
import torch
from composer import Trainer

from composer_efficientnet import composer_efficientnet
from composer_efficientnet.data import build_digits_dataspec


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


def weights_of(trainer: Trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.state.model.state_dict().items()}
