"""The RL optimizer's learning-rate schedules: linear warmup, then cosine decay to 0 or constant."""
import numpy as np
import pytest

from dllm_rl.rl.config import TrainConfig
from dllm_rl.rl.optimizer import make_optimizer


def test_cosine_schedule_warms_up_then_decays_to_zero():
    _, schedule = make_optimizer(TrainConfig(num_steps=100, learning_rate=1e-3, warmup_ratio=0.1))
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(5e-4)
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(55)) == pytest.approx(5e-4, rel=1e-4)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("warmup_ratio,first", [(0.1, 0.0), (0.0, 2e-4)])
def test_constant_schedule(warmup_ratio, first):
    _, schedule = make_optimizer(TrainConfig(num_steps=50, learning_rate=2e-4, lr_schedule="constant",
                                             warmup_ratio=warmup_ratio))
    assert float(schedule(0)) == pytest.approx(first)
    assert [float(schedule(s)) for s in (5, 20, 49)] == pytest.approx([2e-4] * 3)


def test_updates_are_clipped_by_global_norm():
    tx, _ = make_optimizer(TrainConfig(num_steps=10, learning_rate=1.0, warmup_ratio=0.0, weight_decay=0.0,
                                       max_grad_norm=1.0))
    params = {"w": np.zeros(4, np.float32)}
    state = tx.init(params)
    small, _ = tx.update({"w": np.full(4, 0.5, np.float32)}, state, params)
    large, _ = tx.update({"w": np.full(4, 50.0, np.float32)}, state, params)
    np.testing.assert_allclose(np.asarray(small["w"]), np.asarray(large["w"]), rtol=1e-5)
