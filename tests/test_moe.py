"""models/moe.py: float32 top-k routing and the dense dropless dispatch against a per-token NumPy loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl.models import moe as moe_lib

D = 12


def _setup(norm_topk_prob=False, shared=5, seed=0):
    moe = moe_lib.MoEConfig(n_experts=6, n_experts_per_tok=2, expert_hidden_size=7, layers=(True,),
                            shared_expert_hidden_size=shared, norm_topk_prob=norm_topk_prob)
    rng = np.random.default_rng(seed)
    layer = {name: rng.normal(size=shape).astype(np.float32) / np.sqrt(shape[-2])
             for name, shape in moe_lib.param_shapes(moe, D).items()}
    h = rng.normal(size=(2, 3, D)).astype(np.float32)
    return moe, layer, h


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _reference(moe, layer, h):
    """Per token, in float64: softmax over all experts, the k largest, Σ p_e · expert_e(x) (+ shared expert)."""
    out = np.zeros(h.shape)
    for b, t in np.ndindex(h.shape[:2]):
        x = h[b, t].astype(np.float64)
        logits = x @ layer["router"]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = np.argsort(-probs)[:moe.n_experts_per_tok]
        weights = probs[top] / (probs[top].sum() if moe.norm_topk_prob else 1.0)
        for e, w in zip(top, weights):
            hidden = _silu(x @ layer["expert_ff_proj"][e]) * (x @ layer["expert_up_proj"][e])
            out[b, t] += w * (hidden @ layer["expert_ff_out"][e])
        if moe.shared_expert_hidden_size:
            out[b, t] += (_silu(x @ layer["shared_ff_proj"]) * (x @ layer["shared_up_proj"])) @ layer["shared_ff_out"]
    return out


@pytest.mark.parametrize("norm_topk_prob, shared", [(False, 5), (True, 5), (False, 0)])
def test_moe_ffn_matches_a_per_token_loop(norm_topk_prob, shared):
    moe, layer, h = _setup(norm_topk_prob, shared)
    got = jax.jit(lambda l, x: moe_lib.moe_ffn(moe, x, l))(layer, jnp.asarray(h))
    np.testing.assert_allclose(got, _reference(moe, layer, h), rtol=1e-5, atol=1e-5)


def test_route_keeps_the_top_k_softmax_probabilities():
    moe, layer, h = _setup()
    weights = np.asarray(moe_lib.route(moe, jnp.asarray(h), jnp.asarray(layer["router"])))
    probs = np.asarray(jax.nn.softmax(jnp.asarray(h) @ layer["router"], axis=-1))
    assert ((weights > 0).sum(-1) == 2).all()
    chosen = weights > 0
    np.testing.assert_allclose(weights[chosen], probs[chosen], rtol=1e-6)
    # every kept probability is at least every dropped one
    assert (np.where(chosen, probs, np.inf).min(-1) >= np.where(chosen, -np.inf, probs).max(-1)).all()


def test_router_softmax_is_float32_under_bfloat16():
    moe, layer, h = _setup()
    weights = moe_lib.route(moe, jnp.asarray(h, jnp.bfloat16), jnp.asarray(layer["router"], jnp.bfloat16))
    assert weights.dtype == jnp.bfloat16  # combined in the compute dtype, as the reference casts them back
    bf16_logits = (jnp.asarray(h, jnp.bfloat16) @ jnp.asarray(layer["router"], jnp.bfloat16)).astype(jnp.float32)
    want = jax.lax.top_k(jax.nn.softmax(bf16_logits, axis=-1), 2)[0].astype(jnp.bfloat16)
    np.testing.assert_array_equal(jnp.sort(weights, axis=-1)[..., -2:], jnp.sort(want, axis=-1))


def test_axes_name_every_leaf_with_an_expert_axis():
    moe, layer, _ = _setup()
    axes = moe_lib.param_logical_axes(moe)
    assert axes.keys() == layer.keys()
    assert all(len(axes[name]) == layer[name].ndim for name in layer)
    assert all(axes[name][0] == "expert" for name in layer if name.startswith("expert_"))


def test_config_validation():
    with pytest.raises(ValueError, match="n_experts_per_tok"):
        moe_lib.MoEConfig(n_experts=4, n_experts_per_tok=5, expert_hidden_size=8, layers=(True,))
