"""The sampler's randomness per step: a key folded in per step, or, to replay a reference run in tests, stored
uniforms (`draws`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dllm_rl.sampling.gumbel import gumbel_from_uniforms
from dllm_rl.sampling.schedule import SamplerConfig, SamplerInputError


def prepare_draws(sampler: SamplerConfig, draws: dict, prompt_shape) -> dict:
    """Checks the replay uniforms {"gumbel": u [M, B, T, V], "score": u [M, B, T]} and turns them into float32
    Gumbel noise {"gumbel_MxBxTxV"} / scores {"score_MxBxT"}."""
    b, p = prompt_shape
    t = p + sampler.gen_length
    out = {}
    if sampler.temperature > 0:
        if "gumbel" not in draws:
            raise SamplerInputError("draws needs 'gumbel' uniforms when temperature > 0")
        u = np.asarray(draws["gumbel"])
        if u.shape[:3] != (sampler.steps, b, t):
            raise SamplerInputError(f"draws['gumbel'] shape {u.shape} != ({sampler.steps}, {b}, {t}, V)")
        out["gumbel_MxBxTxV"] = jnp.asarray(gumbel_from_uniforms(u))
    if sampler.remasking == "random":
        if "score" not in draws:
            raise SamplerInputError("draws needs 'score' uniforms when remasking='random'")
        u = np.asarray(draws["score"], np.float32)
        if u.shape != (sampler.steps, b, t):
            raise SamplerInputError(f"draws['score'] shape {u.shape} != ({sampler.steps}, {b}, {t})")
        out["score_MxBxT"] = jnp.asarray(u)
    return out


def step_draws(sampler: SamplerConfig, rng, draws: dict | None, step, start, b: int, n: int, vocab_size: int):
    """(gumbel source, score uniforms [B, N] or None) of step `step` at positions start..start+n-1.

    The gumbel source is a key (proposal.py draws the noise it needs) or replayed noise [B, N, V]; None when
    nothing is random."""
    if draws is not None:
        gumbel = score_BxN = None
        if "gumbel_MxBxTxV" in draws:
            gumbel = jax.lax.dynamic_slice(draws["gumbel_MxBxTxV"], (step, 0, start, 0), (1, b, n, vocab_size))[0]
        if "score_MxBxT" in draws:
            score_BxN = jax.lax.dynamic_slice(draws["score_MxBxT"], (step, 0, start), (1, b, n))[0]
        return gumbel, score_BxN
    if rng is None:
        return None, None
    k_gumbel, k_score = jax.random.split(jax.random.fold_in(rng, step))
    score_BxN = jax.random.uniform(k_score, (b, n), jnp.float32) if sampler.remasking == "random" else None
    return k_gumbel, score_BxN
