"""The shared objective kit against float64 NumPy recomputations: inputs, token log-probs, means, PPO clip + k3."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl.rl import objective
from tests.helpers import objective_numpy


def test_model_inputs_concatenate_and_mask_only_prompt_padding():
    prompt = jnp.asarray([[0, 5, 6], [7, 8, 9]], jnp.int32)
    mask = jnp.asarray([[0, 1, 1], [1, 1, 1]])
    completion = jnp.asarray([[1, 2], [3, 4]], jnp.int16)
    ids, att = objective.model_inputs(prompt, mask, completion)
    np.testing.assert_array_equal(ids, [[0, 5, 6, 1, 2], [7, 8, 9, 3, 4]])
    assert ids.dtype == jnp.int32 and att.dtype == jnp.bool_
    np.testing.assert_array_equal(att, [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert objective.model_inputs(prompt, None, completion)[1] is None
    np.testing.assert_array_equal(objective.completion_positions(3, completion), [[3, 4], [3, 4]])


def test_token_log_probs_match_numpy_including_truncated_logits():
    r = np.random.default_rng(0)
    logits = r.normal(size=(2, 3, 7)) * 3
    logits[0, 1, [0, 4]] = -np.inf  # tokens outside a truncation set
    ids = r.integers(0, 7, (2, 3))
    ids[0, 1] = 2
    logits = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32))  # exact in bfloat16 too
    want = objective_numpy.token_log_probs(logits, ids)
    for dtype in (jnp.float32, jnp.bfloat16):  # bfloat16 logits are promoted to float32 before the softmax
        got = objective.token_log_probs(jnp.asarray(logits, dtype), jnp.asarray(ids))
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(objective.gather_tokens(jnp.asarray(logits), jnp.asarray(ids)),
                                  np.take_along_axis(logits, ids[..., None], -1)[..., 0])


def test_masked_mean():
    x = jnp.asarray([[1.0, 2.0, jnp.inf], [4.0, 5.0, 6.0]])
    mask = jnp.asarray([[True, True, False], [False, True, False]])
    assert float(objective.masked_mean(x, mask)) == pytest.approx(8.0 / 3)
    assert float(objective.masked_mean(x, jnp.zeros((2, 3), bool))) == 0.0
    assert float(objective.masked_mean(mask, mask)) == 1.0  # bool values average as 0/1


@pytest.mark.parametrize("beta,kl_times_ratio", [(0.0, False), (0.04, False), (0.1, True)])
def test_clipped_token_loss_and_gradient_match_numpy(beta, kl_times_ratio):
    r = np.random.default_rng(1)
    logp, old, ref = (-r.random((3, 5)) * 2 for _ in range(3))
    adv = r.normal(size=3)
    eps_low, eps_high = 0.1, 0.25
    as32 = lambda x: jnp.asarray(x, jnp.float32)
    ref_arg = as32(ref) if beta else None
    loss, ratio, kl = objective.clipped_token_loss(as32(logp), as32(old), ref_arg, as32(adv), eps_low, eps_high,
                                                   beta, kl_times_ratio)
    want_loss, want_ratio, want_kl = objective_numpy.clipped_token_loss(logp, old, ref, adv, eps_low, eps_high, beta,
                                                                               kl_times_ratio)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ratio, want_ratio, rtol=1e-6)
    assert (kl is None) == (not beta)
    if beta:
        np.testing.assert_allclose(kl, want_kl, rtol=1e-5, atol=1e-7)
    assert (np.abs(want_ratio - 1) > eps_low).any()  # some tokens are clipped

    # d loss / d logp: −ρA where the unclipped term is the min, plus β·d(kl)/d logp.
    grad = jax.grad(lambda x: objective.clipped_token_loss(x, as32(old), ref_arg, as32(adv), eps_low, eps_high,
                                                           beta, kl_times_ratio)[0].sum())(as32(logp))
    ratio64, a = np.exp(logp - old), adv[:, None]
    active = ratio64 * a <= np.clip(ratio64, 1 - eps_low, 1 + eps_high) * a
    want_grad = np.where(active, -ratio64 * a, 0.0)
    if beta:
        k3, dk3 = np.exp(ref - logp) - (ref - logp) - 1, 1 - np.exp(ref - logp)
        want_grad = want_grad + beta * (dk3 * ratio64 + k3 * ratio64 if kl_times_ratio else dk3)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)


def test_k3_is_nonnegative_and_zero_on_policy():
    logp = jnp.asarray([-1.0, -2.0, -0.5])
    np.testing.assert_array_equal(objective.k3(logp, logp), 0.0)
    assert (np.asarray(objective.k3(logp[::-1], logp)) >= 0).all()


def test_token_kl_estimators_and_the_clamped_k3():
    """k1 = logp − against; k3 = e^δ − δ − 1 (δ = against − logp), with `clamp` only its exponent clipped (DiPO's
    official e^{clip(ref − logp, ±c)} − 1 + logp − ref); an unknown estimator names the config's field."""
    logp, against = jnp.asarray([-1.0, -2.0, -30.0]), jnp.asarray([-1.5, -2.0, -1.0])
    np.testing.assert_allclose(objective.token_kl(logp, against, "k1"), [0.5, 0.0, -29.0])
    np.testing.assert_allclose(objective.token_kl(logp, against, "k3"), objective.k3(against, logp))
    delta = np.asarray(against - logp, np.float64)
    np.testing.assert_allclose(objective.token_kl(logp, against, "k3", clamp=10.0),
                               np.exp(np.clip(delta, -10, 10)) - 1.0 - delta, rtol=1e-6)
    with pytest.raises(ValueError, match=r"DiPOConfig.kl_estimator='k2'; choose one of \('k3', 'k1'\)"):
        objective.check_kl_estimator("DiPOConfig", "k2")


def test_forward_config_checks_remat_and_names_the_subclass():
    assert objective.ForwardConfig(remat="full").forward_kwargs() == dict(compute_dtype=None, remat="full",
                                                                         attention_impl=None)
    with pytest.raises(ValueError, match=r"ForwardConfig.remat='everything'"):
        objective.ForwardConfig(remat="everything")
