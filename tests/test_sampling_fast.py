"""Fast (cached) sampling mode: the cached forward against the full one, outputs against a float64 NumPy
reference of the stale-cache sampler, confidence-threshold parallel decoding, input errors. (The exact
sampler's own tests are in test_sampling.py.)"""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from dllm_rl.checkpoint import load_hf, to_hf_tensors
from dllm_rl.models import llada
from dllm_rl.sampling import SamplerInputError, generate
from tests.helpers import ref_fast_llada
from tests.helpers.golden_runs import golden_run


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_hf(tiny_dir)


@pytest.fixture(scope="module")
def tiny_gqa(tiny_gqa_dir):
    return load_hf(tiny_gqa_dir)


@pytest.fixture(scope="module")
def golden_prompt(tiny_dir):
    return np.load(tiny_dir / "golden.npz")["gen_prompt"]


def golden_ids_and_mask(golden_dir):
    """The fixture's forward input [2, 24] (mask tokens included) and a key-padding mask: row 0 left-padded by 3."""
    ids = np.load(golden_dir / "golden.npz")["input_ids"]
    mask = np.ones(ids.shape, np.int32)
    mask[0, :3] = 0
    return jnp.asarray(ids, jnp.int32), jnp.asarray(mask)


@pytest.mark.parametrize("model", ["main", "gqa"])
@pytest.mark.parametrize("padded", [False, True])
def test_window_forward_with_fresh_cache_equals_full_forward(model, padded, tiny, tiny_gqa, tiny_dir, tiny_gqa_dir):
    """K/V computed from the same full sequence: a window over the rest (prefix cache) or over one block (cache
    on both sides) reproduces the full forward; key padding applies to cached keys."""
    config, params = tiny if model == "main" else tiny_gqa
    ids, mask = golden_ids_and_mask(tiny_dir if model == "main" else tiny_gqa_dir)
    mask = mask if padded else None
    full = llada.forward(config, params, ids, mask)
    _, k, v = llada.hidden_states_and_kv(config, params, ids, mask)
    assert k.shape == v.shape == (config.n_layers, 2, 24, config.n_kv_heads, config.head_dim)

    p = 10  # prefix cache of positions < p, window = everything right of it
    got = llada.forward_window_at(config, params, ids[:, p:], p, k[:, :, :p], v[:, :, :p],
                                  jnp.broadcast_to(jnp.arange(24 - p), (2, 24 - p)),
                                  None if mask is None else mask[:, :p])
    np.testing.assert_allclose(got, full[:, p:], atol=1e-5, rtol=0)

    lo, hi = 8, 16  # window = one block; cached keys on both sides, the block's cached entries hidden
    outside = (jnp.arange(24) < lo) | (jnp.arange(24) >= hi)
    cache_mask = outside[None] if mask is None else (mask != 0) & outside[None]
    at_BxN = jnp.asarray([[0, 3, 7], [5, 1, 2]])  # logits only at these window positions
    got = llada.forward_window_at(config, params, ids[:, lo:hi], jnp.int32(lo), k, v, at_BxN,
                                  jnp.broadcast_to(cache_mask, (2, 24)))
    want = jnp.take_along_axis(full[:, lo:hi], at_BxN[..., None], axis=1)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)

    if padded:  # the padding reaches the cached keys: unmasking them changes the result
        loose = llada.forward_window_at(config, params, ids[:, p:], p, k[:, :, :p], v[:, :, :p],
                                        jnp.broadcast_to(jnp.arange(24 - p), (2, 24 - p)))
        assert np.abs(np.asarray(loose[0]) - np.asarray(full[0, p:])).max() > 1e-3


def test_prefix_only_cache_is_not_exact(tiny, tiny_dir):
    """Why the sampler builds the cache from the whole sequence: prefix K/V attend to the tokens right of them."""
    config, params = tiny
    ids, _ = golden_ids_and_mask(tiny_dir)
    p = 10
    full = llada.forward(config, params, ids)
    _, k, v = llada.hidden_states_and_kv(config, params, ids[:, :p])
    got = llada.forward_window_at(config, params, ids[:, p:], p, k, v,
                                  jnp.broadcast_to(jnp.arange(24 - p), (2, 24 - p)))
    assert np.abs(np.asarray(got) - np.asarray(full[:, p:])).max() > 1e-2


# ----------------------------------------------------------------------------------------------------------------
# Outputs against a float64 NumPy reference of both modes (tests/helpers/ref_fast_llada.py)

FAST_GOLDEN = [  # run, model, kwargs (the golden reference runs: 2 rows x 16 generated tokens, blocks of 8)
    ("t0_lowconf", "main", dict()),
    ("t0_lowconf", "gqa", dict()),
    ("t0_random", "main", dict(remasking="random")),
    ("t0_lowconf_cfg1", "main", dict(cfg_scale=1.0, attention_mask=True)),
    ("t08_lowconf", "main", dict(temperature=0.8)),
]


