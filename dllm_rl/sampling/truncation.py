"""Temperature, top-k/top-p truncation with the AGRPO reference semantics, and its compact record.

Semantics (the AGRPO reference's `gumbel_sample`, docs/algorithm.md): logits are divided by the temperature; top-k
removes logits strictly below the k-th largest (so ties at the k-th value are all kept); top-p then sorts the
remaining logits in descending order and removes tokens whose cumulative softmax mass exceeds p, always keeping
the first. At temperature 0 nothing is scaled or truncated (argmax sampling). The sampler itself works on the
kept set as a short candidate list (candidates.py); `keep_mask` is its dense form.

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

from dllm_rl.models.logits import gather_tokens
from dllm_rl.sampling import candidates as cand


def scale_logits(logits: jax.Array, temperature: float) -> jax.Array:
    """float32 logits divided by the temperature (unchanged at temperature 0, as the reference)."""
    logits = logits.astype(jnp.float32)
    return logits / jnp.float32(temperature) if temperature > 0 else logits


def keep_mask(scaled_BxNxV: jax.Array, top_k: int | None, top_p: float) -> jax.Array:
    """bool [B, N, V]: tokens kept by top-k then top-p on temperature-scaled logits (reference semantics).

    top_k >= V keeps everything. Computed on the shortest exact candidate list (candidates.py)."""
    v = scaled_BxNxV.shape[-1]
    if (top_k is None or top_k >= v) and top_p >= 1.0:
        return jnp.ones(scaled_BxNxV.shape, bool)
    return cand.with_candidates(scaled_BxNxV, top_k, top_p, lambda c: cand.dense_keep(c, v))


def truncated_log_softmax(scaled_BxNxV: jax.Array, keep_BxNxV: jax.Array) -> jax.Array:
    """log-probs of the truncated, renormalised distribution; -inf outside the kept set."""
    return jax.nn.log_softmax(jnp.where(keep_BxNxV, scaled_BxNxV, -jnp.inf), axis=-1)


def token_log_probs(scaled_BxNxV: jax.Array, keep_BxNxV: jax.Array, tokens_BxN: jax.Array) -> jax.Array:
    """log-prob [B, N] of `tokens` under the truncated distribution."""
    return gather_tokens(truncated_log_softmax(scaled_BxNxV, keep_BxNxV), tokens_BxN)


def logp_and_entropy(scaled_BxNxV: jax.Array, keep_BxNxV: jax.Array,
                     tokens_BxN: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log-prob of `tokens`, entropy) [B, N] of the truncated distribution (float32)."""
    logp_BxNxV = truncated_log_softmax(scaled_BxNxV, keep_BxNxV)
    entropy_BxN = -jnp.sum(jnp.where(keep_BxNxV, jnp.exp(logp_BxNxV) * logp_BxNxV, 0.0), axis=-1)
    return gather_tokens(logp_BxNxV, tokens_BxN), entropy_BxN


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


def unpack(bits_BxNxVb: jax.Array, vocab_size: int) -> jax.Array:
    """uint8 [B, N, Vb] -> bool [B, N, vocab_size] (inverse of `pack`)."""
    return jnp.unpackbits(bits_BxNxVb, axis=-1, count=vocab_size, bitorder="little").astype(bool)


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
