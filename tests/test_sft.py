"""Masked-diffusion SFT loss: matches a float64 NumPy recomputation, masks only answers, and trains."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats
from safetensors.numpy import load_file

from dllm_rl.checkpoint import load_hf
from dllm_rl.rl import sft
from tests.helpers import llada_numpy, objective_numpy
from tests.helpers.llada_numpy import tiny_config


def test_loss_matches_numpy_reference(tiny_dir):
    config, params = load_hf(tiny_dir)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 150, (3, 5))
    answer = rng.integers(0, 151, (3, 7))
    key = jax.random.PRNGKey(4)
    loss = sft.sft_loss(config, params, jnp.asarray(prompt), jnp.asarray(answer), key)
    noisy, masked, p = (np.asarray(x) for x in sft.mask_answer(key, jnp.asarray(answer), config.mask_token_id))
    assert masked.any() and np.all(noisy[masked] == 156) and np.all(noisy[~masked] == answer[~masked])
    logits, _ = llada_numpy.forward(tiny_config(), load_file(str(tiny_dir / "model.safetensors")),
                                    np.concatenate([prompt, noisy], 1))
    nll = -objective_numpy.token_log_probs(logits[:, 5:], answer)
    expected = np.mean((nll * masked).sum(1) / p / 7)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)


def test_mask_probability_is_uniform_in_t():
    """p = (1 − ε)·t + ε with t ~ U(0, 1): the sampled p pass a KS test against U(ε, 1), and each row's mask
    fraction is p plus binomial noise, so across rows it has variance Var(p) + E[p(1 − p)]/L (a constant p would
    give only the binomial part)."""
    b, length, eps = 4000, 64, sft.MIN_MASK_PROB
    _, masked_BxL, p_B = sft.mask_answer(jax.random.PRNGKey(0), jnp.zeros((b, length), jnp.int32), 9)
    p_B = np.asarray(p_B, np.float64)
    # DKW: a correct sampler exceeds a KS distance of 0.05 with probability <= 2·exp(−2·b·0.05²) = 4e-9
    assert scipy.stats.kstest(p_B, scipy.stats.uniform(eps, 1 - eps).cdf).statistic < 0.05
    fraction_B = np.asarray(masked_BxL).mean(1)
    # residuals fraction − p: mean 0 and variance E[p(1 − p)]/L = 1/(6L) (standard errors 9e-4 and 7e-5)
    residual_B = fraction_B - p_B
    assert abs(np.mean(residual_B)) < 5e-3 and abs(np.var(residual_B) - 1 / (6 * length)) < 4e-4
    # Var(p) = (1 − ε)²/12 ≈ 0.083 (standard error 1.2e-3); a constant p = 0.5 gives 0.25/L ≈ 0.004
    assert abs(np.var(fraction_B) - ((1 - eps) ** 2 / 12 + 1 / (6 * length))) < 0.01


def test_a_few_steps_reduce_the_loss(tiny_dir):
    config, params = load_hf(tiny_dir)
    prompt = jnp.tile(jnp.arange(6)[None], (8, 1))
    answer = jnp.tile(jnp.asarray([[10, 11, 12, 150]]), (8, 1))
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, key):
        loss, grads = jax.value_and_grad(sft.sft_loss, argnums=1)(config, params, prompt, answer, key)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state, loss

    keys = jax.random.split(jax.random.PRNGKey(1), 60)
    losses = []
    for key in keys:
        params, state, loss = step(params, state, key)
        losses.append(float(loss))
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:10])
