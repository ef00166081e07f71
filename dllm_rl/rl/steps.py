"""The jitted step functions of the trainer: per-micro-batch gradients (AGRPO; the objectives of `MASKED_OBJECTIVES`:
d1's diffu-GRPO, wd1, DMPO, TraceRL, DiPO, ESPO, SPG, with their rollout-time preparation), the optimizer update,
the SFT update, and the sampler's view of the policy params (the unmerged LoRA path).

Static arguments (model, loss and LoRA configs, the optax transformation) are hashable, so each distinct setup
compiles once. The update functions donate the trainable params and optimizer state and return them in the
layout they came in, and the gradients come back in the trainable params' layout (`layout_keeping`), so one
program serves every step and no step holds whole copies of sharded state.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from dllm_rl.models import lora as lora_lib
from dllm_rl.rl import agrpo, diffu_grpo, dipo, dmpo, espo, sft, spg, tracerl, wd1
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


class Samples(NamedTuple):
    """One rollout micro-batch as the masked objectives take it: prompt_ids [B, P], prompt_mask [B, P], completion_ids
    [B, L], unmask_step [B, L] (the sampler's record of the step that decoded each position), advantages [B]."""

    prompt_ids: jax.Array
    prompt_mask: jax.Array | None
    completion_ids: jax.Array
    unmask_step: jax.Array
    advantages: jax.Array


@dataclasses.dataclass(frozen=True)
class MaskedObjective:
    """A loss trained from rollouts that are prepared once and then give one or more optimizer updates (d1's μ
    updates per rollout; TraceRL's updates over the rollout's trace rows).

    `prepare(trainable, frozen, ref_params, samples, micro, rng, *, model_config, config, lora_config)`: at rollout
    time, the arguments (batch, rng, old, ref) of every gradient call micro-batch `micro` contributes, and metrics
    (rollout-time quantities: the old policy's, the reference's, under the mask keys drawn from `rng`).
    `schedule(units per micro-batch, config)`: the updates, each a list of (micro-batch index, unit) whose
    gradients are averaged (`iterated` or `in_order`).
    `grad(trainable, frozen, batch, rng, old, ref, *, model_config, config, lora_config, dropout_rng)`:
    (loss, grads, metrics). `needs_ref(config)`: whether `prepare` uses the reference params (the initial policy).
    `unit_like(array, samples, config)`: a unit's (batch, old, ref) as `prepare` would give them, every array made by
    `array(shape, dtype)` (abstract ones: `experiments.aot` compiles the gradient program from them).
    `records`: rollouts use the configured sampler (`SamplerConfig.record=True`), not LLaDA's semantics.
    `logged`: the loss metrics the trainer logs beside the loss.
    """

    prepare: Callable
    schedule: Callable
    grad: Callable
    needs_ref: Callable
    unit_like: Callable
    records: bool
    logged: tuple[str, ...]


def iterated(units_per_micro, config):
    """Update i takes unit i of every micro-batch (μ = the units per micro-batch)."""
    return [[(m, units[i]) for m, units in enumerate(units_per_micro)] for i in range(len(units_per_micro[0]))]


def in_order(units_per_micro, config):
    """Every unit once, in order, `config.row_batches_per_update` units per update (the last may have fewer)."""
    flat = [(m, unit) for m, units in enumerate(units_per_micro) for unit in units]
    n = config.row_batches_per_update
    return [flat[i:i + n] for i in range(0, len(flat), n)]


@functools.partial(jax.jit, static_argnames=("fn", "model_config", "config", "lora_config"))
def _score(trainable, frozen, batch, rng, *, fn, model_config, config, lora_config):
    params = lora_lib.policy_params(trainable, frozen, lora_config)
    return fn(model_config, params, batch, rng, config)


def score(trainable, frozen, batch, rng, *, fn, model_config, config, lora_config):
    """`fn(model_config, params, batch, rng, config)` of the policy (LoRA unmerged, no dropout): a rollout-time
    quantity of the old or, with `lora_config=None`, the reference policy."""
    with on_mesh_of(trainable):
        return _score(trainable, frozen, batch, rng, fn=fn, model_config=model_config, config=config,
                      lora_config=lora_config)


def _one_step_prepare(trainable, frozen, ref_params, samples, micro, rng, *, model_config, config, lora_config,
                      uses_old):
    """d1 / wd1 / SPG: μ mask keys; old (a ratio's, only with μ > 1: else the current policy's, detached) and
    reference (β > 0) one-step log-probs under the masks the micro-batch uses (`diffu_grpo.mask_index`), None
    elsewhere (SPG, wd1: no old; SPG's masks are its own, drawn by its loss from the same keys)."""
    completion = samples.completion_ids
    batch = diffu_grpo.DiffuGRPOBatch(samples.prompt_ids, samples.prompt_mask, completion,
                                      diffu_grpo.completion_mask(completion, model_config.eos_token_id),
                                      samples.advantages)
    mu = config.num_iterations
    keys = diffu_grpo.iteration_keys(rng, mu)
    index = [diffu_grpo.mask_index(it, micro, config) for it in range(mu)]
    kw = dict(fn=diffu_grpo.completion_logps, model_config=model_config, config=config)
    old = ref = [None] * mu
    if uses_old and mu > 1:
        old = [score(trainable, frozen, batch, k, lora_config=lora_config, **kw) if j in index else None
               for j, k in enumerate(keys)]
    if config.beta:
        ref = [score(ref_params, None, batch, k, lora_config=None, **kw) if j in index else None
               for j, k in enumerate(keys)]
    return [(batch, keys[j], old[j], ref[j]) for j in index], {}


def _sequence_elbo(model_config, params, batch, rng, config):
    return dmpo.token_elbo(model_config, params, batch, rng, config).sum(axis=1)


def _dmpo_prepare(trainable, frozen, ref_params, samples, micro, rng, *, model_config, config, lora_config):
    """DMPO: the sequence ELBOs of the rollout and reference policies under shared masks (α > 0), their
    `dmpo_weights` with the group-centred rewards (a group's softmax ignores the centring), and μ mask keys, one per
    update (fresh masks per update, as officially)."""
    del micro
    completion = samples.completion_ids
    zeros = jnp.zeros(completion.shape[:1], jnp.float32)
    batch = dmpo.DMPOBatch(samples.prompt_ids, samples.prompt_mask, completion,
                           diffu_grpo.completion_mask(completion, model_config.eos_token_id), zeros, zeros)
    elbo_key, loss_key = jax.random.split(rng)
    old = ref = zeros
    if config.alpha > 0:
        kw = dict(fn=_sequence_elbo, model_config=model_config, config=config)
        old = score(trainable, frozen, batch, elbo_key, lora_config=lora_config, **kw)
        ref = score(ref_params, None, batch, elbo_key, lora_config=None, **kw)
    weights, negative_weights, metrics = dmpo.dmpo_weights(samples.advantages, ref, old, config)
    batch = batch._replace(weights=weights, negative_weights=negative_weights)
    return [(batch, k, None, None) for k in diffu_grpo.iteration_keys(loss_key, config.num_iterations)], metrics


def _espo_prepare(trainable, frozen, ref_params, samples, micro, rng, *, model_config, config, lora_config):
    """ESPO: μ mask keys, update i under key i (ESPO's draw (micro-batch, i), each used once); the rollout policy's
    (a ratio's, only with μ > 1) and the reference's (β > 0) sequence ELBOs under each key, on the micro-batch's own
    rows as the update scores them (ESPO's mask counts are stratified over the rows of one call)."""
    del micro  # `rng` is the micro-batch's own
    completion = samples.completion_ids
    batch = espo.ESPOBatch(samples.prompt_ids, samples.prompt_mask, completion,
                           diffu_grpo.completion_mask(completion, model_config.eos_token_id), samples.advantages)
    kw = dict(fn=espo.sequence_elbo, model_config=model_config, config=config)
    units = []
    for k in diffu_grpo.iteration_keys(rng, config.num_iterations):
        old = score(trainable, frozen, batch, k, lora_config=lora_config, **kw) if config.num_iterations > 1 else None
        ref = score(ref_params, None, batch, k, lora_config=None, **kw) if config.beta else None
        units.append((batch, k, old, ref))
    return units, {}


def _trace_logps(model_config, params, batch, rng, config):
    del rng  # the trace fixes every input
    return tracerl.token_logps(model_config, params, batch, config)


@functools.partial(jax.jit, static_argnames=("config", "pad_token_id"))
def _trace_rows(samples, *, config, pad_token_id):
    rows = tracerl.trace_rows(tracerl.TraceSamples(*samples), config, pad_token_id)
    return rows, rows.target.any(axis=1)


@jax.jit
def _take_rows(rows, index, keep):
    picked = jax.tree.map(lambda x: x[index], rows)
    return picked._replace(target=picked.target & keep[:, None])


def _trace_prepare(trainable, frozen, ref_params, samples, micro, rng, *, model_config, config, lora_config,
                   rows_config, uses_ref):
    """TraceRL / DiPO: the trace rows (`tracerl.trace_rows` with `rows_config(config)`), the rows that score nothing
    dropped (as officially) and the rest split in order into micro-batches of `row_batch_size` (the last padded
    with rows that score nothing), each with the rollout policy's token log-probs (and the reference's where
    `uses_ref(config)`)."""
    del micro, rng  # the trace fixes every input
    rows, valid_N = _trace_rows(samples, config=rows_config(config), pad_token_id=model_config.pad_token_id)
    index = np.flatnonzero(multihost_utils.process_allgather(valid_N, tiled=True))
    n = config.row_batch_size
    padded = np.zeros(-(-len(index) // n) * n, np.int32)
    padded[:len(index)] = index
    keep = np.arange(len(padded)) < len(index)
    kw = dict(fn=_trace_logps, model_config=model_config, config=config)
    units = []
    for c in range(0, len(padded), n):
        chunk = _take_rows(rows, padded[c:c + n], keep[c:c + n])
        old = score(trainable, frozen, chunk, None, lora_config=lora_config, **kw)
        ref = score(ref_params, None, chunk, None, lora_config=None, **kw) if uses_ref(config) else None
        units.append((chunk, None, old, ref))
    return units, {"trace_rows": float(len(index))}


def _one_step_unit_like(array, samples, config, *, uses_old):
    b, length = samples.completion_ids.shape
    batch = diffu_grpo.DiffuGRPOBatch(samples.prompt_ids, samples.prompt_mask, samples.completion_ids,
                                      array((b, length), bool), samples.advantages)
    logps = lambda: array((b, length), jnp.float32)  # noqa: E731
    return batch, logps() if uses_old and config.num_iterations > 1 else None, logps() if config.beta else None


def _espo_unit_like(array, samples, config):
    b, length = samples.completion_ids.shape
    batch = espo.ESPOBatch(samples.prompt_ids, samples.prompt_mask, samples.completion_ids, array((b, length), bool),
                           samples.advantages)
    elbo = lambda: array((b,), jnp.float32)  # noqa: E731
    return batch, elbo() if config.num_iterations > 1 else None, elbo() if config.beta else None


def _dmpo_unit_like(array, samples, config):
    b, length = samples.completion_ids.shape
    return dmpo.DMPOBatch(samples.prompt_ids, samples.prompt_mask, samples.completion_ids, array((b, length), bool),
                          array((b,), jnp.float32), array((b,), jnp.float32)), None, None


def _trace_unit_like(array, samples, config, *, uses_ref):
    n, (p, length) = config.row_batch_size, (samples.prompt_ids.shape[1], samples.completion_ids.shape[1])
    mask = None if samples.prompt_mask is None else array((n, p), jnp.int32)
    batch = tracerl.TraceRLBatch(array((n, p), jnp.int32), mask, array((n, length), jnp.int32),
                                 array((n, length), bool), array((n, length), bool),
                                 array((n,), jnp.float32))
    ref = array((n, length), jnp.float32) if uses_ref(config) else None
    return batch, array((n, length), jnp.float32), ref


def _wd1_grad(trainable, frozen, batch, rng, old_logp, ref_logp, **kw):
    del old_logp, ref_logp  # wd1 has neither
    return wd1.wd1_grad(trainable, frozen, batch, rng, **kw)


def _dmpo_grad(trainable, frozen, batch, rng, old, ref, **kw):
    del old, ref  # the rollout-time quantities are in the batch's weights
    return dmpo.dmpo_grad(trainable, frozen, batch, rng, **kw)


def _tracerl_grad(trainable, frozen, batch, rng, old_logp, ref_logp, **kw):
    del rng  # the trace fixes every input
    return tracerl.tracerl_grad(trainable, frozen, batch, old_logp, ref_logp, **kw)


def _dipo_grad(trainable, frozen, batch, rng, old_logp, ref_logp, **kw):
    del rng  # the trace fixes every input
    return dipo.dipo_grad(trainable, frozen, batch, old_logp, ref_logp, **kw)


def _tracerl_uses_ref(config):
    return bool(config.beta) and config.kl_reference == "ref"


def _dipo_uses_ref(config):
    return bool(config.beta)  # DiPO's KL is against the reference


_tracerl_prepare = functools.partial(_trace_prepare, rows_config=lambda c: c, uses_ref=_tracerl_uses_ref)
_dipo_prepare = functools.partial(_trace_prepare, rows_config=dipo.DiPOConfig.rows_config, uses_ref=_dipo_uses_ref)


# TrainConfig.algorithm → its objective, for every algorithm but AGRPO.
MASKED_OBJECTIVES = {
    "diffu_grpo": MaskedObjective(functools.partial(_one_step_prepare, uses_old=True), iterated,
                                  diffu_grpo.diffu_grpo_grad, needs_ref=lambda c: bool(c.beta),
                                  unit_like=functools.partial(_one_step_unit_like, uses_old=True), records=False,
                                  logged=("clip_fraction", "clip_ratio", "kl")),
    "wd1": MaskedObjective(functools.partial(_one_step_prepare, uses_old=False), iterated, _wd1_grad,
                           needs_ref=lambda c: bool(c.beta),
                           unit_like=functools.partial(_one_step_unit_like, uses_old=False), records=False,
                           logged=("seq_logp_mean", "pos_weight_max")),
    "dmpo": MaskedObjective(_dmpo_prepare, iterated, _dmpo_grad, needs_ref=lambda c: c.alpha > 0,
                            unit_like=_dmpo_unit_like, records=False, logged=("dce", "mask_fraction")),
    "tracerl": MaskedObjective(_tracerl_prepare, in_order, _tracerl_grad, needs_ref=_tracerl_uses_ref,
                               unit_like=functools.partial(_trace_unit_like, uses_ref=_tracerl_uses_ref),
                               records=True, logged=("policy_loss", "ratio_mean", "clip_fraction", "kl")),
    "dipo": MaskedObjective(_dipo_prepare, in_order, _dipo_grad, needs_ref=_dipo_uses_ref,
                            unit_like=functools.partial(_trace_unit_like, uses_ref=_dipo_uses_ref), records=True,
                            logged=("ratio_mean", "clip_fraction", "kl")),
    "espo": MaskedObjective(_espo_prepare, iterated, espo.espo_grad, needs_ref=lambda c: bool(c.beta),
                            unit_like=_espo_unit_like, records=False,
                            logged=("ratio_mean", "clip_ratio", "clip_ratio_low", "clip_ratio_high", "kl")),
    "spg": MaskedObjective(functools.partial(_one_step_prepare, uses_old=False), iterated, spg.spg_grad,
                           needs_ref=lambda c: False, unit_like=functools.partial(_one_step_unit_like, uses_old=False),
                           records=False, logged=("elbo", "eubo", "seq_logp")),
}


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
