"""Masked-diffusion SFT loss: matches a float64 NumPy recomputation, masks only answers, and trains."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
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
    _, masked, p = sft.mask_answer(jax.random.PRNGKey(0), jnp.zeros((4000, 64), jnp.int32), 9)
    assert abs(float(p.mean()) - 0.5) < 0.02 and float(p.min()) >= sft.MIN_MASK_PROB
    np.testing.assert_allclose(np.asarray(masked).mean(1), np.asarray(p), atol=0.2)


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
