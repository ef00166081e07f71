"""The RL optimizer: learning-rate schedules (linear warmup, then cosine decay to 0 or constant) and global-norm
clipping before AdamW."""
import numpy as np
import optax
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
    """A gradient of global norm 100 is scaled to norm 1 before AdamW. Adam's first step is about sign(g) for any
    |g|, so the check takes two steps (large, then small gradient): the second update depends on the first
    gradient's size through Adam's moments, and must equal AdamW's on the clipped gradients."""
    train = TrainConfig(num_steps=10, learning_rate=1.0, lr_schedule="constant", warmup_ratio=0.0, weight_decay=0.0,
                        max_grad_norm=1.0)
    tx, _ = make_optimizer(train)
    adamw = optax.adamw(1.0, b1=train.adam_b1, b2=train.adam_b2, weight_decay=0.0)
    params = {"w": np.zeros(4, np.float32)}
    large, small = {"w": np.full(4, 50.0, np.float32)}, {"w": np.full(4, 0.1, np.float32)}  # norms 100, 0.2
    clipped = {"w": np.full(4, 0.5, np.float32)}  # norm 1
    state, ref_state = tx.init(params), adamw.init(params)
    for grads, ref_grads in ((large, clipped), (small, small)):
        updates, state = tx.update(grads, state, params)
        want, ref_state = adamw.update(ref_grads, ref_state, params)
        np.testing.assert_allclose(np.asarray(updates["w"]), np.asarray(want["w"]), rtol=1e-6)
    # the premise: AdamW on the unclipped gradients gives a different second update
    unclipped_state = adamw.update(large, adamw.init(params), params)[1]
    assert not np.allclose(adamw.update(small, unclipped_state, params)[0]["w"], want["w"], rtol=1e-2)
