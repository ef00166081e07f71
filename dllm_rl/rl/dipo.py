"""DiPO (DiRL, github.com/OpenMOSS/DiRL @ec4bfb3): PPO on the per-step likelihood of the recorded denoising trace.

The official code is for SDAR block models: `train/grpo.py` (method "DiPO") turns each rollout's `step_map` into rows
(`generate_training_samples_for_one`) and `SDARForCausalLM.forward(compute_rl_loss=True)` (models/sdar/
modeling_sdar.py) scores them. This module is the same objective for a full-attention masked diffusion model (LLaDA)
from the sampler's `unmask_step` record:
- **Rows**: one per distinct decoding step of a sample, ascending; the row masks every completion position decoded
  at that step or later (the prompt and earlier steps visible) and scores those decoded at that step: exactly what
  the sampler saw when it made that step's choices. These are TraceRL's rows without merging (shrink 1) and with
  every completion position scorable, so they come from `tracerl.trace_rows`.
- **Loss** (the RL branch of `forward`): ρ = exp(clip(logp − old, −10, 10)), surrogate min(ρA, clip(ρ, 1 − ε,
  1 + ε + 0.08)A) (the official's hard-coded clip-higher: `clip_higher`, default 0.08), KL to the *reference*
  β·(e^{clip(ref − logp, −10, 10)} − 1 + logp − ref) (k3, `use_kl_estimator_k3`, default) or β·(logp − ref) (k1).
  `forward` averages both over the scored tokens of its call (`loss_mean`): `reduction="token"` is one call over all
  rows. The official trainer calls it with one row at a time (`batch_size_lm` 1, configs/rl.yaml) and accumulates
  loss / rows-per-update, each sample padded to `block_size` rows (fake rows score nothing): `reduction="row"`
  (default) is Σ_rows token-mean / (B·`sampling_steps`), each sample padded to the most steps a trace can take.
- **Old log-probs**: the rollout policy's on the same rows (`compute_model_logprobs`); None (the official's on-policy
  case, `num_iterations` 1) uses the policy's own, stop-gradient, so ρ = 1.

What differs from the SDAR block-model version: SDAR predicts a row with the [noisy | clean] concatenation and a
block-causal mask, so in one row every block sits at its own k-th decoding step with earlier blocks seen clean and
later ones unseen, and the official rounds run the blocks in parallel (row k = each block's k-th step). A
full-attention model sees the whole sequence, so a row here is one step of the whole trace with every later-decoded
position masked (later blocks included), as the sampler had it. The official's `shrink` ≠ 1 (each block's steps
merged into its first) and its `step_map` > 0 convention (0-based steps here; −1, never decoded, stays visible and
unscored) have no counterpart. With those rows the official functions give this module's log-probs, loss and
gradients on the tiny model (tests/fixtures/dipo_loss). Advantages are the caller's.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from dllm_rl.models import llada
from dllm_rl.models.lora import LoRAConfig, policy_params
from dllm_rl.rl import tracerl
from dllm_rl.rl.objective import ForwardConfig, check_kl_estimator, masked_mean, token_kl
from dllm_rl.rl.tracerl import TraceRLBatch, TraceSamples

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class DiPOConfig(ForwardConfig):
    """DiPO settings (defaults: the official configs/rl.yaml); the model-call fields come from `ForwardConfig`.
    sampling_steps: the rollout's step count (rows per sample); clip_higher: added to the upper clip 1 + ε (official
    0.08, hard-coded); log_ratio_clamp: |logp − old| and |ref − logp| clamp before exp (official 10); kl_estimator
    "k3" or "k1" (against the reference); reduction "row" (official trainer) or "token" (one official call).

    Trainer settings (`rl.steps.MASKED_OBJECTIVES`, as TraceRL's): num_generations (`num_response_per_task`); a
    rollout's rows that score something are trained in order, `row_batch_size` rows per loss call
    (`batch_size_lm`), `row_batches_per_update` calls averaged per optimizer update (the official
    `gradient_accumulation_steps`, derived from `mini_batch_size`)."""

    num_generations: int = 8
    row_batch_size: int = 1
    row_batches_per_update: int = 128
    sampling_steps: int = 512
    epsilon: float = 0.2
    clip_higher: float = 0.08
    log_ratio_clamp: float = 10.0
    beta: float = 0.1
    kl_estimator: str = "k3"
    reduction: str = "row"

    def __post_init__(self):
        check_kl_estimator("DiPOConfig", self.kl_estimator)
        if self.reduction not in ("row", "token"):
            raise ValueError(f"DiPOConfig.reduction={self.reduction!r}; choose 'row' or 'token'")
        for name in ("num_generations", "row_batch_size", "row_batches_per_update", "sampling_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"DiPOConfig.{name} must be ≥ 1, got {getattr(self, name)}")
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError(f"DiPOConfig.epsilon must be in [0, 1), got {self.epsilon}")
        super().__post_init__()

    def rows_config(self) -> tracerl.TraceRLConfig:
        """The TraceRL row settings DiPO's rows are: every step its own row, every completion position scorable."""
        return tracerl.TraceRLConfig(sampling_steps=self.sampling_steps, shrink=1, post_num=None)


def trace_rows(samples: TraceSamples, config: DiPOConfig) -> TraceRLBatch:
    """The rows of a rollout: B·sampling_steps (sample-major, step ascending); a row is valid iff it scores a token."""
    return tracerl.trace_rows(samples, config.rows_config(), pad_token_id=0)  # pad id unused: post_num None


def token_logps(model_config: llada.LLaDAConfig, params: Params, batch: TraceRLBatch, config: DiPOConfig
                ) -> jax.Array:
    """log π(x_j | row's input) [N, L] float32 at every completion position."""
    return tracerl.token_logps(model_config, params, batch, config)


def dipo_token_loss(logp_NxL: jax.Array, old_logp_NxL: jax.Array | None, ref_logp_NxL: jax.Array | None,
                    batch: TraceRLBatch, config: DiPOConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) from token log-probs: −surrogate + β·kl, averaged as `config.reduction` says over the scored
    tokens (`batch.target`). old None: on-policy (ρ = 1); ref needed when β > 0."""
    target_NxL = batch.target.astype(bool)
    old_NxL = jax.lax.stop_gradient(logp_NxL) if old_logp_NxL is None else old_logp_NxL.astype(jnp.float32)
    c = config.log_ratio_clamp
    ratio_NxL = jnp.exp(jnp.clip(logp_NxL - old_NxL, -c, c))
    adv_Nx1 = batch.advantages.astype(jnp.float32)[:, None]
    clipped_NxL = jnp.clip(ratio_NxL, 1.0 - config.epsilon, 1.0 + config.epsilon + config.clip_higher)
    per_token_NxL = -jnp.minimum(ratio_NxL * adv_Nx1, clipped_NxL * adv_Nx1)
    metrics = {"ratio_mean": masked_mean(ratio_NxL, target_NxL),
               "clip_fraction": masked_mean(ratio_NxL * adv_Nx1 > clipped_NxL * adv_Nx1, target_NxL),
               "valid_rows": target_NxL.any(axis=1).sum()}
    if config.beta:
        if ref_logp_NxL is None:
            raise ValueError("DiPOConfig.beta > 0 needs reference log-probs (ref_logp); set beta=0 to train without")
        kl_NxL = token_kl(logp_NxL, ref_logp_NxL.astype(jnp.float32), config.kl_estimator, clamp=c)
        per_token_NxL = per_token_NxL + config.beta * kl_NxL
        metrics["kl"] = masked_mean(kl_NxL, target_NxL)
    summed_NxL = jnp.where(target_NxL, per_token_NxL, 0.0)
    if config.reduction == "token":
        loss = jnp.sum(summed_NxL) / jnp.maximum(target_NxL.sum(), 1)
    else:
        loss = jnp.sum(jnp.sum(summed_NxL, axis=1) / jnp.maximum(target_NxL.sum(axis=1), 1)) / target_NxL.shape[0]
    return loss, metrics


def dipo_loss(trainable: Params, frozen: Params | None, batch: TraceRLBatch, old_logp_NxL: jax.Array | None,
              ref_logp_NxL: jax.Array | None = None, *, model_config: llada.LLaDAConfig, config: DiPOConfig,
              lora_config: LoRAConfig | None = None, dropout_rng: jax.Array | None = None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) of a batch of trace rows (`trace_rows`, all B·sampling_steps of them for `reduction="row"`);
    old_logp / ref_logp: `token_logps` of the rollout policy / the reference on the same rows."""
    params = policy_params(trainable, frozen, lora_config, dropout_rng)
    logp_NxL = token_logps(model_config, params, batch, config)
    return dipo_token_loss(logp_NxL, old_logp_NxL, ref_logp_NxL, batch, config)


def dipo_grad(trainable: Params, frozen: Params | None, batch: TraceRLBatch, old_logp_NxL: jax.Array | None,
              ref_logp_NxL: jax.Array | None = None, *, model_config: llada.LLaDAConfig, config: DiPOConfig,
              lora_config: LoRAConfig | None = None, dropout_rng: jax.Array | None = None
              ) -> tuple[jax.Array, Params, dict[str, jax.Array]]:
    """(loss, gradient w.r.t. `trainable`, metrics) of `dipo_loss`; pure and jit-able."""
    (loss, metrics), grads = jax.value_and_grad(dipo_loss, has_aux=True)(
        trainable, frozen, batch, old_logp_NxL, ref_logp_NxL, model_config=model_config, config=config,
        lora_config=lora_config, dropout_rng=dropout_rng)
    return loss, grads, metrics
