"""Temperature, top-k/top-p truncation with the AGRPO reference semantics, and its compact record.

Semantics (official AGRPO `gumbel_sample`, spec/AGRPO.md §1.1): logits are divided by the temperature; top-k
removes logits strictly below the k-th largest (so ties at the k-th value are all kept); top-p then sorts the
remaining logits in descending order and removes tokens whose cumulative softmax mass exceeds p, always keeping
the first. At temperature 0 nothing is scaled or truncated (argmax sampling).

The record keeps the truncation set of every generated position as packed bits, uint8 [B, L, ceil(V/8)]
(`jnp.packbits(..., bitorder="little")`): exactly 1/8 of the reference's bool [B, L, V] and exact for any set,
including top-k ties (a list of top_k kept ids cannot hold those). Without truncation no bits are stored.

How the AGRPO loss rebuilds the sampling distribution at the positions it scores:
    scaled = scale_logits(logits_BxNxV, temperature)
    keep = expand(rollout.truncation, positions_BxN)            # bool [B, N, V]
    logp = token_log_probs(scaled, keep, tokens_BxN)            # or truncated_log_softmax(scaled, keep)
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


def scale_logits(logits: jax.Array, temperature: float) -> jax.Array:
    """float32 logits divided by the temperature (unchanged at temperature 0, as the reference)."""
    logits = logits.astype(jnp.float32)
    return logits / jnp.float32(temperature) if temperature > 0 else logits


def keep_mask(scaled_BxNxV: jax.Array, top_k: int | None, top_p: float) -> jax.Array:
    """bool [B, N, V]: tokens kept by top-k then top-p on temperature-scaled logits (reference semantics).

    top_k >= V keeps everything. Exact ties at the top-p cut: the lower token id is ranked first (stable sort);
    the reference's torch.sort leaves that order unspecified. With top_k set, top-p sorts only the 2*top_k
    largest logits (`lax.top_k`, ties by lower id as well), unless ties at the k-th value keep more tokens than
    that somewhere in the batch; then it sorts the whole vocabulary. Both give the same set.
    """
    v = scaled_BxNxV.shape[-1]
    if top_k is None or top_k >= v:
        return _top_p_keep(scaled_BxNxV, top_p) if top_p < 1.0 else jnp.ones(scaled_BxNxV.shape, bool)
    kth_BxNx1 = jax.lax.top_k(scaled_BxNxV, top_k)[0][..., -1:]
    keep = scaled_BxNxV >= kth_BxNx1
    if top_p >= 1.0:
        return keep
    masked = jnp.where(keep, scaled_BxNxV, -jnp.inf)
    cap = min(v, 2 * top_k)
    if cap == v:
        return keep & _top_p_keep(masked, top_p)

    def short_sort(masked):
        values, ids = jax.lax.top_k(masked, cap)  # every kept token is among them (checked below)
        keep_sorted = ~_top_p_remove_sorted(values, top_p) & jnp.isfinite(values)
        return jnp.zeros(masked.shape, bool).at[_batch_index(ids) + (ids,)].set(keep_sorted)

    fits = jnp.all(jnp.sum(keep, axis=-1) <= cap)
    return keep & jax.lax.cond(fits, short_sort, lambda m: _top_p_keep(m, top_p), masked)


def _top_p_remove_sorted(sorted_desc: jax.Array, top_p: float) -> jax.Array:
    """Reference rule on logits sorted descending: remove once the cumulative softmax mass exceeds p."""
    cum = jnp.cumsum(jax.nn.softmax(sorted_desc, axis=-1), axis=-1)
    return (cum > top_p).at[..., 0].set(False)


def _top_p_keep(masked_BxNxV: jax.Array, top_p: float) -> jax.Array:
    """Top-p over the whole vocabulary (one stable sort and its inverse)."""
    iota = jax.lax.broadcasted_iota(jnp.int32, masked_BxNxV.shape, masked_BxNxV.ndim - 1)
    neg_sorted, order = jax.lax.sort((-masked_BxNxV, iota), dimension=-1, num_keys=1, is_stable=True)
    remove_sorted = _top_p_remove_sorted(-neg_sorted, top_p)
    _, remove = jax.lax.sort((order, remove_sorted), dimension=-1, num_keys=1)
    return ~remove


def _batch_index(ids: jax.Array) -> tuple[jax.Array, ...]:
    """Index arrays for every leading axis of `ids`, for scattering along its last axis."""
    return tuple(jax.lax.broadcasted_iota(jnp.int32, ids.shape, d) for d in range(ids.ndim - 1))


def truncated_log_softmax(scaled_BxNxV: jax.Array, keep_BxNxV: jax.Array) -> jax.Array:
    """log-probs of the truncated, renormalised distribution; -inf outside the kept set."""
    return jax.nn.log_softmax(jnp.where(keep_BxNxV, scaled_BxNxV, -jnp.inf), axis=-1)


def token_log_probs(scaled_BxNxV: jax.Array, keep_BxNxV: jax.Array, tokens_BxN: jax.Array) -> jax.Array:
    """log-prob [B, N] of `tokens` under the truncated distribution."""
    logp_BxNxV = truncated_log_softmax(scaled_BxNxV, keep_BxNxV)
    return jnp.take_along_axis(logp_BxNxV, tokens_BxN[..., None].astype(jnp.int32), axis=-1)[..., 0]


def logp_and_entropy(scaled_BxNxV: jax.Array, keep_BxNxV: jax.Array,
                     tokens_BxN: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log-prob of `tokens`, entropy) [B, N] of the truncated distribution (float32)."""
    logp_BxNxV = truncated_log_softmax(scaled_BxNxV, keep_BxNxV)
    entropy_BxN = -jnp.sum(jnp.where(keep_BxNxV, jnp.exp(logp_BxNxV) * logp_BxNxV, 0.0), axis=-1)
    logp_BxN = jnp.take_along_axis(logp_BxNxV, tokens_BxN[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return logp_BxN, entropy_BxN


@flax.struct.dataclass
class TruncationRecord:
    """Truncation sets of the generated positions: `bits` uint8 [B, L, ceil(V/8)] (little bit order), or None
    when sampling did not truncate (every token kept)."""

    bits: jax.Array | None
    vocab_size: int = flax.struct.field(pytree_node=False)

    @property
    def nbytes(self) -> int:
        return 0 if self.bits is None else int(self.bits.size * self.bits.dtype.itemsize)


def pack(keep_BxNxV: jax.Array) -> jax.Array:
    """bool [B, N, V] -> uint8 [B, N, ceil(V/8)]."""
    return jnp.packbits(keep_BxNxV, axis=-1, bitorder="little")


def unpack(bits_BxNxW: jax.Array, vocab_size: int) -> jax.Array:
    """uint8 [B, N, W] -> bool [B, N, vocab_size] (inverse of `pack`)."""
    return jnp.unpackbits(bits_BxNxW, axis=-1, count=vocab_size, bitorder="little").astype(bool)


def expand(record: TruncationRecord, positions_BxN: jax.Array | None = None) -> jax.Array:
    """bool [B, N, V] kept-token mask at generated positions `positions_BxN` (0-based in the completion, i.e.
    excluding the prompt); all generated positions when None."""
    if record.bits is None:
        if positions_BxN is None:
            raise ValueError("an untruncated record has no shape; pass positions_BxN")
        return jnp.ones((*positions_BxN.shape, record.vocab_size), bool)
    bits = record.bits
    if positions_BxN is not None:
        bits = jnp.take_along_axis(bits, positions_BxN[..., None].astype(jnp.int32), axis=1)
    return unpack(bits, record.vocab_size)
