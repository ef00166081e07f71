"""The jitted step functions of the trainer: per-micro-batch gradients (AGRPO, diffu-GRPO), the optimizer update,
the SFT update, and the sampler's view of the policy params (the unmerged LoRA path).

Static arguments (model, loss and LoRA configs, the optax transformation) are hashable, so each distinct setup
compiles once. The update functions donate the trainable params and optimizer state and return them in the
layout they came in, and the gradients come back in the trainable params' layout (`layout_keeping`), so one
program serves every step and no step holds whole copies of sharded state.
"""
from __future__ import annotations

import contextlib
import functools

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from dllm_rl.models import lora as lora_lib
from dllm_rl.rl import agrpo, diffu_grpo, sft
from dllm_rl.sampling import expand


def _agrpo_grads(trainable, frozen, ref_params, batch, rng, *, model_config, config, lora_config):
    u_BxK = agrpo.draw_uniforms(rng, batch.completion_ids.shape[0], config.mc_samples, config.low_discrepancy)
    steps_BxK, weights_BxK = agrpo.timesteps(u_BxK, batch, config, model_config.eos_token_id)
    return agrpo.agrpo_grad(trainable, frozen, ref_params, batch, steps_BxK, weights_BxK,
                            model_config=model_config, config=config, lora_config=lora_config, keep_fn=expand)


def agrpo_grads_program(trainable, *, model_config, config, lora_config):
    """The jitted AGRPO micro-batch gradients for trainable params laid out as `trainable`; `agrpo_grads` runs it."""
    return layout_keeping(_agrpo_grads, (trainable,), (None, 0, None), model_config=model_config, config=config,
                          lora_config=lora_config)


def agrpo_grads(trainable, frozen, ref_params, batch, rng, *, model_config, config, lora_config):
    """(loss, grads, metrics) of one AGRPO micro-batch, the grads in the trainable params' layout; K timesteps
    per sequence are drawn from `rng`."""
    program = agrpo_grads_program(trainable, model_config=model_config, config=config, lora_config=lora_config)
    with on_mesh_of(trainable):
        return program(trainable, frozen, ref_params, batch, rng)


@functools.partial(jax.jit, static_argnames=("model_config", "config", "lora_config"))
def _diffu_logps(trainable, frozen, batch, rng, *, model_config, config, lora_config):
    params = lora_lib.policy_params(trainable, frozen, lora_config)
    return diffu_grpo.completion_logps(model_config, params, batch, rng, config)


def diffu_logps(trainable, frozen, batch, rng, *, model_config, config, lora_config):
    """Per-token completion log-probs of diffu-GRPO's one-step estimate (old or reference policy)."""
    with on_mesh_of(trainable):
        return _diffu_logps(trainable, frozen, batch, rng, model_config=model_config, config=config,
                            lora_config=lora_config)


def _diffu_grads(trainable, frozen, batch, rng, old_logp, ref_logp, dropout_rng, *, model_config, config,
                 lora_config):
    return diffu_grpo.diffu_grpo_grad(trainable, frozen, batch, rng, old_logp, ref_logp, model_config=model_config,
                                      config=config, lora_config=lora_config, dropout_rng=dropout_rng)


def diffu_grads_program(trainable, *, model_config, config, lora_config):
    """The jitted diffu-GRPO gradients for trainable params laid out as `trainable`; `diffu_grads` runs it."""
    return layout_keeping(_diffu_grads, (trainable,), (None, 0, None), model_config=model_config, config=config,
                          lora_config=lora_config)


def diffu_grads(trainable, frozen, batch, rng, old_logp, ref_logp, dropout_rng=None, *, model_config, config,
                lora_config):
    """(loss, grads, metrics) of one diffu-GRPO micro-batch and inner iteration (LoRA dropout from `dropout_rng`),
    the grads in the trainable params' layout."""
    program = diffu_grads_program(trainable, model_config=model_config, config=config, lora_config=lora_config)
    with on_mesh_of(trainable):
        return program(trainable, frozen, batch, rng, old_logp, ref_logp, dropout_rng)


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
    return layout_keeping(_apply_update, (trainable, opt_state), (0, 1, None), donate=(0, 1), tx=tx)


def apply_update(trainable, opt_state, grads, *, tx):
    """One optimizer update, donating params and state; returns (trainable, opt_state, global gradient norm),
    the first two in the layout they came in."""
    return update_program(tx, trainable, opt_state)(trainable, opt_state, grads)


def sft_update(params, opt_state, prompt_ids, prompt_mask, answer_ids, rng, *, model_config, tx):
    """One masked-diffusion SFT update of all params, donating params and state; returns (params, opt_state,
    loss), the first two in the layout they came in."""
    program = layout_keeping(_sft_update, (params, opt_state), (0, 1, None), donate=(0, 1),
                             model_config=model_config, tx=tx)
    return program(params, opt_state, prompt_ids, prompt_mask, answer_ids, rng)


def on_mesh_of(tree):
    """`jax.set_mesh` of the mesh `tree`'s arrays are laid out on (a no-op for single-device arrays): the loss
    programs are traced under it, so kernels XLA cannot partition (splash attention) run per device."""
    sharding = getattr(jax.tree.leaves(tree)[0], "sharding", None)
    return jax.set_mesh(sharding.mesh) if isinstance(sharding, NamedSharding) else contextlib.nullcontext()


def layout_keeping(fn, layout: tuple, outputs: tuple, donate: tuple = (), **static):
    """`fn` jitted with its `static` keyword arguments and `donate`d positional arguments, returning each output
    `i` in the shardings of the tree `layout[outputs[i]]` (arrays or abstract arrays), or replicated where
    `outputs[i]` is None (scalars and metric dicts). Left free, XLA picks other layouts for some outputs (FSDP:
    sharded norm weights after an update; replicated gradients past a shard_map), so the next step, seeing new
    input shardings, compiles again or holds whole copies."""
    leaves, treedef = jax.tree.flatten(jax.tree.map(lambda x: x.sharding, layout))
    return _layout_kept(fn, tuple(sorted(static.items())), outputs, donate, treedef, tuple(leaves))


@functools.lru_cache(maxsize=32)
def _layout_kept(fn, static_items, outputs, donate, treedef, shardings):
    trees = jax.tree.unflatten(treedef, shardings)
    first = shardings[0]
    scalar = NamedSharding(first.mesh, P()) if isinstance(first, NamedSharding) else first
    out_shardings = tuple(scalar if i is None else trees[i] for i in outputs)
    return jax.jit(functools.partial(fn, **dict(static_items)), donate_argnums=donate, out_shardings=out_shardings)


def sampling_params(trainable, frozen, lora_config):
    """The policy params the sampler runs: exactly the loss's (`lora.policy_params`), so sampling and training
    log-probs of the same tokens agree. With LoRA every adapted kernel is a `LoRAWeight` evaluated as
    x @ W + s·(x @ A) @ B; a merged bf16 kernel would round small updates away and sample a lagging policy."""
    return lora_lib.policy_params(trainable, frozen, lora_config)
