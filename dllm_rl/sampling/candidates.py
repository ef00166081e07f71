"""The kept set of top-k/top-p truncation as a short list of candidate tokens per position.

Semantics (the AGRPO reference's `gumbel_sample`, docs/algorithm.md): top-k removes logits strictly below the
k-th largest, so every token tied at the k-th value is kept; top-p then sorts the remaining logits in
descending order and removes tokens once the cumulative softmax mass exceeds p, always keeping the first.
Exact ties at the top-p cut are ordered by token id (the reference's torch.sort leaves that order unspecified).
Dream's rule (`dream=True`, its `sample_tokens`): top-p first, on the whole vocabulary, keeping the token at which
the cumulative mass crosses p (HF's rule: a token is removed once the mass before it exceeds p), then top-k; the
kept set is the intersection of the two (top-p keeps a prefix of the sorted order).

A `Candidates` holds, per position, C candidate tokens in descending order of their scaled logit (ties: lower id
first) and which of them are kept. Everything downstream (Gumbel-max draw, log-prob, entropy, packed record)
runs over C instead of the vocabulary V:
  * top_k set: C = k, from one exact top (k + 1) with values and ids (`two_round_top_k`: no sort over V).
    The (k+1)-th value tells whether ties at the k-th value keep more than k tokens; only then does the exact
    full-vocabulary path run (`with_candidates` switches with `lax.cond`, so that sort is never executed
    otherwise).
  * top_k None, top_p < 1: C = V, one stable sort of the vocabulary. The reference's cut depends on the softmax
    mass of the whole sorted vocabulary, and the kept set can be most of it, so no shorter list is exact.
  * no truncation: C = V in vocabulary order, nothing sorted.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Candidates(NamedTuple):
    """Candidate tokens per position: scaled logits `values_BxNxC` (descending, except for `all_tokens`), their
    vocabulary ids `ids_BxNxC` (int32, distinct within a position) and `keep_BxNxC` (bool, the kept set)."""

    values_BxNxC: jax.Array
    ids_BxNxC: jax.Array
    keep_BxNxC: jax.Array


def all_tokens(scaled_BxNxV: jax.Array) -> Candidates:
    """No truncation: every token, in vocabulary order."""
    ids_BxNxV = jax.lax.broadcasted_iota(jnp.int32, scaled_BxNxV.shape, scaled_BxNxV.ndim - 1)
    return Candidates(scaled_BxNxV, ids_BxNxV, jnp.ones(scaled_BxNxV.shape, bool))


def top_p_remove_sorted(sorted_desc_BxNxC: jax.Array, top_p: float, lse_BxNx1: jax.Array | None = None,
                        dream: bool = False) -> jax.Array:
    """Reference rule on logits sorted descending: remove once the cumulative softmax mass exceeds p (the first
    token always stays). -inf entries carry no mass. `lse_BxNx1`: the softmax normaliser when the list is a prefix
    of a longer one (default: its own). `dream`: remove once the mass before the token exceeds p."""
    if lse_BxNx1 is None:
        prob_BxNxC = jax.nn.softmax(sorted_desc_BxNxC, axis=-1)
    else:
        prob_BxNxC = jnp.exp(sorted_desc_BxNxC - lse_BxNx1)
    over_BxNxC = jnp.cumsum(prob_BxNxC, axis=-1) > top_p
    if dream:  # shifted right by one: the token that crosses p stays
        over_BxNxC = jnp.concatenate([jnp.zeros_like(over_BxNxC[..., :1]), over_BxNxC[..., :-1]], axis=-1)
    return over_BxNxC.at[..., 0].set(False)


def sorted_vocabulary(scaled_BxNxV: jax.Array, top_k: int | None, top_p: float, dream: bool = False) -> Candidates:
    """Exact for any ties: the whole vocabulary in one stable descending sort, top-k then top-p on it (`dream`:
    Dream's top-p on the whole vocabulary, and top-k)."""
    iota_BxNxV = jax.lax.broadcasted_iota(jnp.int32, scaled_BxNxV.shape, scaled_BxNxV.ndim - 1)
    neg_BxNxV, ids_BxNxV = jax.lax.sort((-scaled_BxNxV, iota_BxNxV), dimension=-1, num_keys=1, is_stable=True)
    values_BxNxV = -neg_BxNxV
    keep_BxNxV = jnp.ones(values_BxNxV.shape, bool)
    if top_k is not None and top_k < values_BxNxV.shape[-1]:
        keep_BxNxV = values_BxNxV >= values_BxNxV[..., top_k - 1:top_k]
    if top_p < 1.0:
        masked_BxNxV = values_BxNxV if dream else jnp.where(keep_BxNxV, values_BxNxV, -jnp.inf)
        keep_BxNxV = keep_BxNxV & ~top_p_remove_sorted(masked_BxNxV, top_p, dream=dream)
    return Candidates(values_BxNxV, ids_BxNxV, keep_BxNxV)


def _top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """lax.top_k behind a barrier that keeps its outputs whole: XLA CPU lowers top_k to sort + slice and turns
    that back into its TopK kernel only while the slice is a plain prefix; with later slices fused into the
    sort's users instead, the program keeps a full sort (about 100x slower at LLaDA's vocabulary)."""
    return jax.lax.optimization_barrier(jax.lax.top_k(x, k))


def two_round_top_k(x_BxNxV: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Exactly `lax.top_k(x, k)` (values, int32 ids; ties: lower id first), in two rounds over about sqrt(V k)
    entries each: the top k of each of m contiguous chunks, then the top k of those m k. The global top k lie
    among them, and chunk-major order keeps lower ids first among ties. Why: XLA TPU lowers a top_k over the
    whole vocabulary to a sort of it; the two rounds sort only chunk-sized rows. The pad (ids >= V) is -inf."""
    v = x_BxNxV.shape[-1]
    c = max(k + 1, math.isqrt(v * k) + 1)  # chunk size
    m = -(-v // c)
    if m < 2:
        return _top_k(x_BxNxV, k)
    lead = x_BxNxV.shape[:-1]
    padded = jnp.pad(x_BxNxV, [(0, 0)] * len(lead) + [(0, m * c - v)], constant_values=-jnp.inf)
    values1, ids1 = _top_k(padded.reshape(lead + (m, c)), k)                  # [B, N, m, k]
    ids1 = ids1 + jax.lax.broadcasted_iota(jnp.int32, ids1.shape, ids1.ndim - 2) * c
    values, where = _top_k(values1.reshape(lead + (m * k,)), k)
    return values, jnp.take_along_axis(ids1.reshape(lead + (m * k,)), where, axis=-1)


def top_k_list(scaled_BxNxV: jax.Array, top_k: int, top_p: float, dream: bool = False
               ) -> tuple[Candidates, jax.Array]:
    """(the k best tokens with top-p applied among them, scalar bool: exact everywhere in the batch); `dream`:
    Dream's top-p, whose softmax is over the whole vocabulary.

    Not exact where the (k+1)-th value equals the k-th: top-k then keeps more than k tied tokens (and top-p's
    softmax normaliser includes them all)."""
    values_BxNxC1, ids_BxNxC1 = two_round_top_k(scaled_BxNxV, top_k + 1)
    values_BxNxC, ids_BxNxC = values_BxNxC1[..., :top_k], ids_BxNxC1[..., :top_k]
    exact = jnp.all(values_BxNxC1[..., top_k] < values_BxNxC1[..., top_k - 1])
    keep_BxNxC = jnp.ones(values_BxNxC.shape, bool)
    if top_p < 1.0:
        lse_BxNx1 = jax.nn.logsumexp(scaled_BxNxV, axis=-1, keepdims=True) if dream else None
        keep_BxNxC = ~top_p_remove_sorted(values_BxNxC, top_p, lse_BxNx1, dream)
    return Candidates(values_BxNxC, ids_BxNxC, keep_BxNxC), exact


def with_candidates(scaled_BxNxV: jax.Array, top_k: int | None, top_p: float, fn: Callable[[Candidates], object],
                    dream: bool = False):
    """fn(candidates) on the cheapest exact candidate list for this truncation (module docstring; `dream`: Dream's
    rule).

    `fn`'s outputs must not depend on C (the two lists of the top-k case differ in length)."""
    v = scaled_BxNxV.shape[-1]
    if top_k is None or top_k >= v:
        return fn(sorted_vocabulary(scaled_BxNxV, None, top_p, dream) if top_p < 1.0 else all_tokens(scaled_BxNxV))
    short, exact = top_k_list(scaled_BxNxV, top_k, top_p, dream)
    return jax.lax.cond(exact, lambda: fn(short),
                        lambda: fn(sorted_vocabulary(scaled_BxNxV, top_k, top_p, dream)))


def batch_index(ids: jax.Array) -> tuple[jax.Array, ...]:
    """Index arrays for every leading axis of `ids`, for scattering along its last axis."""
    return tuple(jax.lax.broadcasted_iota(jnp.int32, ids.shape, d) for d in range(ids.ndim - 1))


def dense_keep(cands: Candidates, vocab_size: int) -> jax.Array:
    """bool [B, N, V] kept-token mask of a candidate list."""
    ids_BxNxC = cands.ids_BxNxC
    zeros_BxNxV = jnp.zeros(ids_BxNxC.shape[:-1] + (vocab_size,), bool)
    return zeros_BxNxV.at[batch_index(ids_BxNxC) + (ids_BxNxC,)].set(cands.keep_BxNxC)


def packed_keep(cands: Candidates, vocab_size: int) -> jax.Array:
    """uint8 [B, N, Vb] packed kept set (little bit order, as `jnp.packbits(..., bitorder="little")`), written
    straight from the list: one scatter of C bits, no bool [B, N, V] array."""
    ids_BxNxC = cands.ids_BxNxC
    bit_BxNxC = jnp.left_shift(jnp.uint8(1), (ids_BxNxC % 8).astype(jnp.uint8)) * cands.keep_BxNxC.astype(jnp.uint8)
    zeros_BxNxVb = jnp.zeros(ids_BxNxC.shape[:-1] + (-(-vocab_size // 8),), jnp.uint8)
    return zeros_BxNxVb.at[batch_index(ids_BxNxC) + (ids_BxNxC // 8,)].add(bit_BxNxC)  # distinct ids: add == or
