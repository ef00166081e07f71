"""The jitted step functions of the trainer: per-micro-batch gradients (AGRPO, diffu-GRPO), the optimizer update,
the SFT update, and the sampler's view of the policy params (the unmerged LoRA path).

Static arguments (model, loss and LoRA configs, the optax transformation) are hashable, so each distinct setup
compiles once. The update functions donate the trainable params and optimizer state and return them in the
layout they came in (`layout_keeping`), so one program serves every step.
"""
from __future__ import annotations

import functools

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from dllm_rl.models import lora as lora_lib
from dllm_rl.rl import agrpo, diffu_grpo, sft
from dllm_rl.sampling import expand


@functools.partial(jax.jit, static_argnames=("model_config", "config", "lora_config"))
def agrpo_grads(trainable, frozen, ref_params, batch, rng, *, model_config, config, lora_config):
    """(loss, grads, metrics) of one AGRPO micro-batch; K timesteps per sequence are drawn from `rng`."""
    u_BxK = agrpo.draw_uniforms(rng, batch.completion_ids.shape[0], config.mc_samples, config.low_discrepancy)
    steps_BxK, weights_BxK = agrpo.timesteps(u_BxK, batch, config, model_config.eos_token_id)
    return agrpo.agrpo_grad(trainable, frozen, ref_params, batch, steps_BxK, weights_BxK,
                            model_config=model_config, config=config, lora_config=lora_config, keep_fn=expand)


@functools.partial(jax.jit, static_argnames=("model_config", "config", "lora_config"))
def diffu_logps(trainable, frozen, batch, rng, *, model_config, config, lora_config):
    """Per-token completion log-probs of diffu-GRPO's one-step estimate (old or reference policy)."""
    params = lora_lib.policy_params(trainable, frozen, lora_config)
    return diffu_grpo.completion_logps(model_config, params, batch, rng, config)


@functools.partial(jax.jit, static_argnames=("model_config", "config", "lora_config"))
def diffu_grads(trainable, frozen, batch, rng, old_logp, ref_logp, dropout_rng=None, *, model_config, config,
                lora_config):
    """(loss, grads, metrics) of one diffu-GRPO micro-batch and inner iteration (LoRA dropout from `dropout_rng`)."""
    return diffu_grpo.diffu_grpo_grad(trainable, frozen, batch, rng, old_logp, ref_logp, model_config=model_config,
                                      config=config, lora_config=lora_config, dropout_rng=dropout_rng)


@functools.partial(jax.jit, donate_argnums=(0,))
def accumulate(grad_sum, grads):
    """grad_sum + grads, written into grad_sum's buffers: with the caller dropping each micro-batch's tree once
    added, accumulation keeps one running sum alive, not every micro-batch's gradient tree."""
    return jax.tree.map(lambda total, g: total + g, grad_sum, grads)


@functools.partial(jax.jit, donate_argnums=(0,))
def divide(grad_sum, count):
    """grad_sum / count (the mean over micro-batches), in place; `count` is traced, so one program serves all."""
    return jax.tree.map(lambda total: total / count, grad_sum)


def _apply_update(trainable, opt_state, grads, *, tx):
    updates, opt_state = tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, optax.tree.norm(grads)


def _sft_update(params, opt_state, prompt_ids, prompt_mask, answer_ids, rng, *, model_config, tx):
    loss, grads = jax.value_and_grad(sft.sft_loss, argnums=1)(model_config, params, prompt_ids, answer_ids, rng,
                                                              prompt_mask)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def update_program(tx, trainable, opt_state):
    """The jitted optimizer update for params and state laid out as `trainable` and `opt_state` (arrays or
    abstract arrays with shardings); `apply_update` runs it."""
    return layout_keeping(_apply_update, trainable, opt_state, tx=tx)


def apply_update(trainable, opt_state, grads, *, tx):
    """One optimizer update, donating params and state; returns (trainable, opt_state, global gradient norm),
    the first two in the layout they came in."""
    return update_program(tx, trainable, opt_state)(trainable, opt_state, grads)


def sft_update(params, opt_state, prompt_ids, prompt_mask, answer_ids, rng, *, model_config, tx):
    """One masked-diffusion SFT update of all params, donating params and state; returns (params, opt_state,
    loss), the first two in the layout they came in."""
    program = layout_keeping(_sft_update, params, opt_state, model_config=model_config, tx=tx)
    return program(params, opt_state, prompt_ids, prompt_mask, answer_ids, rng)


def layout_keeping(update, params, opt_state, **static):
    """`update(params, opt_state, ...) -> (params, opt_state, scalar)` jitted with params and state donated and
    returned in the shardings they came in. Left free, XLA re-lays out some outputs (FSDP: the norm weights become
    sharded), and the next step, seeing new input shardings, compiles the program again."""
    leaves, treedef = jax.tree.flatten(jax.tree.map(lambda x: x.sharding, (params, opt_state)))
    return _layout_kept(update, tuple(sorted(static.items())), treedef, tuple(leaves))


@functools.lru_cache(maxsize=16)
def _layout_kept(update, static_items, treedef, shardings):
    params_sharding, opt_sharding = jax.tree.unflatten(treedef, shardings)
    first = shardings[0]
    scalar = NamedSharding(first.mesh, P()) if isinstance(first, NamedSharding) else first
    return jax.jit(functools.partial(update, **dict(static_items)), donate_argnums=(0, 1),
                   out_shardings=(params_sharding, opt_sharding, scalar))


def sampling_params(trainable, frozen, lora_config):
    """The policy params the sampler runs: exactly the loss's (`lora.policy_params`), so sampling and training
    log-probs of the same tokens agree. With LoRA every adapted kernel is a `LoRAWeight` evaluated as
    x @ W + s·(x @ A) @ B; a merged bf16 kernel would round small updates away and sample a lagging policy."""
    return lora_lib.policy_params(trainable, frozen, lora_config)
