"""The policy that samples is the policy that trains: with a bfloat16 base and LoRA updates of the size the
paper's learning rate produces, the rollout's log-probs equal the AGRPO loss's log-probs of the same tokens
(`logp_mismatch_*`), while sampling from adapters merged into the bf16 kernels loses most of the update."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl.models import llada
from dllm_rl.models.lora import LoRAConfig, init_lora, merge_lora
from dllm_rl.rl import agrpo, steps
from dllm_rl.sampling import SamplerConfig, expand, generate

CONFIG = llada.LLaDAConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden_size=96, vocab_size=40,
                           embedding_size=40, mask_token_id=39, eos_token_id=38, pad_token_id=38)
LORA = LoRAConfig(rank=16, alpha=16.0, lm_head=True)
SAMPLER = SamplerConfig(steps=8, gen_length=8, block_length=4, temperature=1.0, remasking="random", record=True,
                        early_stop=False)
PROMPT_BxP = jax.random.randint(jax.random.key(5), (4, 6), 0, 38)


def loss_config(compute_dtype):
    return agrpo.AGRPOConfig(mc_samples=8, sampling_steps=8, gen_length=8, proposal="uniform", temperature=1.0,
                             num_generations=4, compute_dtype=compute_dtype)


@pytest.fixture(scope="module")
def base16():
    """A random LLaDA in bfloat16, with weights ~ N(0, 1/fan_in) (the kernels' bf16 step ≈ 2⁻⁸·|W|)."""
    params = jax.jit(llada.init_params, static_argnums=0)(CONFIG, jax.random.key(0))
    return jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)


@pytest.fixture(scope="module")
def adapters(base16):
    """Adapters after a few Adam steps at lr 5e-6: each B entry moved by ~lr per step, |B| ~ 1e-5..1e-4."""
    lora = init_lora(base16, LORA, jax.random.key(1))
    leaves, treedef = jax.tree.flatten(lora)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    return jax.tree.unflatten(treedef, [x if x.shape[-1] == LORA.rank else 1e-4 * jax.random.normal(k, x.shape)
                                        for x, k in zip(leaves, keys)])


def rollout_batch(params, compute_dtype) -> agrpo.AGRPOBatch:
    roll = generate(CONFIG, params, PROMPT_BxP, SAMPLER, rng=jax.random.key(3), compute_dtype=compute_dtype)
    p = PROMPT_BxP.shape[1]
    keep = roll.truncation if roll.truncation is not None and roll.truncation.bits is not None else None
    return agrpo.AGRPOBatch(prompt_ids=PROMPT_BxP, prompt_mask=None, completion_ids=roll.tokens[:, p:],
                            unmask_step=roll.unmask_step, old_logp=roll.logp, entropy=roll.entropy,
                            advantages=jnp.zeros(4), keep=keep)


@functools.partial(jax.jit, static_argnames=("config",))
def loss_metrics(trainable, frozen, batch, config):
    """The AGRPO loss's metrics over every step of the trajectory (training path: LoRA unmerged)."""
    steps_BxM, weights_BxM = agrpo.all_steps(batch, config, CONFIG.eos_token_id)
    return agrpo.agrpo_grad(trainable, frozen, None, batch, steps_BxM, weights_BxM, model_config=CONFIG,
                            config=config, lora_config=LORA, keep_fn=expand)[2]


@pytest.mark.parametrize("compute_dtype", [None, "float32"])  # None: bf16 compute, the 8B config's
def test_sampling_logps_equal_training_logps_and_a_bf16_merge_does_not(base16, adapters, compute_dtype):
    config = loss_config(compute_dtype)
    batch = rollout_batch(steps.sampling_params(adapters, base16, LORA), compute_dtype)
    sampled = loss_metrics(adapters, base16, batch, config)
    # The adapters' effect on these log-probs: the same tokens scored with the adapters dropped (B = 0).
    dropped = jax.tree.map(lambda x: x if x.shape[-1] == LORA.rank else jnp.zeros_like(x), adapters)
    effect = float(loss_metrics(dropped, base16, batch, config)["logp_mismatch_mean"])
    assert effect > 0
    assert float(sampled["logp_mismatch_max"]) <= 0.05 * effect, (dict(sampled), effect)
    # The same check fails for a rollout sampled from the adapters merged into the bf16 kernels.
    with pytest.raises(ValueError, match="rounds small LoRA updates away"):
        merge_lora(base16, adapters, LORA)
    merged = merge_lora(base16, adapters, LORA, dtype=jnp.bfloat16)
    unchanged = np.mean(np.asarray(merged["layers"]["ff_out"] == base16["layers"]["ff_out"]))
    assert unchanged > 0.5  # most of W did not move at all
    lagging = loss_metrics(adapters, base16, rollout_batch(merged, compute_dtype), config)
    assert float(lagging["logp_mismatch_mean"]) > 0.3 * effect, (dict(lagging), effect)
    assert float(lagging["logp_mismatch_max"]) > 0.05 * effect
