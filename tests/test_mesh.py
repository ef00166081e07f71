"""Mesh construction, logical-axis rules, and sharded forward / checkpoint restore on 8 fake CPU devices."""
import os
import subprocess
import sys
import textwrap

import jax
import pytest
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec as P

from dllm_rl.parallel import mesh as pm
from tests.helpers.xla_env import fake_devices_env


def test_resolve_shape():
    assert pm.resolve_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert pm.resolve_shape({"fsdp": 8}, 8) == {"data": 1, "fsdp": 8, "tensor": 1}
    with pytest.raises(ValueError, match="needs 4 devices"):
        pm.resolve_shape({"data": 2, "tensor": 2}, 8)
    with pytest.raises(ValueError, match="unknown axes"):
        pm.resolve_shape({"model": 2}, 2)
    with pytest.raises(ValueError, match="at most one axis"):
        pm.resolve_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="not divisible"):
        pm.resolve_shape({"data": -1, "tensor": 3}, 8)


def test_logical_rules():
    mesh = pm.make_mesh({"data": -1})
    assert pm.logical_to_spec(("layers", "embed", "heads")) == P(None, "fsdp", "tensor")
    assert pm.logical_to_spec(("batch", None)) == P(("data", "fsdp"), None)
    assert pm.logical_to_spec(("embed", "heads"), mesh=mesh) == P(None, None)  # size-1 axes dropped
    assert pm.logical_to_spec(("embed", "embed")) == P("fsdp", None)  # a mesh axis is used once
    with pytest.raises(KeyError, match="no sharding rule"):
        pm.logical_to_spec(("nonsense",))


# An abstract 2×2×2 mesh: the layout is computed without 8 devices.
MESH_2x2x2 = AbstractMesh((2, 2, 2), pm.MESH_AXES)


def test_param_shardings_follow_the_default_rules():
    specs = jax.tree.map(lambda s: s.spec, pm.param_shardings(MESH_2x2x2))
    column, row = P(None, "fsdp", "tensor"), P(None, "tensor", "fsdp")  # Megatron: split heads/MLP, then gather
    assert specs == {
        "embed": P("tensor", "fsdp"),
        "layers": {"attn_norm": P(None, None), "q_proj": column, "k_proj": column, "v_proj": column,
                   "attn_out": row, "ff_norm": P(None, None), "ff_proj": column, "up_proj": column, "ff_out": row},
        "ln_f": P(None),
        "lm_head": P("fsdp", "tensor"),
    }
    assert pm.batch_sharding(MESH_2x2x2, 3).spec == P(("data", "fsdp"), None, None)


def test_family_params_and_expert_parallel_rules():
    """Another family's tree comes from its config; experts are not split by default, and are (expert parallelism,
    `models.moe`, which reads the table of `use_rules`) when the rules table maps 'expert' to a mesh axis."""
    from dllm_rl import models
    from dllm_rl.models import moe
    from tests.helpers.family_goldens import FAMILIES_DIR

    config = models.config_from_hf(FAMILIES_DIR / "llada_moe")
    specs = jax.tree.map(lambda s: s.spec, pm.param_shardings(MESH_2x2x2, config))
    assert specs["layers"]["q_norm"] == P(None, None)
    assert specs["layers"]["expert_ff_proj"] == P(None, None, "fsdp", "tensor")
    assert specs["layers"]["expert_ff_out"] == P(None, None, "tensor", "fsdp")
    assert specs["layers"]["router"] == P(None, "fsdp", None)
    assert moe.expert_parallel_axes(MESH_2x2x2) == (None, ("data", "fsdp"), "tensor")
    rules = tuple(dict(pm.DEFAULT_RULES, expert="data").items())
    expert_parallel = pm.param_shardings(MESH_2x2x2, config, rules=rules)
    assert expert_parallel["layers"]["expert_ff_out"].spec == P(None, "data", "tensor", "fsdp")
    with pm.use_rules(rules):
        assert moe.expert_parallel_axes(MESH_2x2x2) == ("data", ("data", "fsdp"), "tensor")
    assert pm.current_rules() == pm.DEFAULT_RULES


def test_a_rules_table_changes_the_layout():
    """Pure tensor parallelism over 'fsdp' and batches over 'data' only: every spec follows the new table."""
    rules = dict(pm.DEFAULT_RULES, batch="data", embed=None, heads="fsdp", kv_heads="fsdp", mlp="fsdp", vocab=None)
    rules = tuple(rules.items())
    default, custom = pm.param_shardings(MESH_2x2x2), pm.param_shardings(MESH_2x2x2, rules=rules)
    assert custom["layers"]["q_proj"].spec == P(None, None, "fsdp")
    assert custom["layers"]["ff_out"].spec == P(None, "fsdp", None)
    assert custom["embed"].spec == P(None, None)
    assert all(c.spec != d.spec for c, d in zip(jax.tree.leaves(custom["layers"]), jax.tree.leaves(default["layers"]))
               if d.spec != P(None, None))
    assert pm.batch_sharding(MESH_2x2x2, 2, rules).spec == P("data", None)


