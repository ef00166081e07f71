"""LLaDA forward: golden parity, float64 NumPy reference, behaviour, config parsing."""
import json
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dllm_rl.assets import LLADA_8B_META_DIR
from dllm_rl.checkpoint import load_hf
from dllm_rl.models import llada
from tests.helpers import llada_numpy
from tests.helpers.llada_numpy import tiny_config, write_hf_dir


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("which", ["tiny_dir", "tiny_gqa_dir"])
def test_golden_logits_and_hidden_states(which, request):
    path = request.getfixturevalue(which)
    config, params = load_hf(path)
    golden = np.load(path / "golden.npz")
    ids = jnp.asarray(golden["input_ids"])
    final, states = llada.hidden_states(config, params, ids, return_all=True)
    assert _rel(states, golden["hidden_states"]) < 1e-4
    assert _rel(llada.lm_head(params, final), golden["logits"]) < 1e-4
    assert _rel(llada.forward(config, params, ids), golden["logits"]) < 1e-4


@settings(max_examples=6, deadline=None)
@given(n_layers=st.integers(1, 3), n_heads=st.sampled_from([2, 4]), group=st.sampled_from([1, 2]),
       head_dim=st.sampled_from([8, 16]), vocab=st.integers(20, 70), seq=st.integers(1, 9),
       theta=st.sampled_from([10000.0, 500000.0]), seed=st.integers(0, 2**16))
def test_matches_float64_numpy_reference(n_layers, n_heads, group, head_dim, vocab, seq, theta, seed):
    cfg = tiny_config(n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_heads // group, d_model=n_heads * head_dim,
                      mlp_hidden_size=3 * head_dim, vocab_size=vocab, embedding_size=vocab, rope_theta=theta)
    rng = np.random.default_rng(seed)
    tensors = llada_numpy.random_tensors(cfg, rng)
    ids = rng.integers(0, vocab, (2, seq))
    config = llada.LLaDAConfig.from_hf_config(cfg)
    with tempfile.TemporaryDirectory() as d:
        write_hf_dir(d, cfg, tensors)
        _, params = load_hf(d)
    ref_logits, ref_states = llada_numpy.forward(cfg, tensors, ids)
    _, states = llada.hidden_states(config, params, jnp.asarray(ids), return_all=True)
    assert _rel(llada.forward(config, params, jnp.asarray(ids)), ref_logits) < 1e-4
    assert _rel(states, np.stack(ref_states)) < 1e-4


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_hf(tiny_dir)


def test_bidirectional_later_token_changes_earlier_logits(tiny):
    config, params = tiny
    ids = jnp.arange(12)[None] % config.vocab_size
    changed = ids.at[0, 10].set(7)
    a, b = llada.forward(config, params, ids), llada.forward(config, params, changed)
    assert float(jnp.abs(a[0, :10] - b[0, :10]).max()) > 1e-3


def test_padding_mask_hides_padded_keys(tiny):
    config, params = tiny
    rng = np.random.default_rng(0)
    row = rng.integers(0, config.vocab_size, 9)
    unpadded = llada.forward(config, params, jnp.asarray(row[None]))
    for pad_token in (config.pad_token_id, 3):  # whatever sits in padded slots must not matter
        ids = np.concatenate([np.full(4, pad_token), row])[None]
        mask = np.concatenate([np.zeros(4), np.ones(9)])[None].astype(np.int32)
        padded = llada.forward(config, params, jnp.asarray(ids), jnp.asarray(mask))
        # RoPE is relative, so shifting every real token by 4 positions leaves their scores unchanged.
        np.testing.assert_allclose(padded[0, 4:], unpadded[0], atol=2e-5, rtol=1e-5)
    ones = jnp.ones((1, 9), jnp.int32)
    np.testing.assert_array_equal(llada.forward(config, params, jnp.asarray(row[None]), ones), unpadded)


def test_forward_at_gathers_before_head(tiny):
    config, params = tiny
    ids = jnp.asarray(np.random.default_rng(1).integers(0, config.vocab_size, (2, 10)))
    pos = jnp.asarray([[0, 3, 9], [5, 5, 1]])
    full = llada.forward(config, params, ids)
    np.testing.assert_allclose(llada.forward_at(config, params, ids, pos),
                               np.take_along_axis(np.asarray(full), np.asarray(pos)[..., None], 1), atol=1e-5)


@pytest.fixture(scope="module")
def forward_grad(tiny):
    """remat -> gradient of a forward's mean square on the tiny model (jitted once per remat policy, shared)."""
    config, params = tiny
    ids = jnp.asarray(np.random.default_rng(2).integers(0, config.vocab_size, (1, 8)))
    grad = jax.jit(jax.grad(lambda p, r: jnp.mean(llada.forward(config, p, ids, remat=r) ** 2)), static_argnums=1)
    return lambda remat: grad(params, remat)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_same_gradients(forward_grad, remat):
    chex.assert_trees_all_close(forward_grad(remat), forward_grad("none"), rtol=1e-5, atol=1e-6)


