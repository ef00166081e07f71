"""Which candidate positions a step commits: a score per position (per remasking rule and semantics), then the
best `count` of them (ties: lower position first; the references leave that order unspecified).

Scores: random remasking takes uniforms; entropy remasking the negated entropy of the proposal's distribution;
low_confidence the log-prob of the proposed token under the scaled truncated distribution with record=True
(AGRPO), and with record=False LLaDA's softmax probability of it under the un-tempered, untruncated logits.
Dream's rules (schedule.SamplerConfig): maskgit_plus the probability of the proposed token under the scaled
distribution, topk_margin its top-1 minus top-2 probability, origin 1 - s/t minus the position's uniform (it
commits where that is > 0, i.e. with probability 1 - s/t); with alg_temp > 0 a score becomes
score / alg_temp + Gumbel noise, and the best `count` of those are a draw without replacement from
softmax(score / alg_temp) (the Gumbel-top-k trick).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dllm_rl.models.logits import gather_tokens
from dllm_rl.sampling.block_logits import set_neg_inf
from dllm_rl.sampling.proposal import Proposal
from dllm_rl.sampling.schedule import SamplerConfig, dream_keep_fraction


def needs_stats(sampler: SamplerConfig) -> bool:
    """Whether the step needs the proposal's log-prob and entropy (records, or a rule scoring by them)."""
    return sampler.record or sampler.remasking in ("entropy", "maskgit_plus", "topk_margin")


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
                    uniform_BxN: jax.Array | None, step) -> jax.Array:
    """float32 [B, N]: higher commits first (origin: commits where > 0)."""
    if sampler.remasking == "random":
        return uniform_BxN
    if sampler.remasking == "origin":
        return jnp.asarray(dream_keep_fraction(sampler.steps, sampler.eps))[step] - uniform_BxN
    if sampler.remasking == "entropy":
        score_BxN = -prop.ent_BxN
    elif sampler.remasking == "maskgit_plus":
        score_BxN = jnp.exp(prop.logp_BxN)
    elif sampler.remasking == "topk_margin":
        score_BxN = prop.margin_BxN
    elif sampler.record:
        score_BxN = prop.logp_BxN
    else:
        score_BxN = llada_confidence(logits_BxNxV, prop.x0_BxN, sampler)
    if sampler.alg_temp:
        score_BxN = score_BxN / jnp.float32(sampler.alg_temp) - jnp.log(-jnp.log(uniform_BxN))
    return score_BxN


def descending_rank(score_BxN: jax.Array) -> jax.Array:
    """Rank of each entry in its row by descending score (0 = best; ties: lower index first)."""
    iota = jax.lax.broadcasted_iota(jnp.int32, score_BxN.shape, 1)
    _, order = jax.lax.sort((-score_BxN, iota), dimension=1, num_keys=1, is_stable=True)
    _, rank = jax.lax.sort((order, iota), dimension=1, num_keys=1)
    return rank


def choose(sampler: SamplerConfig, cand_BxN: jax.Array, score_BxN: jax.Array, count_B: jax.Array) -> jax.Array:
    """bool [B, N]: the candidates a step commits (origin: those scoring > 0; otherwise `select`)."""
    if sampler.remasking == "origin":
        return cand_BxN & (score_BxN > 0)
    return select(cand_BxN, score_BxN, count_B, sampler.parallel_threshold)


def select(cand_BxN: jax.Array, score_BxN: jax.Array, count_B: jax.Array, threshold: float | None) -> jax.Array:
    """bool [B, N]: the count_B best-scored candidates; with a threshold also every candidate scoring above it
    (rows with count_B 0 select nothing)."""
    rank_BxN = descending_rank(jnp.where(cand_BxN, score_BxN, -jnp.inf))
    sel_BxN = cand_BxN & (rank_BxN < count_B[:, None])
    if threshold is not None:
        sel_BxN = sel_BxN | (cand_BxN & (score_BxN > threshold) & (count_B > 0)[:, None])
    return sel_BxN
