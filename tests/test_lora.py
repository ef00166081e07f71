"""LoRA adapters: zero-init identity, low-rank path = merged kernels, gradients only for the adapters."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl.models import llada
from dllm_rl.models.lora import (LAYER_TARGETS, SHARED_EXPERT_TARGETS, TARGETS, LoRAConfig, LoRAWeight, apply_lora,
                                 init_lora, lora_logical_axes, merge_lora, policy_params, split_params)

CONFIG = llada.LLaDAConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden_size=48, vocab_size=40,
                           embedding_size=40, mask_token_id=39, eos_token_id=38, pad_token_id=38)
IDS = jax.random.randint(jax.random.key(9), (2, 7), 0, 40)
forward = jax.jit(lambda params: llada.forward(CONFIG, params, IDS))  # (eager scans are slow to dispatch)


@pytest.fixture(scope="module")
def base():
    return jax.jit(llada.init_params, static_argnums=0)(CONFIG, jax.random.key(0))


def randomized(lora, seed=1, scale=0.1):
    """Adapters with B ≠ 0 (a trained state)."""
    leaves, treedef = jax.tree.flatten(lora)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def test_fresh_adapters_leave_the_model_unchanged(base):
    cfg = LoRAConfig(rank=4, alpha=8.0, lm_head=True)
    lora = init_lora(base, cfg, jax.random.key(1))
    for path in LAYER_TARGETS:
        assert lora["layers"][path]["a"].shape == base["layers"][path].shape[:2] + (4,)
        assert lora["layers"][path]["b"].shape == (2, 4) + base["layers"][path].shape[2:]
        assert not np.asarray(lora["layers"][path]["b"]).any()
        bound = 1 / np.sqrt(base["layers"][path].shape[1])
        a = np.asarray(lora["layers"][path]["a"])
        assert np.abs(a).max() <= bound and np.abs(a).max() > 0.5 * bound  # PEFT's U(±1/√in)
    ref = forward(base)
    np.testing.assert_array_equal(forward(merge_lora(base, lora, cfg)), ref)
    np.testing.assert_allclose(forward(apply_lora(base, lora, cfg)), ref, atol=1e-6)


@pytest.mark.parametrize("lm_head", [False, True])
def test_low_rank_path_equals_merged_kernels(base, lm_head):
    cfg = LoRAConfig(rank=3, alpha=6.0, targets=("q_proj", "v_proj", "ff_out"), lm_head=lm_head)
    lora = randomized(init_lora(base, cfg, jax.random.key(1)))
    merged = merge_lora(base, lora, cfg)
    np.testing.assert_allclose(merged["layers"]["q_proj"], base["layers"]["q_proj"] + 2.0 * jnp.einsum(
        "nir,nro->nio", lora["layers"]["q_proj"]["a"], lora["layers"]["q_proj"]["b"]), rtol=1e-6, atol=1e-6)
    assert (merged["lm_head"] is base["lm_head"]) != lm_head
    assert merged["layers"]["k_proj"] is base["layers"]["k_proj"]
    out_merged = forward(merged)
    out_path = jax.jit(lambda b, a: llada.forward(CONFIG, apply_lora(b, a, cfg), IDS, remat="full"))(base, lora)
    np.testing.assert_allclose(out_path, out_merged, rtol=1e-5, atol=1e-5)
    assert not np.allclose(out_merged, forward(base), atol=1e-3)


def test_gradients_reach_only_the_adapters(base):
    cfg = LoRAConfig(rank=4, alpha=4.0, lm_head=True)
    trainable, frozen = split_params(base, cfg, jax.random.key(1))
    assert frozen is base

    def loss(tr, fr, c):
        return jnp.mean(llada.forward(CONFIG, policy_params(tr, fr, c), IDS) ** 2)

    grad_fn = jax.jit(jax.grad(loss), static_argnums=2)
    grads = grad_fn(trainable, frozen, cfg)
    assert jax.tree.structure(grads) == jax.tree.structure(trainable)
    # Fresh adapters: B = 0 so dL/dA = 0 while dL/dB ≠ 0, as in PEFT.
    for path in LAYER_TARGETS:
        assert not np.asarray(grads["layers"][path]["a"]).any()
        assert np.asarray(grads["layers"][path]["b"]).any()
    # Trained adapters: the low-rank path's gradient equals the merged kernels' gradient.
    trained = randomized(trainable)
    g_path = grad_fn(trained, frozen, cfg)
    g_merged = jax.jit(jax.grad(lambda tr: jnp.mean(forward(merge_lora(frozen, tr, cfg)) ** 2)))(trained)
    for a, b in zip(jax.tree.leaves(g_path), jax.tree.leaves(g_merged)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        assert np.asarray(a).any()
    # Full fine-tuning: everything is trainable.
    full, none = split_params(base, None)
    assert full is base and none is None and policy_params(full, none, None) is base


def test_bf16_base_with_float32_adapters(base):
    cfg = LoRAConfig(rank=2, alpha=2.0)
    base16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), base)
    lora = randomized(init_lora(base16, cfg, jax.random.key(1)), scale=0.05)
    out = forward(apply_lora(base16, lora, cfg))
    assert out.dtype == jnp.bfloat16
    ref = forward(merge_lora(base, lora, cfg))
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.15 * float(jnp.abs(ref).max()))
    # Tight enough that dropping the adapters fails: the bf16 error is measured against the adapters' effect on
    # the float32 forward of the same (bf16-rounded) weights.
    base32 = jax.tree.map(lambda x: x.astype(jnp.float32), base16)
    exact = np.asarray(forward(merge_lora(base32, lora, cfg)))
    effect = np.linalg.norm(exact - np.asarray(forward(base32)))
    error = lambda y: np.linalg.norm(np.asarray(y, np.float32) - exact) / effect
    assert error(out) < 0.25
    assert error(forward(base16)) > 0.9  # adapters dropped


def test_lora_weight_is_a_pytree_that_scans(base):
    cfg = LoRAConfig(rank=2, alpha=2.0, targets=("q_proj",))
    params = apply_lora(base, init_lora(base, cfg, jax.random.key(1)), cfg)
    w = params["layers"]["q_proj"]
    assert isinstance(w, LoRAWeight) and w.shape == base["layers"]["q_proj"].shape and w.dtype == jnp.float32
    assert len(jax.tree.leaves(w)) == 3


def test_logical_axes_and_errors():
    cfg = LoRAConfig(rank=2, targets=("q_proj",), lm_head=True)
    axes = lora_logical_axes(cfg, llada.param_logical_axes())
    assert axes == {"layers": {"q_proj": {"a": ("layers", "embed", "lora_rank"), "b": ("layers", "lora_rank", "heads")}},
                    "lm_head": {"a": ("embed", "lora_rank"), "b": ("lora_rank", "vocab")}}
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="unknown kernel.*'o_proj'"):
        LoRAConfig(targets=("q_proj", "o_proj"))
    with pytest.raises(ValueError, match="rng"):
        split_params({}, LoRAConfig())
    with pytest.raises(ValueError, match="frozen"):
        policy_params({}, None, LoRAConfig())


def test_merge_into_bf16_is_refused_unless_asked(base):
    cfg = LoRAConfig(rank=2, alpha=2.0, targets=("q_proj",))
    base16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), base)
    lora = init_lora(base16, cfg, jax.random.key(1))
    lora["layers"]["q_proj"]["b"] = jnp.full_like(lora["layers"]["q_proj"]["b"], 1e-4)  # a few steps at lr 5e-6
    with pytest.raises(ValueError, match="layers/q_proj is bfloat16"):
        merge_lora(base16, lora, cfg)
    exact = merge_lora(base16, lora, cfg, dtype=jnp.float32)["layers"]["q_proj"]
    lossy = merge_lora(base16, lora, cfg, dtype=jnp.bfloat16)["layers"]["q_proj"]
    w = base16["layers"]["q_proj"]
    assert exact.dtype == jnp.float32 and lossy.dtype == jnp.bfloat16
    assert np.mean(np.asarray(exact != w.astype(jnp.float32))) > 0.99
    assert np.mean(np.asarray(lossy == w)) > 0.5  # the bf16 merge leaves most of W unchanged


def test_released_config_adapts_the_modules_peft_adapts():
    """The AGRPO 8B config adapts the LM head too: PEFT's suffix rule makes the released 'ff_out' target hit the
    untied LM head `model.transformer.ff_out` as well as every layer's MLP output."""
    from dllm_rl.assets import LLADA_8B_META_DIR
    from dllm_rl.export.peft import lora_module_names, module_names, peft_adapted
    from experiments.run import parse_config

    cfg = parse_config(["experiments/configs/gsm8k_agrpo.gin"], [])
    config = llada.LLaDAConfig.from_hf_config(LLADA_8B_META_DIR / "config.json")
    assert cfg.lora.lm_head
    assert lora_module_names(cfg.lora, config) == peft_adapted(list(LAYER_TARGETS), module_names(config))