def test_lora_factors_are_split_over_fsdp_once_unless_the_rank_is_too_small():
    import jax.numpy as jnp

    from dllm_rl.models import llada
    from dllm_rl.assets import LLADA_8B_META_DIR
    from dllm_rl.models.lora import LoRAConfig, init_lora

    model = llada.LLaDAConfig.from_hf_config(LLADA_8B_META_DIR)
    base = jax.tree.map(lambda shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16), llada.param_shapes(model),
                        is_leaf=lambda x: isinstance(x, tuple))

    def specs(rank):
        config = LoRAConfig(rank=rank, lm_head=True)
        adapters = jax.eval_shape(lambda p: init_lora(p, config, jax.random.key(0)), base)
        shapes = jax.tree.map(lambda x: x.shape, adapters)
        return jax.tree.map(lambda s: s.spec, pm.lora_shardings(MESH_2x2x2, config, shapes))

    split = specs(8)
    assert split["layers"]["q_proj"] == {"a": P(None, "fsdp", None), "b": P(None, "fsdp", "tensor")}
    assert split["layers"]["ff_out"] == {"a": P(None, "tensor", "fsdp"), "b": P(None, "fsdp", None)}
    assert split["lm_head"] == {"a": P("fsdp", None), "b": P("fsdp", "tensor")}
    # Rank 1 on fsdp 2: the rank stays whole; the factors' other dimensions keep their split.
    whole = specs(1)
    assert whole["layers"]["q_proj"] == {"a": P(None, "fsdp", None), "b": P(None, None, "tensor")}
    assert whole["layers"]["ff_out"] == {"a": P(None, "tensor", None), "b": P(None, None, "fsdp")}


def test_check_divisible_names_the_array():
    sharding = pm.batch_sharding(MESH_2x2x2, 2)
    pm.check_divisible((8, 3), sharding, "rollout batch")
    with pytest.raises(ValueError, match="rollout batch .*dimension 6 is not divisible by mesh axes"):
        pm.check_divisible((6, 3), sharding, "rollout batch")
    shapes = {"w": (4, 6)}
    with pytest.raises(ValueError, match=r"parameter \['w'\] dimension 6"):
        pm.check_divisible(shapes, {"w": NamedSharding(MESH_2x2x2, P(None, ("data", "fsdp")))})


SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from dllm_rl.checkpoint import load_hf, load_orbax
    from dllm_rl.convert import convert
    from dllm_rl.models import llada
    from dllm_rl.parallel import mesh as pm
    assert len(jax.devices()) == 8
    config, params = load_hf("tests/fixtures/llada_tiny")
    ids = jnp.tile(jnp.asarray(np.load("tests/fixtures/llada_tiny/golden.npz")["input_ids"]), (4, 1))
    mask = jnp.ones_like(ids).at[:, :3].set(0)
    ref = np.asarray(llada.forward(config, params, ids, mask))
    convert("tests/fixtures/llada_tiny", OUT, "float32", progress=False)
    for spec in ({"data": -1}, {"data": 2, "fsdp": 2, "tensor": 2}, {"fsdp": 4, "tensor": 2}, {"tensor": 4, "fsdp": 2}):
        mesh = pm.make_mesh(spec)
        shardings = pm.param_shardings(mesh)
        for loaded in (load_hf("tests/fixtures/llada_tiny", shardings=shardings)[1],
                       load_orbax(OUT, shardings=shardings)[1]):
            assert loaded["layers"]["q_proj"].sharding == shardings["layers"]["q_proj"]
            batch = pm.batch_sharding(mesh)
            fwd = jax.jit(lambda p, x, m: llada.forward(config, p, x, m), out_shardings=pm.batch_sharding(mesh, 3))
            out = fwd(loaded, jax.device_put(ids, batch), jax.device_put(mask, batch))
            err = float(np.max(np.abs(np.asarray(out) - ref)) / np.max(np.abs(ref)))
            assert err < 1e-5, (spec, err)
    print("SHARDED_OK")
""")


def test_sharded_forward_and_restore_on_8_fake_devices(tmp_path):
    env = fake_devices_env(8)
    code = f"OUT = {str(tmp_path / 'orbax')!r}\n" + SHARDED
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert "SHARDED_OK" in result.stdout, result.stderr[-3000:]


def test_replicate_off_mesh_places_optimizer_counters():
    import jax.numpy as jnp
    import optax

    mesh = pm.make_mesh({"data": -1})
    params = {"w": jax.device_put(jnp.ones((4, 2)), pm.batch_sharding(mesh, 2))}
    state = pm.replicate_off_mesh(optax.adam(1e-3).init(params), mesh)
    counts = [x for x in jax.tree.leaves(state) if x.ndim == 0]
    assert counts and all(c.sharding == pm.replicated(mesh) for c in counts)
    assert state[0].mu["w"].sharding == params["w"].sharding  # moments keep the params' layout
