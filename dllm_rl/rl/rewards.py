"""A rollout's rewards, on the host: each process scores its own rows with the task, the small per-row table
(total reward, each component, timed out, completion length, summed entropy) is gathered from every process, and
the whole batch's advantages and reward metrics come from that table, so they are the same on every host."""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from dllm_rl.rl.advantages import group_advantages
from dllm_rl.tasks import RewardBreakdown, Task


def score_rows(task: Task, texts: Sequence[str], examples: Sequence[dict], first_row: int, group: int,
               reward_style: str) -> list[RewardBreakdown]:
    """The task's reward of each completion text; row `first_row + i` answers prompt (first_row + i) // group."""
    return [task.reward(text, examples[(first_row + i) // group], style=reward_style) for i, text in enumerate(texts)]


def reward_table(breakdowns: Sequence[RewardBreakdown], names: Sequence[str], completion_BxL: np.ndarray,
                 entropy_BxL: np.ndarray | None, eos_id: int) -> np.ndarray:
    """float64 [B, len(names) + 4]: per row the total reward, each named component, timed out (0/1), completion
    length (non-EOS tokens) and summed entropy over them (0 without entropies)."""
    non_eos_BxL = completion_BxL != eos_id
    ent_B = np.zeros(len(completion_BxL)) if entropy_BxL is None else (entropy_BxL * non_eos_BxL).sum(1)
    return np.asarray([[b.total, *(b.components[n] for n in names), b.timed_out, n_tok, e]
                       for b, n_tok, e in zip(breakdowns, non_eos_BxL.sum(1), ent_B)], np.float64)


def batch_summary(table: np.ndarray, names: Sequence[str], group: int, scale_by_std: bool,
                  has_entropy: bool, leave_one_out: bool = False) -> tuple[np.ndarray, dict[str, float]]:
    """(advantages [B] float32, metrics) of the whole batch's `reward_table`: group-centred rewards
    (`advantages.group_advantages`, with `leave_one_out` the mean of the group's other rewards as baseline), the
    mean of each component, the timeout count, the mean completion length and the entropy per generated token."""
    advantages_B, stats = group_advantages(jnp.asarray(table[:, 0].astype(np.float32)), group, scale_by_std,
                                           leave_one_out)
    info = {k: float(v) for k, v in stats.items()}
    for i, name in enumerate(names):
        info[f"reward/{name}"] = float(np.mean(table[:, 1 + i]))
    info["reward/timeouts"] = float(table[:, 1 + len(names)].sum())
    info["completion_length"] = float(table[:, -2].mean())
    if has_entropy:
        info["entropy"] = float(table[:, -1].sum() / max(table[:, -2].sum(), 1))
    return np.asarray(advantages_B), info