# ---------------------------------------------------------------------------------------------------------------
# LoRA dropout (training forwards only)


def test_dropout_acts_on_the_adapter_input_only():
    """x @ W + s·(drop(x) @ A) @ B with torch's inverted dropout; W's path and a key-less weight see plain x."""
    r = np.random.default_rng(0)
    w, a, b = (jnp.asarray(r.normal(size=s), jnp.float32) for s in ((6, 5), (6, 3), (3, 5)))
    x = jnp.asarray(r.normal(size=(4, 6)), jnp.float32)
    key, rate = jax.random.key(3), 0.25
    keep = np.asarray(jax.random.bernoulli(key, 1 - rate, x.shape))
    dropped = np.where(keep, np.asarray(x) / (1 - rate), 0.0)
    expected = np.asarray(x) @ np.asarray(w) + 2.0 * (dropped @ np.asarray(a)) @ np.asarray(b)
    np.testing.assert_allclose(x @ LoRAWeight(w, a, b, 2.0, key, rate), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x @ LoRAWeight(w, a, b, 2.0), x @ w + 2.0 * (x @ a) @ b, rtol=1e-6)
    assert 0 < (~keep).sum() < keep.size


def test_dropout_in_the_model_is_keyed_per_target_and_layer(base):
    cfg = LoRAConfig(rank=4, alpha=8.0, lm_head=True, dropout=0.3)
    lora = randomized(init_lora(base, cfg, jax.random.key(1)))
    plain = forward(merge_lora(base, lora, cfg))
    np.testing.assert_allclose(forward(apply_lora(base, lora, cfg)), plain, rtol=2e-4, atol=2e-4)  # no key: no drop
    dropped = forward(apply_lora(base, lora, cfg, jax.random.key(5)))
    np.testing.assert_array_equal(dropped, forward(apply_lora(base, lora, cfg, jax.random.key(5))))
    assert np.abs(np.asarray(dropped) - np.asarray(plain)).max() > 1e-3
    params = apply_lora(base, lora, cfg, jax.random.key(5))
    layer_keys = [jax.random.key_data(params["layers"][t].dropout_key) for t in LAYER_TARGETS]
    assert all(k.shape[0] == CONFIG.n_layers for k in layer_keys)
    rows = {tuple(np.asarray(k).ravel()) for keys in layer_keys for k in keys}
    assert len(rows) == CONFIG.n_layers * len(LAYER_TARGETS)  # independent draws, as PEFT's separate modules
    grads = jax.grad(lambda ad: jnp.sum(llada.forward(CONFIG, policy_params(ad, base, cfg, jax.random.key(5)),
                                                      IDS) ** 2))(lora)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    with pytest.raises(ValueError, match="dropout"):
        LoRAConfig(dropout=1.0)