def test_remat_reaches_the_cached_forwards(tiny):
    """hidden_states_and_kv and forward_window_at run the same layer scan: remat leaves values and grads alone."""
    config, params = tiny
    ids = jnp.asarray(np.random.default_rng(4).integers(0, config.vocab_size, (1, 8)))
    pos = jnp.broadcast_to(jnp.arange(3), (1, 3))

    def loss(p, remat):
        h, k, v = llada.hidden_states_and_kv(config, p, ids, remat=remat)
        logits = llada.forward_window_at(config, p, ids[:, 5:], 5, k[:, :, :5], v[:, :, :5], pos, remat=remat)
        return jnp.mean(h ** 2) + jnp.mean(logits ** 2)

    # Jitted, as in training: one program per remat policy.
    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    want_loss, want_grads = value_and_grad(params, "none")
    for remat in ("full", "dots"):
        got_loss, got_grads = value_and_grad(params, remat)
        np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
        chex.assert_trees_all_close(got_grads, want_grads, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="remat"):
        llada.hidden_states_and_kv(config, params, ids, remat="everything")


def test_bfloat16_params_and_compute(tiny):
    config, params = tiny
    golden = np.load("tests/fixtures/llada_tiny/golden.npz")
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    logits = jax.jit(lambda p, x: llada.forward(config, p, x))(bf16, jnp.asarray(golden["input_ids"]))
    assert logits.dtype == jnp.bfloat16
    assert _rel(logits.astype(jnp.float32), golden["logits"]) < 0.05
    mixed = llada.forward(config, params, jnp.asarray(golden["input_ids"]), compute_dtype=jnp.bfloat16)
    assert mixed.dtype == jnp.bfloat16


def test_dot_product_attention_path_matches(tiny):
    config, params = tiny
    ids = jnp.asarray(np.random.default_rng(3).integers(0, config.vocab_size, (2, 7)))
    mask = jnp.asarray([[0, 1, 1, 1, 1, 1, 1], [1] * 7])
    np.testing.assert_allclose(llada.forward(config, params, ids, mask, attention_impl="xla"),
                               llada.forward(config, params, ids, mask), atol=2e-5)


def test_real_8b_config_parses_to_8b_shapes(fixtures_dir):
    config = llada.LLaDAConfig.from_hf_config(LLADA_8B_META_DIR)
    assert (config.d_model, config.n_layers, config.n_heads, config.n_kv_heads) == (4096, 32, 32, 32)
    assert (config.mlp_hidden_size, config.vocab_size, config.embedding_size) == (12288, 126464, 126464)
    assert (config.mask_token_id, config.eos_token_id, config.rope_theta) == (126336, 126081, 500000.0)
    assert config.num_params == 8_015_581_184
    shapes = llada.param_shapes(config)
    assert shapes["layers"]["ff_proj"] == (32, 4096, 12288) and shapes["lm_head"] == (4096, 126464)


@pytest.mark.parametrize("key,value,needle", [
    ("alibi", True, "alibi"), ("weight_tying", True, "weight_tying"), ("block_group_size", 2, "block_group_size"),
    ("use_cache", True, "use_cache"), ("activation_type", "swiglu", "activation_type"),
    ("n_kv_heads", 3, "n_kv_heads"), ("d_model", 30, "n_heads"),
])
def test_unsupported_config_is_rejected(key, value, needle):
    with pytest.raises(llada.ConfigError, match=needle):
        llada.LLaDAConfig.from_hf_config(tiny_config(**{key: value}))


def test_config_errors_name_the_file(tmp_path):
    with pytest.raises(llada.ConfigError, match="config.json"):
        llada.LLaDAConfig.from_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(llada.ConfigError, match="not valid JSON"):
        llada.LLaDAConfig.from_hf_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 8}))
    with pytest.raises(llada.ConfigError, match="missing key"):
        llada.LLaDAConfig.from_hf_config(tmp_path)


def test_multi_query_attention_means_one_kv_head():
    assert llada.LLaDAConfig.from_hf_config(tiny_config(multi_query_attention=True)).n_kv_heads == 1


def test_8b_shapes_trace_without_allocating(fixtures_dir):
    """The real 8B config traces through forward/forward_at (abstract shapes only, nothing allocated)."""
    config = llada.LLaDAConfig.from_hf_config(LLADA_8B_META_DIR)
    params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.bfloat16), llada.param_shapes(config),
                          is_leaf=lambda s: isinstance(s, tuple))
    ids = jax.ShapeDtypeStruct((2, 384), jnp.int32)
    out = jax.eval_shape(lambda p, x: llada.forward(config, p, x, remat="full"), params, ids)
    assert out.shape == (2, 384, 126464) and out.dtype == jnp.bfloat16
    pos = jax.ShapeDtypeStruct((2, 3), jnp.int32)
    assert jax.eval_shape(lambda p, x, q: llada.forward_at(config, p, x, q), params, ids, pos).shape == (2, 3, 126464)
    assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(params)) == config.num_params
