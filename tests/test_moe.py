"""models/moe.py: float32 top-k routing and the grouped dropless dispatch against a per-token NumPy loop."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl.models import moe as moe_lib
from tests.helpers.xla_env import fake_devices_env

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
    weights, experts = (np.asarray(a) for a in moe_lib.route(moe, jnp.asarray(h), jnp.asarray(layer["router"])))
    probs = np.asarray(jax.nn.softmax(jnp.asarray(h) @ layer["router"], axis=-1))
    assert experts.shape == (2, 3, 2) and (experts[..., 0] != experts[..., 1]).all()
    np.testing.assert_allclose(weights, np.take_along_axis(probs, experts, -1), rtol=1e-6)
    chosen = np.zeros(probs.shape, bool)
    np.put_along_axis(chosen, experts, True, -1)
    # every kept probability is at least every dropped one
    assert (np.where(chosen, probs, np.inf).min(-1) >= np.where(chosen, -np.inf, probs).max(-1)).all()


def test_router_softmax_is_float32_under_bfloat16():
    moe, layer, h = _setup()
    weights, _ = moe_lib.route(moe, jnp.asarray(h, jnp.bfloat16), jnp.asarray(layer["router"], jnp.bfloat16))
    assert weights.dtype == jnp.bfloat16  # combined in the compute dtype, as the reference casts them back
    bf16_logits = (jnp.asarray(h, jnp.bfloat16) @ jnp.asarray(layer["router"], jnp.bfloat16)).astype(jnp.float32)
    want = jax.lax.top_k(jax.nn.softmax(bf16_logits, axis=-1), 2)[0].astype(jnp.bfloat16)
    np.testing.assert_array_equal(weights, want)


def test_grouped_experts_of_a_slice_of_experts_add_up():
    """The dispatch restricted to experts [first, first + El) (what one expert-parallel device runs) sums, over the
    slices, to the dispatch over all experts; assignments outside a slice add nothing."""
    moe, layer, h = _setup(shared=0)

    @jax.jit
    def whole_and_parts(x, router, kernels):
        weights, experts = moe_lib.route(moe, x, router)
        return (moe_lib.grouped_experts(x, weights, experts, *kernels),
                sum(moe_lib.grouped_experts(x, weights, experts, *[w[s:s + 2] for w in kernels], first_expert=s)
                    for s in (0, 2, 4)))

    kernels = [jnp.asarray(layer[n]) for n in ("expert_ff_proj", "expert_up_proj", "expert_ff_out")]
    whole, parts = whole_and_parts(jnp.asarray(h.reshape(6, D)), jnp.asarray(layer["router"]), kernels)
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole, _reference(moe, layer, h).reshape(6, D), rtol=1e-5, atol=1e-5)


def test_axes_name_every_leaf_with_an_expert_axis():
    moe, layer, _ = _setup()
    axes = moe_lib.param_logical_axes(moe)
    assert axes.keys() == layer.keys()
    assert all(len(axes[name]) == layer[name].ndim for name in layer)
    assert all(axes[name][0] == "expert" for name in layer if name.startswith("expert_"))


def test_config_validation():
    with pytest.raises(ValueError, match="n_experts_per_tok"):
        moe_lib.MoEConfig(n_experts=4, n_experts_per_tok=5, expert_hidden_size=8, layers=(True,))


EXPERT_PARALLEL = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding
    from dllm_rl.models import moe as moe_lib
    from dllm_rl.parallel import mesh as pm
    assert len(jax.devices()) == 8
    moe = moe_lib.MoEConfig(n_experts=8, n_experts_per_tok=2, expert_hidden_size=8, layers=(True,),
                            shared_expert_hidden_size=4)
    rng = np.random.default_rng(0)
    layer = {n: jnp.asarray(rng.normal(size=s) / np.sqrt(s[-2]), jnp.float32)
             for n, s in moe_lib.param_shapes(moe, 16).items()}
    h = jnp.asarray(rng.normal(size=(8, 5, 16)), jnp.float32)
    ct = jnp.asarray(rng.normal(size=(8, 5, 16)), jnp.float32)
    loss = lambda l, x: jnp.sum(moe_lib.moe_ffn(moe, x, l) * ct)
    program = lambda: jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))  # a fresh trace per rules table
    want = program()(layer, h)  # no mesh context: every expert on one device
    axes = moe_lib.param_logical_axes(moe)
    ep = tuple(dict(pm.DEFAULT_RULES, expert="fsdp").items())
    cases = [({"fsdp": 8}, pm.DEFAULT_RULES, (None, "fsdp", None)),  # default: XLA partitions the grouped dispatch
             ({"fsdp": 8}, ep, ("fsdp", "fsdp", None)),  # experts and rows over fsdp
             ({"data": 2, "fsdp": 2, "tensor": 2}, ep, ("fsdp", ("data", "fsdp"), "tensor")),
             ({"data": 2, "fsdp": 1, "tensor": 4}, tuple(dict(pm.DEFAULT_RULES, expert="tensor", mlp=None).items()),
              ("tensor", "data", None))]  # experts over an axis that does not split the rows
    for spec, rules, layout in cases:
        mesh = pm.make_mesh(spec)
        assert moe_lib.expert_parallel_axes(mesh, rules) == layout, (spec, moe_lib.expert_parallel_axes(mesh, rules))
        placed = {n: jax.device_put(v, NamedSharding(mesh, pm.logical_to_spec(axes[n], rules, mesh)))
                  for n, v in layer.items()}
        with jax.set_mesh(mesh), pm.use_rules(rules):
            lowered = program().lower(placed, jax.device_put(h, pm.batch_sharding(mesh, 3, rules)))
            got = lowered.compile()(placed, jax.device_put(h, pm.batch_sharding(mesh, 3, rules)))
        hlo = lowered.as_text()
        assert ("all_gather" in hlo) == (layout[0] == "fsdp") and ("reduce_scatter" in hlo) == (layout[0] == "fsdp"), spec
        for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
            err = float(np.max(np.abs(np.asarray(g) - np.asarray(w))) / max(1e-12, float(np.max(np.abs(np.asarray(w))))))
            assert err < 1e-5, (spec, err)
    print("EXPERT_PARALLEL_OK")
""")


@pytest.mark.slow  # 8-device CPU compiles of three layouts: about 40 s alone on 2 cores
def test_expert_parallel_layer_equals_the_unsharded_one_on_8_fake_devices():
    """Output and gradients (params and input) of the MoE layer equal the single-device layer's: under the default
    rules (experts not split; XLA partitions the grouped dispatch), with experts split over 'fsdp' (tokens gathered
    and scattered back), with the MLP width also over 'tensor', and with experts over an axis the rows are not
    split on."""
    env = fake_devices_env(8, fast_compile=True)
    result = subprocess.run([sys.executable, "-c", EXPERT_PARALLEL], env=env, capture_output=True, text=True,
                            timeout=600, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert "EXPERT_PARALLEL_OK" in result.stdout, result.stderr[-3000:]
