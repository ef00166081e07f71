"""The sampler's model calls: float32 logits at the current block, exact or from the block-start K/V cache.

With classifier-free guidance (cfg_scale > 0) the model runs 2B rows, the sequences then their unconditional
copies (prompt fully masked), and `guide` combines them into B rows. Here `B` of a model input counts those
unconditional rows too (docs/shapes.md).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from dllm_rl import models
from dllm_rl.models import llada
from dllm_rl.sampling.schedule import SamplerConfig


@dataclasses.dataclass(frozen=True)
class Model:
    """What the forwards of one generate call need: model, params and the fixed parts of its input."""

    config: llada.LLaDAConfig
    params: Any
    sampler: SamplerConfig
    prompt_index_BxT: jax.Array   # bool, True at the prompt's non-mask tokens
    attn_BxT: jax.Array | None    # int32 key padding mask, or None
    compute_dtype: Any = None
    attention_impl: str | None = None

    @property
    def kwargs(self) -> dict:
        return dict(compute_dtype=self.compute_dtype, attention_impl=self.attention_impl)


def model_inputs(model: Model, x_BxT: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """(ids, key mask or None) the model runs on: x, and with cfg_scale > 0 below it the unconditional copy."""
    if model.sampler.cfg_scale > 0:
        un_x_BxT = jnp.where(model.prompt_index_BxT, model.config.mask_token_id, x_BxT)
        am = None if model.attn_BxT is None else jnp.concatenate([model.attn_BxT, model.attn_BxT])
        return jnp.concatenate([x_BxT, un_x_BxT]), am
    return x_BxT, model.attn_BxT


def set_neg_inf(logits_BxNxV: jax.Array, *token_ids: int) -> jax.Array:
    """-inf at the given vocabulary ids (ids outside the vocabulary are ignored)."""
    iota = jax.lax.broadcasted_iota(jnp.int32, logits_BxNxV.shape, logits_BxNxV.ndim - 1)
    hit = functools.reduce(jnp.logical_or, [iota == i for i in token_ids])
    return jnp.where(hit, -jnp.inf, logits_BxNxV)


def guide(sampler: SamplerConfig, logits_BxNxV: jax.Array) -> jax.Array:
    """float32 logits of the sequences: classifier-free guided when cfg_scale > 0 (rows [:B] conditional,
    [B:] unconditional), EOS at -inf with logits_eos_inf."""
    logits = logits_BxNxV.astype(jnp.float32)
    if sampler.cfg_scale > 0:
        b = logits.shape[0] // 2
        cond_BxNxV, uncond_BxNxV = logits[:b], logits[b:]
        logits = uncond_BxNxV + (sampler.cfg_scale + 1.0) * (cond_BxNxV - uncond_BxNxV)
    if sampler.logits_eos_inf:
        logits = set_neg_inf(logits, sampler.eos_logit_id)
    return logits


def exact_logits(model: Model, x_BxT: jax.Array, start, n: int) -> jax.Array:
    """float32 logits [B, n, V] at positions start..start+n-1 from a full-sequence forward."""
    ids_BxT, am_BxT = model_inputs(model, x_BxT)
    pos_BxN = jnp.broadcast_to(start + jnp.arange(n), (ids_BxT.shape[0], n))
    return guide(model.sampler, llada.forward_at(model.config, model.params, ids_BxT, pos_BxN, am_BxT,
                                                 **model.kwargs))


def exact_hidden(model: Model, x_BxT: jax.Array) -> jax.Array:
    """Final hidden states [B, T, D] of a full-sequence forward (with cfg_scale > 0: 2B rows), for
    `logits_from_hidden` to read a window at a time."""
    ids_BxT, am_BxT = model_inputs(model, x_BxT)
    return llada.hidden_states(model.config, model.params, ids_BxT, am_BxT, **model.kwargs)


def logits_from_hidden(model: Model, h_BxTxD: jax.Array, start, n: int) -> jax.Array:
    """float32 aligned logits [B, n, V] at positions start..start+n-1 of `exact_hidden`'s states (any family: a
    shifted one reads the states one position earlier, a tied head the embedding)."""
    pos_BxN = jnp.broadcast_to(start + jnp.arange(n), (h_BxTxD.shape[0], n))
    return guide(model.sampler, models.logits_at(model.config, model.params, h_BxTxD, pos_BxN))


def block_cache(model: Model, x_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Fast mode, at a block start: every layer's keys/values [Ly, B, T, Hk, Hd] of every position, from one
    full forward (not a prefix-only pass: prefix K/V depend on the tokens right of them, and the suffix K/V are
    read too)."""
    ids_BxT, am_BxT = model_inputs(model, x_BxT)
    _, k, v = llada.hidden_states_and_kv(model.config, model.params, ids_BxT, am_BxT, **model.kwargs)
    return k, v


def window_logits(model: Model, x_BxT: jax.Array, cache_k, cache_v, start) -> jax.Array:
    """Fast mode: float32 logits [B, bl, V] of the block at `start`, running the block's tokens only; they attend
    to the cached K/V of every position outside the block (key padding still applied) and to their own."""
    ids_BxT, am_BxT = model_inputs(model, x_BxT)
    rows, t = ids_BxT.shape
    bl = model.sampler.block_length
    pos_T = jnp.arange(t)
    outside_T = (pos_T < start) | (pos_T >= start + bl)
    cache_mask_BxT = outside_T[None] if am_BxT is None else (am_BxT != 0) & outside_T[None]
    window_BxN = jax.lax.dynamic_slice(ids_BxT, (0, start), (rows, bl))
    pos_BxN = jnp.broadcast_to(jnp.arange(bl), (rows, bl))
    return guide(model.sampler, llada.forward_window_at(model.config, model.params, window_BxN, start, cache_k,
                                                        cache_v, pos_BxN, cache_mask_BxT, **model.kwargs))
