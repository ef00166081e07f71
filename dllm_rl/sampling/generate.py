"""Semi-autoregressive masked-diffusion sampling as one compiled program.

`generate` reproduces LLaDA's generate() (spec/LLADA.md §3) and, with `record=True`, the official AGRPO
rollout sampler (spec/AGRPO.md §1.1). The whole denoising loop is a single `lax.while_loop` inside one `jax.jit`
(no host round-trip per step); each step computes logits only at the current block's positions
(`llada.forward_at`). Randomness comes from `rng` (one `fold_in` per step), or, for replaying a reference run in
tests, from stored uniforms passed as `draws`.

Differences between the two semantics (selected by `record`):
  * low_confidence score: LLaDA uses softmax(logits)[x0] of the un-tempered, untruncated logits; AGRPO uses the
    log-prob of x0 under the temperature-scaled, truncated distribution.
  * a committed token equal to the mask id: LLaDA keeps that position open (it competes again in later steps,
    even after its block ended: such steps then score every position left of the block's end); AGRPO tracks
    positions by their unmask step, so the commit is final.
  * random remasking: LLaDA draws a score per sequence position, AGRPO per block position; only candidates
    matter, so both are the same draws restricted to the candidates.
Early stop (default on with record): at a block start, a row whose previous block is all EOS gets EOS in every
remaining position (unmask step = the current step), takes no further commits, and the loop ends once every row
is done. Block 0 has no previous block (the AGRPO reference inspects an empty or prompt slice there; not copied).
Ties among position scores are broken towards the lower position (the references leave the order unspecified).
Exact ties at the top-p cut are ordered by token id (truncation.py).

Fast mode (`fast=True`, off by default; approximate, so it CHANGES OUTPUTS): at each block start one full forward
of the current sequence stores every layer's keys/values of every position (`llada.hidden_states_and_kv`); each
step of the block then runs only the block's bl tokens (`llada.forward_window_at`), attending to the cached K/V of
everything left of the block (the prefix cache) and right of it (the masked suffix), plus its own fresh K/V.
This is Fast-dLLM's DualCache. Why a full forward and not a prefix-only pass: with bidirectional attention the
prefix's K/V depend on the tokens right of it, so only the full forward makes the block's first step exact (the
tests check it is). Why block-only windows rather than block + suffix: the window keeps the static shape bl in a
single while_loop (a block + suffix window would change length per block, or be padded to gen_length and save
little), a step costs bl instead of P + gen tokens, and the suffix is still seen, through its block-start K/V (its
tokens are mask tokens throughout the block; only their deeper-layer K/V go stale). Steps with open positions
left of the block (infill prompts, committed mask ids) run the exact full-sequence step instead.
`parallel_threshold` (fast mode, low_confidence) is Fast-dLLM's threshold decoding: each step commits every open
block position whose confidence exceeds it, and at least the best one; a block ends when it has no open position
(or after bl steps), so the step count is dynamic and `steps` does not set it. Model calls = steps_run window
(or straggler) passes + one full pass per block. Not allowed with record=True: the RL loss needs the exact
likelihoods of the policy that sampled.
Measured on the golden fixtures (2 rows x 16 generated tokens, blocks of 8, 8 steps), generated tokens that
differ from the exact (reference) output: t0_lowconf 3/32 (GQA model: 4/32), t0_lowconf_cfg1 4/32, t08_lowconf
(Gumbel draws replayed) 12/32, t0_random (random remasking, draws replayed) 19/32; the state after step 0 is
identical in all five. These tiny random models are a hard case (confidences rarely above 0.5, so small logit shifts
change choices, and early changes propagate); tests/test_sampling_fast.py pins the numbers.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dllm_rl.models import llada
from dllm_rl.parallel import mesh as mesh_lib
from dllm_rl.sampling import truncation as trunc
from dllm_rl.sampling.gumbel import gumbel_argmax, gumbel_from_uniforms, gumbel_noise
from dllm_rl.sampling.schedule import (REFERENCE_EOS_ID, REFERENCE_EOT_ID, SamplerConfig, SamplerInputError,
                                       transfer_count, validate_inputs)


@flax.struct.dataclass
class Rollout:
    """Result of `generate`.

    tokens [B, P+gen] int32 (prompt included); unmask_step [B, gen] int32, the step (0-based, global) at which
    each generated position was last committed (-1: never); steps_run, scalar int32 (< steps after an early stop;
    with parallel_threshold, the dynamic number of steps).
    With record=True also logp / entropy [B, gen] float32 of the committed token under the temperature-scaled,
    truncated distribution of its step, and `truncation` (see truncation.py); otherwise these are None.
    """

    tokens: jax.Array
    unmask_step: jax.Array
    steps_run: jax.Array
    logp: jax.Array | None = None
    entropy: jax.Array | None = None
    truncation: trunc.TruncationRecord | None = None


class _State(NamedTuple):
    step: jax.Array        # scalar int32, global step about to run
    x_BxT: jax.Array       # int32 sequence
    unmask_BxT: jax.Array  # int32 step of the last commit, -1 if none
    masked_B: jax.Array    # int32 masked positions of the current block at its start (schedule input)
    done_B: jax.Array      # bool, finished rows (early stop)
    logp_BxG: Any          # float32 records (None unless record)
    ent_BxG: Any
    bits_BxGxW: Any        # uint8 packed truncation sets (None unless record and truncating)
    block: Any = None      # fast mode: scalar int32 current block (steps per block vary with parallel_threshold)
    block_step: Any = None  # fast mode: scalar int32 steps run in the current block
    cache_k: Any = None    # fast mode: [N, M, T, K, hd] keys / values of the sequence at the block start
    cache_v: Any = None    #   (M = B, or 2B with cfg: conditional rows, then unconditional ones)


def generate(config: llada.LLaDAConfig, params, prompt_ids, *, steps: int, gen_length: int, block_length: int,
             temperature: float = 0.0, remasking: str = "low_confidence", top_k: int | None = None,
             top_p: float = 1.0, cfg_scale: float = 0.0, attention_mask=None, logits_eos_inf: bool = False,
             confidence_eos_eot_inf: bool = False, eos_logit_id: int = REFERENCE_EOS_ID,
             eot_logit_id: int = REFERENCE_EOT_ID, rng: jax.Array | None = None, record: bool = False,
             early_stop: bool | None = None, infill: bool = False, mesh: jax.sharding.Mesh | None = None,
             compute_dtype=None, attention_impl: str | None = None, draws: dict | None = None, fast: bool = False,
             parallel_threshold: float | None = None) -> Rollout:
    """Samples `gen_length` tokens after `prompt_ids` [B, P] in blocks of `block_length`, `steps` steps in all.

    temperature 0 is greedy (top-k/top-p then do nothing, as in AGRPO); otherwise tokens are drawn by Gumbel-max
    (gumbel.py) from softmax(logits / T) truncated by `top_k` (None or 0: off) / `top_p` (truncation.py). `cfg_scale` > 0 adds classifier-free guidance (the
    unconditional pass has the prompt fully masked). `logits_eos_inf` / `confidence_eos_eot_inf` are the
    reference's options, acting on vocabulary ids `eos_logit_id` / `eot_logit_id` (the reference hard-codes
    the LLaDA-8B ids). `record=True` runs the AGRPO rollout and fills logp / entropy / truncation;
    `early_stop` defaults to `record`. Mask tokens in the prompt raise unless `infill=True`. With `mesh`, the
    batch is split over its data axes (`parallel.mesh.batch_sharding`); params already on the mesh keep their
    shardings, others are replicated.

    `fast=True` runs the approximate cached mode (module docstring; it changes outputs, not allowed with record);
    `parallel_threshold` (with fast) commits, per step, every masked block position whose confidence exceeds it
    and at least the most confident one, so `steps` no longer sets the step count (`Rollout.steps_run` does).

    `draws` is a testing/replay hook, not for normal use: {"gumbel": u [steps, B, P+gen, V],
    "score": u [steps, B, P+gen]} uniforms in [0, 1) (float64 allowed) consumed instead of `rng`: the Gumbel
    noise of step s at position t is -log(-log u[s, :, t]) and the random-remasking score is u[s, :, t].
    """
    sampler = SamplerConfig(
        steps=steps, gen_length=gen_length, block_length=block_length, temperature=float(temperature),
        remasking=remasking, top_k=None if top_k in (None, 0) else int(top_k), top_p=float(top_p),
        cfg_scale=float(cfg_scale), logits_eos_inf=logits_eos_inf, confidence_eos_eot_inf=confidence_eos_eot_inf,
        eos_logit_id=int(eos_logit_id), eot_logit_id=int(eot_logit_id), record=record,
        early_stop=record if early_stop is None else bool(early_stop), infill=infill, fast=bool(fast),
        parallel_threshold=None if parallel_threshold is None else float(parallel_threshold))
    validate_inputs(config, sampler, prompt_ids, attention_mask)
    if draws is not None and sampler.parallel_threshold is not None:
        raise SamplerInputError("draws are indexed by a fixed step count; they cannot drive parallel_threshold, "
                                "whose step count is dynamic (pass rng instead)")
    needs_random = sampler.temperature > 0 or sampler.remasking == "random"
    if draws is not None:
        draws = _prepare_draws(sampler, draws, np.shape(prompt_ids))
    elif needs_random and rng is None:
        raise SamplerInputError("rng (a jax.random key) is required when temperature > 0 or remasking='random'")
    if not needs_random:
        rng = None
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    if attention_mask is not None:
        attention_mask = jnp.asarray(attention_mask, jnp.int32)
    if mesh is not None:
        prompt_ids, attention_mask, params = _place_on_mesh(mesh, prompt_ids, attention_mask, params)
    return _generate(config, sampler, compute_dtype, attention_impl, params, prompt_ids, attention_mask, rng,
                     draws)


def _prepare_draws(sampler: SamplerConfig, draws: dict, prompt_shape) -> dict:
    """Checks the replay uniforms and turns them into float32 Gumbel noise / scores."""
    b, p = prompt_shape
    t = p + sampler.gen_length
    out = {}
    if sampler.temperature > 0:
        if "gumbel" not in draws:
            raise SamplerInputError("draws needs 'gumbel' uniforms when temperature > 0")
        u = np.asarray(draws["gumbel"])
        if u.shape[:3] != (sampler.steps, b, t):
            raise SamplerInputError(f"draws['gumbel'] shape {u.shape} != ({sampler.steps}, {b}, {t}, V)")
        out["gumbel"] = jnp.asarray(gumbel_from_uniforms(u))
    if sampler.remasking == "random":
        if "score" not in draws:
            raise SamplerInputError("draws needs 'score' uniforms when remasking='random'")
        u = np.asarray(draws["score"], np.float32)
        if u.shape != (sampler.steps, b, t):
            raise SamplerInputError(f"draws['score'] shape {u.shape} != ({sampler.steps}, {b}, {t})")
        out["score"] = jnp.asarray(u)
    return out


def _place_on_mesh(mesh, prompt_ids, attention_mask, params):
    """Batch inputs split over the mesh's data axes; params not yet on the mesh replicated onto it."""
    batch = mesh_lib.batch_sharding(mesh)
    prompt_ids = jax.device_put(prompt_ids, batch)
    if attention_mask is not None:
        attention_mask = jax.device_put(attention_mask, batch)
    mesh_devices = set(mesh.devices.flat)
    params = jax.tree.map(lambda a: a if set(a.sharding.device_set) == mesh_devices
                          else jax.device_put(a, mesh_lib.replicated(mesh)), params)
    return prompt_ids, attention_mask, params


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _generate(config, sampler: SamplerConfig, compute_dtype, attention_impl, params, prompt_BxP, prompt_mask_BxP,
              rng, draws) -> Rollout:
    b, p = prompt_BxP.shape
    g, bl, spb = sampler.gen_length, sampler.block_length, sampler.steps_per_block
    t = p + g
    mask_id, eos_id = config.mask_token_id, config.eos_token_id
    x_BxT = jnp.concatenate([prompt_BxP, jnp.full((b, g), mask_id, jnp.int32)], axis=1)
    prompt_index_BxT = x_BxT != mask_id
    pos_T = jnp.arange(t)
    gen_T = pos_T >= p
    attn_BxT = None
    if prompt_mask_BxP is not None:
        attn_BxT = jnp.concatenate([prompt_mask_BxP, jnp.ones((b, g), jnp.int32)], axis=1)
    vocab = config.embedding_size
    record_bits = sampler.record and sampler.truncates

    def is_open(s: _State) -> jax.Array:
        """bool [B, T]: positions still to be generated."""
        if sampler.record:
            return (s.unmask_BxT < 0) & gen_T[None]
        return s.x_BxT == mask_id

    kw = dict(compute_dtype=compute_dtype, attention_impl=attention_impl)

    def model_inputs(x):
        """(ids [M, T], key mask [M, T] or None) the model runs on: x, and with cfg_scale > 0 below it the
        unconditional copy (prompt fully masked)."""
        if sampler.cfg_scale > 0:
            un_x = jnp.where(prompt_index_BxT, mask_id, x)
            am = None if attn_BxT is None else jnp.concatenate([attn_BxT, attn_BxT])
            return jnp.concatenate([x, un_x]), am
        return x, attn_BxT

    def guide(logits_MxNxV):
        """float32 logits [B, N, V] from the model rows: classifier-free guided when cfg_scale > 0."""
        logits = logits_MxNxV.astype(jnp.float32)
        if sampler.cfg_scale > 0:
            cond_BxNxV, uncond_BxNxV = logits[:b], logits[b:]
            logits = uncond_BxNxV + (sampler.cfg_scale + 1.0) * (cond_BxNxV - uncond_BxNxV)
        if sampler.logits_eos_inf:
            logits = _set_neg_inf(logits, sampler.eos_logit_id)
        return logits

    def logits_at(x, start, n):
        """float32 logits [B, n, V] at positions start..start+n-1 (classifier-free guided when cfg_scale > 0)."""
        ids_MxT, am_MxT = model_inputs(x)
        pos_MxN = jnp.broadcast_to(start + jnp.arange(n), (ids_MxT.shape[0], n))
        return guide(llada.forward_at(config, params, ids_MxT, pos_MxN, am_MxT, **kw))

    def refresh_cache(s: _State) -> _State:
        """Fast mode, at a block start: keys/values of every position of the current sequence (one full forward,
        not a prefix-only pass: prefix K/V depend on the tokens right of them, and the suffix K/V are used too)."""
        ids_MxT, am_MxT = model_inputs(s.x_BxT)
        _, k, v = llada.hidden_states_and_kv(config, params, ids_MxT, am_MxT, **kw)
        return s._replace(cache_k=k, cache_v=v)

    def window_logits(s: _State, start):
        """Fast mode: float32 logits [B, bl, V] of the block at `start`, running the block only; it attends to
        the cached K/V of every position outside the block (key padding still applied) and to its own."""
        ids_MxT, am_MxT = model_inputs(s.x_BxT)
        m = ids_MxT.shape[0]
        outside_T = (pos_T < start) | (pos_T >= start + bl)
        cache_mask_MxT = outside_T[None] if am_MxT is None else (am_MxT != 0) & outside_T[None]
        window_MxW = jax.lax.dynamic_slice(ids_MxT, (0, start), (m, bl))
        pos_MxW = jnp.broadcast_to(jnp.arange(bl), (m, bl))
        return guide(llada.forward_window_at(config, params, window_MxW, start, s.cache_k, s.cache_v, pos_MxW,
                                             cache_mask_MxT, **kw))

    def draw(step, start, n):
        """(gumbel [B, n, V] or None, score uniforms [B, n] or None) for this step's candidate positions."""
        gum = score = None
        if draws is not None:
            if "gumbel" in draws:
                gum = jax.lax.dynamic_slice(draws["gumbel"], (step, 0, start, 0), (1, b, n, vocab))[0]
            if "score" in draws:
                score = jax.lax.dynamic_slice(draws["score"], (step, 0, start), (1, b, n))[0]
            return gum, score
        if rng is not None:
            k_gumbel, k_score = jax.random.split(jax.random.fold_in(rng, step))
            if sampler.temperature > 0:
                gum = gumbel_noise(k_gumbel, (b, n, vocab))
            if sampler.remasking == "random":
                score = jax.random.uniform(k_score, (b, n), jnp.float32)
        return gum, score

    def commit(s: _State, start: int | jax.Array, n: int, block_end, count_B) -> _State:
        """One denoising step over candidate positions start..start+n-1 (those < block_end and open)."""
        return commit_logits(s, logits_at(s.x_BxT, start, n), start, n, block_end, count_B)

    def commit_logits(s: _State, logits, start, n: int, block_end, count_B) -> _State:
        """`commit` given the step's float32 logits [B, n, V] at start..start+n-1.

        Commits the count_B best-scored candidates; with parallel_threshold, also every candidate scoring above
        it (rows with count_B 0 commit nothing)."""
        scaled = trunc.scale_logits(logits, sampler.temperature)
        keep = trunc.keep_mask(scaled, sampler.top_k, sampler.top_p) if sampler.truncates else None
        gum, uniform_BxN = draw(s.step, start, n)
        x0_BxN = gumbel_argmax(scaled, gum, keep) if sampler.temperature > 0 else \
            jnp.argmax(logits, axis=-1).astype(jnp.int32)
        if sampler.record or sampler.remasking == "entropy":
            keep_all = jnp.ones(scaled.shape, bool) if keep is None else keep
            logp_BxN, ent_BxN = trunc.logp_and_entropy(scaled, keep_all, x0_BxN)
        if sampler.remasking == "random":
            score_BxN = uniform_BxN
        elif sampler.remasking == "entropy":
            score_BxN = -ent_BxN
        elif sampler.record:
            score_BxN = logp_BxN
        else:
            score_BxN = _llada_confidence(logits, x0_BxN, sampler)
        pos_N = start + jnp.arange(n)
        open_BxN = jax.lax.dynamic_slice(is_open(s), (0, start), (b, n))
        cand_BxN = open_BxN & (pos_N < block_end)[None]
        rank_BxN = _descending_rank(jnp.where(cand_BxN, score_BxN, -jnp.inf))
        sel_BxN = cand_BxN & (rank_BxN < count_B[:, None])
        if sampler.parallel_threshold is not None:
            sel_BxN = sel_BxN | (cand_BxN & (score_BxN > sampler.parallel_threshold) & (count_B > 0)[:, None])
        x_old = jax.lax.dynamic_slice(s.x_BxT, (0, start), (b, n))
        um_old = jax.lax.dynamic_slice(s.unmask_BxT, (0, start), (b, n))
        s = s._replace(
            x_BxT=jax.lax.dynamic_update_slice(s.x_BxT, jnp.where(sel_BxN, x0_BxN, x_old), (0, start)),
            unmask_BxT=jax.lax.dynamic_update_slice(s.unmask_BxT, jnp.where(sel_BxN, s.step, um_old), (0, start)))
        if sampler.record:  # record mode always runs on the block path: start >= p
            off = start - p
            s = s._replace(logp_BxG=_update_where(s.logp_BxG, sel_BxN, logp_BxN, off),
                           ent_BxG=_update_where(s.ent_BxG, sel_BxN, ent_BxN, off))
            if record_bits:
                s = s._replace(bits_BxGxW=_update_where(s.bits_BxGxW, sel_BxN, trunc.pack(keep), off))
        return s

    def begin_block(s: _State, block, at_boundary) -> _State:
        """At a block start: early-stop rows whose previous block is all EOS; count the block's open positions."""
        start = p + block * bl
        x, unmask, done = s.x_BxT, s.unmask_BxT, s.done_B
        if sampler.early_stop:
            prev_BxL = jax.lax.dynamic_slice(x, (0, jnp.maximum(start - bl, 0)), (b, bl))
            stop_B = at_boundary & (block > 0) & ~done & jnp.all(prev_BxL == eos_id, axis=1)
            fill_BxT = stop_B[:, None] & (pos_T >= start)[None]
            x = jnp.where(fill_BxT, eos_id, x)
            unmask = jnp.where(fill_BxT, s.step, unmask)
            done = done | stop_B
        s = s._replace(x_BxT=x, unmask_BxT=unmask, done_B=done)
        masked_B = jnp.sum(jax.lax.dynamic_slice(is_open(s), (0, start), (b, bl)), axis=1, dtype=jnp.int32)
        return s._replace(masked_B=jnp.where(at_boundary, masked_B, s.masked_B))

    def body(s: _State) -> _State:
        block, i = s.step // spb, s.step % spb
        start, block_end = p + block * bl, p + (block + 1) * bl
        count_B = jnp.where(s.done_B, 0, transfer_count(s.masked_B, spb, i))
        block_step = functools.partial(commit, start=start, n=bl, block_end=block_end, count_B=count_B)
        if sampler.record:
            s = block_step(s)
        else:  # positions left of the block still open (infill prompt, committed mask ids): score them all
            straggler = jnp.any(is_open(s) & (pos_T < start)[None])
            s = jax.lax.cond(straggler, functools.partial(commit, start=0, n=t, block_end=block_end,
                                                          count_B=count_B), block_step, s)
        s = s._replace(step=s.step + 1)
        at_boundary = (s.step % spb == 0) & (s.step < sampler.steps)
        return begin_block(s, s.step // spb, at_boundary)

    def cond(s: _State) -> jax.Array:
        return (s.step < sampler.steps) & ~jnp.all(s.done_B)

    def fast_body(s: _State) -> _State:
        """One fast-mode step of block `s.block`; at the block's end, the next block starts with a fresh cache."""
        start = p + s.block * bl
        block_end = start + bl
        if sampler.parallel_threshold is None:
            count_B = jnp.where(s.done_B, 0, transfer_count(s.masked_B, spb, s.block_step))
        else:
            count_B = jnp.where(s.done_B, 0, 1)

        def window_step(s: _State) -> _State:
            return commit_logits(s, window_logits(s, start), start, bl, block_end, count_B)

        # positions left of the block still open (infill prompt, committed mask ids): an exact full-sequence step
        straggler = jnp.any(is_open(s) & (pos_T < start)[None])
        s = jax.lax.cond(straggler, functools.partial(commit, start=0, n=t, block_end=block_end, count_B=count_B),
                         window_step, s)
        s = s._replace(step=s.step + 1, block_step=s.block_step + 1)
        if sampler.parallel_threshold is None:
            ends = s.block_step == spb
        else:  # every row's block committed, or bl steps (a committed mask id keeps a position open)
            open_B = jnp.any(jax.lax.dynamic_slice(is_open(s), (0, start), (b, bl)), axis=1)
            ends = ~jnp.any(open_B & ~s.done_B) | (s.block_step == bl)
        s = s._replace(block=s.block + ends.astype(jnp.int32), block_step=jnp.where(ends, 0, s.block_step))
        next_block = ends & (s.block < sampler.num_blocks)
        s = begin_block(s, s.block, next_block)
        return jax.lax.cond(next_block & ~jnp.all(s.done_B), refresh_cache, lambda s: s, s)

    def fast_cond(s: _State) -> jax.Array:
        return (s.block < sampler.num_blocks) & ~jnp.all(s.done_B)

    w = -(-vocab // 8)
    state = _State(
        step=jnp.int32(0), x_BxT=x_BxT, unmask_BxT=jnp.full((b, t), -1, jnp.int32),
        masked_B=jnp.zeros((b,), jnp.int32), done_B=jnp.zeros((b,), bool),
        logp_BxG=jnp.zeros((b, g), jnp.float32) if sampler.record else None,
        ent_BxG=jnp.zeros((b, g), jnp.float32) if sampler.record else None,
        bits_BxGxW=jnp.full((b, g, w), 255, jnp.uint8) if record_bits else None)
    state = begin_block(state, jnp.int32(0), jnp.bool_(True))
    if sampler.fast:
        state = refresh_cache(state._replace(block=jnp.int32(0), block_step=jnp.int32(0)))
        state = jax.lax.while_loop(fast_cond, fast_body, state)
    else:
        state = jax.lax.while_loop(cond, body, state)
    truncation = trunc.TruncationRecord(bits=state.bits_BxGxW, vocab_size=vocab) if sampler.record else None
    return Rollout(tokens=state.x_BxT, unmask_step=state.unmask_BxT[:, p:], steps_run=state.step,
                   logp=state.logp_BxG, entropy=state.ent_BxG, truncation=truncation)


def _set_neg_inf(logits_BxNxV: jax.Array, *token_ids: int) -> jax.Array:
    """-inf at the given vocabulary ids (ids outside the vocabulary are ignored)."""
    iota = jax.lax.broadcasted_iota(jnp.int32, logits_BxNxV.shape, logits_BxNxV.ndim - 1)
    hit = functools.reduce(jnp.logical_or, [iota == i for i in token_ids])
    return jnp.where(hit, -jnp.inf, logits_BxNxV)


def _llada_confidence(logits_BxNxV, x0_BxN, sampler: SamplerConfig) -> jax.Array:
    """LLaDA's low_confidence score: softmax probability of x0 under the un-tempered logits.

    confidence_eos_eot_inf reproduces the reference's chained assignment: at temperature 0 both the EOS and the
    EoT logits become -inf before the softmax, at temperature > 0 only the EoT logit (x0 is unchanged).
    """
    if sampler.confidence_eos_eot_inf:
        ids = (sampler.eos_logit_id, sampler.eot_logit_id) if sampler.temperature == 0 else (sampler.eot_logit_id,)
        logits_BxNxV = _set_neg_inf(logits_BxNxV, *ids)
    p_BxNxV = jax.nn.softmax(logits_BxNxV, axis=-1)
    return jnp.take_along_axis(p_BxNxV, x0_BxN[..., None], axis=-1)[..., 0]


def _descending_rank(score_BxN: jax.Array) -> jax.Array:
    """Rank of each entry in its row by descending score (0 = best; ties: lower index first)."""
    iota = jax.lax.broadcasted_iota(jnp.int32, score_BxN.shape, 1)
    _, order = jax.lax.sort((-score_BxN, iota), dimension=1, num_keys=1, is_stable=True)
    _, rank = jax.lax.sort((order, iota), dimension=1, num_keys=1)
    return rank


def _update_where(dst_BxG, sel_BxN, new_BxN, offset):
    """dst with dst[:, offset + j] = new[:, j] where sel[:, j] (trailing dims ride along)."""
    n = sel_BxN.shape[1]
    start = (0, offset) + (0,) * (dst_BxG.ndim - 2)
    old = jax.lax.dynamic_slice(dst_BxG, start, (dst_BxG.shape[0], n) + dst_BxG.shape[2:])
    sel = sel_BxN.reshape(sel_BxN.shape + (1,) * (dst_BxG.ndim - 2))
    return jax.lax.dynamic_update_slice(dst_BxG, jnp.where(sel, new_BxN.astype(dst_BxG.dtype), old), start)
