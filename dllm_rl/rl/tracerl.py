"""TraceRL (github.com/Gen-Verse/dLLM-RL @10b4fd1, `train/rl_llada.py`): PPO along the recorded denoising trace.

What the official LLaDA trainer computes, and this module with it:
- **Trace rows** (`prepare_inputs_and_labels_for_text`, method "TraceRL", with `collapse_k_unique`): a sample's
  distinct decoding steps (its `step_map`, here the sampler's `unmask_step` record), sorted, are merged in runs of
  `shrink`; merged step g gives one row whose input masks every completion position decoded in merged step ≥ g
  (the prompt and earlier steps visible) and whose scored tokens are those decoded in merged step g. With
  `post_num` = n, completion pad tokens after the first n are never scored (they are masked like the others);
  rows left with nothing to score are dropped (here: kept with `valid` False, scoring nothing).
- **Old log-probs** (`compute_logp_old_tok_parallel`): the rollout policy's log softmax on the same rows, computed
  once before the updates.
- **Loss** (`forward_process`): per row the token mean over its scored tokens of min(ρA, clip(ρ, 1±ε)A),
  ρ = exp(logp − old), A the sample's advantage; policy loss = −Σ rows / rows. KL: β·Σ rows Σ scored tokens kl /
  rows (a token sum, not a mean), kl = k3 = e^{old−new} − (old−new) − 1 (`use_kl_estimator_k3`, default) or
  k1 = new − old.
- **Quirk, reproduced and default**: the official KL is against the *old* policy (`logp_old_tok`), not a reference
  model: `kl_reference="old"`. `kl_reference="ref"` uses reference log-probs passed by the caller instead.

With the official inputs, the rows, old log-probs, loss and gradients match the official code on the tiny model
(tests/fixtures/tracerl_loss). Deliberate differences: the official re-tokenises the decoded response text and
pads prompts (left) and responses (right) with the pad token; here rows are built from the sampled token ids and
the `unmask_step` record (positions with step −1, never decoded, stay visible and are never scored; the official
has no such positions). Rows have a static count per sample, ⌈sampling_steps / shrink⌉, so the loss averages over
the valid rows the call holds; the official averages over each micro-batch of `batch_size_lm` rows. The prompt
padding mask can be passed to the model (the official passes none; the golden runs without). Advantages
(official: a per-prompt z-score of correctness with the population std, prompts with a solve rate outside
[0.2, 0.8] dropped) are the caller's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dllm_rl.models import llada
from dllm_rl.models.lora import LoRAConfig, policy_params
from dllm_rl.rl.objective import (ForwardConfig, check_kl_estimator, completion_positions, masked_mean,
                                  model_inputs, token_kl, token_log_probs)

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class TraceRLConfig(ForwardConfig):
    """TraceRL settings (defaults: the official configs/rl_llada.yaml); the model-call fields come from
    `ForwardConfig`. sampling_steps: the rollout's step count (bounds the distinct steps of a trace); shrink: steps
    merged per row; post_num: completion pads still scored (None: all); kl_estimator "k3" or "k1";
    kl_reference "old" (official: the KL is against the old policy) or "ref".

    Trainer settings (`rl.steps.MASKED_OBJECTIVES`): num_generations (`num_response_per_task`); a rollout's rows
    are trained in order, `row_batch_size` rows per loss call (`batch_size_lm`), `row_batches_per_update` calls
    averaged per optimizer update (`gradient_accumulation_steps`)."""

    num_generations: int = 8
    row_batch_size: int = 2
    row_batches_per_update: int = 128
    sampling_steps: int = 512
    shrink: int = 8
    post_num: int | None = 0
    epsilon: float = 0.2
    beta: float = 0.01
    kl_estimator: str = "k3"
    kl_reference: str = "old"

    def __post_init__(self):
        check_kl_estimator("TraceRLConfig", self.kl_estimator)
        if self.kl_reference not in ("old", "ref"):
            raise ValueError(f"TraceRLConfig.kl_reference={self.kl_reference!r}; choose 'old' or 'ref'")
        for name in ("num_generations", "row_batch_size", "row_batches_per_update", "sampling_steps", "shrink"):
            if getattr(self, name) < 1:
                raise ValueError(f"TraceRLConfig.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.post_num is not None and self.post_num < 0:
            raise ValueError(f"TraceRLConfig.post_num must be None or ≥ 0, got {self.post_num}")
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError(f"TraceRLConfig.epsilon must be in [0, 1), got {self.epsilon}")
        super().__post_init__()

    @property
    def rows_per_sample(self) -> int:
        """⌈sampling_steps / shrink⌉: the merged steps a trace can have."""
        return -(-self.sampling_steps // self.shrink)


class TraceSamples(NamedTuple):
    """A rollout: prompt_ids [B, P], prompt_mask [B, P] or None, completion_ids [B, L], unmask_step [B, L] int
    (the sampler's record: the step that decoded each position, −1 never), advantages [B]."""

    prompt_ids: jax.Array
    prompt_mask: jax.Array | None
    completion_ids: jax.Array
    unmask_step: jax.Array
    advantages: jax.Array


class TraceRLBatch(NamedTuple):
    """Trace rows, N = B·rows_per_sample (sample-major, merged step ascending): prompt_ids [N, P], prompt_mask [N, P]
    or None, completion_ids [N, L], masked bool [N, L] (input positions shown as the mask token), target bool
    [N, L] (the tokens scored), advantages [N]. A row is valid iff it scores a token."""

    prompt_ids: jax.Array
    prompt_mask: jax.Array | None
    completion_ids: jax.Array
    masked: jax.Array
    target: jax.Array
    advantages: jax.Array


def merged_step(unmask_step_BxL: jax.Array, sampling_steps: int, shrink: int) -> jax.Array:
    """int [B, L]: each position's merged step (`collapse_k_unique`): the rank of its step among the row's distinct
    steps, // shrink; −1 where the step is −1."""
    b, _ = unmask_step_BxL.shape
    decoded = unmask_step_BxL >= 0
    steps_BxL = jnp.where(decoded, unmask_step_BxL, 0)
    present_BxS = jnp.zeros((b, sampling_steps), bool).at[jnp.arange(b)[:, None], steps_BxL].max(decoded)
    rank_BxS = jnp.cumsum(present_BxS, axis=1) - 1
    return jnp.where(decoded, jnp.take_along_axis(rank_BxS, steps_BxL, axis=1) // shrink, -1)


def scorable(completion_ids_BxL: jax.Array, pad_token_id: int, post_num: int | None) -> jax.Array:
    """bool [B, L]: False on completion pads after the first `post_num` of them (all True when post_num is None)."""
    if post_num is None:
        return jnp.ones(completion_ids_BxL.shape, bool)
    pad_BxL = completion_ids_BxL == pad_token_id
    return ~(pad_BxL & (jnp.cumsum(pad_BxL, axis=1) > post_num))


def trace_rows(samples: TraceSamples, config: TraceRLConfig, pad_token_id: int) -> TraceRLBatch:
    """The `TraceRLBatch` of a rollout: one row per (sample, merged step)."""
    g = config.rows_per_sample
    group_BxL = merged_step(samples.unmask_step, config.sampling_steps, config.shrink)
    g_1xGx1 = jnp.arange(g)[None, :, None]
    masked_BxGxL = group_BxL[:, None] >= g_1xGx1
    target_BxGxL = (group_BxL[:, None] == g_1xGx1) & scorable(samples.completion_ids, pad_token_id,
                                                               config.post_num)[:, None]
    rows = lambda x: None if x is None else jnp.repeat(x, g, axis=0)  # noqa: E731
    flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
    return TraceRLBatch(prompt_ids=rows(samples.prompt_ids), prompt_mask=rows(samples.prompt_mask),
                        completion_ids=rows(samples.completion_ids), masked=flat(masked_BxGxL),
                        target=flat(target_BxGxL), advantages=rows(samples.advantages))


def token_logps(model_config: llada.LLaDAConfig, params: Params, batch: TraceRLBatch, config: TraceRLConfig
                ) -> jax.Array:
    """log π(x_j | row's input) [N, L] float32 at every completion position (raw logits, no temperature)."""
    noisy_NxL = jnp.where(batch.masked, model_config.mask_token_id, batch.completion_ids)
    ids_NxT, att_NxT = model_inputs(batch.prompt_ids, batch.prompt_mask, noisy_NxL)
    positions_NxL = completion_positions(batch.prompt_ids.shape[1], batch.completion_ids)
    logits = llada.forward_at(model_config, params, ids_NxT, positions_NxL, att_NxT, **config.forward_kwargs())
    return token_log_probs(logits, batch.completion_ids)


def trace_token_loss(logp_NxL: jax.Array, old_logp_NxL: jax.Array, ref_logp_NxL: jax.Array | None,
                     batch: TraceRLBatch, config: TraceRLConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) from token log-probs: −Σ_rows mean_scored min(ρA, clip(ρ)A) / rows + β·Σ_rows Σ_scored kl /
    rows, over the valid rows. kl against old (or ref with `kl_reference="ref"`): k3 or k1."""
    target_NxL = batch.target.astype(bool)
    valid_N = target_NxL.any(axis=1)
    rows = jnp.maximum(valid_N.sum(), 1).astype(jnp.float32)
    ratio_NxL = jnp.exp(logp_NxL - old_logp_NxL)
    adv_Nx1 = batch.advantages.astype(jnp.float32)[:, None]
    clipped_NxL = jnp.clip(ratio_NxL, 1.0 - config.epsilon, 1.0 + config.epsilon)
    surrogate_NxL = jnp.minimum(ratio_NxL * adv_Nx1, clipped_NxL * adv_Nx1)
    per_row_N = jnp.sum(jnp.where(target_NxL, surrogate_NxL, 0.0), axis=1) / jnp.maximum(target_NxL.sum(1), 1)
    policy_loss = -jnp.sum(per_row_N) / rows
    metrics = {"policy_loss": policy_loss, "ratio_mean": masked_mean(ratio_NxL, target_NxL),
               "clip_fraction": masked_mean(ratio_NxL * adv_Nx1 > clipped_NxL * adv_Nx1, target_NxL),
               "valid_rows": valid_N.sum()}
    if not config.beta:
        return policy_loss, metrics
    if config.kl_reference == "ref" and ref_logp_NxL is None:
        raise ValueError("TraceRLConfig.kl_reference='ref' with beta > 0 needs reference log-probs (ref_logp)")
    against_NxL = old_logp_NxL if config.kl_reference == "old" else ref_logp_NxL
    kl_NxL = token_kl(logp_NxL, against_NxL, config.kl_estimator)
    kl_loss = config.beta * jnp.sum(jnp.where(target_NxL, kl_NxL, 0.0)) / rows
    metrics.update(kl=masked_mean(kl_NxL, target_NxL), kl_loss=kl_loss)
    return policy_loss + kl_loss, metrics


def tracerl_loss(trainable: Params, frozen: Params | None, batch: TraceRLBatch, old_logp_NxL: jax.Array,
                 ref_logp_NxL: jax.Array | None = None, *, model_config: llada.LLaDAConfig, config: TraceRLConfig,
                 lora_config: LoRAConfig | None = None, dropout_rng: jax.Array | None = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) of a batch of trace rows; old_logp: `token_logps` of the rollout policy on the same rows;
    ref_logp: of the reference, used only with `kl_reference="ref"`. The trace fixes every input, so there is no
    randomness to replay: the rows are the record."""
    params = policy_params(trainable, frozen, lora_config, dropout_rng)
    logp_NxL = token_logps(model_config, params, batch, config)
    return trace_token_loss(logp_NxL, old_logp_NxL.astype(jnp.float32), ref_logp_NxL, batch, config)


def tracerl_grad(trainable: Params, frozen: Params | None, batch: TraceRLBatch, old_logp_NxL: jax.Array,
                 ref_logp_NxL: jax.Array | None = None, *, model_config: llada.LLaDAConfig, config: TraceRLConfig,
                 lora_config: LoRAConfig | None = None, dropout_rng: jax.Array | None = None
                 ) -> tuple[jax.Array, Params, dict[str, jax.Array]]:
    """(loss, gradient w.r.t. `trainable`, metrics) of `tracerl_loss`; pure and jit-able."""
    (loss, metrics), grads = jax.value_and_grad(tracerl_loss, has_aux=True)(
        trainable, frozen, batch, old_logp_NxL, ref_logp_NxL, model_config=model_config, config=config,
        lora_config=lora_config, dropout_rng=dropout_rng)
    return loss, grads, metrics
