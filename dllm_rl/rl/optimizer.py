"""The optax optimizers of a run: AdamW with global-norm clipping and a warmup schedule for RL, plain AdamW for
the SFT warm start."""
from __future__ import annotations

import optax

from dllm_rl.rl.config import TrainConfig


def make_optimizer(train: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(AdamW with global-norm clipping, its learning-rate schedule): linear warmup, then cosine decay to 0 over
    `num_steps` or constant."""
    warmup = int(round(train.warmup_ratio * train.num_steps))
    if train.lr_schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, train.learning_rate, warmup,
                                                      max(train.num_steps, warmup + 1), end_value=0.0)
    elif warmup:
        schedule = optax.join_schedules([optax.linear_schedule(0.0, train.learning_rate, warmup),
                                         optax.constant_schedule(train.learning_rate)], [warmup])
    else:
        schedule = optax.constant_schedule(train.learning_rate)
    tx = optax.chain(optax.clip_by_global_norm(train.max_grad_norm),
                     optax.adamw(schedule, b1=train.adam_b1, b2=train.adam_b2, weight_decay=train.weight_decay))
    return tx, schedule


def make_sft_optimizer(train: TrainConfig) -> optax.GradientTransformation:
    """AdamW at the constant `sft_learning_rate`, no weight decay, no clipping (the SFT warm start)."""
    return optax.adamw(train.sft_learning_rate, weight_decay=0.0)
