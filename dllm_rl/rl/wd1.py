"""wd1 (github.com/xiaohangt/wd1 @0898985, `wd1/trainers/rev_grpo_trainer.py`, `RevDiffuGRPOTrainer.compute_loss`;
arXiv 2507.08838): ratio-free weighted likelihood.

Each completion's log-likelihood is d1's one-step estimate (`diffu_grpo.completion_logps`: the whole completion
masked, each prompt token masked with probability `p_mask_prompt`, a fresh prompt mask per inner iteration),
summed over the completion's scored tokens (up to and including the first EOS): S_i = Σ_j log π(o_ij). The loss is

    Σ_i (softmax(−A)_i − softmax(A)_i) · S_i

raising the likelihood of completions weighted by softmax(A) and lowering it by softmax(−A). There is no ratio, no
clipping, no KL term and no old or reference log-probs: the only model call per inner iteration is the policy's
own. Advantages are reward − group mean, without dividing by the std (wd1's trainer; `TrainConfig.
scale_rewards_by_std = False`). The μ inner iterations reuse one rollout, as d1.

With wd1's recorded prompt draws passed as `draws`, the log-likelihoods, losses and gradients match wd1's own code on
the tiny model (tests/fixtures/wd1_loss).

Deliberate differences from wd1:
- The softmax runs over each prompt's group of G completions (the paper's weights w(q, o_i), defined per prompt),
  and the loss is the mean over the micro-batch's groups, which is wd1's update (one group per device, averaged
  over devices) whatever the micro-batch holds. wd1's code softmaxes over its whole per-device batch; with
  `softmax_over_local_batch = True` the softmax runs over the whole micro-batch and the loss is its sum, as wd1's
  `compute_loss` (identical when a micro-batch is one group, as in wd1's run).
- As in `diffu_grpo`: the prompt padding mask reaches the model as an attention mask (wd1 passes none), masks are
  drawn with JAX's generator, and the inner iterations' mask order is ours unless `d1_accumulation_steps` is set
  (wd1 inherits d1's step counter: `diffu_grpo.mask_index`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from dllm_rl.models import llada
from dllm_rl.models.lora import LoRAConfig, policy_params
from dllm_rl.rl.diffu_grpo import DiffuGRPOBatch, completion_logps
from dllm_rl.rl.objective import ForwardConfig

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class WD1Config(ForwardConfig):
    """wd1 settings (defaults: wd1's train.yaml and run/wll_NP_*.sh); the model-call fields come from
    `ForwardConfig`. `prompt_keep_last` and `d1_accumulation_steps` reproduce the trainer wd1 shares with d1
    (`DiffuGRPOConfig`); `softmax_over_local_batch` is wd1's code's softmax over the whole per-device batch (off:
    per prompt group, the paper's weights; see the module docstring)."""

    # wd1's loss has no KL term, so no reference policy is kept (the trainer reads `beta` of every objective).
    beta: ClassVar[float] = 0.0

    p_mask_prompt: float = 0.15
    num_iterations: int = 12
    num_generations: int = 6
    prompt_keep_last: int | None = None
    d1_accumulation_steps: int | None = None
    softmax_over_local_batch: bool = False

    def __post_init__(self):
        if not 0.0 <= self.p_mask_prompt <= 1.0:
            raise ValueError(f"WD1Config.p_mask_prompt must be in [0, 1], got {self.p_mask_prompt}")
        if self.num_iterations < 1 or self.num_generations < 1:
            raise ValueError(f"WD1Config.num_iterations and num_generations must be ≥ 1, got "
                             f"{self.num_iterations}, {self.num_generations}")
        for name in ("prompt_keep_last", "d1_accumulation_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"WD1Config.{name} must be None or ≥ 1, got {getattr(self, name)}")
        super().__post_init__()


def weighted_loss(logp_BxL: jax.Array, mask_BxL: jax.Array, advantages_B: jax.Array, group_size: int | None
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """wd1's loss from token log-probs: S_i = Σ_j mask·logp; per group of `group_size` consecutive rows
    Σ_i (softmax(−A)_i − softmax(A)_i)·S_i, averaged over the groups (`group_size` None: one softmax and sum over
    all rows, wd1's code on its per-device batch); and metrics."""
    seq_B = jnp.sum(jnp.where(mask_BxL.astype(bool), logp_BxL, 0.0).astype(jnp.float32), axis=1)
    b = seq_B.shape[0]
    g = b if group_size is None else group_size
    adv_NxG = advantages_B.astype(jnp.float32).reshape(b // g, g)
    pos_NxG, neg_NxG = jax.nn.softmax(adv_NxG, axis=1), jax.nn.softmax(-adv_NxG, axis=1)
    loss = jnp.mean(jnp.sum((neg_NxG - pos_NxG) * seq_B.reshape(b // g, g), axis=1))
    metrics = {"seq_logp_mean": seq_B.mean(), "pos_weight_max": pos_NxG.max(axis=1).mean()}
    return loss, metrics


def wd1_loss(trainable: Params, frozen: Params | None, batch: DiffuGRPOBatch, rng: jax.Array | None, *,
             model_config: llada.LLaDAConfig, config: WD1Config, lora_config: LoRAConfig | None = None,
             dropout_rng: jax.Array | None = None, draws: jax.Array | None = None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) of one inner iteration with prompt-mask key `rng` (or replayed `draws` [B, P], see
    `diffu_grpo.completion_logps`); `dropout_rng`: the LoRA adapters' dropout key (None: no dropout)."""
    params = policy_params(trainable, frozen, lora_config, dropout_rng)
    logp_BxL = completion_logps(model_config, params, batch, rng, config, draws)
    group = None if config.softmax_over_local_batch else config.num_generations
    return weighted_loss(logp_BxL, batch.completion_mask, batch.advantages, group)


def wd1_grad(trainable: Params, frozen: Params | None, batch: DiffuGRPOBatch, rng: jax.Array | None, *,
             model_config: llada.LLaDAConfig, config: WD1Config, lora_config: LoRAConfig | None = None,
             dropout_rng: jax.Array | None = None, draws: jax.Array | None = None
             ) -> tuple[jax.Array, Params, dict[str, jax.Array]]:
    """(loss, gradient w.r.t. `trainable`, metrics) of `wd1_loss`; pure and jit-able."""
    (loss, metrics), grads = jax.value_and_grad(wd1_loss, has_aux=True)(
        trainable, frozen, batch, rng, model_config=model_config, config=config, lora_config=lora_config,
        dropout_rng=dropout_rng, draws=draws)
    return loss, grads, metrics
