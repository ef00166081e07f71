"""Group advantages: r − group mean (optional std scaling), zero-std fraction, batch validation."""
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dllm_rl.rl.advantages import group_advantages


def test_mean_subtraction_per_group():
    rewards = jnp.array([1.0, 2.0, 3.0, 4.0, 4.0, 4.0])
    adv, stats = group_advantages(rewards, 3)
    np.testing.assert_allclose(adv, [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    assert float(stats["frac_reward_zero_std"]) == 0.5
    np.testing.assert_allclose(stats["reward_mean"], 3.0)
    np.testing.assert_allclose(stats["reward_std"], 0.5)  # unbiased std 1 and 0


def test_std_scaling_matches_trl():
    r = np.random.default_rng(0).normal(size=12).astype(np.float32)
    adv, _ = group_advantages(jnp.asarray(r), 4, scale_by_std=True)
    g = r.reshape(3, 4).astype(np.float64)
    ref = (g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-4)
    np.testing.assert_allclose(adv, ref.ravel(), rtol=1e-5)


def test_leave_one_out_subtracts_the_mean_of_the_other_rewards():
    """ESPO's baseline (ESPO @b5f2dac, `_generate_and_score_completions`): r_i − Σ_{j≠i} r_j/(G − 1), then
    optionally / (unbiased group std + 1e-4)."""
    r = np.random.default_rng(1).normal(size=12)
    g = r.reshape(3, 4)
    loo = g - (g.sum(1, keepdims=True) - g) / 3
    adv, _ = group_advantages(jnp.asarray(r, jnp.float32), 4, leave_one_out=True)
    np.testing.assert_allclose(adv, loo.ravel(), rtol=1e-5, atol=1e-6)
    adv, _ = group_advantages(jnp.asarray(r, jnp.float32), 4, scale_by_std=True, leave_one_out=True)
    np.testing.assert_allclose(adv, (loo / (g.std(1, ddof=1, keepdims=True) + 1e-4)).ravel(), rtol=1e-5)
    with pytest.raises(ValueError, match="num_generations ≥ 2"):
        group_advantages(jnp.array([1.0, 2.0]), 1, leave_one_out=True)


def test_single_generation_groups_have_zero_advantage():
    adv, stats = group_advantages(jnp.array([0.3, 2.0]), 1)
    np.testing.assert_array_equal(adv, [0.0, 0.0])
    assert float(stats["frac_reward_zero_std"]) == 1.0


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_groups_sum_to_zero_and_ignore_group_offsets(groups, g, seed):
    r = np.random.default_rng(seed).normal(size=groups * g).astype(np.float32)
    adv, _ = group_advantages(jnp.asarray(r), g)
    np.testing.assert_allclose(np.asarray(adv).reshape(groups, g).sum(1), 0.0, atol=1e-5)
    shifted = r + np.repeat(np.arange(groups) * 7.0, g).astype(np.float32)
    np.testing.assert_allclose(group_advantages(jnp.asarray(shifted), g)[0], adv, atol=1e-4)


def test_bad_input():
    with pytest.raises(ValueError, match="batch size 6 is not a multiple of num_generations 4"):
        group_advantages(jnp.zeros(6), 4)
    with pytest.raises(ValueError, match="num_generations must be ≥ 1"):
        group_advantages(jnp.zeros(6), 0)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(jnp.zeros((6, 2)), 3)
