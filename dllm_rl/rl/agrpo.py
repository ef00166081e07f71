"""AGRPO loss: Monte-Carlo timesteps over the denoising trajectory, PPO-clipped, gradients accumulated in a scan.

Faithful to the official `compute_loss` (github.com/probablyabot/agrpo @98f1182; docs/algorithm.md):
- The state before step s is rebuilt from the final completion and `unmask_step`: positions with
  unmask_step ≥ s are masked. The tokens scored at step s are those with unmask_step == s.
- T_i = 1 + the last step that unmasked a non-EOS token; steps that unmask only EOS are never drawn.
- Timestep proposals: `uniform` (s = ⌊u·T_i⌋, w = 1) and `entropy` (q_i(s) ∝ 1e-8 + Σ entropies unmasked at s,
  inverse CDF, w = (1/T_i)/q_i(s)). Low-discrepancy draws stratify u over the whole batch: (perm + u)/(B·K).
- Per token: −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A) + β·ρ·k3(ref, new), ρ = exp(log π̃_θ − log π̃_old) with
  π̃ = softmax(logits/τ) restricted to the recorded top-k/top-p set and the rollout's log-probs as π̃_old.
- Timestep loss_k = Σ_i w_ik Σ_{j scored} ℓ_ij / (K·G); the objective is Σ_k loss_k (sum/G, not a mean over
  rows, when the batch holds more than one group: the official normalisation).

JAX layout: `agrpo_grad` runs the K timesteps in one `lax.scan` whose body is a full value_and_grad, so only one
timestep's activations are alive; logits are computed only at the positions a timestep scores. The number of
scored positions per (row, step) varies in general, so they are gathered into a static `max_tokens_per_step`
slots with a validity mask (see `AGRPOConfig.max_tokens_per_step`).

The module is a little over 300 lines: the trajectory bookkeeping, the timestep draws and the loss are the three
parts of one estimator and are read together.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from dllm_rl.models import llada
from dllm_rl.models.lora import LoRAConfig, policy_params
from dllm_rl.rl.advantages import check_group_size
from dllm_rl.rl.objective import ForwardConfig, clipped_token_loss, masked_mean, model_inputs, token_log_probs

Params = dict[str, Any]
PROPOSALS = ("uniform", "entropy")
ENTROPY_FLOOR = 1e-8  # the official q_i(s) adds this to every step's entropy sum


@dataclasses.dataclass(frozen=True)
class AGRPOConfig(ForwardConfig):
    """AGRPO loss settings (defaults: the released GSM8K train.yaml); the model-call fields (remat,
    compute_dtype, attention_impl) come from `ForwardConfig`.

    sampling_steps m and gen_length L are the rollout's; the static slot count per timestep is
    `max_tokens_per_step`, default ⌈L/m⌉ = the n tokens the AGRPO sampler unmasks per step. That is exact for
    every drawable step (s < T_i): early-stop EOS fill lands on a step ≥ T_i. Set it higher only for a sampler
    that unmasks a varying number per step; `timestep_loss` reports `dropped_tokens` if it was too small.

    grad_accum_dtype: the dtype the K timesteps' gradients are summed in: "float32", or "params" (the trainable
    params' own dtype: for bf16 full fine-tuning it saves an f32 copy of the params, 2 bytes per parameter of
    HBM, and rounds each of the K additions to bf16). LoRA adapters are float32 either way.
    """

    mc_samples: int = 24
    sampling_steps: int = 128
    gen_length: int = 384
    proposal: str = "entropy"
    low_discrepancy: bool = True
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0
    temperature: float = 0.6
    num_generations: int = 8
    max_tokens_per_step: int | None = None
    grad_accum_dtype: str = "float32"

    def __post_init__(self):
        if self.grad_accum_dtype not in ("float32", "params"):
            raise ValueError(f"AGRPOConfig.grad_accum_dtype={self.grad_accum_dtype!r}; choose 'float32' or 'params'")
        if self.proposal not in PROPOSALS:
            raise ValueError(f"AGRPOConfig.proposal={self.proposal!r}; choose one of {PROPOSALS}")
        for name in ("mc_samples", "sampling_steps", "gen_length", "num_generations"):
            if getattr(self, name) < 1:
                raise ValueError(f"AGRPOConfig.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.mc_samples > self.sampling_steps:
            raise ValueError(f"AGRPOConfig.mc_samples K={self.mc_samples} exceeds sampling_steps "
                             f"m={self.sampling_steps}: a row has at most m timesteps; use K ≤ m")
        if not self.temperature > 0:
            raise ValueError(f"AGRPOConfig.temperature must be > 0 (the rollout's sampling temperature), got "
                             f"{self.temperature}; greedy rollouts have no log-probs to train on")
        if not (0 <= self.epsilon_low < 1 and self.epsilon_high >= 0):
            raise ValueError(f"AGRPOConfig.epsilon_low must be in [0, 1) and epsilon_high ≥ 0, got "
                             f"{self.epsilon_low}, {self.epsilon_high}")
        if self.max_tokens_per_step is not None and self.max_tokens_per_step < 1:
            raise ValueError(f"AGRPOConfig.max_tokens_per_step must be ≥ 1, got {self.max_tokens_per_step}")
        super().__post_init__()

    @property
    def slots(self) -> int:
        """Static number of scored positions gathered per row and timestep."""
        return self.max_tokens_per_step or math.ceil(self.gen_length / self.sampling_steps)


class AGRPOBatch(NamedTuple):
    """One rollout micro-batch, as arrays (a pytree; None fields are allowed where noted).

    prompt_ids [B, P] int, prompt_mask [B, P] (1 = token; None: no padding), completion_ids [B, L] int,
    unmask_step [B, L] int (step at which each position was unmasked), old_logp [B, L] float (sampling-time
    log-prob of the chosen token), entropy [B, L] float (sampling-time entropy; used by the entropy proposal),
    advantages [B] float, keep: the truncation record read by `keep_fn` (default: bool [B, L, V], the top-k/top-p
    set kept at each position's step; None: no truncation).
    """

    prompt_ids: jax.Array
    prompt_mask: jax.Array | None
    completion_ids: jax.Array
    unmask_step: jax.Array
    old_logp: jax.Array
    entropy: jax.Array
    advantages: jax.Array
    keep: Any


KeepFn = Callable[[Any, jax.Array], jax.Array]


def gather_keep(keep: Any, positions_BxN: jax.Array) -> jax.Array:
    """Default `keep_fn`: bool keep mask [B, N, V] at completion positions, from a dense [B, L, V] record."""
    return jnp.take_along_axis(keep, positions_BxN[..., None], axis=1)


# ----------------------------------------------------------------------------------------------------------------
# Trajectory bookkeeping


def num_steps(completion_ids_BxL: jax.Array, unmask_step_BxL: jax.Array, eos_token_id: int) -> jax.Array:
    """T_i = 1 + the last step that unmasked a non-EOS token ([B] int32; 0 for an all-EOS row)."""
    non_eos = jnp.where(completion_ids_BxL == eos_token_id, -1, unmask_step_BxL)
    return (non_eos.max(axis=1) + 1).astype(jnp.int32)


def state_at_step(completion_ids_BxL: jax.Array, unmask_step_BxL: jax.Array, step_B: jax.Array,
                  mask_token_id: int) -> jax.Array:
    """Completion as it was before step s: every position unmasked at step ≥ s is the mask token."""
    return jnp.where(unmask_step_BxL >= step_B[:, None], mask_token_id, completion_ids_BxL)


def scored_positions(unmask_step_BxL: jax.Array, step_B: jax.Array, slots: int) -> tuple[jax.Array, jax.Array]:
    """(positions [B, N], valid [B, N]): the first `slots` completion positions unmasked at step s, in order.

    Unused slots point at some other position and are marked invalid.
    """
    match_BxL = unmask_step_BxL == step_B[:, None]
    positions_BxN = jnp.argsort(~match_BxL, axis=1, stable=True)[:, :slots].astype(jnp.int32)
    return positions_BxN, jnp.take_along_axis(match_BxL, positions_BxN, axis=1)


# ----------------------------------------------------------------------------------------------------------------
# Timestep draws


def stratify(u_BK: jax.Array, perm_BK: jax.Array, batch_size: int, mc_samples: int) -> jax.Array:
    """Low-discrepancy uniforms [B, K] from B·K flat U[0,1) draws and a permutation of 0..B·K−1: (perm + u)/(B·K)."""
    n = batch_size * mc_samples
    return ((perm_BK.astype(jnp.float32) + u_BK.astype(jnp.float32)) / n).reshape(batch_size, mc_samples)


def draw_uniforms(rng: jax.Array, batch_size: int, mc_samples: int, low_discrepancy: bool) -> jax.Array:
    """The U[0,1) draws [B, K] that pick the timesteps (stratified over the whole batch if low_discrepancy)."""
    u_key, perm_key = jax.random.split(rng)
    n = batch_size * mc_samples
    u_BK = jax.random.uniform(u_key, (n,), jnp.float32)
    if not low_discrepancy:
        return u_BK.reshape(batch_size, mc_samples)
    return stratify(u_BK, jax.random.permutation(perm_key, n), batch_size, mc_samples)


def step_proposal(batch: AGRPOBatch, config: AGRPOConfig, eos_token_id: int) -> tuple[jax.Array, jax.Array]:
    """(q [B, m] the proposal over steps, T [B]); q is zero for s ≥ T_i (so all zero for an all-EOS row)."""
    t_B = num_steps(batch.completion_ids, batch.unmask_step, eos_token_id)
    steps_M = jnp.arange(config.sampling_steps)
    live_BxM = steps_M[None, :] < t_B[:, None]
    if config.proposal == "uniform":
        q_BxM = live_BxM / jnp.maximum(t_B, 1)[:, None].astype(jnp.float32)
    else:
        onehot_BxLxM = batch.unmask_step[:, :, None] == steps_M[None, None, :]
        ent_BxM = ENTROPY_FLOOR + jnp.einsum("blm,bl->bm", onehot_BxLxM.astype(jnp.float32),
                                             batch.entropy.astype(jnp.float32))
        ent_BxM = jnp.where(live_BxM, ent_BxM, 0.0)
        total_Bx1 = ent_BxM.sum(axis=1, keepdims=True)
        q_BxM = ent_BxM / jnp.where(total_Bx1 > 0, total_Bx1, 1.0)
    return q_BxM, t_B


def timesteps(u_BxK: jax.Array, batch: AGRPOBatch, config: AGRPOConfig, eos_token_id: int
              ) -> tuple[jax.Array, jax.Array]:
    """(steps [B, K] int32, importance weights [B, K]) from the uniforms, as the official code computes them.

    uniform: s = ⌊u·T_i⌋, w = 1. entropy: s = first index with CDF ≥ u (searchsorted left), w = (1/T_i)/q_i(s).
    Steps are clamped to T_i − 1 against float rounding of u·T or of the CDF's last value. An all-EOS row
    (T_i = 0) gets step −1, which scores nothing, and weight 0 under the entropy proposal (not 0/0 = NaN).
    """
    q_BxM, t_B = step_proposal(batch, config, eos_token_id)
    t_Bx1 = t_B[:, None]
    if config.proposal == "uniform":
        steps_BxK = jnp.floor(u_BxK * t_Bx1.astype(jnp.float32)).astype(jnp.int32)
        return jnp.minimum(steps_BxK, t_Bx1 - 1), jnp.ones_like(u_BxK, jnp.float32)
    cdf_BxM = jnp.cumsum(q_BxM, axis=1)
    steps_BxK = jnp.sum(cdf_BxM[:, None, :] < u_BxK[:, :, None], axis=2).astype(jnp.int32)
    steps_BxK = jnp.minimum(steps_BxK, t_Bx1 - 1)
    q_BxK = jnp.take_along_axis(q_BxM, steps_BxK, axis=1)
    weights_BxK = (1.0 / jnp.maximum(t_Bx1, 1).astype(jnp.float32)) / jnp.where(q_BxK > 0, q_BxK, 1.0)
    return steps_BxK, jnp.where(t_Bx1 > 0, weights_BxK, 0.0)


def all_steps(batch: AGRPOBatch, config: AGRPOConfig, eos_token_id: int) -> tuple[jax.Array, jax.Array]:
    """Every step once (K = m): steps [B, m] and weights m/T_i·[s < T_i], so the loss is the exact J (not MC)."""
    t_Bx1 = num_steps(batch.completion_ids, batch.unmask_step, eos_token_id)[:, None]
    steps_BxM = jnp.broadcast_to(jnp.arange(config.sampling_steps, dtype=jnp.int32), t_Bx1.shape[:1] +
                                 (config.sampling_steps,))
    weights_BxM = jnp.where(steps_BxM < t_Bx1, config.sampling_steps / t_Bx1.astype(jnp.float32), 0.0)
    return steps_BxM, weights_BxM


# ----------------------------------------------------------------------------------------------------------------
# Loss


def token_logps(model_config: llada.LLaDAConfig, params: Params, batch: AGRPOBatch, step_B: jax.Array,
                config: AGRPOConfig, keep_fn: KeepFn = gather_keep
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(log π̃ [B, N] of the tokens unmasked at step s given the state before s, positions [B, N], valid [B, N]).

    π̃ = softmax(logits/τ) over the recorded keep set; logits only at the N scored positions, in float32.
    """
    p = batch.prompt_ids.shape[1]
    positions_BxN, valid_BxN = scored_positions(batch.unmask_step, step_B, config.slots)
    state_BxL = state_at_step(batch.completion_ids, batch.unmask_step, step_B, model_config.mask_token_id)
    input_ids_BxT, attention_mask_BxT = model_inputs(batch.prompt_ids, batch.prompt_mask, state_BxL)
    logits_BxNxV = llada.forward_at(model_config, params, input_ids_BxT, p + positions_BxN, attention_mask_BxT,
                                    **config.forward_kwargs())
    logits_BxNxV = logits_BxNxV.astype(jnp.float32) / config.temperature
    if batch.keep is not None:
        # Invalid slots keep everything so their (unused) log-softmax stays finite and NaN-free in the backward.
        keep_BxNxV = keep_fn(batch.keep, positions_BxN) | ~valid_BxN[..., None]
        logits_BxNxV = jnp.where(keep_BxNxV, logits_BxNxV, -jnp.inf)
    tokens_BxN = jnp.take_along_axis(batch.completion_ids, positions_BxN, axis=1)
    return token_log_probs(logits_BxNxV, tokens_BxN), positions_BxN, valid_BxN


def timestep_loss(params: Params, ref_params: Params | None, batch: AGRPOBatch, step_B: jax.Array,
                  weight_B: jax.Array, *, model_config: llada.LLaDAConfig, config: AGRPOConfig, mc_samples: int,
                  keep_fn: KeepFn = gather_keep) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss_k, metrics) of one timestep per row: Σ_i w_i Σ_{j scored at s_i} ℓ_ij / (K·G)."""
    logp_BxN, positions_BxN, valid_BxN = token_logps(model_config, params, batch, step_B, config, keep_fn)
    old_BxN = jnp.take_along_axis(batch.old_logp, positions_BxN, axis=1).astype(jnp.float32)
    logp_BxN = jnp.where(valid_BxN, logp_BxN, old_BxN)  # invalid slots: ratio 1, zero weight below
    ref_BxN = None
    if config.beta:
        if ref_params is None:
            raise ValueError("AGRPOConfig.beta > 0 needs ref_params (the base params for LoRA, a frozen copy of "
                             "the initial params for full fine-tuning)")
        ref_BxN, _, _ = token_logps(model_config, ref_params, batch, step_B, config, keep_fn)
        ref_BxN = jax.lax.stop_gradient(jnp.where(valid_BxN, ref_BxN, logp_BxN))
    # Sampling-time vs training-time log-prob of the same tokens: before the update the two policies are one, so
    # anything but float noise here means the sampler ran a different policy than the loss differentiates.
    mismatch_BxN = jnp.where(valid_BxN, jnp.abs(logp_BxN - old_BxN), 0.0)
    # The KL is k3 × ratio (the off-policy correction of DeepSeek-V3.2, as the official code).
    per_token_BxN, ratio_BxN, kl_BxN = clipped_token_loss(
        logp_BxN, old_BxN, ref_BxN, batch.advantages, config.epsilon_low, config.epsilon_high, config.beta,
        kl_times_ratio=True)
    adv_Bx1 = batch.advantages.astype(jnp.float32)[:, None]
    live_B = num_steps(batch.completion_ids, batch.unmask_step, model_config.eos_token_id) > 0
    metrics = {} if kl_BxN is None else {"kl": masked_mean(kl_BxN, valid_BxN)}
    tok_weight_BxN = valid_BxN * weight_B.astype(jnp.float32)[:, None]
    loss = jnp.sum(per_token_BxN * tok_weight_BxN) / (mc_samples * config.num_generations)
    low_BxN = (ratio_BxN < 1.0 - config.epsilon_low) & (adv_Bx1 < 0)
    high_BxN = (ratio_BxN > 1.0 + config.epsilon_high) & (adv_Bx1 > 0)
    metrics.update(
        clip_low=masked_mean(low_BxN, valid_BxN),
        clip_high=masked_mean(high_BxN, valid_BxN),
        clip_fraction=masked_mean(low_BxN | high_BxN, valid_BxN),
        ratio_mean=masked_mean(ratio_BxN, valid_BxN),
        ratio_max=jnp.max(jnp.where(valid_BxN, ratio_BxN, 0.0)),
        importance_weight_mean=jnp.sum(jnp.where(live_B, weight_B.astype(jnp.float32), 0.0))
        / jnp.maximum(live_B.sum(), 1),  # all-EOS rows (T_i = 0) have no weight to average
        logp_mismatch_mean=masked_mean(mismatch_BxN, valid_BxN),
        logp_mismatch_max=jnp.max(mismatch_BxN),
        scored_tokens=valid_BxN.sum().astype(jnp.float32),
        dropped_tokens=(jnp.sum(batch.unmask_step == step_B[:, None]) - valid_BxN.sum()).astype(jnp.float32),
    )
    return loss, metrics


def check_batch(batch: AGRPOBatch, config: AGRPOConfig, steps_BxK: jax.Array, weights_BxK: jax.Array) -> None:
    """Static shape checks (at trace time) with errors that name the field and the fix."""
    b, l = batch.completion_ids.shape
    check_group_size(b, config.num_generations)
    if l != config.gen_length:
        raise ValueError(f"completion length {l} != AGRPOConfig.gen_length {config.gen_length}; set gen_length to "
                         "the rollout's generated length")
    for name in ("unmask_step", "old_logp", "entropy"):
        if getattr(batch, name).shape != (b, l):
            raise ValueError(f"AGRPOBatch.{name} has shape {getattr(batch, name).shape}, expected [B, L] = {(b, l)}")
    if batch.advantages.shape != (b,):
        raise ValueError(f"AGRPOBatch.advantages has shape {batch.advantages.shape}, expected [B] = {(b,)}")
    if steps_BxK.ndim != 2 or steps_BxK.shape[0] != b or weights_BxK.shape != steps_BxK.shape:
        raise ValueError(f"timestep draws must be steps [B, K] and weights [B, K] with B = {b}; got "
                         f"{steps_BxK.shape} and {weights_BxK.shape} (use `timesteps` or `all_steps`)")


def agrpo_grad(trainable: Params, frozen: Params | None, ref_params: Params | None, batch: AGRPOBatch,
               steps_BxK: jax.Array, weights_BxK: jax.Array, *, model_config: llada.LLaDAConfig,
               config: AGRPOConfig, lora_config: LoRAConfig | None = None, keep_fn: KeepFn = gather_keep
               ) -> tuple[jax.Array, Params, dict[str, jax.Array]]:
    """(objective Σ_k loss_k, its gradient w.r.t. `trainable`, metrics) over the K drawn timesteps.

    Pure and jit-able (configs and keep_fn static). The policy params are `policy_params(trainable, frozen,
    lora_config)`: full fine-tuning passes frozen=None, LoRA passes the adapters and the base params. Each scan
    iteration does one timestep's forward+backward and adds its gradient to an accumulator in
    `config.grad_accum_dtype`; gradients come back in the trainable dtypes. Metrics: per-timestep means over K
    (the max over K for `logp_mismatch_max`, the sum for `dropped_tokens`), plus `last_microloss` (loss_{K−1},
    what the official trainer returns).
    """
    check_batch(batch, config, steps_BxK, weights_BxK)
    k = steps_BxK.shape[1]

    def loss_fn(tr, step_B, weight_B):
        params = policy_params(tr, frozen, lora_config)
        return timestep_loss(params, ref_params, batch, step_B, weight_B, model_config=model_config,
                             config=config, mc_samples=k, keep_fn=keep_fn)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def body(acc, xs):
        (loss, metrics), grads = grad_fn(trainable, *xs)
        acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), acc, grads)
        return acc, (loss, metrics)

    in_params_dtype = config.grad_accum_dtype == "params"
    acc0 = jax.tree.map(lambda p: jnp.zeros(p.shape, p.dtype if in_params_dtype else jnp.float32), trainable)
    acc, (losses_K, metrics_K) = jax.lax.scan(body, acc0, (steps_BxK.T, weights_BxK.T))
    grads = jax.tree.map(lambda a, p: a.astype(p.dtype), acc, trainable)
    metrics = {name: v.mean() for name, v in metrics_K.items()}
    metrics["dropped_tokens"] = metrics_K["dropped_tokens"].sum()
    metrics["logp_mismatch_max"] = metrics_K["logp_mismatch_max"].max()
    metrics["last_microloss"] = losses_K[-1]
    return losses_K.sum(), grads, metrics
