"""The sampler's randomness per step: a key folded in per step, or, to replay a reference run in tests, stored
uniforms (`draws`).

Row keys (`SamplerConfig.row_keys`): rng holds one key per row, and the draws of step s at sequence position t of
a row come from that row's key folded with s, then t. A row's randomness then does not depend on the batch it is
sampled in, nor on which path (block, straggler window, fast window) a step takes. `row_keys` gives callers one
key per row from what identifies each row (a prompt's index, its generation number).
"""
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
    if sampler.samples_positions:
        if "score" not in draws:
            raise SamplerInputError("draws needs 'score' uniforms when remasking is 'random' or 'origin' or "
                                    "alg_temp > 0")
        u = np.asarray(draws["score"], np.float32)
        if u.shape != (sampler.steps, b, t):
            raise SamplerInputError(f"draws['score'] shape {u.shape} != ({sampler.steps}, {b}, {t})")
        out["score_MxBxT"] = jnp.asarray(u)
    return out


def step_draws(sampler: SamplerConfig, rng, draws: dict | None, step, start, b: int, n: int, vocab_size: int):
    """(gumbel source, score uniforms [B, N] or None) of step `step` at positions start..start+n-1.

    The gumbel source is a key (proposal.py draws the noise it needs), keys [B, N] (row keys) or replayed noise
    [B, N, V]; None when nothing is random."""
    if draws is not None:
        gumbel = score_BxN = None
        if "gumbel_MxBxTxV" in draws:
            gumbel = jax.lax.dynamic_slice(draws["gumbel_MxBxTxV"], (step, 0, start, 0), (1, b, n, vocab_size))[0]
        if "score_MxBxT" in draws:
            score_BxN = jax.lax.dynamic_slice(draws["score_MxBxT"], (step, 0, start), (1, b, n))[0]
        return gumbel, score_BxN
    if rng is None:
        return None, None
    if sampler.row_keys:
        k_gumbel_BxN, k_score_BxN = position_keys(rng, step, start, n)
        score_BxN = (jax.vmap(jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32)))(k_score_BxN)
                     if sampler.samples_positions else None)
        return k_gumbel_BxN, score_BxN
    k_gumbel, k_score = jax.random.split(jax.random.fold_in(rng, step))
    score_BxN = jax.random.uniform(k_score, (b, n), jnp.float32) if sampler.samples_positions else None
    return k_gumbel, score_BxN


def position_keys(rng_B: jax.Array, step, start, n: int) -> tuple[jax.Array, jax.Array]:
    """Row keys: (Gumbel keys [B, N], score keys [B, N]) of step `step` at positions start..start+n-1, each from
    its row's key folded with the step, then the position."""
    pos_N = start + jnp.arange(n)

    def row(key):
        step_key = jax.random.fold_in(key, step)
        pair_Nx2 = jax.vmap(lambda t: jax.random.split(jax.random.fold_in(step_key, t)))(pos_N)
        return pair_Nx2[:, 0], pair_Nx2[:, 1]

    return jax.vmap(row)(rng_B)


def check_row_keys(rng, b: int) -> None:
    """Raises SamplerInputError unless `rng` is one key per row: typed keys [B] or raw uint32 keys [B, 2]."""
    typed = jax.dtypes.issubdtype(getattr(rng, "dtype", None), jax.dtypes.prng_key)
    want = (b,) if typed else (b, 2)
    if tuple(np.shape(rng)) != want:
        raise SamplerInputError(f"row_keys=True samples every row from its own key: rng must be {b} keys, shape "
                                f"[{b}] (typed, e.g. draws.row_keys(...)) or [{b}, 2] (raw), got shape "
                                f"{tuple(np.shape(rng))}")


def row_keys(key: jax.Array, prompt_index_N, group: int = 1) -> jax.Array:
    """Typed keys [N * group] for `SamplerConfig.row_keys`, rows as the sampler's batch lays them out (each prompt
    repeated `group` times in consecutive rows): row (i, g) gets fold_in(fold_in(key, prompt_index[i]), g), so a
    row's key depends on which prompt and generation it is, not on where it sits in the batch."""
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    index_N = jnp.asarray(prompt_index_N, jnp.uint32)
    keys_NxG = jax.vmap(lambda i: jax.vmap(lambda g: jax.random.fold_in(jax.random.fold_in(key, i), g))(
        jnp.arange(group, dtype=jnp.uint32)))(index_N)
    return keys_NxG.reshape(-1)
