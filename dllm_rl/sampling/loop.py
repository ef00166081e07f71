"""The denoising loop: its state, one step (logits -> proposal -> scores -> commit), block starts with early
stop, and the exact and fast (block-start K/V cache) loop bodies. Semantics: generate.py's docstring."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dllm_rl.sampling import block_logits, scoring
from dllm_rl.sampling.draws import step_draws
from dllm_rl.sampling.proposal import Proposal, propose
from dllm_rl.sampling.schedule import SamplerConfig, dream_transfer_count, transfer_count


class State(NamedTuple):
    """Loop carry; B rows, T = P + L positions."""

    step: jax.Array        # scalar int32, global step about to run
    x_BxT: jax.Array       # int32 sequence
    unmask_BxT: jax.Array  # int32 step of the last commit, -1 if none
    masked_B: jax.Array    # int32 open positions of the current block at its start (schedule input)
    done_B: jax.Array      # bool, finished rows (early stop)
    logp_BxL: Any          # float32 records (None unless record)
    ent_BxL: Any
    bits_BxLxVb: Any       # uint8 packed truncation sets (None unless record and truncating)
    block: Any = None      # fast mode: scalar int32 current block (steps per block vary with parallel_threshold)
    block_step: Any = None  # fast mode: scalar int32 steps run in the current block
    cache_k: Any = None    # fast mode: [Ly, B, T, Hk, Hd] keys / values of the sequence at the block start
    cache_v: Any = None    #   (with cfg: 2B rows, conditional then unconditional)


@dataclasses.dataclass(frozen=True)
class Run:
    """What stays fixed through one generate call."""

    model: block_logits.Model
    rng: jax.Array | None
    draws: dict | None
    prompt_len: int

    @property
    def sampler(self) -> SamplerConfig:
        return self.model.sampler


def is_open(run: Run, s: State) -> jax.Array:
    """bool [B, T]: positions still to be generated (AGRPO: never committed; LLaDA: holding the mask id)."""
    if run.sampler.record:
        return (s.unmask_BxT < 0) & (jnp.arange(s.x_BxT.shape[1]) >= run.prompt_len)[None]
    return s.x_BxT == run.model.config.mask_token_id


def update_where(dst_BxL, sel_BxN, new_BxN, offset):
    """dst with dst[:, offset + j] = new[:, j] where sel[:, j] (trailing dims ride along); updates in place."""
    n = sel_BxN.shape[1]
    start = (0, offset) + (0,) * (dst_BxL.ndim - 2)
    old = jax.lax.dynamic_slice(dst_BxL, start, (dst_BxL.shape[0], n) + dst_BxL.shape[2:])
    sel = sel_BxN.reshape(sel_BxN.shape + (1,) * (dst_BxL.ndim - 2))
    return jax.lax.dynamic_update_slice(dst_BxL, jnp.where(sel, new_BxN.astype(dst_BxL.dtype), old), start)


def commit(run: Run, s: State, prop: Proposal, sel_BxN: jax.Array, start) -> State:
    """Writes the selected proposals at start.. into the sequence, unmask steps and records."""
    s = s._replace(x_BxT=update_where(s.x_BxT, sel_BxN, prop.x0_BxN, start),
                   unmask_BxT=update_where(s.unmask_BxT, sel_BxN, jnp.broadcast_to(s.step, sel_BxN.shape), start))
    if run.sampler.record:  # record mode always runs on the block path: start >= P
        off = start - run.prompt_len
        s = s._replace(logp_BxL=update_where(s.logp_BxL, sel_BxN, prop.logp_BxN, off),
                       ent_BxL=update_where(s.ent_BxL, sel_BxN, prop.ent_BxN, off))
        if prop.bits_BxNxVb is not None:
            s = s._replace(bits_BxLxVb=update_where(s.bits_BxLxVb, sel_BxN, prop.bits_BxNxVb, off))
    return s


def denoise(run: Run, s: State, logits_BxNxV: jax.Array, start, block_end, count_B) -> State:
    """One step given its float32 logits at start..start+N-1: propose, score, commit the best open candidates
    left of block_end (count_B per row; with parallel_threshold also those above it)."""
    sampler = run.sampler
    b, n, vocab = logits_BxNxV.shape
    gumbel_source, uniform_BxN = step_draws(sampler, run.rng, run.draws, s.step, start, b, n, vocab)
    prop = propose(logits_BxNxV, sampler, gumbel_source, scoring.needs_stats(sampler))
    score_BxN = scoring.position_scores(sampler, logits_BxNxV, prop, uniform_BxN, s.step)
    return commit_best(run, s, prop, score_BxN, start, block_end, count_B)


def commit_best(run: Run, s: State, prop: Proposal, score_BxN: jax.Array, start, block_end, count_B) -> State:
    """Commits, of the proposals at start..start+N-1, the best-scored open candidates left of block_end (count_B
    per row; with parallel_threshold also those above it)."""
    b, n = score_BxN.shape
    open_BxN = jax.lax.dynamic_slice(is_open(run, s), (0, start), (b, n))
    cand_BxN = open_BxN & (start + jnp.arange(n) < block_end)[None]
    sel_BxN = scoring.choose(run.sampler, cand_BxN, score_BxN, count_B)
    return commit(run, s, prop, sel_BxN, start)


def exact_denoise(run: Run, s: State, start, n: int, block_end, count_B) -> State:
    """`denoise` on logits of a full-sequence forward."""
    return denoise(run, s, block_logits.exact_logits(run.model, s.x_BxT, start, n), start, block_end, count_B)


def straggler_denoise(run: Run, s: State, block_end, count_B) -> State:
    """`denoise` over every position (a straggler step; never recorded), with the logits of one block-length
    window at a time: proposals and scores of all T positions are gathered window by window, then one selection
    commits, as a step on full-sequence logits would, but only a [B, bl, V] slice of logits is ever live.

    Replayed draws, row keys' per-position keys and the scores' uniforms are read per position as in `denoise`;
    Gumbel noise from one key is drawn per window (key folded with the window index)."""
    sampler = run.sampler
    b, t = s.x_BxT.shape
    n = min(sampler.block_length, t)
    vocab = run.model.config.embedding_size
    gumbel_source, uniform_BxT = step_draws(sampler, run.rng, run.draws, s.step, 0, b, t, vocab)
    h_BxTxD = block_logits.exact_hidden(run.model, s.x_BxT)
    one_key = (gumbel_source is not None and jax.dtypes.issubdtype(gumbel_source.dtype, jax.dtypes.prng_key)
               and gumbel_source.ndim == 0)

    def window(carry, w):
        x0_BxT, score_BxT = carry
        start = jnp.minimum(w * n, t - n)  # the last window ends at T (it may overlap the one before)
        logits_BxNxV = block_logits.logits_from_hidden(run.model, h_BxTxD, start, n)
        if one_key:
            source = jax.random.fold_in(gumbel_source, w)
        elif gumbel_source is not None:  # replayed noise [B, T, V] or per-position keys [B, T]
            source = jax.lax.dynamic_slice_in_dim(gumbel_source, start, n, axis=1)
        else:
            source = None
        prop = propose(logits_BxNxV, sampler, source, scoring.needs_stats(sampler))
        uniform_BxN = None if uniform_BxT is None else jax.lax.dynamic_slice_in_dim(uniform_BxT, start, n, axis=1)
        score_BxN = scoring.position_scores(sampler, logits_BxNxV, prop, uniform_BxN, s.step)
        return (jax.lax.dynamic_update_slice_in_dim(x0_BxT, prop.x0_BxN, start, axis=1),
                jax.lax.dynamic_update_slice_in_dim(score_BxT, score_BxN.astype(jnp.float32), start, axis=1)), None

    init = (jnp.zeros((b, t), jnp.int32), jnp.zeros((b, t), jnp.float32))
    (x0_BxT, score_BxT), _ = jax.lax.scan(window, init, jnp.arange(-(-t // n)))
    return commit_best(run, s, Proposal(x0_BxT, None, None, None), score_BxT, 0, block_end, count_B)


def begin_block(run: Run, s: State, block, at_boundary) -> State:
    """At a block start: early-stop rows whose previous block is all EOS (they get EOS everywhere right of it,
    unmask step = this step); count the block's open positions."""
    b, t = s.x_BxT.shape
    bl = run.sampler.block_length
    start = run.prompt_len + block * bl
    if run.sampler.early_stop:
        eos_id = run.model.config.eos_token_id
        prev_BxN = jax.lax.dynamic_slice(s.x_BxT, (0, jnp.maximum(start - bl, 0)), (b, bl))
        stop_B = at_boundary & (block > 0) & ~s.done_B & jnp.all(prev_BxN == eos_id, axis=1)
        fill_BxT = stop_B[:, None] & (jnp.arange(t) >= start)[None]
        s = s._replace(x_BxT=jnp.where(fill_BxT, eos_id, s.x_BxT),
                       unmask_BxT=jnp.where(fill_BxT, s.step, s.unmask_BxT), done_B=s.done_B | stop_B)
    masked_B = jnp.sum(jax.lax.dynamic_slice(is_open(run, s), (0, start), (b, bl)), axis=1, dtype=jnp.int32)
    return s._replace(masked_B=jnp.where(at_boundary, masked_B, s.masked_B))


