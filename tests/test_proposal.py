"""The step's token proposal: over candidate lists it equals the same computation over the whole vocabulary,
and keyed draws follow the truncated distribution."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

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
    keyed = jax.jit(lambda key: propose(logits, sampler, key, True))  # as in the sampler: one program, 3 keys
    keep = np.asarray(trunc.keep_mask(logits, 7, 0.9))
    for seed in range(3):
        prop = keyed(jax.random.key(seed))
        assert np.take_along_axis(keep, np.asarray(prop.x0_BxN)[..., None], -1).all()
        assert np.all(np.asarray(prop.logp_BxN) <= 0)


def test_greedy_is_argmax_without_records():
    logits = jnp.asarray(np.random.default_rng(2).normal(0, 2, (1, 3, 20)), jnp.float32)
    prop = propose(logits, sampler_config(steps=1, gen_length=3, block_length=3), None, False)
    np.testing.assert_array_equal(prop.x0_BxN, jnp.argmax(logits, -1))
    assert prop.logp_BxN is None and prop.bits_BxNxVb is None


# Temperature-scaled logits log(p) of a 7-token distribution; kept sets and their renormalised probabilities
# worked out by hand (top-k keeps the k largest; top-p removes tokens once the cumulative mass of the sorted
# kept tokens exceeds p, the first always staying).
P7 = np.array([0.05, 0.30, 0.10, 0.25, 0.02, 0.20, 0.08])
P7_TIED = np.array([0.10, 0.30, 0.15, 0.15, 0.20, 0.10])  # top_k=3 ties at the 3rd value: the exact fallback
FREQUENCY_CASES = [  # probabilities, top_k, top_p, kept token -> probability after truncation
    (P7, None, 1.0, dict(enumerate(P7))),                                # no truncation (vocabulary order)
    (P7, 4, 0.9, {1: 0.30 / 0.75, 3: 0.25 / 0.75, 5: 0.20 / 0.75}),      # top 4 renormalised: cum. .35 .65 .88 1.0
    (P7, None, 0.9, {1: 0.30 / 0.85, 3: 0.25 / 0.85, 5: 0.20 / 0.85, 2: 0.10 / 0.85}),  # cum. .30 .55 .75 .85 .93
    (P7_TIED, 3, 1.0, {1: 0.30 / 0.80, 4: 0.20 / 0.80, 2: 0.15 / 0.80, 3: 0.15 / 0.80}),
]


@pytest.mark.parametrize("probs,top_k,top_p,kept", FREQUENCY_CASES,
                         ids=["full", "top_k_top_p", "top_p", "top_k_tie"])
def test_keyed_draws_follow_the_truncated_distribution(probs, top_k, top_p, kept):
    """The production keyed path (`candidate_gumbel` per slot + `best_slot` over the candidate list) samples
    the truncated, renormalised softmax(l / T): N draws with N keys never leave the kept set, and their counts pass
    a chi-square test at p-value 1e-6 (the chance that a correct sampler fails it)."""
    temperature, n = 0.5, 20_000
    logits_1x1xV = jnp.asarray(temperature * np.log(probs), jnp.float32)[None, None]  # scaled: log(probs)
    sampler = sampler_config(steps=1, gen_length=1, block_length=1, temperature=temperature, top_k=top_k,
                             top_p=top_p)
    draw = jax.jit(jax.vmap(lambda key: propose(logits_1x1xV, sampler, key, False).x0_BxN[0, 0]))
    counts = np.bincount(np.asarray(draw(jax.random.split(jax.random.key(0), n))), minlength=len(probs))
    tokens = sorted(kept)
    assert counts.sum() == counts[tokens].sum(), counts  # nothing outside the kept set
    expected = n * np.array([kept[t] for t in tokens])
    assert scipy.stats.chisquare(counts[tokens], expected).pvalue > 1e-6, (counts, expected)
