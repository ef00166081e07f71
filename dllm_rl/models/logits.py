"""Reading model outputs at chosen tokens: the one gather and the one "log-softmax, then gather" of the package.

The losses (`rl.objective`), the sampler's proposal and scoring, and the truncated distribution
(`sampling.truncation`) all need a [B, N, V] array read at one token per position; they share these.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def gather_tokens(x_BxNxV: jax.Array, ids_BxN: jax.Array) -> jax.Array:
    """x [B, N] at each position's token id: x_BxNxV[b, n, ids_BxN[b, n]]."""
    return jnp.take_along_axis(x_BxNxV, ids_BxN[..., None].astype(jnp.int32), axis=-1)[..., 0]


def token_log_probs(logits_BxNxV: jax.Array, ids_BxN: jax.Array) -> jax.Array:
    """float32 log softmax(logits)[ids] [B, N]: the log-prob of each position's token.

    Logits set to -inf (tokens outside a truncation set) get probability zero; the rest are renormalised.
    """
    return gather_tokens(jax.nn.log_softmax(logits_BxNxV.astype(jnp.float32), axis=-1), ids_BxN)