# ---------------------------------------------------------------------------------------------------------------
# Every family: each family's own kernels (fixtures' real shapes), tied heads, MoE layers


def family_model(name: str):
    """(config, params) of a family's fixture folder (llada: tests/fixtures/llada_tiny); "llada_moe_mixed": the
    LLaDA-MoE fixture config with a dense first layer (random params), so dense FFN kernels sit in `dense_ffn`."""
    import json

    from dllm_rl import models
    from dllm_rl.checkpoint import load_hf
    from tests.helpers import family_goldens as fg

    if name == "llada_moe_mixed":
        raw = dict(json.loads((fg.FAMILIES_DIR / "llada_moe" / "config.json").read_text()), moe_layer_freq=[0, 1])
        config = models.config_from_hf(raw)
        return config, jax.jit(models.init_params, static_argnums=0)(config, jax.random.key(0))
    return load_hf(fg.FAMILIES_DIR / name if name != "llada" else fg.FAMILIES_DIR.parent / "llada_tiny")


ATTENTION = ("q_proj", "k_proj", "v_proj", "attn_out")
FAMILY_LORA = {  # family -> (targets, lm_head): everything each family lets LoRA adapt
    "llada": (LAYER_TARGETS, True),
    "dream": (LAYER_TARGETS, True),
    "a2d_qwen3": (LAYER_TARGETS, False),
    "llada_moe": (ATTENTION + SHARED_EXPERT_TARGETS, True),
    "llada_moe_mixed": (TARGETS, True),
}


