"""One denoising step's token proposal per position: the drawn token, its log-prob/entropy, its kept set.

Tokens are drawn by Gumbel-max (gumbel.py) from softmax(logits / T) restricted to the truncation's kept set,
which arrives as a candidate list (candidates.py): noise, argmax, log-prob, entropy and the packed record all
run over the C candidates, not the vocabulary. Temperature 0 is greedy over the raw logits.

Noise: replayed noise [B, N, V] (tests) is read at the candidates' token ids, so every draw equals the
reference's; noise from a key is drawn per candidate slot, [B, N, C] (i.i.d. Gumbel, independent of the
logits, so the sampled distribution is exact; without truncation C = V in vocabulary order, the same draws as a
per-token draw). With row keys (`SamplerConfig.row_keys`) the source is a key per row and position [B, N],
each drawing its position's C values, so a row's noise depends on nothing else in the batch. The k-candidate
list and the full-vocabulary fallback of top-k ties (candidates.py, chosen for the whole batch) then give a
position's top k slots the same noise but for its last bits (jax's high-range Gumbel draws each slot's leading
uniform from the key and the slot alone; only the low-order one, worth 2^-23 of it, moves with C), and the
fallback's log-probs may differ from the list's in rounding.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from dllm_rl.models.logits import gather_tokens
from dllm_rl.sampling import candidates as cand
from dllm_rl.sampling import truncation as trunc
from dllm_rl.sampling.gumbel import gumbel_noise
from dllm_rl.sampling.schedule import SamplerConfig


class Proposal(NamedTuple):
    """x0_BxN int32 proposed tokens; logp_BxN / ent_BxN float32 log-prob and entropy under the scaled truncated
    distribution (None unless asked for); bits_BxNxVb uint8 packed kept sets (None unless recorded);
    margin_BxN float32 top-1 minus top-2 probability of that distribution (None unless asked for)."""

    x0_BxN: jax.Array
    logp_BxN: jax.Array | None
    ent_BxN: jax.Array | None
    bits_BxNxVb: jax.Array | None
    margin_BxN: jax.Array | None = None


def top2_margin(cands: cand.Candidates) -> jax.Array:
    """float32 [B, N]: the largest minus the second largest probability of softmax over the kept candidates (0 for
    the second when only one is kept), Dream's topk_margin confidence."""
    kept_BxNxC = jnp.where(cands.keep_BxNxC, cands.values_BxNxC, -jnp.inf)
    lse_BxNx1 = jax.nn.logsumexp(kept_BxNxC, axis=-1, keepdims=True)
    first_BxN = jnp.argmax(kept_BxNxC, axis=-1)
    slot_BxNxC = jax.lax.broadcasted_iota(jnp.int32, kept_BxNxC.shape, kept_BxNxC.ndim - 1)
    v1_BxN = jnp.max(kept_BxNxC, axis=-1)
    v2_BxN = jnp.max(jnp.where(slot_BxNxC == first_BxN[..., None], -jnp.inf, kept_BxNxC), axis=-1)
    return jnp.exp(v1_BxN - lse_BxNx1[..., 0]) - jnp.exp(v2_BxN - lse_BxNx1[..., 0])


def candidate_gumbel(source, cands: cand.Candidates, by_id: bool) -> jax.Array:
    """float32 Gumbel noise [B, N, C]: a key draws it per slot, keys [B, N] (row keys) each their own position's;
    replayed noise [B, N, V] is read at the ids (`by_id`: the candidates are the whole vocabulary in id order, so
    it is used as is)."""
    if jax.dtypes.issubdtype(source.dtype, jax.dtypes.prng_key):
        if source.ndim == 2:
            num = cands.ids_BxNxC.shape[-1]
            return jax.vmap(jax.vmap(lambda key: gumbel_noise(key, (num,))))(source)
        return gumbel_noise(source, cands.ids_BxNxC.shape)
    return source if by_id else jnp.take_along_axis(source, cands.ids_BxNxC, axis=-1)


def best_slot(cands: cand.Candidates, gumbel_BxNxC: jax.Array | None, by_id: bool) -> jax.Array:
    """int32 [B, N]: slot of the kept candidate with the largest value (+ noise); exact ties go to the lowest
    token id, as an argmax over the vocabulary would."""
    score_BxNxC = cands.values_BxNxC if gumbel_BxNxC is None else cands.values_BxNxC + gumbel_BxNxC
    score_BxNxC = jnp.where(cands.keep_BxNxC, score_BxNxC, -jnp.inf)
    if by_id:
        return jnp.argmax(score_BxNxC, axis=-1).astype(jnp.int32)
    best_BxNx1 = jnp.max(score_BxNxC, axis=-1, keepdims=True)
    big = jnp.iinfo(jnp.int32).max
    tied_ids_BxNxC = jnp.where(score_BxNxC == best_BxNx1, cands.ids_BxNxC, big)
    return jnp.argmin(tied_ids_BxNxC, axis=-1).astype(jnp.int32)


def propose_from(cands: cand.Candidates, sampler: SamplerConfig, gumbel_source, with_stats: bool, by_id: bool,
                 vocab_size: int) -> Proposal:
    """The proposal on one candidate list (its outputs do not depend on C)."""
    gumbel_BxNxC = None if sampler.temperature == 0 else candidate_gumbel(gumbel_source, cands, by_id)
    slot_BxN = best_slot(cands, gumbel_BxNxC, by_id)
    x0_BxN = gather_tokens(cands.ids_BxNxC, slot_BxN)
    logp_BxN = ent_BxN = bits_BxNxVb = margin_BxN = None
    if with_stats:  # the candidate list is the kept distribution's support: statistics over C entries
        logp_BxN, ent_BxN = trunc.logp_and_entropy(cands.values_BxNxC, cands.keep_BxNxC, slot_BxN)
    if sampler.record and sampler.truncates:
        bits_BxNxVb = cand.packed_keep(cands, vocab_size)
    if sampler.remasking == "topk_margin":
        margin_BxN = top2_margin(cands)
    return Proposal(x0_BxN, logp_BxN, ent_BxN, bits_BxNxVb, margin_BxN)


def propose(logits_BxNxV: jax.Array, sampler: SamplerConfig, gumbel_source, with_stats: bool) -> Proposal:
    """The step's proposal from float32 logits [B, N, V]; `gumbel_source` is a key, keys [B, N] or replayed noise
    [B, N, V] (unused at temperature 0); `with_stats` asks for log-prob and entropy."""
    scaled_BxNxV = trunc.scale_logits(logits_BxNxV, sampler.temperature)
    vocab_size = logits_BxNxV.shape[-1]
    if not sampler.truncates:
        return propose_from(cand.all_tokens(scaled_BxNxV), sampler, gumbel_source, with_stats, True, vocab_size)
    return cand.with_candidates(
        scaled_BxNxV, sampler.top_k, sampler.top_p,
        lambda c: propose_from(c, sampler, gumbel_source, with_stats, False, vocab_size),
        dream=sampler.truncation == "dream")
