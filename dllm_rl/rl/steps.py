"""The jitted step functions of the trainer: per-micro-batch gradients (AGRPO; the masked objectives of
`MASKED_OBJECTIVES`: d1's diffu-GRPO, wd1), the optimizer update, the SFT update, and the sampler's view of the
policy params (the unmerged LoRA path).

Static arguments (model, loss and LoRA configs, the optax transformation) are hashable, so each distinct setup
compiles once. The update functions donate the trainable params and optimizer state and return them in the
layout they came in, and the gradients come back in the trainable params' layout (`layout_keeping`), so one
program serves every step and no step holds whole copies of sharded state.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Callable

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from dllm_rl.models import lora as lora_lib
from dllm_rl.rl import agrpo, diffu_grpo, sft, wd1
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


@dataclasses.dataclass(frozen=True)
class MaskedObjective:
    """A loss trained as d1 trains: each rollout batch gives μ = `config.num_iterations` updates, update i under
    its own random mask key; rollout-time quantities (the old policy's, the reference's) are computed under the
    same key before the updates.

    `batch`: the batch type, built from (prompt_ids, prompt_mask, completion_ids, completion_mask, advantages).
    `logps(model_config, params, batch, rng, config)`: the quantity the old and reference policies contribute.
    `grad(trainable, frozen, batch, rng, old, ref, *, model_config, config, lora_config, dropout_rng)`:
    (loss, grads, metrics). `uses_old`: the loss takes the rollout policy's `logps` (a ratio; with μ = 1 it gets
    None, the current policy's detached); the reference's are computed when `config.beta` > 0.
    `logged`: the metrics the trainer logs beside the loss.
    """

    batch: type
    logps: Callable
    grad: Callable
    uses_old: bool
    logged: tuple[str, ...]


def _wd1_grad(trainable, frozen, batch, rng, old_logp, ref_logp, **kw):
    del old_logp, ref_logp  # wd1 has neither
    return wd1.wd1_grad(trainable, frozen, batch, rng, **kw)


# TrainConfig.algorithm → its objective, for every algorithm trained with μ masked updates per rollout.
MASKED_OBJECTIVES = {
    "diffu_grpo": MaskedObjective(diffu_grpo.DiffuGRPOBatch, diffu_grpo.completion_logps, diffu_grpo.diffu_grpo_grad,
                                  uses_old=True, logged=("clip_fraction", "clip_ratio", "kl")),
    "wd1": MaskedObjective(diffu_grpo.DiffuGRPOBatch, diffu_grpo.completion_logps, _wd1_grad, uses_old=False,
                           logged=("seq_logp_mean", "pos_weight_max")),
}


@functools.partial(jax.jit, static_argnames=("algorithm", "model_config", "config", "lora_config"))
def _masked_logps(trainable, frozen, batch, rng, *, algorithm, model_config, config, lora_config):
    params = lora_lib.policy_params(trainable, frozen, lora_config)
    return MASKED_OBJECTIVES[algorithm].logps(model_config, params, batch, rng, config)


def masked_logps(trainable, frozen, batch, rng, *, algorithm, model_config, config, lora_config):
    """The rollout-time quantity of objective `algorithm` (d1: per-token completion log-probs of the one-step
    estimate) for the old or reference policy under mask key `rng`."""
    with on_mesh_of(trainable):
        return _masked_logps(trainable, frozen, batch, rng, algorithm=algorithm, model_config=model_config,
                             config=config, lora_config=lora_config)


def _masked_grads(trainable, frozen, batch, rng, old_logp, ref_logp, dropout_rng, *, algorithm, model_config, config,
                  lora_config):
    return MASKED_OBJECTIVES[algorithm].grad(trainable, frozen, batch, rng, old_logp, ref_logp,
                                             model_config=model_config, config=config, lora_config=lora_config,
                                             dropout_rng=dropout_rng)


def masked_grads_program(trainable, *, algorithm, model_config, config, lora_config):
    """The jitted gradients of objective `algorithm` for trainable params laid out as `trainable`; `masked_grads`
    runs it."""
    return layout_keeping(_masked_grads, (trainable,), (None, 0, None), algorithm=algorithm,
                          model_config=model_config, config=config, lora_config=lora_config)


def masked_grads(trainable, frozen, batch, rng, old_logp, ref_logp, dropout_rng=None, *, algorithm, model_config,
                 config, lora_config):
    """(loss, grads, metrics) of one micro-batch and inner iteration of objective `algorithm` under mask key `rng`
    (LoRA dropout from `dropout_rng`), the grads in the trainable params' layout."""
    program = masked_grads_program(trainable, algorithm=algorithm, model_config=model_config, config=config,
                                   lora_config=lora_config)
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
