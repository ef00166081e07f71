"""models/decoder.py: mixed dense/MoE layer runs, aligned gathers and windows, layouts, across the families."""
import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl import models
from dllm_rl.models import decoder, layers
from dllm_rl.models.llada_moe import LLaDAMoEConfig
from tests.helpers import family_goldens as fg


def _mixed_config(pattern=(0, 1, 1, 0)):
    raw = json.loads((fg.FAMILIES_DIR / "llada_moe" / "config.json").read_text())
    return LLaDAMoEConfig.from_hf_config(dict(raw, num_hidden_layers=len(pattern), moe_layer_freq=list(pattern)))


def test_mixed_layers_split_the_ffn_stacks():
    config = _mixed_config()
    shapes = models.param_shapes(config)
    assert shapes["layers"]["q_proj"] == (4, 64, 64) and "ff_proj" not in shapes["layers"]
    assert shapes["dense_ffn"]["ff_proj"] == (2, 64, 128)
    assert shapes["moe_ffn"]["expert_ff_out"] == (2, 8, 32, 64)
    assert decoder._runs(config) == [(0, 1, "dense"), (1, 3, "moe"), (3, 4, "dense")]


@pytest.mark.parametrize("pattern", [(0, 1, 1, 0), (1, 0)])
def test_mixed_layers_equal_running_each_layer_alone(pattern):
    """The run scans over static slices equal a chain of one-layer models built from layer i's own params."""
    config = _mixed_config(pattern)
    params = models.init_params(config, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (2, 7), 0, config.vocab_size)
    mask = jnp.ones((2, 7), jnp.int32).at[0, :2].set(0)
    kinds, seen = decoder.layer_kinds(config), {"dense": 0, "moe": 0}
    x = params["embed"][ids]
    for i, kind in enumerate(kinds):
        one = dataclasses.replace(config, n_layers=1, moe=dataclasses.replace(config.moe, layers=(kind == "moe",)))
        layer = {**jax.tree.map(lambda a: a[i:i + 1], params["layers"]),
                 **jax.tree.map(lambda a: a[seen[kind]:seen[kind] + 1], params[f"{kind}_ffn"])}
        seen[kind] += 1
        x, _ = decoder._layers(one, {"layers": layer}, x, jnp.arange(7), mask)
    want = layers.rms_norm(x, params["ln_f"], config.rms_norm_eps) @ params["lm_head"]
    np.testing.assert_allclose(models.forward(config, params, ids, mask), want, rtol=1e-6, atol=1e-6)


def test_mixed_layers_emit_every_layer_and_remat():
    config = _mixed_config()
    params = models.init_params(config, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (2, 7), 0, config.vocab_size)
    _, states = models.hidden_states(config, params, ids, return_all=True)
    _, k, v = models.hidden_states_and_kv(config, params, ids)
    assert states.shape == (5, 2, 7, 64) and k.shape == v.shape == (4, 2, 7, 4, 16)
    config = _mixed_config((1, 0))
    params = models.init_params(config, jax.random.key(0))
    loss = lambda p, r: jnp.sum(models.forward(config, p, ids[:1], remat=r)[:, 2:] ** 2)
    chex.assert_trees_all_close(jax.grad(loss)(params, "full"), jax.grad(loss)(params, "none"), rtol=1e-4,
                                atol=1e-3)  # gradients up to about 15: float32 summation order


@pytest.mark.parametrize("family", ["dream", "a2d_qwen3", "llada_moe"])
def test_jit_and_forward_at_agree_with_forward(family):
    config, params, golden = fg.load(family)
    ids, mask = jnp.asarray(golden["input_ids"]), jnp.asarray(golden["attention_mask"])
    full = models.forward(config, params, ids, mask)
    chex.assert_trees_all_close(jax.jit(lambda p: models.forward(config, p, ids, mask))(params), full,
                                rtol=1e-6, atol=1e-6)
    pos = jnp.asarray([[5, 19], [0, 7], [3, 11]])
    np.testing.assert_allclose(models.forward_at(config, params, ids, pos, mask),
                               np.take_along_axis(np.asarray(full), np.asarray(pos)[..., None], axis=1),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", ["dream", "a2d_qwen3", "llada_moe"])
def test_window_on_an_exact_cache_equals_forward_at(family):
    """The sampler's cached step, per family: a window run on the full-sequence K/V cache gives `forward_at`'s
    aligned logits. A shifted family (Dream) starts the window one token early; a padding-skipping one passes
    the window's RoPE positions."""
    config, params, golden = fg.load(family)
    ids, mask = jnp.asarray(golden["input_ids"]), jnp.asarray(golden["attention_mask"])
    t, start, n = ids.shape[1], 10, 5
    lo = start - int(config.logit_shift)
    _, k, v = models.hidden_states_and_kv(config, params, ids, mask)
    outside = ((jnp.arange(t) < lo) | (jnp.arange(t) >= start + n))[None]
    token_positions = jnp.broadcast_to(models.rope_positions(config, mask, t), ids.shape)[:, lo:start + n]
    wpos = jnp.broadcast_to(jnp.arange(start - lo, start - lo + n), (3, n))
    got = models.forward_window_at(config, params, ids[:, lo:start + n], lo, k, v, wpos, (mask != 0) & outside,
                                   token_positions_BxN=token_positions)
    want = models.forward_at(config, params, ids, jnp.broadcast_to(start + jnp.arange(n), (3, n)), mask)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if config.positions_skip_padding:  # the row-0 padding shifts Dream's positions: 0..N-1 from lo is wrong
        plain = models.forward_window_at(config, params, ids[:, lo:start + n], lo, k, v, wpos,
                                         (mask != 0) & outside)
        assert np.max(np.abs(np.asarray(plain[0]) - np.asarray(want[0]))) > 1e-2


@pytest.mark.parametrize("family", ["llada", "dream", "a2d_qwen3", "llada_moe", "mixed"])
def test_layout_trees_match(family):
    config = _mixed_config() if family == "mixed" else (
        models.config_from_hf(fg.FAMILIES_DIR / family) if family != "llada"
        else models.config_from_hf(fg.FAMILIES_DIR.parent / "llada_tiny"))
    shapes, axes = models.param_shapes(config), models.param_logical_axes(config)
    is_shape = lambda s: isinstance(s, tuple)
    assert jax.tree.structure(shapes, is_leaf=is_shape) == jax.tree.structure(axes, is_leaf=is_shape)
    for shape, names in zip(jax.tree.leaves(shapes, is_leaf=is_shape), jax.tree.leaves(axes, is_leaf=is_shape)):
        assert len(shape) == len(names)
    params = models.init_params(config, jax.random.key(0))
    assert jax.tree.map(lambda a: a.shape, params) == shapes
    assert config.num_params == sum(a.size for a in jax.tree.leaves(params))
    if config.qkv_bias:
        assert not np.any(params["layers"]["q_bias"])


def test_explicit_head_dim_needs_no_divisible_width():
    config = models.DecoderConfig(d_model=60, n_layers=1, n_heads=4, n_kv_heads=2, mlp_hidden_size=8,
                                  vocab_size=10, embedding_size=10, explicit_head_dim=8)
    assert config.head_dim == 8 and models.param_shapes(config)["layers"]["q_proj"] == (1, 60, 32)
    with pytest.raises(models.ConfigError, match="not divisible"):
        models.DecoderConfig(d_model=60, n_layers=1, n_heads=8, n_kv_heads=2, mlp_hidden_size=8, vocab_size=10,
                             embedding_size=10)
