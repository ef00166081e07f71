"""The jitted steps' layout: on 8 fake CPU devices the optimizer and SFT updates return params and state in the
shardings they came in (one compiled program for every step) and equal the same update on one device; gradients
come back in the trainable params' layout."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dllm_rl.rl import steps
from tests.helpers.xla_env import fake_devices_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAYOUT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from dllm_rl.checkpoint import load_hf
    from dllm_rl.parallel import mesh as pm
    from dllm_rl.rl import steps

    model_config, params = load_hf("tests/fixtures/llada_tiny")
    tx = optax.adamw(1e-2, weight_decay=0.1)
    grads = jax.tree.map(lambda x: jnp.cos(jnp.arange(x.size, dtype=x.dtype)).reshape(x.shape), params)
    reference = jax.tree.map(jnp.copy, params)  # apply_update donates its params
    ref_state = tx.init(reference)
    for _ in range(3):
        reference, ref_state, ref_norm = steps.apply_update(reference, ref_state, grads, tx=tx)
    for shape in ({"data": 1, "fsdp": 8, "tensor": 1}, {"data": 2, "fsdp": 2, "tensor": 2}):
        mesh = pm.make_mesh(shape)
        shardings = pm.param_shardings(mesh)
        fresh = lambda: jax.device_put(jax.tree.map(jnp.copy, params), shardings)  # updates donate their input
        placed = fresh()
        state = pm.replicate_off_mesh(tx.init(placed), mesh)
        layout = jax.tree.map(lambda x: x.sharding, (placed, state))
        program = steps.update_program(tx, placed, state)
        for _ in range(3):
            placed, state, norm = steps.apply_update(placed, state, jax.device_put(grads, shardings), tx=tx)
            assert jax.tree.map(lambda x: x.sharding, (placed, state)) == layout, shape
        assert program._cache_size() == 1, (shape, program._cache_size())
        err = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                  zip(jax.tree.leaves(placed), jax.tree.leaves(reference)))
        assert err < 1e-6 and abs(float(norm) - float(ref_norm)) < 1e-4 * float(ref_norm), (shape, err)

        ids = jax.device_put(jnp.ones((8, 6), jnp.int32) * 3, pm.batch_sharding(mesh))
        sft_tx = optax.adam(1e-3)
        sft_params = fresh()
        sft_state = pm.replicate_off_mesh(sft_tx.init(sft_params), mesh)
        sft_layout = jax.tree.map(lambda x: x.sharding, (sft_params, sft_state))
        for i in range(2):
            sft_params, sft_state, loss = steps.sft_update(sft_params, sft_state, ids, jnp.ones_like(ids), ids,
                                                           jax.random.key(i), model_config=model_config, tx=sft_tx)
            assert jax.tree.map(lambda x: x.sharding, (sft_params, sft_state)) == sft_layout, shape

    # Gradients come back in the trainable params' layout (LoRA factors split over fsdp), whatever XLA prefers.
    from dllm_rl.models.lora import LoRAConfig, init_lora
    from dllm_rl.rl import diffu_grpo
    mesh = pm.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    lora_config = LoRAConfig(rank=8, alpha=8.0)
    adapters = init_lora(params, lora_config, jax.random.key(0))
    adapters = jax.device_put(adapters, pm.lora_shardings(mesh, lora_config, jax.tree.map(lambda x: x.shape, adapters)))
    base = jax.device_put(params, pm.param_shardings(mesh))
    rows = lambda x: jax.device_put(x, pm.batch_sharding(mesh, x.ndim))
    batch = diffu_grpo.DiffuGRPOBatch(rows(jnp.full((8, 4), 3, jnp.int32)), None, rows(jnp.full((8, 6), 5, jnp.int32)),
                                      rows(jnp.ones((8, 6), bool)), rows(jnp.linspace(-1.0, 1.0, 8)))
    diffu_config = diffu_grpo.DiffuGRPOConfig(num_generations=2, beta=0.0)
    _, grads, _ = steps.masked_grads(adapters, base, batch, jax.random.key(1), None, None, algorithm="diffu_grpo",
                                     model_config=model_config, config=diffu_config, lora_config=lora_config)
    assert jax.tree.map(lambda x: x.sharding, grads) == jax.tree.map(lambda x: x.sharding, adapters)
    print("LAYOUT_OK")
""")


def test_updates_keep_their_layout_and_equal_the_one_device_update():
    env = fake_devices_env(8)
    result = subprocess.run([sys.executable, "-c", LAYOUT], env=env, capture_output=True, text=True, timeout=600,
                            cwd=ROOT)
    assert "LAYOUT_OK" in result.stdout, result.stderr[-3000:]


def test_apply_update_is_optax_and_reports_the_gradient_norm():
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    grads = {"w": jnp.full((2, 3), 0.5), "b": jnp.asarray([3.0, 0.0, -4.0])}
    tx = optax.sgd(0.1)
    new, _, norm = steps.apply_update(dict(params), tx.init(params), grads, tx=tx)
    np.testing.assert_allclose(new["w"], np.arange(6.0).reshape(2, 3) - 0.05)
    np.testing.assert_allclose(new["b"], [0.7, 1.0, 1.4])
    np.testing.assert_allclose(norm, np.sqrt(6 * 0.25 + 25.0), rtol=1e-6)


def test_accumulate_and_divide_give_the_mean():
    grads = [{"w": jnp.full((3,), float(i))} for i in range(1, 4)]
    total = jax.tree.map(jnp.copy, grads[0])
    for g in grads[1:]:
        total = steps.accumulate(total, g)
    np.testing.assert_allclose(steps.divide(total, 3)["w"], [2.0, 2.0, 2.0])
    assert jax.tree.structure(total) == jax.tree.structure(grads[0])