def adapted_paths(lora) -> list[tuple[str, ...]]:
    """Params paths of the adapted kernels (where the adapters tree has an {"a", "b"} pair)."""
    return [tuple(k.key for k in path[:-1]) for path, _ in jax.tree_util.tree_flatten_with_path(lora)[0]
            if path[-1].key == "a"]


def at(tree, path):
    for key in path:
        tree = tree[key]
    return tree


@pytest.mark.parametrize("family", sorted(FAMILY_LORA))
def test_every_family_low_rank_path_equals_merge(family):
    from dllm_rl import models

    config, base = family_model(family)
    targets, head = FAMILY_LORA[family]
    cfg = LoRAConfig(rank=3, alpha=6.0, targets=targets, lm_head=head)
    lora = randomized(init_lora(base, cfg, jax.random.key(1)), scale=0.2)
    paths = adapted_paths(lora)
    expected = {"llada_moe_mixed": [("layers", t) for t in ATTENTION] + [("dense_ffn", t) for t in LAYER_TARGETS[4:]]
                + [("moe_ffn", t) for t in SHARED_EXPERT_TARGETS]}.get(family, [("layers", t) for t in targets])
    assert sorted(paths) == sorted(expected + [("lm_head",)] * head)
    merged = merge_lora(base, lora, cfg)
    for path in paths:  # W + (α/r)·A@B against float64 NumPy
        a, b = (np.asarray(at(lora, path)[k], np.float64) for k in "ab")
        want = np.asarray(at(base, path), np.float64) + 2.0 * np.einsum("...ir,...ro->...io", a, b)
        np.testing.assert_allclose(np.asarray(at(merged, path)), want, rtol=1e-6, atol=1e-6, err_msg=str(path))
    ids = jax.random.randint(jax.random.key(2), (2, 9), 0, config.vocab_size)
    mask = jnp.ones((2, 9), jnp.int32).at[0, :2].set(0)  # left padding (Dream's positions skip it)
    fwd = jax.jit(lambda p: models.forward(config, p, ids, mask))
    out_merged = np.asarray(fwd(merged))
    np.testing.assert_allclose(fwd(apply_lora(base, lora, cfg)), out_merged, rtol=2e-5, atol=2e-5)
    assert np.abs(out_merged - np.asarray(fwd(base))).max() > 1e-2

    # bf16 base + float32 adapters: error against the exact forward of the bf16-rounded weights, relative to the
    # adapters' effect (dropping the adapters must fail this).
    base16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), base)
    base32 = jax.tree.map(lambda x: x.astype(jnp.float32), base16)
    exact = np.asarray(fwd(merge_lora(base32, lora, cfg)))
    effect = np.linalg.norm(exact - np.asarray(fwd(base32)))
    error = lambda y: np.linalg.norm(np.asarray(y, np.float32) - exact) / effect
    out16 = fwd(apply_lora(base16, lora, cfg))
    assert out16.dtype == jnp.bfloat16
    assert error(out16) < 0.25
    assert error(fwd(merge_lora(base16, lora, cfg, dtype=jnp.bfloat16))) < 0.25
    assert error(fwd(base16)) > 0.9


