"""SyncBuffers gives every process rank 0's buffers, the EMA average's included (2-process runs: test_distributed)."""

from types import SimpleNamespace

from composer.algorithms import EMA
from composer.algorithms.ema.ema import EMAParameters

from composer_efficientnet.callbacks import replicas
from composer_efficientnet.callbacks.replicas import SyncBuffers
from tests.conftest import seeded_model


def test_model_and_ema_buffers_come_from_rank_zero(monkeypatch):
    model = seeded_model()
    ema = EMA(half_life='10ba')
    ema.ema_model = EMAParameters(model)
    broadcast = []
    monkeypatch.setattr(replicas.dist, 'get_world_size', lambda: 2)
    monkeypatch.setattr(replicas.dist, 'broadcast', lambda tensor, src: broadcast.append((id(tensor), src)))
    SyncBuffers().fit_end(SimpleNamespace(model=model, algorithms=[ema]), logger=None)

    expected = [*model.buffers(), *ema.ema_model.named_buffers_dict.values()]
    assert len(expected) == 2 * len(list(model.buffers())) > 0
    assert broadcast == [(id(tensor), 0) for tensor in expected]
