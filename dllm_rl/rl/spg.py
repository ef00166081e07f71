"""SPG (Sandwiched Policy Gradient; github.com/facebookresearch/SPG @a1c7120, spg/spg_trainer.py:
`SPGTrainer.forward_process` (forward_type "block_random"), `_get_per_seq_logps`, `compute_loss`).

A policy gradient on sequence log-likelihoods, sandwiched: rows with advantage A > 0 push up a lower bound (the
ELBO), rows with A ≤ 0 push down an upper bound (the EUBO, `logp_estimation` "eubo") or a mixture
w·EUBO + (1 − w)·ELBO ("mix", the paper's best); "elbo" and "zero" are SPG's ablations. Loss:
−Σ_b A_b·ℓ_b·|o_b| / Σ_b |o_b| with |o_b| the completion length up to and including the first EOS. There is no
ratio, clip or KL: SPG's μ inner iterations reuse the rollouts without importance correction, and old/reference
quantities are not used.

Block-wise masks (`mask_draws`), `num_t` per row: the completion is cut into blocks of `block_length`; a block k is
drawn (the first num_t of a random permutation of the blocks, mod the row's number of completion blocks), n of its
first min(block_length, |o| − k·block_length) tokens are masked (n uniform in [max(⌊ℓ·min_t⌋, 1),
min(⌊ℓ·max_t⌋, ℓ)]), every later position and everything after the first EOS is masked, and each position before
the block (the prompt and, SPG's quirk `mask_clean_blocks`, the earlier completion blocks) with probability
`p_mask_prompt`. With M_n the masked completion tokens of draw n (within |o|) and t_n = |M_n|/|o|:
  ELBO = mean_n mean_{j ∈ M_n} log π(o_j | draw n);
  EUBO = mean_{j ∈ ∪M_n} (1/β)·log mean_n (π(o_j | draw n)^β·[j ∈ M_n]/t_n).

With SPG's recorded masks passed as `draws`, the estimators, losses and gradients match SPG's own code on the tiny
model (tests/fixtures/spg_loss).

SPG's trainer order, for the trainer to follow: one mask seed per inner iteration, shared by the micro-batches;
TRL's step counter is incremented before the loss, so micro-batch m of inner update g uses seed
(g·A + m + 1) mod μ with A accumulation steps (as d1's, `diffu_grpo.mask_index`). SPG rejects β ≠ 0.

Deliberate differences: the prompt padding mask is passed to the model as an attention mask (SPG passes it too, but
LLaDA's modelling code ignores it; the golden runs with `prompt_mask=None`); masks are drawn with JAX's generator
(same distribution); the EUBO's mean over draws is a logsumexp of β·log π (SPG raises π to β, which underflows to 0
for tokens with π^β below float32's range and then drops them; identical otherwise).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from dllm_rl.models import llada
from dllm_rl.models.lora import LoRAConfig, policy_params
from dllm_rl.rl.diffu_grpo import DiffuGRPOBatch
from dllm_rl.rl.elbo import noised_completion_logps
from dllm_rl.rl.objective import ForwardConfig

Params = dict[str, Any]
SPGBatch = DiffuGRPOBatch
ESTIMATIONS = ("eubo", "mix", "elbo", "zero")


@dataclasses.dataclass(frozen=True)
class SPGConfig(ForwardConfig):
    """SPG settings (defaults: SPG's spg_mix GSM8K script, μ = 4, num_t = 2, β = 1.5, w = 0.5, with train.yaml's
    block_length 32 and p_mask_prompt 0.15); the model-call fields come from `ForwardConfig`.

    `mask_clean_blocks` (SPG's behaviour, default True): the `p_mask_prompt` masking also hits the clean
    completion blocks before the drawn block, not only the prompt; False masks only the prompt.
    `prompt_keep_last` and `d1_accumulation_steps` reproduce the trainer SPG shares with d1 (`DiffuGRPOConfig`).
    """

    # SPG has no KL term (it rejects β ≠ 0), so no reference policy is kept (the trainer reads `beta` of every
    # objective).
    beta: ClassVar[float] = 0.0

    num_iterations: int = 4
    num_generations: int = 6
    num_t: int = 2
    block_length: int = 32
    min_t: float = 0.0
    max_t: float = 1.0
    p_mask_prompt: float = 0.15
    logp_estimation: str = "mix"
    eubo_beta: float = 1.5
    mix_weight: float = 0.5
    mask_clean_blocks: bool = True
    prompt_keep_last: int | None = None
    d1_accumulation_steps: int | None = None

    def __post_init__(self):
        if self.logp_estimation not in ESTIMATIONS:
            raise ValueError(f"SPGConfig.logp_estimation={self.logp_estimation!r}; choose one of {ESTIMATIONS}")
        if self.num_iterations < 1 or self.num_t < 1 or self.block_length < 1:
            raise ValueError(f"SPGConfig.num_iterations, num_t and block_length must be ≥ 1, got "
                             f"{self.num_iterations}, {self.num_t}, {self.block_length}")
        if not 0.0 <= self.min_t <= self.max_t <= 1.0:
            raise ValueError(f"SPGConfig needs 0 ≤ min_t ≤ max_t ≤ 1, got {self.min_t}, {self.max_t}")
        if not 0.0 <= self.p_mask_prompt <= 1.0:
            raise ValueError(f"SPGConfig.p_mask_prompt must be in [0, 1], got {self.p_mask_prompt}")
        if self.eubo_beta <= 0:
            raise ValueError(f"SPGConfig.eubo_beta must be > 0, got {self.eubo_beta}")
        for name in ("prompt_keep_last", "d1_accumulation_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"SPGConfig.{name} must be None or ≥ 1, got {getattr(self, name)}")
        super().__post_init__()


def mask_draws(rng: jax.Array, prompt_len: int, completion_mask_BxL: jax.Array, config: SPGConfig) -> jax.Array:
    """bool [num_t, B, P + L]: the positions SPG's block_random forward process replaces by the mask token."""
    b, length = completion_mask_BxL.shape
    completion_mask_BxL = completion_mask_BxL.astype(bool)
    bl, num_t = config.block_length, config.num_t
    if length % bl or num_t > length // bl:
        raise ValueError(f"SPGConfig.block_length={bl} must divide the completion length {length} into at least "
                         f"num_t={num_t} blocks")
    perm_key, n_key, pos_key, clean_key = jax.random.split(rng, 4)
    c_Bx1 = completion_mask_BxL.astype(jnp.int32).sum(-1, keepdims=True)
    order_BxK = jnp.argsort(jax.random.uniform(perm_key, (b, length // bl)), axis=-1)
    k_NxB = (order_BxK[:, :num_t] % ((c_Bx1 - 1) // bl + 1)).T  # the drawn block of each draw
    ell_NxB = jnp.minimum(bl, c_Bx1[:, 0][None, :] - bl * k_NxB)  # its tokens within the completion
    lo = jnp.maximum(jnp.floor(ell_NxB * config.min_t), 1).astype(jnp.int32)
    hi = jnp.minimum(jnp.floor(ell_NxB * config.max_t).astype(jnp.int32), ell_NxB)
    n_NxB = lo + jnp.floor(jax.random.uniform(n_key, (num_t, b)) * (hi - lo + 1)).astype(jnp.int32)
    n_NxB = jnp.minimum(n_NxB, hi)
    j = jnp.arange(length)[None, None, :]
    start_NxBx1 = (bl * k_NxB)[..., None]
    in_block = (j >= start_NxBx1) & (j < start_NxBx1 + ell_NxB[..., None])
    rank = jnp.argsort(jnp.argsort(jnp.where(in_block, jax.random.uniform(pos_key, (num_t, b, length)), 2.0),
                                   axis=-1), axis=-1)  # the block's first ℓ tokens rank first
    masked_NxBxL = jnp.where(in_block, rank < n_NxB[..., None], j >= start_NxBx1) | ~completion_mask_BxL[None]
    clean_NxBxT = jnp.concatenate([jnp.ones((num_t, b, prompt_len), bool),
                                   (j < start_NxBx1) & config.mask_clean_blocks], axis=-1)
    u_NxBxT = jax.random.uniform(clean_key, clean_NxBxT.shape)
    noised_NxBxT = jnp.concatenate([jnp.zeros((num_t, b, prompt_len), bool), masked_NxBxL], axis=-1)
    return noised_NxBxT | (clean_NxBxT & (u_NxBxT < config.p_mask_prompt))


def estimators(lp_NxBxL: jax.Array, masked_NxBxL: jax.Array, completion_mask_BxL: jax.Array, eubo_beta: float
               ) -> tuple[jax.Array, jax.Array]:
    """(ELBO [B], EUBO [B]) from the completion log-probs of the num_t draws and their masks (see the module doc)."""
    m_NxBxL = masked_NxBxL & completion_mask_BxL[None].astype(bool)
    count_NxB = m_NxBxL.sum(-1)
    elbo_B = (jnp.where(m_NxBxL, lp_NxBxL, 0).sum(-1) / jnp.maximum(count_NxB, 1)).mean(0)
    log_t_NxBx1 = jnp.log(jnp.maximum(count_NxB, 1) / jnp.maximum(completion_mask_BxL.sum(-1), 1)[None, :])[..., None]
    scaled_NxBxL = jnp.where(m_NxBxL, eubo_beta * lp_NxBxL - log_t_NxBx1, -jnp.inf)
    any_BxL = m_NxBxL.any(0)
    log_avg_BxL = jax.nn.logsumexp(jnp.where(any_BxL[None], scaled_NxBxL, 0.0), axis=0) - jnp.log(m_NxBxL.shape[0])
    eubo_B = jnp.where(any_BxL, log_avg_BxL, 0).sum(-1) / jnp.maximum(any_BxL.sum(-1), 1) / eubo_beta
    return elbo_B, eubo_B


def sequence_logps(model_config: llada.LLaDAConfig, params: Params, batch: SPGBatch, rng: jax.Array | None,
                   config: SPGConfig, draws: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(ELBO [B], EUBO [B]) of every completion from `config.num_t` block-wise masks drawn with `rng`, or, as a
    replay hook for tests, from `draws` bool [num_t, B, P + L] (e.g. SPG's recorded masks); `rng` is then unused."""
    p = batch.prompt_ids.shape[1]
    is_mask_NxBxT = mask_draws(rng, p, batch.completion_mask, config) if draws is None else draws.astype(bool)
    lp_NxBxL = noised_completion_logps(model_config, params, batch.prompt_ids, batch.prompt_mask,
                                       batch.completion_ids, is_mask_NxBxT, config)
    return estimators(lp_NxBxL, is_mask_NxBxT[..., p:], batch.completion_mask, config.eubo_beta)


def sandwich_loss(elbo_B: jax.Array, eubo_B: jax.Array, advantages_B: jax.Array, completion_mask_BxL: jax.Array,
                  logp_estimation: str, mix_weight: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SPG's `compute_loss` from the bounds: ℓ = ELBO where A > 0, else the `logp_estimation` bound; loss
    −Σ A·ℓ·|o| / Σ|o|; and metrics (mean ELBO, EUBO and ℓ)."""
    negative_B = {"eubo": eubo_B, "mix": mix_weight * eubo_B + (1 - mix_weight) * elbo_B, "elbo": elbo_B,
                  "zero": jnp.zeros_like(elbo_B)}[logp_estimation]
    adv_B = advantages_B.astype(jnp.float32)
    ell_B = jnp.where(adv_B > 0, elbo_B, negative_B)
    length_B = completion_mask_BxL.astype(jnp.float32).sum(-1)
    loss = (-adv_B * ell_B * length_B).sum() / length_B.sum()
    return loss, {"elbo": elbo_B.mean(), "eubo": eubo_B.mean(), "seq_logp": ell_B.mean()}


def spg_loss(trainable: Params, frozen: Params | None, batch: SPGBatch, rng: jax.Array | None,
             old_quantity: jax.Array | None = None, ref_quantity: jax.Array | None = None, *,
             model_config: llada.LLaDAConfig, config: SPGConfig, lora_config: LoRAConfig | None = None,
             dropout_rng: jax.Array | None = None, draws: jax.Array | None = None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) of one inner iteration with mask key `rng` (or replayed `draws`, see `sequence_logps`).

    SPG uses no old or reference quantities: `old_quantity` and `ref_quantity` must be None (they are in the
    signature the mask-based objectives share). `dropout_rng`: the LoRA dropout key.
    """
    if old_quantity is not None or ref_quantity is not None:
        raise ValueError("SPG has no ratio or KL term: pass old_quantity=None and ref_quantity=None")
    params = policy_params(trainable, frozen, lora_config, dropout_rng)
    elbo_B, eubo_B = sequence_logps(model_config, params, batch, rng, config, draws)
    return sandwich_loss(elbo_B, eubo_B, batch.advantages, batch.completion_mask, config.logp_estimation,
                         config.mix_weight)


def spg_grad(trainable: Params, frozen: Params | None, batch: SPGBatch, rng: jax.Array | None,
             old_quantity: jax.Array | None = None, ref_quantity: jax.Array | None = None, *,
             model_config: llada.LLaDAConfig, config: SPGConfig, lora_config: LoRAConfig | None = None,
             dropout_rng: jax.Array | None = None, draws: jax.Array | None = None
             ) -> tuple[jax.Array, Params, dict[str, jax.Array]]:
    """(loss, gradient w.r.t. `trainable`, metrics) of `spg_loss`; pure and jit-able."""
    (loss, metrics), grads = jax.value_and_grad(spg_loss, has_aux=True)(
        trainable, frozen, batch, rng, old_quantity, ref_quantity, model_config=model_config, config=config,
        lora_config=lora_config, dropout_rng=dropout_rng, draws=draws)
    return loss, grads, metrics
