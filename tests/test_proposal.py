"""The step's token proposal over candidate lists equals the same computation over the whole vocabulary."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl.sampling import truncation as trunc
from dllm_rl.sampling.gumbel import gumbel_argmax
from dllm_rl.sampling.proposal import propose
from dllm_rl.sampling.schedule import sampler_config


@pytest.mark.parametrize("top_k,top_p,quantize", [(4, 1.0, False), (6, 0.9, True), (None, 0.9, False),
                                                   (None, 1.0, False), (3, 0.95, True)])
def test_propose_matches_vocabulary_computation(top_k, top_p, quantize):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (2, 5, 40)).astype(np.float32)
    if quantize:  # many exact ties: at the k-th value, at the top-p cut, and in the noisy argmax
        logits = np.round(logits).astype(np.float32)
    gumbel = np.round(rng.gumbel(size=logits.shape), 1 if quantize else 7).astype(np.float32)
    sampler = sampler_config(steps=2, gen_length=10, block_length=5, temperature=0.7, top_k=top_k, top_p=top_p,
                             record=True)
    prop = propose(jnp.asarray(logits), sampler, jnp.asarray(gumbel), True)
    scaled = trunc.scale_logits(jnp.asarray(logits), 0.7)
    keep = trunc.keep_mask(scaled, top_k, top_p)
    x0 = gumbel_argmax(scaled, jnp.asarray(gumbel), keep)
    logp, ent = trunc.logp_and_entropy(scaled, keep, x0)
    np.testing.assert_array_equal(prop.x0_BxN, x0)
    np.testing.assert_allclose(prop.logp_BxN, logp, atol=1e-6)
    np.testing.assert_allclose(prop.ent_BxN, ent, atol=1e-6)
    if sampler.truncates:
        np.testing.assert_array_equal(prop.bits_BxNxVb, trunc.pack(keep))
    else:
        assert prop.bits_BxNxVb is None


def test_key_noise_is_per_candidate_and_stays_in_the_kept_set():
    logits = jnp.asarray(np.random.default_rng(1).normal(0, 2, (2, 5, 300)), jnp.float32)
    sampler = sampler_config(steps=2, gen_length=10, block_length=5, temperature=1.0, top_k=7, top_p=0.9,
                             record=True)
    for seed in range(3):
        prop = propose(logits, sampler, jax.random.key(seed), True)
        keep = np.asarray(trunc.keep_mask(logits, 7, 0.9))
        assert np.take_along_axis(keep, np.asarray(prop.x0_BxN)[..., None], -1).all()
        assert np.all(np.asarray(prop.logp_BxN) <= 0)


def test_greedy_is_argmax_without_records():
    logits = jnp.asarray(np.random.default_rng(2).normal(0, 2, (1, 3, 20)), jnp.float32)
    prop = propose(logits, sampler_config(steps=1, gen_length=3, block_length=3), None, False)
    np.testing.assert_array_equal(prop.x0_BxN, jnp.argmax(logits, -1))
    assert prop.logp_BxN is None and prop.bits_BxNxVb is None
