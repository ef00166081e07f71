"""Which candidate positions a step commits: a score per position (per remasking rule and semantics), then the
best `count` of them (ties: lower position first; the references leave that order unspecified).

Scores: random remasking takes uniforms; entropy remasking the negated entropy of the proposal's distribution;
low_confidence the log-prob of the proposed token under the scaled truncated distribution with record=True
(AGRPO), and with record=False LLaDA's softmax probability of it under the un-tempered, untruncated logits.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dllm_rl.models.logits import gather_tokens
from dllm_rl.sampling.block_logits import set_neg_inf
from dllm_rl.sampling.proposal import Proposal
from dllm_rl.sampling.schedule import SamplerConfig


def needs_stats(sampler: SamplerConfig) -> bool:
    """Whether the step needs the proposal's log-prob and entropy (records, or entropy remasking)."""
    return sampler.record or sampler.remasking == "entropy"


def llada_confidence(logits_BxNxV: jax.Array, x0_BxN: jax.Array, sampler: SamplerConfig) -> jax.Array:
    """LLaDA's low_confidence score: softmax probability of x0 under the un-tempered logits.

    confidence_eos_eot_inf reproduces the reference's chained assignment: at temperature 0 both the EOS and the
    EoT logits become -inf before the softmax, at temperature > 0 only the EoT logit (x0 is unchanged).
    """
    if sampler.confidence_eos_eot_inf:
        ids = (sampler.eos_logit_id, sampler.eot_logit_id) if sampler.temperature == 0 else (sampler.eot_logit_id,)
        logits_BxNxV = set_neg_inf(logits_BxNxV, *ids)
    return gather_tokens(jax.nn.softmax(logits_BxNxV, axis=-1), x0_BxN)


def position_scores(sampler: SamplerConfig, logits_BxNxV: jax.Array, prop: Proposal,
                    uniform_BxN: jax.Array | None) -> jax.Array:
    """float32 [B, N]: higher commits first."""
    if sampler.remasking == "random":
        return uniform_BxN
    if sampler.remasking == "entropy":
        return -prop.ent_BxN
    if sampler.record:
        return prop.logp_BxN
    return llada_confidence(logits_BxNxV, prop.x0_BxN, sampler)


def descending_rank(score_BxN: jax.Array) -> jax.Array:
    """Rank of each entry in its row by descending score (0 = best; ties: lower index first)."""
    iota = jax.lax.broadcasted_iota(jnp.int32, score_BxN.shape, 1)
    _, order = jax.lax.sort((-score_BxN, iota), dimension=1, num_keys=1, is_stable=True)
    _, rank = jax.lax.sort((order, iota), dimension=1, num_keys=1)
    return rank


def select(cand_BxN: jax.Array, score_BxN: jax.Array, count_B: jax.Array, threshold: float | None) -> jax.Array:
    """bool [B, N]: the count_B best-scored candidates; with a threshold also every candidate scoring above it
    (rows with count_B 0 select nothing)."""
    rank_BxN = descending_rank(jnp.where(cand_BxN, score_BxN, -jnp.inf))
    sel_BxN = cand_BxN & (rank_BxN < count_B[:, None])
    if threshold is not None:
        sel_BxN = sel_BxN | (cand_BxN & (score_BxN > threshold) & (count_B > 0)[:, None])
    return sel_BxN