@pytest.mark.parametrize("run,model,kwargs", FAST_GOLDEN, ids=[f"{r}-{m}" for r, m, _ in FAST_GOLDEN])
def test_fast_on_golden_runs_matches_the_numpy_reference(run, model, kwargs, tiny_dir, tiny_gqa_dir):
    """Fast mode equals the NumPy reference's stale-cache sampler on the golden runs' draws. The reference's
    exact mode reproduces the official output, which fast mode's differs from (the cache goes stale after each
    block's first step; step 0 still equals the official one)."""
    folder = tiny_dir if model == "main" else tiny_gqa_dir
    config, params, g, prompt, kwargs = golden_run(folder, run, kwargs)
    r = generate(config, params, prompt, steps=8, gen_length=16, block_length=8, fast=True, **kwargs)
    tokens, unmask = np.asarray(r.tokens), np.asarray(r.unmask_step)
    after_step0 = np.concatenate([prompt, np.where(unmask == 0, tokens[:, 8:], config.mask_token_id)], axis=1)
    np.testing.assert_array_equal(after_step0, g[f"gen_{run}_x_steps"][1])
    assert int(r.steps_run) == 8
    draws = kwargs.pop("draws") or {}
    reference = functools.partial(
        ref_fast_llada.generate, json.loads((folder / "config.json").read_text()),
        load_file(str(folder / "model.safetensors")), prompt, steps=8, gen_length=16, block_length=8,
        gumbel_u=draws.get("gumbel"), score_u=draws.get("score"), **kwargs)
    official = g[f"gen_{run}_out"]
    np.testing.assert_array_equal(reference(fast=False), official)
    np.testing.assert_array_equal(tokens, reference(fast=True))
    assert (tokens != official).any()


def test_fast_other_shape_padding_cfg_infill():
    """GQA model with 3 blocks, left padding, guidance and an infill prompt (the exact full-sequence step for
    positions left of the block): both modes equal the NumPy reference's, and differ from each other."""
    vocab = 37
    config = llada.LLaDAConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden_size=64,
                               vocab_size=vocab, embedding_size=vocab, max_sequence_length=64,
                               mask_token_id=vocab - 1, eos_token_id=vocab - 2, pad_token_id=vocab - 2)
    params = llada.init_params(config, jax.random.key(0))
    params = {**params, "lm_head": params["lm_head"] * 4.0}
    prompt = np.random.default_rng(1).integers(0, 35, (3, 6))
    prompt[1, :2] = config.pad_token_id
    prompt[2, 4] = config.mask_token_id
    mask = np.ones(prompt.shape, np.int32)
    mask[1, :2] = 0
    kw = dict(steps=12, gen_length=18, block_length=6, cfg_scale=0.5, attention_mask=mask)
    exact = np.asarray(generate(config, params, prompt, infill=True, **kw).tokens)
    fast = generate(config, params, prompt, fast=True, infill=True, **kw)
    assert int(fast.steps_run) == 12 and fast.tokens[2, 4] != config.mask_token_id
    reference = functools.partial(ref_fast_llada.generate, dataclasses.asdict(config),
                                  to_hf_tensors(config, params), prompt, **kw)
    np.testing.assert_array_equal(exact, reference(fast=False))
    np.testing.assert_array_equal(fast.tokens, reference(fast=True))
    assert (np.asarray(fast.tokens) != exact).any()


# ----------------------------------------------------------------------------------------------------------------
# Confidence-threshold parallel decoding

def test_low_threshold_finishes_blocks_in_fewer_steps(tiny, golden_prompt):
    config, params = tiny
    r = generate(config, params, golden_prompt, steps=16, gen_length=16, block_length=8, fast=True,
                 parallel_threshold=0.05)
    tokens, unmask = np.asarray(r.tokens), np.asarray(r.unmask_step)
    assert int(r.steps_run) < 8 and (tokens != config.mask_token_id).all()
    assert unmask.max() == int(r.steps_run) - 1 and (unmask >= 0).all()
    assert all(len(np.unique(row)) < 16 for row in unmask)  # several positions per step


def test_threshold_one_is_top1_per_step(tiny, golden_prompt):
    """No probability exceeds 1: every step commits only its best candidate, as the schedule with steps=gen."""
    config, params = tiny
    kw = dict(gen_length=16, block_length=8, fast=True)
    thr = generate(config, params, golden_prompt, steps=2, parallel_threshold=1.0, **kw)
    top1 = generate(config, params, golden_prompt, steps=16, **kw)
    np.testing.assert_array_equal(thr.tokens, top1.tokens)
    np.testing.assert_array_equal(thr.unmask_step, top1.unmask_step)
    assert int(thr.steps_run) == 16


@pytest.mark.parametrize("kwargs,match", [
    (dict(fast=True, record=True, temperature=0.5), "record"),
    (dict(parallel_threshold=0.9), "fast=True"),
    (dict(fast=True, parallel_threshold=0.9, remasking="random"), "low_confidence"),
    (dict(fast=True, parallel_threshold=1.5), r"\[0, 1\]"),
    (dict(fast=True, parallel_threshold=0.9, draws={}), "draws"),
])
def test_fast_bad_inputs_raise_before_compiling(kwargs, match, tiny, uncompiled_generate):
    config, params = tiny
    with pytest.raises(SamplerInputError, match=match):
        uncompiled_generate(config, params, np.zeros((2, 8), np.int64), steps=8, gen_length=16, block_length=8,
                            rng=jax.random.key(0), **kwargs)
