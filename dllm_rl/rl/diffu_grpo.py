"""diffu-GRPO (d1, github.com/dllm-reasoning/d1 @837888f; docs/algorithm.md): the one-step mean-field baseline.

Each completion token's log-prob is estimated by one forward pass in which the whole completion is masked and
every prompt token is masked independently with probability `p_mask_prompt`; a fresh prompt mask is drawn for
each of the μ inner iterations (`iteration_keys`), and the old/reference log-probs of iteration i use the same
mask as the update of iteration i. Loss: PPO-clipped token ratio with a plain k3 KL to the reference,
averaged over all completion tokens of the batch (tokens up to and including the first EOS). Log-probs are
of the raw logits (no temperature), as d1 scores them.

With d1's recorded prompt draws passed as `draws`, the log-probs, losses, logged kl / clip_ratio and gradients
match d1's own code on the tiny model to ~1e-5 relative (tests/fixtures/d1_loss).

Deliberate differences from d1: the prompt padding mask is passed to the model as an attention mask (d1 runs
without one; the golden runs with `prompt_mask=None`); masks are drawn with JAX's generator, not torch's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dllm_rl.models import llada
from dllm_rl.models.lora import LoRAConfig, policy_params
from dllm_rl.rl.objective import (ForwardConfig, clipped_token_loss, completion_positions, masked_mean, model_inputs,
                                  token_log_probs)

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class DiffuGRPOConfig(ForwardConfig):
    """diffu-GRPO settings (defaults: d1's train.yaml; μ = 8 for Sudoku); the model-call fields (remat,
    compute_dtype, attention_impl) come from `ForwardConfig`.

    Two trainer settings reproduce d1's run and are off by default: `prompt_keep_last` keeps each prompt's last
    N tokens (TRL's left truncation at `max_prompt_length`, which cuts the start of longer prompts);
    `d1_accumulation_steps` = A picks the inner iterations' masks as d1's step counter does (`mask_index`).

    `loss_average`: "micro_batch" averages the loss over every scored token of the micro-batch (d1's
    `compute_loss` on its per-device batch); "group" averages each group's token mean over the groups, which is
    d1's update (one group per device, DDP-averaged) whatever the number of groups in a micro-batch.
    """

    p_mask_prompt: float = 0.15
    num_iterations: int = 12
    epsilon: float = 0.5
    beta: float = 0.04
    num_generations: int = 6
    prompt_keep_last: int | None = None
    d1_accumulation_steps: int | None = None
    loss_average: str = "micro_batch"

    def __post_init__(self):
        if self.loss_average not in ("micro_batch", "group"):
            raise ValueError(f"DiffuGRPOConfig.loss_average={self.loss_average!r}; choose 'micro_batch' or 'group'")
        if not 0.0 <= self.p_mask_prompt <= 1.0:
            raise ValueError(f"DiffuGRPOConfig.p_mask_prompt must be in [0, 1], got {self.p_mask_prompt}")
        if self.num_iterations < 1 or self.num_generations < 1:
            raise ValueError(f"DiffuGRPOConfig.num_iterations and num_generations must be ≥ 1, got "
                             f"{self.num_iterations}, {self.num_generations}")
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError(f"DiffuGRPOConfig.epsilon must be in [0, 1), got {self.epsilon}")
        for name in ("prompt_keep_last", "d1_accumulation_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"DiffuGRPOConfig.{name} must be None or ≥ 1, got {getattr(self, name)}")
        super().__post_init__()


class DiffuGRPOBatch(NamedTuple):
    """prompt_ids [B, P], prompt_mask [B, P] or None, completion_ids [B, L], completion_mask bool [B, L]
    (`completion_mask()`: the tokens trained on), advantages [B]."""

    prompt_ids: jax.Array
    prompt_mask: jax.Array | None
    completion_ids: jax.Array
    completion_mask: jax.Array
    advantages: jax.Array


def completion_mask(completion_ids_BxL: jax.Array, eos_token_id: int) -> jax.Array:
    """bool [B, L]: positions up to and including the first EOS (all of them when there is none)."""
    is_eos_BxL = completion_ids_BxL == eos_token_id
    first_B = jnp.where(is_eos_BxL.any(axis=1), jnp.argmax(is_eos_BxL, axis=1), completion_ids_BxL.shape[1])
    return jnp.arange(completion_ids_BxL.shape[1])[None, :] <= first_B[:, None]


def iteration_keys(rng: jax.Array, num_iterations: int) -> jax.Array:
    """One prompt-mask key per inner iteration (d1's per-iteration mask seeds)."""
    return jax.random.split(rng, num_iterations)


def mask_index(inner_step: int, micro: int, config: DiffuGRPOConfig) -> int:
    """Which of the μ prompt masks (`iteration_keys`) micro-batch `micro` uses at inner update `inner_step`.

    Default: mask `inner_step`, so every mask is used once. With `d1_accumulation_steps` = A, d1's order: TRL's
    step counter is incremented before the loss, so accumulation step a = micro mod A of inner update g uses mask
    (g·A + a + 1) mod μ; with A = 2 each micro-batch sees only μ/2 distinct masks, each twice.
    """
    accum = config.d1_accumulation_steps
    if accum is None:
        return inner_step
    return (inner_step * accum + micro % accum + 1) % config.num_iterations


def prompt_draws(rng: jax.Array, prompt_ids_BxP: jax.Array) -> jax.Array:
    """float32 u [B, P] ~ U[0, 1): prompt token j of row b is masked iff u[b, j] < p_mask_prompt."""
    return jax.random.uniform(rng, prompt_ids_BxP.shape, jnp.float32)


def mask_prompt(u_BxP: jax.Array, prompt_ids_BxP: jax.Array, completion_ids_BxL: jax.Array, p_mask_prompt: float,
                mask_token_id: int) -> jax.Array:
    """Model input [B, P+L] from the draws u [B, P]: completion all mask tokens, prompt token masked where u < p
    (d1's `forward_process` rule, compared in float32)."""
    masked_BxP = u_BxP.astype(jnp.float32) < p_mask_prompt
    prompt_BxP = jnp.where(masked_BxP, mask_token_id, prompt_ids_BxP)
    return model_inputs(prompt_BxP, None, jnp.full_like(completion_ids_BxL, mask_token_id))[0]


def perturb(rng: jax.Array, prompt_ids_BxP: jax.Array, completion_ids_BxL: jax.Array, p_mask_prompt: float,
            mask_token_id: int) -> jax.Array:
    """Model input [B, P+L]: completion all mask tokens, each prompt token masked with probability p."""
    return mask_prompt(prompt_draws(rng, prompt_ids_BxP), prompt_ids_BxP, completion_ids_BxL, p_mask_prompt,
                       mask_token_id)


def completion_logps(model_config: llada.LLaDAConfig, params: Params, batch: DiffuGRPOBatch, rng: jax.Array | None,
                     config: DiffuGRPOConfig, draws: jax.Array | None = None) -> jax.Array:
    """One-step log π(o_j | perturbed prompt, fully masked completion) [B, L], float32.

    The prompt mask comes from `rng`, or, as a replay hook for tests (like the sampler's `draws`), from stored
    uniforms `draws` [B, P] (e.g. d1's recorded `torch.rand` at the prompt positions); `rng` is then unused.
    """
    u_BxP = prompt_draws(rng, batch.prompt_ids) if draws is None else draws
    input_ids_BxT = mask_prompt(u_BxP, batch.prompt_ids, batch.completion_ids, config.p_mask_prompt,
                                model_config.mask_token_id)
    _, attention_mask_BxT = model_inputs(batch.prompt_ids, batch.prompt_mask, batch.completion_ids)
    positions_BxL = completion_positions(batch.prompt_ids.shape[1], batch.completion_ids)
    logits_BxLxV = llada.forward_at(model_config, params, input_ids_BxT, positions_BxL, attention_mask_BxT,
                                    **config.forward_kwargs())
    return token_log_probs(logits_BxLxV, batch.completion_ids)


def grpo_token_loss(logp_BxL: jax.Array, old_logp_BxL: jax.Array, ref_logp_BxL: jax.Array | None,
                    advantages_B: jax.Array, mask_BxL: jax.Array, epsilon: float, beta: float,
                    group_size: int | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """d1's loss from token log-probs: Σ mask·(−min(ρA, clip(ρ, 1±ε)A) + β·k3) / Σ mask (mask: bool [B, L]), or
    with `group_size` G that token mean per group of G consecutive rows, averaged over the groups; and metrics
    (masked means over the scored tokens).

    `clip_fraction`: tokens whose clipped term is the smaller one (their gradient is clipped). `clip_ratio`: d1's
    logged metric, the tokens with ρA < clip(ρ, 1±ε)A, i.e. ρ outside the range where the unclipped term wins;
    logged as d1 logs it so the curves compare.
    """
    if beta and ref_logp_BxL is None:
        raise ValueError("DiffuGRPOConfig.beta > 0 needs reference log-probs (ref_logp)")
    per_token_BxL, ratio_BxL, kl_BxL = clipped_token_loss(logp_BxL, old_logp_BxL, ref_logp_BxL, advantages_B,
                                                          epsilon, epsilon, beta, kl_times_ratio=False)
    mask_BxL = mask_BxL.astype(bool)
    adv_Bx1 = advantages_B[:, None].astype(logp_BxL.dtype)
    unclipped_BxL = ratio_BxL * adv_Bx1
    clipped_BxL = jnp.clip(ratio_BxL, 1.0 - epsilon, 1.0 + epsilon) * adv_Bx1
    metrics = {"clip_fraction": masked_mean(unclipped_BxL > clipped_BxL, mask_BxL),
               "clip_ratio": masked_mean(unclipped_BxL < clipped_BxL, mask_BxL),
               "ratio_mean": masked_mean(ratio_BxL, mask_BxL)}
    if kl_BxL is not None:
        metrics["kl"] = masked_mean(kl_BxL, mask_BxL)
    if group_size is None:
        return masked_mean(per_token_BxL, mask_BxL), metrics
    b, length = per_token_BxL.shape
    per_token_NxGL = per_token_BxL.reshape(b // group_size, group_size * length)
    mask_NxGL = mask_BxL.reshape(b // group_size, group_size * length)
    return jax.vmap(masked_mean)(per_token_NxGL, mask_NxGL).mean(), metrics


def diffu_grpo_loss(trainable: Params, frozen: Params | None, batch: DiffuGRPOBatch, rng: jax.Array | None,
                    old_logp_BxL: jax.Array | None, ref_logp_BxL: jax.Array | None, *,
                    model_config: llada.LLaDAConfig, config: DiffuGRPOConfig, lora_config: LoRAConfig | None = None,
                    dropout_rng: jax.Array | None = None, draws: jax.Array | None = None
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) of one inner iteration with prompt-mask key `rng` (or replayed `draws`, see
    `completion_logps`).

    old_logp: `completion_logps` of the rollout-time policy under the same mask (None with μ = 1: the current
    log-probs, detached, as d1). ref_logp: the same for the reference (base) params, needed when β > 0.
    `dropout_rng`: the key of the LoRA adapters' dropout (`LoRAConfig.dropout`), which acts only here, in the
    policy's training forward; None runs without dropout.
    """
    params = policy_params(trainable, frozen, lora_config, dropout_rng)
    logp_BxL = completion_logps(model_config, params, batch, rng, config, draws)
    old_BxL = jax.lax.stop_gradient(logp_BxL) if old_logp_BxL is None else old_logp_BxL.astype(jnp.float32)
    return grpo_token_loss(logp_BxL, old_BxL, ref_logp_BxL, batch.advantages, batch.completion_mask,
                           config.epsilon, config.beta,
                           config.num_generations if config.loss_average == "group" else None)


def diffu_grpo_grad(trainable: Params, frozen: Params | None, batch: DiffuGRPOBatch, rng: jax.Array | None,
                    old_logp_BxL: jax.Array | None, ref_logp_BxL: jax.Array | None, *,
                    model_config: llada.LLaDAConfig, config: DiffuGRPOConfig, lora_config: LoRAConfig | None = None,
                    dropout_rng: jax.Array | None = None, draws: jax.Array | None = None
                    ) -> tuple[jax.Array, Params, dict[str, jax.Array]]:
    """(loss, gradient w.r.t. `trainable`, metrics) of `diffu_grpo_loss`; pure and jit-able."""
    (loss, metrics), grads = jax.value_and_grad(diffu_grpo_loss, has_aux=True)(
        trainable, frozen, batch, rng, old_logp_BxL, ref_logp_BxL, model_config=model_config, config=config,
        lora_config=lora_config, dropout_rng=dropout_rng, draws=draws)
    return loss, grads, metrics
