"""Candidate lists of the truncation's kept set: same sets as the NumPy reference, tie fallback, packed record."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl.sampling import candidates as cand
from dllm_rl.sampling import truncation as trunc
from tests.helpers.truncation_numpy import agrpo_keep


def _logits(seed, shape, quantize):
    x = np.random.default_rng(seed).normal(0, 3, shape).astype(np.float32)
    return np.round(x).astype(np.float32) if quantize else x


@pytest.mark.parametrize("top_k,top_p,quantize", [(5, 1.0, False), (5, 0.9, False), (5, 0.9, True),
                                                   (None, 0.8, False), (None, 1.0, False), (70, 0.9, False)])
def test_with_candidates_dense_and_packed_match_reference(top_k, top_p, quantize):
    scaled = _logits(top_k or 0, (2, 3, 64), quantize)
    want = agrpo_keep(scaled, top_k, top_p)
    dense = cand.with_candidates(jnp.asarray(scaled), top_k, top_p, lambda c: cand.dense_keep(c, 64))
    packed = cand.with_candidates(jnp.asarray(scaled), top_k, top_p, lambda c: cand.packed_keep(c, 64))
    np.testing.assert_array_equal(dense, want)
    np.testing.assert_array_equal(packed, trunc.pack(jnp.asarray(want)))


def test_top_k_list_is_sorted_and_flags_ties():
    scaled = _logits(0, (2, 3, 50), False)
    short, exact = cand.top_k_list(jnp.asarray(scaled), 4, 1.0)
    assert bool(exact)
    np.testing.assert_array_equal(short.values_BxNxC, -np.sort(-scaled, axis=-1)[..., :4])
    np.testing.assert_array_equal(np.take_along_axis(scaled, np.asarray(short.ids_BxNxC), -1), short.values_BxNxC)
    scaled[1, 2, :6] = 20.0  # six tokens tied at the 4th value: top-k keeps all six
    _, exact = cand.top_k_list(jnp.asarray(scaled), 4, 1.0)
    assert not bool(exact)
    dense = cand.with_candidates(jnp.asarray(scaled), 4, 1.0, lambda c: cand.dense_keep(c, 50))
    assert int(np.asarray(dense)[1, 2].sum()) == 6


def test_packed_keep_pads_like_packbits():
    scaled = jnp.asarray(_logits(1, (1, 2, 13), False))  # V not a multiple of 8
    for top_k in (1, 3, 12):
        packed = cand.with_candidates(scaled, top_k, 0.95, lambda c: cand.packed_keep(c, 13))
        np.testing.assert_array_equal(packed, trunc.pack(trunc.keep_mask(scaled, top_k, 0.95)))
        np.testing.assert_array_equal(trunc.unpack(packed, 13), trunc.keep_mask(scaled, top_k, 0.95))


def test_no_vocabulary_sort_on_the_top_k_path():
    """top_k_list compiles to XLA's TopK, not a sort over the vocabulary (which an unused-indices top_k becomes
    on CPU)."""
    scaled = jax.ShapeDtypeStruct((2, 3, 4096), jnp.float32)
    hlo = jax.jit(lambda s: cand.top_k_list(s, 150, 0.99)).lower(scaled).compile().as_text()
    assert not [line for line in hlo.splitlines() if " sort(" in line and "4096]" in line]


@pytest.mark.parametrize("v,k", [(1000, 7), (1001, 31), (64, 3), (40, 39), (5000, 151)])
def test_two_round_top_k_equals_lax_top_k(v, k):
    x = jnp.asarray(np.round(np.random.default_rng(v).normal(0, 2, (2, 3, v)), 1), jnp.float32)  # many ties
    x = x.at[0, 0, -3:].set(-jnp.inf)
    want_values, want_ids = jax.lax.top_k(x, k)
    values, ids = cand.two_round_top_k(x, k)
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_array_equal(ids, want_ids)
