"""ESPO (ELBO-based Sequence-level Policy Optimization; github.com/ML-GSAI/ESPO @b5f2dac, espo/espo_trainer.py:
`forward_process`, `ESPOTrainer._get_elbo`, `_get_elbo_mc`, `compute_loss`, `compute_approx_kl`).

The whole completion is one action whose log-likelihood is estimated by the diffusion ELBO with complementary
masks (`sequence_elbo`): copy 1 masks x of the L completion tokens (x stratified over the batch rows, the positions
uniform), copy 2 masks the other L − x; ELBO = −½·[Σ_masked CE₁/(x/(L+1)) + Σ_unmasked CE₂/((L−x)/(L+1))], averaged
over `num_mc` such pairs. The prompt is never masked. Every one of the L completion positions is scored, the EOS
tail included (ESPO never uses the completion mask). Loss (`espo_loss`), with ρ = exp((ELBO − ELBO_old)/L) (L: the
padded completion length) and leave-one-out advantages (`advantages.group_advantages(leave_one_out=True)`):
−Σ_b min(ρA, clip(ρ, 1±ε)A)/B + β·Σ_b (ELBO − ELBO_ref)²/2/(B·L) (k2 KL). The old and reference ELBOs of an inner
iteration use the update's masks (the same key), as ESPO's per-iteration mask seeds do; with μ = 1 the old ELBO is
the current one, detached.

With ESPO's recorded masks passed as `draws`, the ELBOs, losses, metrics and gradients match ESPO's own code on the
tiny model (tests/fixtures/espo_loss).

ESPO's trainer order, for the trainer to follow: masks are drawn per micro-batch and inner iteration
(`mask_seeds` [accumulation, μ, num_mc]); micro-batch m of inner step i uses draw (m, i), so every draw is used once.
The mask counts are stratified over the rows of one call, so the old and reference ELBOs must be computed on the
same rows (the micro-batch) with the same key as the update, as ESPO's `_get_elbo_by_chunk` does.
ESPO picks the mask id by model name (126336 when the name contains "LLaDA", else the tokenizer's) and drops the last
logit for non-LLaDA (Dream) models; here both come from the model config (`mask_token_id`, `logit_shift`), which
gives the same ids and alignment.

ESPO's `reduce_var` setting is never passed on (`_get_elbo_mc`'s default, the coupled pair, is always used), so it
has no counterpart here; ESPO computes the logits under CUDA bf16 autocast (here: `compute_dtype`).

Deliberate differences: the prompt padding mask is passed to the model as an attention mask (ESPO passes none; the
golden runs with `prompt_mask=None`); masks are drawn with JAX's generator, not torch's (same distribution); the
2·num_mc noised copies run `copies_per_call` at a time (None: all in one model call); the ELBO is the same.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from dllm_rl.models import llada
from dllm_rl.models.lora import LoRAConfig, policy_params
from dllm_rl.rl.diffu_grpo import DiffuGRPOBatch
from dllm_rl.rl.elbo import noised_completion_logps
from dllm_rl.rl.objective import ForwardConfig, clipped_token_loss

Params = dict[str, Any]
ESPOBatch = DiffuGRPOBatch  # completion_mask is not used: ESPO scores every completion position


@dataclasses.dataclass(frozen=True)
class ESPOConfig(ForwardConfig):
    """ESPO settings (defaults: ESPO's recipes/train.yaml); the model-call fields come from `ForwardConfig`.

    `num_mc`: complementary mask pairs per ELBO. `prompt_keep_last` keeps each prompt's last N tokens (TRL's left
    truncation at `max_prompt_length`). `leave_one_out` (ESPO's code, default True): the trainer's advantages
    subtract the mean of the group's other rewards (False: the group mean); train.yaml's `scale_rewards` is
    `TrainConfig.scale_rewards_by_std`. `copies_per_call`: how many of an ELBO's 2·num_mc noised copies go through
    the model in one call (None: all); fewer hold fewer logits at once, at one extra forward per call for the
    backward, and give the same ELBO.
    """

    num_iterations: int = 2
    num_mc: int = 1
    epsilon: float = 0.2
    beta: float = 0.01
    num_generations: int = 10
    prompt_keep_last: int | None = None
    leave_one_out: bool = True
    copies_per_call: int | None = None

    def __post_init__(self):
        if self.num_iterations < 1 or self.num_mc < 1:
            raise ValueError(f"ESPOConfig.num_iterations and num_mc must be ≥ 1, got {self.num_iterations}, "
                             f"{self.num_mc}")
        if self.num_generations < 2:
            raise ValueError(f"ESPOConfig.num_generations must be ≥ 2 (leave-one-out advantages), got "
                             f"{self.num_generations}")
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError(f"ESPOConfig.epsilon must be in [0, 1), got {self.epsilon}")
        if self.prompt_keep_last is not None and self.prompt_keep_last < 1:
            raise ValueError(f"ESPOConfig.prompt_keep_last must be None or ≥ 1, got {self.prompt_keep_last}")
        if self.copies_per_call is not None and (self.copies_per_call < 1 or 2 * self.num_mc % self.copies_per_call):
            raise ValueError(f"ESPOConfig.copies_per_call={self.copies_per_call} must divide the 2·num_mc = "
                             f"{2 * self.num_mc} noised copies of an ELBO (or be None: all in one call)")
        super().__post_init__()


def mask_draws(rng: jax.Array, num_mc: int, batch_size: int, length: int) -> jax.Array:
    """bool [num_mc, B, L]: the completion positions copy 1 masks (ESPO's `forward_process`, once per MC pair).

    Row b masks x_b = round(k + b·(L+1)/B) mod (L+1) positions, k ~ U{0..L} shared by the rows (counts stratified
    over the batch), chosen uniformly at random.
    """
    k_key, perm_key = jax.random.split(rng)
    k_M = jax.random.randint(k_key, (num_mc,), 0, length + 1)
    x_MxB = jnp.round(k_M[:, None] + jnp.arange(batch_size)[None, :] * ((length + 1) / batch_size)).astype(jnp.int32)
    x_MxB = x_MxB % (length + 1)
    rank_MxBxL = jnp.argsort(jnp.argsort(jax.random.uniform(perm_key, (num_mc, batch_size, length)), axis=-1), axis=-1)
    return rank_MxBxL < x_MxB[..., None]


def sequence_elbo(model_config: llada.LLaDAConfig, params: Params, batch: ESPOBatch, rng: jax.Array | None,
                  config: ESPOConfig, draws: jax.Array | None = None) -> jax.Array:
    """ESPO's ELBO of every completion [B], float32, from `config.num_mc` complementary mask pairs.

    The masks come from `rng`, or, as a replay hook for tests, from `draws` bool [num_mc, B, L] (copy 1's masked
    completion positions, e.g. ESPO's recorded ones); `rng` is then unused.
    """
    b, length = batch.completion_ids.shape
    m_MxBxL = mask_draws(rng, config.num_mc, b, length) if draws is None else draws.astype(bool)
    num_mc = m_MxBxL.shape[0]
    is_mask_2MxBxT = jnp.concatenate([jnp.zeros((2 * num_mc, b, batch.prompt_ids.shape[1]), bool),
                                      jnp.concatenate([m_MxBxL, ~m_MxBxL])], axis=-1)
    lp_2MxBxL = noised_completion_logps(model_config, params, batch.prompt_ids, batch.prompt_mask,
                                        batch.completion_ids, is_mask_2MxBxT, config, config.copies_per_call,
                                        "ESPOConfig.copies_per_call")
    return elbo_from_logps(lp_2MxBxL, m_MxBxL)


def elbo_from_logps(lp_2MxBxL: jax.Array, m_MxBxL: jax.Array) -> jax.Array:
    """[B]: ESPO's ELBO from the completion log-probs of the copies [copy 1 of every pair; copy 2 of every pair]
    and copy 1's masks m: ½·Σ_j (m_j·lp¹_j/t + (1 − m_j)·lp²_j/(L/(L+1) − t)), t = x/(L+1), mean over the pairs."""
    num_mc, b, length = m_MxBxL.shape
    copies_2MxBxL = jnp.concatenate([m_MxBxL, ~m_MxBxL])
    x_MxBx1 = m_MxBxL.sum(-1, keepdims=True).astype(jnp.float32)
    t_2MxBx1 = jnp.concatenate([x_MxBx1, length - x_MxBx1]) / (length + 1)  # each copy's mask ratio
    weighted_2MxBxL = jnp.where(copies_2MxBxL, lp_2MxBxL / jnp.where(copies_2MxBxL, t_2MxBx1, 1.0), 0.0)
    return weighted_2MxBxL.reshape(2, num_mc, b, length).sum(axis=(0, 3)).mean(axis=0) / 2


def sequence_loss(elbo_B: jax.Array, old_elbo_B: jax.Array, ref_elbo_B: jax.Array | None, advantages_B: jax.Array,
                  length: int, epsilon: float, beta: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """ESPO's `compute_loss` from the ELBOs: the PPO-clipped sequence loss with ρ = exp((ELBO − old)/L), plus β·k2
    KL; and ESPO's logged metrics (`clip_ratio_low`/`_high`: fraction of rows below 1 − ε with A < 0 / above 1 + ε
    with A > 0, `clip_ratio` either, `entropy`: −ΣELBO/(B·L), `kl`)."""
    if beta and ref_elbo_B is None:
        raise ValueError("ESPOConfig.beta > 0 needs the reference ELBOs (ref_elbo)")
    adv_B = advantages_B.astype(jnp.float32)
    loss_Bx1, ratio_Bx1, _ = clipped_token_loss((elbo_B / length)[:, None], (old_elbo_B / length)[:, None], None,
                                                adv_B, epsilon, epsilon, 0.0, kl_times_ratio=False)
    b = elbo_B.shape[0]
    ratio_B = ratio_Bx1[:, 0]
    low_B, high_B = (ratio_B < 1 - epsilon) & (adv_B < 0), (ratio_B > 1 + epsilon) & (adv_B > 0)
    metrics = {"clip_ratio_low": low_B.mean(), "clip_ratio_high": high_B.mean(), "clip_ratio": (low_B | high_B).mean(),
               "ratio_mean": ratio_B.mean(), "entropy": -elbo_B.sum() / (b * length)}
    loss = loss_Bx1.sum() / b
    if beta:
        metrics["kl"] = ((elbo_B - ref_elbo_B) ** 2 / 2).sum() / (b * length)
        loss = loss + beta * metrics["kl"]
    return loss, metrics


def espo_loss(trainable: Params, frozen: Params | None, batch: ESPOBatch, rng: jax.Array | None,
              old_elbo_B: jax.Array | None, ref_elbo_B: jax.Array | None, *, model_config: llada.LLaDAConfig,
              config: ESPOConfig, lora_config: LoRAConfig | None = None, dropout_rng: jax.Array | None = None,
              draws: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) of one inner iteration with mask key `rng` (or replayed `draws`, see `sequence_elbo`).

    old_elbo: `sequence_elbo` of the rollout-time policy under the same masks (None with μ = 1: the current ELBO,
    detached). ref_elbo: the same for the reference params, needed when β > 0. `dropout_rng`: the LoRA dropout key.
    """
    params = policy_params(trainable, frozen, lora_config, dropout_rng)
    elbo_B = sequence_elbo(model_config, params, batch, rng, config, draws)
    old_B = jax.lax.stop_gradient(elbo_B) if old_elbo_B is None else old_elbo_B.astype(jnp.float32)
    return sequence_loss(elbo_B, old_B, ref_elbo_B, batch.advantages, batch.completion_ids.shape[1],
                         config.epsilon, config.beta)


def espo_grad(trainable: Params, frozen: Params | None, batch: ESPOBatch, rng: jax.Array | None,
              old_elbo_B: jax.Array | None, ref_elbo_B: jax.Array | None, *, model_config: llada.LLaDAConfig,
              config: ESPOConfig, lora_config: LoRAConfig | None = None, dropout_rng: jax.Array | None = None,
              draws: jax.Array | None = None) -> tuple[jax.Array, Params, dict[str, jax.Array]]:
    """(loss, gradient w.r.t. `trainable`, metrics) of `espo_loss`; pure and jit-able."""
    (loss, metrics), grads = jax.value_and_grad(espo_loss, has_aux=True)(
        trainable, frozen, batch, rng, old_elbo_B, ref_elbo_B, model_config=model_config, config=config,
        lora_config=lora_config, dropout_rng=dropout_rng, draws=draws)
    return loss, grads, metrics
