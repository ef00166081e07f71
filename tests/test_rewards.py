"""A rollout's host-side rewards: rows map to their prompts, the per-row table, and the batch's advantages and
metrics against a NumPy reference."""
import numpy as np
import pytest

from dllm_rl.rl import rewards
from dllm_rl.tasks import RewardBreakdown, get_task


def test_rows_are_scored_against_their_own_prompt():
    task = get_task("increment")
    examples = list(task.load(task.default_eval_split)[:3])
    texts = [examples[1]["answer"], "junk", examples[2]["answer"], examples[1]["answer"]]
    # This process holds rows 2..5 of a batch of G = 2 per prompt: rows 2, 3 answer prompt 1, rows 4, 5 prompt 2.
    scored = [s.total for s in rewards.score_rows(task, texts, examples, first_row=2, group=2, reward_style="agrpo")]
    want = [task.reward(t, ex, style="agrpo").total for t, ex in zip(texts, [examples[1]] * 2 + [examples[2]] * 2)]
    assert scored == want and scored[0] > scored[1] and scored[2] > scored[3]


def test_table_and_batch_summary_match_numpy():
    names = ["format", "correct"]
    breakdowns = [RewardBreakdown({"format": f, "correct": c}, timed_out=t)
                  for f, c, t in [(0.5, 1.0, False), (0.5, 0.0, True), (0.0, 0.0, False), (0.5, 2.0, False)]]
    eos = 9
    completion = np.array([[1, 2, eos, eos], [1, eos, eos, eos], [1, 2, 3, 4], [eos] * 4])
    entropy = np.arange(16, dtype=np.float64).reshape(4, 4) / 10
    table = rewards.reward_table(breakdowns, names, completion, entropy, eos)
    lengths = np.array([2, 1, 4, 0])
    summed = np.array([0.1, 0.4, 3.8, 0.0])
    np.testing.assert_allclose(table[:, 0], [1.5, 0.5, 0.0, 2.5])
    np.testing.assert_allclose(table[:, 1:3], [[0.5, 1.0], [0.5, 0.0], [0.0, 0.0], [0.5, 2.0]])
    np.testing.assert_allclose(table[:, 3], [0, 1, 0, 0])
    np.testing.assert_allclose(table[:, 4], lengths)
    np.testing.assert_allclose(table[:, 5], summed)

    advantages, info = rewards.batch_summary(table, names, group=2, scale_by_std=False, has_entropy=True)
    np.testing.assert_allclose(advantages, [0.5, -0.5, -1.25, 1.25], rtol=1e-6)
    assert info["reward/format"] == pytest.approx(0.375) and info["reward/correct"] == pytest.approx(0.75)
    assert info["reward/timeouts"] == 1.0 and info["completion_length"] == pytest.approx(7 / 4)
    assert info["entropy"] == pytest.approx(summed.sum() / 7)
    assert "entropy" not in rewards.batch_summary(table, names, 2, False, has_entropy=False)[1]
    # ESPO's leave-one-out baseline: r_i minus the other rewards' mean (with G = 2, the other reward).
    loo, _ = rewards.batch_summary(table, names, 2, False, has_entropy=False, leave_one_out=True)
    np.testing.assert_allclose(loo, [1.0, -1.0, -2.5, 2.5], rtol=1e-6)
