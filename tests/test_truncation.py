"""Top-k/top-p truncation (AGRPO semantics), its packed record, and the truncated distribution the loss rebuilds."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dllm_rl.sampling import truncation as trunc
from tests.helpers.truncation_numpy import agrpo_keep, softmax, truncated_stats


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), vocab=st.integers(2, 50), top_k=st.one_of(st.none(), st.integers(1, 60)),
       top_p=st.sampled_from([1.0, 0.99, 0.9, 0.5, 0.05]), quantize=st.booleans())
def test_keep_mask_matches_reference(seed, vocab, top_k, top_p, quantize):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (2, 5, vocab)).astype(np.float32)
    if quantize:  # coarse values: many exact ties, as bf16 logits of a large vocabulary have
        logits = np.round(logits).astype(np.float32)
    got = np.asarray(trunc.keep_mask(jnp.asarray(logits), top_k, top_p))
    want = agrpo_keep(logits, top_k, top_p)
    np.testing.assert_array_equal(got, want)  # with ties, both order tied tokens by id at the top-p cut
    assert got.any(-1).all()


@pytest.mark.parametrize("tied", [1, 3, 30])
def test_top_p_after_top_k_with_many_ties(tied):
    """Ties at the k-th value keeping more than top_k tokens take the full-sort path (tied > 1 here); no tie
    takes the top_k list. Same sets as the reference."""
    rng = np.random.default_rng(tied)
    logits = rng.normal(0, 1, (2, 3, 100)).astype(np.float32) - 5.0
    logits[0, 1, :tied] = 0.5                     # `tied` tokens share the 2nd-largest value
    logits[0, 1, 50] = 2.0
    for top_p in (0.3, 0.9, 0.999):
        want = agrpo_keep(logits, 2, top_p)
        np.testing.assert_array_equal(trunc.keep_mask(jnp.asarray(logits), 2, top_p), want)
    assert agrpo_keep(logits, 2, 1.0)[0, 1].sum() == tied + 1


def test_top_k_keeps_ties_at_kth_value():
    logits = jnp.asarray([[[5.0, 3.0, 3.0, 3.0, 1.0]]])
    np.testing.assert_array_equal(trunc.keep_mask(logits, 2, 1.0)[0, 0], [True, True, True, True, False])


def test_top_p_keeps_first_and_stops_after_mass():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = jnp.asarray(np.log(probs)[None, None].astype(np.float32))
    # cumulative mass 0.5, 0.8, 0.95, 1.0: a token is removed once the mass up to and including it exceeds p
    np.testing.assert_array_equal(trunc.keep_mask(logits, None, 0.85)[0, 0], [True, True, False, False])
    np.testing.assert_array_equal(trunc.keep_mask(logits, None, 0.96)[0, 0], [True, True, True, False])
    np.testing.assert_array_equal(trunc.keep_mask(logits, None, 0.01)[0, 0], [True, False, False, False])


def test_keep_mask_bounds():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 7)).astype(np.float32))
    assert bool(trunc.keep_mask(logits, 100, 1.0).all())
    np.testing.assert_array_equal(trunc.keep_mask(logits, 1, 1.0).sum(-1), 1)


@pytest.mark.parametrize("vocab", [8, 13, 160])
def test_pack_expand_roundtrip(vocab):
    rng = np.random.default_rng(vocab)
    keep = rng.random((3, 11, vocab)) < 0.3
    bits = trunc.pack(jnp.asarray(keep))
    assert bits.dtype == jnp.uint8 and bits.shape == (3, 11, -(-vocab // 8))
    record = trunc.TruncationRecord(bits=bits, vocab_size=vocab)
    np.testing.assert_array_equal(trunc.expand(record), keep)
    positions = jnp.asarray(rng.integers(0, 11, (3, 4)))
    np.testing.assert_array_equal(trunc.expand(record, positions),
                                  np.take_along_axis(keep, np.asarray(positions)[..., None], 1))
    untruncated = trunc.TruncationRecord(bits=None, vocab_size=vocab)
    assert trunc.expand(untruncated, positions).shape == (3, 4, vocab) and bool(trunc.expand(untruncated,
                                                                                          positions).all())


def test_record_size_at_llada_scale():
    """uint8 [B, L, ceil(V/8)] for B=8, L=384, V=126464 is 1/8 of the reference's bool mask (388 MB)."""
    shape = jax.eval_shape(trunc.pack, jax.ShapeDtypeStruct((8, 384, 126464), bool))
    nbytes = np.prod(shape.shape) * shape.dtype.itemsize
    assert nbytes * 8 <= 8 * 384 * 126464


def test_truncated_distribution_matches_float64():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (2, 6, 40)).astype(np.float32)
    scaled = np.asarray(trunc.scale_logits(jnp.asarray(logits), 0.7))
    # XLA:CPU divides by a scalar as a multiplication by its reciprocal: within 1 ulp of IEEE division
    np.testing.assert_allclose(scaled, logits / np.float32(0.7), rtol=2.5e-7)
    keep = agrpo_keep(scaled, 10, 0.9)
    tokens = np.argmax(np.where(keep, scaled, -np.inf), -1)
    lp, ent = trunc.logp_and_entropy(jnp.asarray(scaled), jnp.asarray(keep), jnp.asarray(tokens))
    want_lp, want_ent = truncated_stats(scaled, keep, tokens)
    np.testing.assert_allclose(lp, want_lp, atol=1e-5)
    np.testing.assert_allclose(ent, want_ent, atol=1e-5)
    np.testing.assert_allclose(trunc.token_log_probs(jnp.asarray(scaled), jnp.asarray(keep), jnp.asarray(tokens)),
                               want_lp, atol=1e-5)
    full = np.asarray(trunc.truncated_log_softmax(jnp.asarray(scaled), jnp.asarray(keep)))
    assert np.isneginf(full[~keep]).all()
    np.testing.assert_allclose(np.exp(full).sum(-1), 1.0, rtol=1e-5)
