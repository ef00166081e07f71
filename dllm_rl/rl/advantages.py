"""Group-relative advantages (GRPO): A_i = r_i − mean of the group of rows sampled from the same prompt.

Rows are grouped consecutively: rows g·G … g·G+G−1 share a prompt (the layout of TRL's RepeatSampler, which
the official AGRPO and d1 trainers use). Neither divides by the group std (docs/algorithm.md), so `scale_by_std`
defaults to False; with it, TRL's (r − mean)/(std + 1e-4) with the unbiased std is used. `leave_one_out` (ESPO)
replaces the group mean by the mean of the other G − 1 rewards: r_i − (Σ_j r_j − r_i)/(G − 1) = G/(G − 1)·(r_i − mean).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

STD_EPS = 1e-4


def check_group_size(batch_size: int, num_generations: int) -> None:
    """Raises a ValueError naming the fix when the batch is not made of whole groups."""
    if num_generations < 1:
        raise ValueError(f"num_generations must be ≥ 1, got {num_generations}")
    if batch_size % num_generations:
        raise ValueError(f"batch size {batch_size} is not a multiple of num_generations {num_generations}: "
                         "each prompt's G completions must sit in consecutive rows of the same batch; "
                         "use a batch size of (prompts per batch)·num_generations")


def group_advantages(rewards_B: jax.Array, num_generations: int, scale_by_std: bool = False,
                     leave_one_out: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(advantages [B], stats): r − group mean, or with `leave_one_out` r − mean of the group's other rewards
    (ESPO's baseline), optionally / (std + 1e-4); and reward / zero-std-group metrics."""
    if rewards_B.ndim != 1:
        raise ValueError(f"rewards must be 1-D [batch], got shape {rewards_B.shape}; sum the reward components "
                         "of each row first")
    check_group_size(rewards_B.shape[0], num_generations)
    if leave_one_out and num_generations < 2:
        raise ValueError(f"leave_one_out advantages need num_generations ≥ 2, got {num_generations}")
    r_QxG = rewards_B.astype(jnp.float32).reshape(-1, num_generations)
    mean_Qx1 = r_QxG.mean(axis=1, keepdims=True)
    std_Qx1 = (jnp.std(r_QxG, axis=1, ddof=1, keepdims=True) if num_generations > 1
               else jnp.zeros_like(mean_Qx1))
    adv_QxG = r_QxG - mean_Qx1
    if leave_one_out:
        adv_QxG = adv_QxG * (num_generations / (num_generations - 1))
    if scale_by_std:
        adv_QxG = adv_QxG / (std_Qx1 + STD_EPS)
    stats = {
        "reward_mean": r_QxG.mean(),
        "reward_std": std_Qx1.mean(),
        "frac_reward_zero_std": jnp.isclose(std_Qx1, 0.0).mean(),
    }
    return adv_QxG.reshape(-1), stats
