"""models.tpu_attention: the splash kernel (Pallas interpret mode on CPU) equals the einsum attention path."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl.models import layers, llada
from dllm_rl.models.tpu_attention import splash_attention


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_splash_equals_einsum_attention_with_key_padding(heads, kv_heads):
    b, t, hd = 2, 128, 8
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (b, t, heads, hd), jnp.float32)
    k = jax.random.normal(kk, (b, t, kv_heads, hd), jnp.float32)
    v = jax.random.normal(kv, (b, t, kv_heads, hd), jnp.float32)
    mask = jnp.asarray(np.arange(t)[None, :] >= np.array([[0], [37]]), jnp.int32)  # row 1: 37 left-padded keys
    want = layers.attention(q, k, v, mask, None)
    got = splash_attention(q, k, v, mask, "splash_interpret")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(splash_attention(q, k, v, None, "splash_interpret")),
                               np.asarray(layers.attention(q, k, v, None, None)), rtol=2e-5, atol=2e-5)


def test_model_forward_and_gradient_through_splash():
    config = llada.LLaDAConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden_size=64, vocab_size=40,
                               embedding_size=40, mask_token_id=36, eos_token_id=30, pad_token_id=30)
    params = llada.init_params(config, jax.random.key(1))
    ids = jax.random.randint(jax.random.key(2), (2, 128), 0, 36)
    mask = jnp.asarray(np.arange(128)[None, :] >= np.array([[0], [3]]), jnp.int32)

    def loss(p, impl):
        return jnp.sum(llada.forward(config, p, ids, mask, attention_impl=impl, remat="full")[:, 3:] ** 2)

    np.testing.assert_allclose(np.asarray(llada.forward(config, params, ids, mask, attention_impl="splash_interpret")),
                               np.asarray(llada.forward(config, params, ids, mask)), rtol=1e-4, atol=1e-4)
    g_splash = jax.grad(loss)(params, "splash_interpret")
    g_ref = jax.grad(loss)(params, None)
    for a, r in zip(jax.tree.leaves(g_splash), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-3, atol=1e-3 * float(jnp.abs(r).max()))