def straggler(run: Run, s: State, start) -> jax.Array:
    """Scalar bool: positions left of the block still open (infill prompt, committed mask ids); the step then
    scores every position, exactly."""
    return jnp.any(is_open(run, s) & (jnp.arange(s.x_BxT.shape[1]) < start)[None])


def exact_body(run: Run, s: State) -> State:
    """One exact step: a full-sequence forward, logits at the block (or everywhere, for stragglers)."""
    sampler, spb = run.sampler, run.sampler.steps_per_block
    block, i = s.step // spb, s.step % spb
    start = run.prompt_len + block * sampler.block_length
    block_end = start + sampler.block_length
    if sampler.schedule == "dream":  # from the open positions now (the whole sequence, as Dream counts them)
        per_step_B = dream_transfer_count(jnp.sum(is_open(run, s), axis=1, dtype=jnp.int32), sampler, s.step)
    else:
        per_step_B = transfer_count(s.masked_B, spb, i)
    count_B = jnp.where(s.done_B, 0, per_step_B)
    block_step = functools.partial(exact_denoise, run, start=start, n=sampler.block_length, block_end=block_end,
                                   count_B=count_B)
    if sampler.record:
        s = block_step(s=s)
    else:
        everywhere = functools.partial(straggler_denoise, run, block_end=block_end, count_B=count_B)
        s = jax.lax.cond(straggler(run, s, start), lambda s: everywhere(s=s), lambda s: block_step(s=s), s)
    s = s._replace(step=s.step + 1)
    at_boundary = (s.step % spb == 0) & (s.step < sampler.steps)
    return begin_block(run, s, s.step // spb, at_boundary)


def refresh_cache(run: Run, s: State) -> State:
    k, v = block_logits.block_cache(run.model, s.x_BxT)
    return s._replace(cache_k=k, cache_v=v)


def fast_body(run: Run, s: State) -> State:
    """One fast-mode step of block `s.block`; at the block's end, the next block starts with a fresh cache."""
    sampler = run.sampler
    bl, spb = sampler.block_length, sampler.steps_per_block
    start = run.prompt_len + s.block * bl
    block_end = start + bl
    per_step_B = 1 if sampler.parallel_threshold is not None else transfer_count(s.masked_B, spb, s.block_step)
    count_B = jnp.where(s.done_B, 0, per_step_B)

    def window_step(s: State) -> State:
        logits_BxNxV = block_logits.window_logits(run.model, s.x_BxT, s.cache_k, s.cache_v, start)
        return denoise(run, s, logits_BxNxV, start, block_end, count_B)

    def everywhere(s: State) -> State:
        return straggler_denoise(run, s, block_end, count_B)

    s = jax.lax.cond(straggler(run, s, start), everywhere, window_step, s)
    s = s._replace(step=s.step + 1, block_step=s.block_step + 1)
    if sampler.parallel_threshold is None:
        ends = s.block_step == spb
    else:  # every row's block committed, or bl steps (a committed mask id keeps a position open)
        b = s.x_BxT.shape[0]
        open_B = jnp.any(jax.lax.dynamic_slice(is_open(run, s), (0, start), (b, bl)), axis=1)
        ends = ~jnp.any(open_B & ~s.done_B) | (s.block_step == bl)
    s = s._replace(block=s.block + ends.astype(jnp.int32), block_step=jnp.where(ends, 0, s.block_step))
    next_block = ends & (s.block < sampler.num_blocks)
    s = begin_block(run, s, s.block, next_block)
    return jax.lax.cond(next_block & ~jnp.all(s.done_B), functools.partial(refresh_cache, run), lambda s: s, s)


def run_loop(run: Run, s: State) -> State:
    """The whole denoising loop from the initial state: one `lax.while_loop`."""
    sampler = run.sampler
    s = begin_block(run, s, jnp.int32(0), jnp.bool_(True))
    if sampler.fast:
        s = refresh_cache(run, s._replace(block=jnp.int32(0), block_step=jnp.int32(0)))
        return jax.lax.while_loop(lambda s: (s.block < sampler.num_blocks) & ~jnp.all(s.done_B),
                                  functools.partial(fast_body, run), s)
    return jax.lax.while_loop(lambda s: (s.step < sampler.steps) & ~jnp.all(s.done_B),
                              functools.partial(exact_body, run), s)