@pytest.mark.parametrize("family", sorted(FAMILY_LORA))
def test_every_family_gradients_reach_only_the_adapters(family):
    from dllm_rl import models

    config, base = family_model(family)
    targets, head = FAMILY_LORA[family]
    cfg = LoRAConfig(rank=2, alpha=2.0, targets=targets, lm_head=head)
    trainable, frozen = split_params(base, cfg, jax.random.key(1))
    ids = jax.random.randint(jax.random.key(2), (2, 7), 0, config.vocab_size)

    def loss(tr, fr):
        return jnp.mean(models.forward(config, policy_params(tr, fr, cfg), ids) ** 2)

    grad_fn = jax.jit(jax.grad(loss))
    grads = grad_fn(trainable, frozen)
    assert jax.tree.structure(grads) == jax.tree.structure(trainable)
    for path in adapted_paths(trainable):  # fresh adapters: B = 0, so dL/dA = 0 and dL/dB ≠ 0
        assert not np.asarray(at(grads, path)["a"]).any() and np.asarray(at(grads, path)["b"]).any(), path
    trained = randomized(trainable)
    g_path = grad_fn(trained, frozen)
    g_merged = jax.jit(jax.grad(lambda tr: jnp.mean(models.forward(config, merge_lora(frozen, tr, cfg), ids) ** 2)))(
        trained)
    for a, b in zip(jax.tree.leaves(g_path), jax.tree.leaves(g_merged)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        assert np.asarray(a).any()


def test_family_target_errors():
    _, tied = family_model("a2d_qwen3")
    with pytest.raises(ValueError, match="LM head is tied.*lm_head=False"):
        init_lora(tied, LoRAConfig(rank=2, lm_head=True), jax.random.key(0))
    _, moe = family_model("llada_moe")
    with pytest.raises(ValueError, match=r"targets names 'ff_proj'.*choose LoRAConfig.targets from \['q_proj', "
                                         r"'k_proj', 'v_proj', 'attn_out', 'shared_ff_proj'"):
        init_lora(moe, LoRAConfig(rank=2), jax.random.key(0))
    with pytest.raises(ValueError, match="'shared_ff_out'"):
        init_lora(tied, LoRAConfig(rank=2, targets=("q_proj", "shared_ff_out")), jax.random.key(0))
    with pytest.raises(ValueError, match="unknown kernel.*'router'"):
        LoRAConfig(targets=("router",))


@pytest.mark.parametrize("family", ["llada_moe", "llada_moe_mixed", "a2d_qwen3"])
def test_family_adapter_shardings(family):
    """lora_shardings of a family's adapters follow that family's tree (`dense_ffn`, shared expert)."""
    from dllm_rl.parallel import mesh as mesh_lib

    config, base = family_model(family)
    targets, head = FAMILY_LORA[family]
    cfg = LoRAConfig(rank=2, targets=targets, lm_head=head)
    shapes = jax.tree.map(lambda x: x.shape, jax.eval_shape(lambda: init_lora(base, cfg, jax.random.key(0))))
    shardings = mesh_lib.lora_shardings(mesh_lib.make_mesh(), cfg, shapes, model_config=config)
    assert jax.tree.structure(shardings) == jax.tree.structure(jax.tree.map(lambda s: 0, shapes,
                                                                            is_leaf=lambda s: isinstance(s, tuple)))
