"""generate(): golden reference trajectories, AGRPO records, NumPy transcriptions of both reference samplers on
other shapes, a float64 replay of the records, Gumbel-max frequencies, input errors, sharding, the bench CLI."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl.checkpoint import load_hf
from dllm_rl import models
from dllm_rl.models import llada
from dllm_rl.sampling import (SamplerInputError, block_logits, expand, generate, sampler_config, scale_logits,
                              transfer_schedule)
from dllm_rl.sampling.gumbel import gumbel_argmax, gumbel_noise
from tests.helpers import family_goldens
from tests.helpers.golden_runs import golden_run
from tests.helpers.truncation_numpy import agrpo_keep, truncated_stats
from tests.helpers.xla_env import fake_devices_env

REPO = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------------
# NumPy transcriptions of the reference samplers, driven by full-sequence logits (no forward_at, no jit loop).
# Draws are injected as uniforms indexed [step, row, sequence position(, vocab)]; exact ties go to the lower index.

def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _top(score_N, k):
    return np.argsort(-score_N, kind="stable")[:k]


def reference_schedule(num_masked_B, steps):
    base, rem = num_masked_B // steps, num_masked_B % steps
    return base[:, None] + (np.arange(steps)[None, :] < rem[:, None])


def llada_reference(logits_fn, prompt, *, steps, gen_length, block_length, mask_id, temperature=0.0,
                    remasking="low_confidence", cfg_scale=0.0, gumbel_u=None, score_u=None, logits_eos_inf=False,
                    confidence_eos_eot_inf=False, eos_id=126081, eot_id=126348):
    """generate() of ML-GSAI/LLaDA (spec/LLADA.md §3); returns the states [initial, after step 0, ...]."""
    b, p = prompt.shape
    x = np.concatenate([prompt, np.full((b, gen_length), mask_id)], axis=1)
    prompt_index = x != mask_id
    spb = steps // (gen_length // block_length)
    states = [x.copy()]
    for blk in range(gen_length // block_length):
        hi = p + (blk + 1) * block_length
        ntt = reference_schedule((x[:, hi - block_length:hi] == mask_id).sum(1), spb)
        for i in range(spb):
            s = blk * spb + i
            mask_index = x == mask_id
            if cfg_scale > 0:
                un_x = np.where(prompt_index, mask_id, x)
                both = logits_fn(np.concatenate([x, un_x]))
                logits = both[b:] + (cfg_scale + 1) * (both[:b] - both[b:])
            else:
                logits = logits_fn(x)
            if logits_eos_inf:
                logits[:, :, eos_id] = -np.inf
            if temperature > 0:
                noisy = np.exp(logits.astype(np.float64)) / (-np.log(gumbel_u[s])) ** temperature
            else:
                noisy = logits  # the reference's add_gumbel_noise returns the same tensor at temperature 0
            x0 = noisy.argmax(-1)
            if confidence_eos_eot_inf:  # chained assignment, aliasing included, as in the reference
                noisy[:, :, eos_id] = -np.inf
                logits[:, :, eot_id] = -np.inf
            if remasking == "low_confidence":
                x0_p = np.take_along_axis(_softmax(logits.astype(np.float64)), x0[..., None], -1)[..., 0]
            else:
                x0_p = score_u[s].astype(np.float64)
            x0_p[:, hi:] = -np.inf
            x0 = np.where(mask_index, x0, x)
            confidence = np.where(mask_index, x0_p, -np.inf)
            for j in range(b):
                sel = _top(confidence[j], ntt[j, i])
                x[j, sel] = x0[j, sel]
            states.append(x.copy())
    return states


def agrpo_reference(logits_fn, prompt, *, steps, gen_length, block_length, mask_id, eos_id, temperature,
                    remasking, top_k=None, top_p=1.0, gumbel_u=None, score_u=None):
    """The official AGRPO generate() (probablyabot/agrpo generate.py), except that block 0 has no previous
    block. Returns (x, sampling_masks, unmask_steps, logps, entropies, steps_run)."""
    b, p = prompt.shape
    c, bl = gen_length, block_length
    um = c // steps
    x = np.concatenate([prompt, np.full((b, c), mask_id)], axis=1)
    unmask_steps = -np.ones((b, c), np.int64)
    rec = {}

    def unmask(blk, step, rows):
        i, j = blk * bl, (blk + 1) * bl
        lg = logits_fn(x)[rows][:, p + i:p + j].astype(np.float32)
        if not rec:
            rec.update(masks=np.ones((b, c, lg.shape[-1]), bool), logps=np.zeros((b, c)), ents=np.zeros((b, c)))
        if temperature == 0:
            scaled, keep = lg, np.ones(lg.shape, bool)
            tokens = lg.argmax(-1)
        else:
            scaled = lg / np.float32(temperature)
            keep = agrpo_keep(scaled, top_k, top_p)
            noisy = np.where(keep, np.exp(np.where(keep, scaled, 0.0).astype(np.float64)), 0.0)
            tokens = (noisy / -np.log(gumbel_u[step][rows][:, p + i:p + j])).argmax(-1)
        lp, ent = truncated_stats(scaled, keep, tokens)
        scores = {"low_confidence": lp, "entropy": -ent}.get(remasking)
        if scores is None:
            scores = score_u[step][rows][:, p + i:p + j].astype(np.float64)
        scores = np.where(unmask_steps[rows, i:j] != -1, -np.inf, scores)
        for r_local, r in enumerate(np.nonzero(rows)[0]):
            cols = _top(scores[r_local], um)
            x[r, p + i + cols] = tokens[r_local, cols]
            unmask_steps[r, i + cols] = step
            rec["masks"][r, i + cols] = keep[r_local, cols]
            rec["logps"][r, i + cols] = lp[r_local, cols]
            rec["ents"][r, i + cols] = ent[r_local, cols]

    step = 0
    removed = np.zeros(b, bool)
    for blk in range(c // bl):
        prev_eos = ~removed & (blk > 0) & (x[:, p + (blk - 1) * bl:p + blk * bl] == eos_id).all(1)
        removed |= prev_eos
        x[prev_eos, p + blk * bl:] = eos_id
        unmask_steps[prev_eos, blk * bl:] = step
        if removed.all():
            break
        while step < (blk + 1) * bl // um:
            unmask(blk, step, ~removed)
            step += 1
    return x, rec["masks"], unmask_steps, rec["logps"], rec["ents"], step


# ----------------------------------------------------------------------------------------------------------------
# Helpers and fixtures

@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_hf(tiny_dir)


@pytest.fixture(scope="module")
def golden(tiny_dir):
    return dict(np.load(tiny_dir / "golden.npz"))


@pytest.fixture(scope="module")
def agrpo_golden(fixtures_dir):
    return dict(np.load(fixtures_dir / "agrpo_rollout" / "golden.npz"))


def logits_fn(config, params):
    fwd = jax.jit(lambda x: llada.forward(config, params, x))
    return lambda x: np.array(fwd(jnp.asarray(x, jnp.int32)))


def states_from(rollout, prompt, mask_id, steps):
    """Sequence after each step, rebuilt from (tokens, unmask_step): valid when every commit is final."""
    tokens, um = np.asarray(rollout.tokens), np.asarray(rollout.unmask_step)
    p = prompt.shape[1]
    out = []
    for s in range(steps + 1):
        x = tokens.copy()
        x[:, p:] = np.where(um < s, tokens[:, p:], mask_id)
        out.append(x)
    return out


def favour(params, token_id, like, scale):
    """Params whose LM-head column for `token_id` is `scale` x that of token `like`: `token_id` then wins
    wherever `like` would (to provoke EOS early stops or committed mask tokens on the random tiny model)."""
    return {**params, "lm_head": params["lm_head"].at[:, token_id].set(scale * params["lm_head"][:, like])}


def small_model(vocab=37, seed=0, max_len=64):
    config = llada.LLaDAConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden_size=64,
                               vocab_size=vocab, embedding_size=vocab, max_sequence_length=max_len,
                               mask_token_id=vocab - 1, eos_token_id=vocab - 2, pad_token_id=vocab - 2)
    params = llada.init_params(config, jax.random.key(seed))
    return config, {**params, "lm_head": params["lm_head"] * 4.0}  # spread logits (std ~4) like the fixtures


# ----------------------------------------------------------------------------------------------------------------
# Schedule and golden LLaDA runs

def test_transfer_schedule(golden):
    np.testing.assert_array_equal(transfer_schedule(jnp.array([8, 10, 3, 0]), 4),
                                  [[2, 2, 2, 2], [3, 3, 2, 2], [1, 1, 1, 0], [0, 0, 0, 0]])
    for blk in range(2):
        np.testing.assert_array_equal(transfer_schedule(jnp.array([8, 8]), 4), golden["gen_num_transfer_tokens"][blk])
    m = np.arange(40)
    np.testing.assert_array_equal(transfer_schedule(jnp.asarray(m), 7), reference_schedule(m, 7))


GOLDEN_RUNS = [
    ("t0_lowconf", "main", dict()),
    ("t0_lowconf", "gqa", dict()),
    ("t0_random", "main", dict(remasking="random")),
    ("t0_lowconf_cfg1", "main", dict(cfg_scale=1.0, attention_mask=True)),
    ("t08_lowconf", "main", dict(temperature=0.8)),
]


@pytest.mark.parametrize("run,model,kwargs", GOLDEN_RUNS, ids=[f"{r}-{m}" for r, m, _ in GOLDEN_RUNS])
def test_golden_llada_trajectory(run, model, kwargs, tiny_dir, tiny_gqa_dir, request):
    """Every intermediate state of the reference generate() runs is reproduced exactly."""
    config, params, g, prompt, kwargs = golden_run(tiny_dir if model == "main" else tiny_gqa_dir, run, kwargs)
    steps = int(g["gen_steps"])
    r = generate(config, params, prompt, steps=steps, gen_length=int(g["gen_length"]),
                 block_length=int(g["gen_block_length"]), **kwargs)
    np.testing.assert_array_equal(r.tokens, g[f"gen_{run}_out"])
    want = g[f"gen_{run}_x_steps"]
    for s, x in enumerate(states_from(r, prompt, config.mask_token_id, steps)):
        np.testing.assert_array_equal(x, want[s], err_msg=f"state after step {s - 1}")
    assert int(r.steps_run) == steps and r.logp is None


def test_cfg_guided_logits_match_reference(tiny, golden):
    """The sampler's guided logits (`block_logits.exact_logits`: the unconditional copy with the prompt fully
    masked, then guidance) on a stored state equal the reference's; the golden trajectory compares only tokens."""
    config, params = tiny
    x_BxT = golden["gen_t0_lowconf_cfg1_x_steps"][3]
    sampler = sampler_config(steps=8, gen_length=16, block_length=8, cfg_scale=1.0)
    prompt_index_BxT = jnp.broadcast_to(jnp.arange(24) < 8, x_BxT.shape)
    model = block_logits.Model(config, params, sampler, prompt_index_BxT, jnp.ones(x_BxT.shape, jnp.int32))
    logits_BxTxV = block_logits.exact_logits(model, jnp.asarray(x_BxT, jnp.int32), 0, 24)
    np.testing.assert_allclose(logits_BxTxV, golden["gen_t0_lowconf_cfg1_guided_logits"][3], atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# Golden AGRPO rollouts

def agrpo_draws(a, run, p, block_length, steps_per_block):
    """Fixture draws over the current block -> the hook's [steps, B, P+gen(, V)] layout (0.5 elsewhere)."""
    draws = {}
    for name, key in (("gumbel", "gumbel_uniforms"), ("score", "score_uniforms")):
        if f"{run}_{key}" not in a:
            continue
        u = a[f"{run}_{key}"]
        t = p + int(a["max_completion_length"])
        full = np.full(u.shape[:2] + (t,) + u.shape[3:], 0.5, u.dtype)
        for s in range(u.shape[0]):
            lo = p + (s // steps_per_block) * block_length
            full[s, :, lo:lo + block_length] = u[s]
        draws[name] = full
    return draws


@pytest.mark.parametrize("run", ["random_t06", "lowconf_t06", "lowconf_t0", "random_t1_nocut"])
def test_golden_agrpo_rollout(run, tiny, agrpo_golden):
    config, params = tiny
    a = agrpo_golden
    prompt = a["prompt"]
    steps, gen, bl = int(a["sampling_steps"]), int(a["max_completion_length"]), int(a["block_length"])
    r = generate(config, params, prompt, steps=steps, gen_length=gen, block_length=bl,
                 temperature=float(a[f"{run}_temperature"]), top_k=int(a[f"{run}_top_k"]) or None,
                 top_p=float(a[f"{run}_top_p"]), remasking="random" if run.startswith("random") else "low_confidence",
                 record=True, draws=agrpo_draws(a, run, prompt.shape[1], bl, steps // (gen // bl)))
    np.testing.assert_array_equal(r.tokens, a[f"{run}_tokens"])
    np.testing.assert_array_equal(r.unmask_step, a[f"{run}_unmask_steps"])
    positions = jnp.broadcast_to(jnp.arange(gen), (prompt.shape[0], gen))
    np.testing.assert_array_equal(expand(r.truncation, positions), a[f"{run}_sampling_masks"])
    np.testing.assert_allclose(r.logp, a[f"{run}_token_logps"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(r.entropy, a[f"{run}_token_entropies"], atol=1e-5, rtol=0)
    assert (r.truncation.bits is None) == (run in ("lowconf_t0", "random_t1_nocut"))


# ----------------------------------------------------------------------------------------------------------------
# Other shapes and schedules against the NumPy transcriptions

LLADA_CASES = [  # prompt len, gen, block, steps, temperature, remasking
    (5, 12, 4, 6, 0.0, "low_confidence"),     # 2 steps per block of 4
    (3, 18, 6, 12, 0.0, "low_confidence"),    # 4 steps per block of 6: schedule 2, 2, 1, 1
    (7, 10, 10, 3, 1.3, "low_confidence"),    # one block, 10 over 3 steps: 4, 3, 3; sampled
    (4, 16, 8, 16, 0.7, "random"),            # 8 steps per block of 8: 1 token per step
    (6, 9, 3, 9, 0.0, "random"),
]


@pytest.mark.parametrize("p,gen,bl,steps,temp,remasking", LLADA_CASES)
def test_llada_reference_other_shapes(p, gen, bl, steps, temp, remasking, tiny):
    config, params = tiny
    rng = np.random.default_rng(p * 100 + gen)
    prompt = rng.integers(0, 150, (2, p))
    t = p + gen
    draws = {"gumbel": rng.random((steps, 2, t, config.embedding_size)), "score": rng.random((steps, 2, t))}
    want = llada_reference(logits_fn(config, params), prompt, steps=steps, gen_length=gen, block_length=bl,
                           mask_id=config.mask_token_id, temperature=temp, remasking=remasking,
                           gumbel_u=draws["gumbel"], score_u=draws["score"].astype(np.float32))
    r = generate(config, params, prompt, steps=steps, gen_length=gen, block_length=bl, temperature=temp,
                 remasking=remasking, draws=draws)
    np.testing.assert_array_equal(r.tokens, want[-1])
    for s, x in enumerate(states_from(r, prompt, config.mask_token_id, steps)):
        np.testing.assert_array_equal(x, want[s], err_msg=f"state after step {s - 1}")


def test_committed_mask_token_stays_open(tiny):
    """LLaDA: a committed x0 equal to the mask id leaves the position masked; it competes again, also after its
    block has ended (the sampler then scores every position left of the block end)."""
    config, params = tiny
    params = favour(params, config.mask_token_id, like=81, scale=1.3)  # settings found by a scan
    prompt = np.random.default_rng(1).integers(0, 150, (2, 6))
    kw = dict(steps=8, gen_length=16, block_length=8)
    states = llada_reference(logits_fn(config, params), prompt, mask_id=config.mask_token_id, **kw)
    left_open = [(s[:, 6:6 + 8] == config.mask_token_id).sum() for s in states[4:]]
    assert all(0 < n < 16 for n in left_open), left_open
    r = generate(config, params, prompt, **kw)
    np.testing.assert_array_equal(r.tokens, states[-1])


def test_infill_prompt_masks(tiny):
    config, params = tiny
    prompt = np.random.default_rng(3).integers(0, 150, (2, 8))
    prompt[0, [2, 5]] = config.mask_token_id
    prompt[1, 7] = config.mask_token_id
    kw = dict(steps=8, gen_length=16, block_length=8)
    with pytest.raises(SamplerInputError, match="infill"):
        generate(config, params, prompt, **kw)
    states = llada_reference(logits_fn(config, params), prompt, mask_id=config.mask_token_id, **kw)
    r = generate(config, params, prompt, infill=True, **kw)
    np.testing.assert_array_equal(r.tokens, states[-1])
    assert not (np.asarray(r.tokens)[:, :8] == config.mask_token_id).all()


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_sampled_infill_scores_stragglers_window_by_window_as_the_reference(remasking, tiny):
    """Infill prompts keep positions left of the block open: each such step scores every position, computed a
    block-length window of logits at a time (T = 23: windows at 0, 8 and 15, overlapping). With replayed noise
    every step equals LLaDA's full-sequence step."""
    config, params = tiny
    rng = np.random.default_rng(11)
    prompt = rng.integers(0, 150, (2, 7))
    prompt[0, [1, 4]] = config.mask_token_id
    prompt[1, 6] = config.mask_token_id
    steps, gen, bl, t = 8, 16, 8, 23
    draws = {"gumbel": rng.random((steps, 2, t, config.embedding_size)), "score": rng.random((steps, 2, t))}
    want = llada_reference(logits_fn(config, params), prompt, steps=steps, gen_length=gen, block_length=bl,
                           mask_id=config.mask_token_id, temperature=0.8, remasking=remasking,
                           gumbel_u=draws["gumbel"], score_u=draws["score"].astype(np.float32))
    r = generate(config, params, prompt, steps=steps, gen_length=gen, block_length=bl, temperature=0.8,
                 remasking=remasking, draws=draws, infill=True)
    np.testing.assert_array_equal(r.tokens, want[-1])


@pytest.mark.parametrize("family", ["dream", "a2d_qwen3", "llada_moe"])
@pytest.mark.parametrize("infill", [False, True])
def test_other_families_sample_on_their_aligned_logits(family, infill):
    """The exact sampler is family-generic: on Dream's (shifted), A2D-Qwen3's (tied head) and LLaDA-MoE's aligned
    logits it equals LLaDA's sampling rule run on `models.forward`, block steps and windowed straggler steps."""
    config, params, _ = family_goldens.load(family)
    rng = np.random.default_rng(3)
    prompt = rng.integers(0, config.mask_token_id, (2, 7))
    if infill:
        prompt[0, [1, 4]] = config.mask_token_id
    steps, gen, bl = 8, 16, 8
    t, v = 7 + gen, config.embedding_size
    draws = {"gumbel": rng.random((steps, 2, t, v)), "score": rng.random((steps, 2, t))}
    fwd = jax.jit(lambda x: models.forward(config, params, x))
    want = llada_reference(lambda x: np.array(fwd(jnp.asarray(x, jnp.int32))), prompt, steps=steps,
                           gen_length=gen, block_length=bl, mask_id=config.mask_token_id, temperature=0.8,
                           remasking="low_confidence", gumbel_u=draws["gumbel"],
                           score_u=draws["score"].astype(np.float32))
    r = generate(config, params, prompt, steps=steps, gen_length=gen, block_length=bl, temperature=0.8,
                 remasking="low_confidence", draws=draws, infill=infill)
    np.testing.assert_array_equal(r.tokens, want[-1])


def test_fast_mode_refuses_a_shifted_family(uncompiled_generate):
    config, params, _ = family_goldens.load("dream")
    with pytest.raises(SamplerInputError, match="fast=True is not implemented for the dream family"):
        uncompiled_generate(config, params, np.ones((1, 4), np.int32), steps=4, gen_length=8, block_length=4,
                            fast=True)


AGRPO_CASES = [  # prompt len, gen, block, steps, temperature, remasking, top_k, top_p, favour EOS
    (3, 20, 5, 20, 0.9, "random", 12, 0.9, False),      # prompt shorter than a block; 1 token per step
    (6, 24, 8, 12, 0.6, "low_confidence", 30, 1.0, False),
    (5, 16, 4, 8, 1.0, "entropy", None, 0.8, False),
    (4, 24, 6, 12, 0.5, "random", 20, 0.95, True),       # EOS-heavy: some rows stop early
    (4, 24, 6, 12, 0.0, "low_confidence", None, 1.0, True),  # every row stops after block 0
]


@pytest.mark.parametrize("p,gen,bl,steps,temp,remasking,top_k,top_p,eos", AGRPO_CASES)
def test_agrpo_reference_other_shapes(p, gen, bl, steps, temp, remasking, top_k, top_p, eos, tiny):
    config, params = tiny
    if eos:
        params = favour(params, config.eos_token_id, like=59, scale=1.2)
    rng = np.random.default_rng(0 if eos else p * 1000 + gen + steps)
    prompt = rng.integers(0, 150, (3, p))
    t = p + gen
    draws = {"gumbel": rng.random((steps, 3, t, config.embedding_size)), "score": rng.random((steps, 3, t))}
    x, masks, ums, lps, ents, steps_run = agrpo_reference(
        logits_fn(config, params), prompt, steps=steps, gen_length=gen, block_length=bl,
        mask_id=config.mask_token_id, eos_id=config.eos_token_id, temperature=temp, remasking=remasking,
        top_k=top_k, top_p=top_p, gumbel_u=draws["gumbel"], score_u=draws["score"].astype(np.float32))
    r = generate(config, params, prompt, steps=steps, gen_length=gen, block_length=bl, temperature=temp,
                 remasking=remasking, top_k=top_k, top_p=top_p, record=True, draws=draws)
    np.testing.assert_array_equal(r.tokens, x)
    np.testing.assert_array_equal(r.unmask_step, ums)
    assert int(r.steps_run) == steps_run
    if eos:  # some row was filled with EOS by the early stop; with temperature 0, all of them
        assert (x[:, p + bl:] == config.eos_token_id).all(1).any()
        assert (steps_run < steps) == (temp == 0), steps_run
    keep = expand(r.truncation, jnp.broadcast_to(jnp.arange(gen), (3, gen)))
    np.testing.assert_array_equal(keep, masks)
    np.testing.assert_allclose(r.logp, lps, atol=1e-5, rtol=0)
    np.testing.assert_allclose(r.entropy, ents, atol=1e-5, rtol=0)


def test_record_float64_replay():
    """The loss's view: rebuild each step's state from (tokens, unmask_step), recompute logits, and check the
    recorded truncation set, log-prob and entropy against a float64 NumPy computation (small vocabulary)."""
    config, params = small_model(vocab=37)
    prompt = np.random.default_rng(1).integers(0, 35, (4, 5))
    steps, gen, bl, temp, top_k, top_p = 8, 16, 8, 0.8, 9, 0.9
    r = generate(config, params, prompt, steps=steps, gen_length=gen, block_length=bl, temperature=temp,
                 top_k=top_k, top_p=top_p, remasking="random", record=True, rng=jax.random.key(5))
    fn = logits_fn(config, params)
    tokens, um = np.asarray(r.tokens), np.asarray(r.unmask_step)
    keep_all = np.asarray(expand(r.truncation, jnp.broadcast_to(jnp.arange(gen), (4, gen))))
    assert r.truncation.bits.shape == (4, gen, 5) and (keep_all.sum(-1) < 37).all()
    checked = 0
    for s in range(steps):
        x = tokens.copy()
        x[:, 5:] = np.where(um < s, tokens[:, 5:], config.mask_token_id)
        scaled = fn(x)[:, 5:] / np.float32(temp)
        rows, cols = np.nonzero(um == s)
        keep = agrpo_keep(scaled[rows, cols], top_k, top_p)
        np.testing.assert_array_equal(keep_all[rows, cols], keep)
        lp, ent = truncated_stats(scaled[rows, cols], keep, tokens[rows, 5 + cols])
        np.testing.assert_allclose(np.asarray(r.logp)[rows, cols], lp, atol=1e-5)
        np.testing.assert_allclose(np.asarray(r.entropy)[rows, cols], ent, atol=1e-5)
        checked += len(rows)
    assert checked == 4 * gen


# ----------------------------------------------------------------------------------------------------------------
# Gumbel-max, randomness, errors

def test_gumbel_argmax_frequencies():
    """Sample frequencies of argmax(l/T + g) over a truncated set match the truncated softmax(l/T)."""
    logits = jnp.asarray([1.0, 0.2, -0.5, 2.0, 0.0, -3.0], jnp.float32)
    temp = 0.7
    keep = jnp.asarray([True, True, True, True, False, True])
    n = 200_000
    scaled = jnp.broadcast_to(scale_logits(logits, temp), (1, n, 6))
    samples = np.asarray(gumbel_argmax(scaled, gumbel_noise(jax.random.key(0), (1, n, 6)),
                                       jnp.broadcast_to(keep, (1, n, 6))))
    freq = np.bincount(samples.ravel(), minlength=6) / n
    p = np.where(keep, np.exp(np.asarray(logits, np.float64) / temp), 0.0)
    p /= p.sum()
    assert freq[4] == 0
    assert np.all(np.abs(freq - p) <= 4.5 * np.sqrt(p * (1 - p) / n)), (freq, p)


def test_rng_reproducible_and_seed_dependent(tiny):
    config, params = tiny
    prompt = np.random.default_rng(0).integers(0, 150, (2, 8))
    kw = dict(steps=8, gen_length=16, block_length=8, temperature=1.0, top_k=40, remasking="random", record=True)
    a = generate(config, params, prompt, rng=jax.random.key(1), **kw)
    b = generate(config, params, prompt, rng=jax.random.key(1), **kw)
    c = generate(config, params, prompt, rng=jax.random.key(2), **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logp, b.logp)
    assert not np.array_equal(a.tokens, c.tokens)


@pytest.mark.parametrize("kwargs,match", [
    (dict(gen_length=16, block_length=5, steps=8), "multiple of block_length"),
    (dict(gen_length=16, block_length=8, steps=7), "not divisible by the number of blocks"),
    (dict(gen_length=120, block_length=8, steps=15), "max_sequence_length"),
    (dict(gen_length=16, block_length=8, steps=8, remasking="topk"), "remasking"),
    (dict(gen_length=16, block_length=8, steps=8, top_p=0.0), "top_p"),
    (dict(gen_length=16, block_length=8, steps=8, temperature=0.5), "rng"),
    (dict(gen_length=16, block_length=8, steps=8, record=True, confidence_eos_eot_inf=True), "confidence_eos"),
])
def test_bad_inputs_raise_before_compiling(kwargs, match, tiny, uncompiled_generate):
    config, params = tiny
    with pytest.raises(SamplerInputError, match=match):
        uncompiled_generate(config, params, np.zeros((2, 16), np.int64), **kwargs)


def test_sampler_config_argument_equals_keywords(tiny, golden):
    config, params = tiny
    kw = dict(steps=4, gen_length=8, block_length=4, temperature=0.5, top_k=5, top_p=0.9, record=True)
    by_kw = generate(config, params, golden["gen_prompt"], rng=jax.random.key(0), **kw)
    by_config = generate(config, params, golden["gen_prompt"], sampler_config(**kw), rng=jax.random.key(0))
    for a, b in zip(jax.tree.leaves(by_kw), jax.tree.leaves(by_config)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(SamplerInputError, match="not both"):
        generate(config, params, golden["gen_prompt"], sampler_config(**kw), steps=4)  # raises before compiling


@pytest.mark.parametrize("top_k", [None, 5])
def test_raw_prngkey_equals_its_typed_key(tiny, golden, top_k):
    """A raw uint32 key (jax.random.PRNGKey, as the trainer passes) samples exactly like the same typed key; it was
    once mistaken for replayed noise and failed to broadcast."""
    config, params = tiny
    kw = dict(steps=4, gen_length=8, block_length=4, temperature=0.7, top_k=top_k, remasking="random", record=True)
    raw = generate(config, params, golden["gen_prompt"], rng=jax.random.PRNGKey(3), **kw)
    typed = generate(config, params, golden["gen_prompt"], rng=jax.random.wrap_key_data(jax.random.PRNGKey(3)), **kw)
    for a, b in zip(jax.tree.leaves(raw), jax.tree.leaves(typed)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("temp", [0.0, 0.8])
def test_eos_options_match_reference(temp, tiny):
    """logits_eos_inf and confidence_eos_eot_inf (with the reference's aliasing quirk) on an EOS-biased model;
    the hard-coded 8B ids are replaced by the tiny vocabulary's EOS and another id."""
    config, params = tiny
    params = favour(params, config.eos_token_id, like=59, scale=1.05)
    rng = np.random.default_rng(2)
    prompt = rng.integers(0, 150, (2, 8))
    kw = dict(steps=8, gen_length=16, block_length=8, temperature=temp)
    gumbel_u = rng.random((8, 2, 24, config.embedding_size))
    ids = dict(eos_id=config.eos_token_id, eot_id=151)
    for opts in (dict(logits_eos_inf=True), dict(confidence_eos_eot_inf=True), {}):
        want = llada_reference(logits_fn(config, params), prompt, mask_id=config.mask_token_id, gumbel_u=gumbel_u,
                               **kw, **opts, **ids)[-1]
        got = generate(config, params, prompt, eos_logit_id=ids["eos_id"], eot_logit_id=ids["eot_id"],
                       draws={"gumbel": gumbel_u}, **kw, **opts)
        np.testing.assert_array_equal(got.tokens, want, err_msg=str(opts))
        has_eos = (want[:, 8:] == config.eos_token_id).any()
        if not opts or "logits_eos_inf" in opts:
            assert has_eos == (not opts), "EOS should appear unless its logit is -inf"


# ----------------------------------------------------------------------------------------------------------------
# Sharding and bench

SHARDED_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from dllm_rl.checkpoint import load_hf
from dllm_rl.parallel.mesh import make_mesh
from dllm_rl.sampling import generate
from dllm_rl.sampling.draws import row_keys
assert len(jax.devices()) == 8
config, params = load_hf(sys.argv[1])
prompt = np.random.default_rng(0).integers(0, 150, (8, 8))
kw = dict(steps=8, gen_length=16, block_length=8, temperature=0.9, top_k=30, top_p=0.95, remasking="random",
          record=True, rng=jax.random.key(3))
single = generate(config, params, prompt, **kw)
mesh = make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
sharded = generate(config, params, prompt, mesh=mesh, **kw)
jax.block_until_ready(sharded)
keyed = dict(kw, row_keys=True, rng=row_keys(jax.random.key(3), np.arange(8)))
keyed_single, keyed_sharded = (generate(config, params, prompt, mesh=m, **keyed) for m in (None, mesh))
print(json.dumps({
    "row_keys": bool(np.array_equal(keyed_single.tokens, keyed_sharded.tokens)),
    "row_keys_split": list(np.atleast_1d(keyed_sharded.tokens.sharding.spec[0])),
    "tokens": bool(np.array_equal(single.tokens, sharded.tokens)),
    "unmask": bool(np.array_equal(single.unmask_step, sharded.unmask_step)),
    "bits": bool(np.array_equal(single.truncation.bits, sharded.truncation.bits)),
    "logp": float(np.abs(np.asarray(single.logp) - np.asarray(sharded.logp)).max()),
    "batch_axes": list(np.atleast_1d(sharded.tokens.sharding.spec[0])),
    "other_axes": [a for a in sharded.tokens.sharding.spec[1:] if a is not None],
    "ndev": len(sharded.tokens.sharding.device_set)}))
"""


def test_sharded_generate_equals_unsharded(tiny_dir):
    env = fake_devices_env(8, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(tiny_dir)], env=env, capture_output=True,
                         text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["tokens"] and res["unmask"] and res["bits"], res
    assert res["row_keys"] and res["row_keys_split"] == ["data", "fsdp"], res  # one key per row, split with the rows
    assert res["logp"] < 1e-5 and res["ndev"] == 8, res
    assert res["batch_axes"] == ["data", "fsdp"] and res["other_axes"] == [], res  # rows split, positions whole


def test_bench_sampler_cli_tiny():
    out = subprocess.run([sys.executable, "-m", "experiments.bench", "sampler", "--model", "tiny", "--batch", "2",
                          "--prompt_len", "8", "--gen_length", "16", "--block_length", "8", "--steps", "8",
                          "--top_k", "20", "--top_p", "0.95", "--temperature", "0.6", "--record", "--repeats", "1",
                          "--dtype", "float32"],
                         env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("seconds", "tokens_per_s", "ms_per_step", "mfu", "steps_run"):
        assert key in res, res
    assert res["seconds"] > 0 and res["steps_run"] <= 8
