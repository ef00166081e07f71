"""Countdown: shipped splits, AGRPO and d1 rewards, their bounds, and AGRPO's last-equation eval quirk."""
import pytest

from dllm_rl.tasks import get_task
from tests.helpers.task_completions import assert_bounds_attained, reward_components as components

CD = {"nums": [17, 18, 5], "target": 67}


@pytest.mark.parametrize("split,size", [("test", 256), ("test_d1", 256), ("train_upstream", 4920)])
def test_split_sizes(split, size):
    assert len(get_task("countdown").load(split)) == size


def test_d1_indices_reorder_the_test_set():
    cd = get_task("countdown")
    assert sorted(map(str, cd.load("test_d1"))) == sorted(map(str, cd.load("test")))
    assert cd.load("test_d1")[0] == cd.load("test")[228]  # d1's first evaluated row


@pytest.mark.parametrize("completion,format_reward,correct", [
    ("<think>x</think><answer>\n17 * 5 - 18 = 67\n</answer>", 1.0, 3.0),
    ("<answer>(17*5)-18=67</answer>", 1.0, 3.0),
    ("<answer>17 * 5 - 18 = 68</answer>", 2 / 3, 3.0),      # AGRPO grades the LHS only: a wrong RHS still scores
    ("<answer>17 * 5 + 18 = 67</answer>", 1.0, 0.0),        # evaluates to 103
    ("<answer>17 * 5 - 18 = 67 = 67</answer>", 0.5, 3.0),   # two "=": −0.5
    ("<answer>17 × 5 − 18 = 67</answer>", 2 / 3, 3.0),      # Unicode operators: not AGRPO's LHS charset
    ("<answer>17 * 5 - 18</answer>", 0.0, 0.0),             # no "="
    ("<answer>17 * 5 - 18 - 0 = 67</answer>", 2 / 3, 0.0),  # extra number
    ("<answer>17 * 5 - 18 / 0 = 67</answer>", 2 / 3, 0.0),  # division by zero
    ("17 * 5 - 18 = 67", 0.0, 0.0),                         # no answer tag
    ("<answer>x = 67</answer>", 1 / 3, 0.0),
])
def test_countdown_agrpo_reward(completion, format_reward, correct):
    c = components("countdown", completion, CD)
    assert c["format"] == pytest.approx(format_reward) and c["correctness"] == correct


def test_countdown_eval_reads_last_equation_line():
    task = get_task("countdown")
    text = "<think>try 17+18 = 35</think>\n17 * 5 - 18 = 67"
    assert task.score(text, CD).correct == 1.0 and task.score(text, CD).extracted == "17 * 5 - 18 = 67"
    assert task.score("so 17 * 5 - 18 = 67", CD).correct == 0.0  # prose in the LHS: not an expression
    assert task.score(text, CD, strict=True).correct == 0.0


def test_countdown_d1_reward():
    assert components("countdown", "<answer>17*5-18</answer>", CD, "d1") == {"countdown": 1.0}
    assert components("countdown", "<answer>17*5+18</answer>", CD, "d1") == {"countdown": 0.1}
    assert components("countdown", "<answer>17*5</answer>", CD, "d1") == {"countdown": 0.1}
    assert components("countdown", "17*5-18", CD, "d1") == {"countdown": 0.0}


@pytest.mark.parametrize("style,lowest,highest", [
    ("agrpo", "<answer>a = b = c</answer>", "<think>x</think><answer>17 * 5 - 18 = 67</answer>"),
    ("d1", "17*5-18", "<answer>17*5-18</answer>"),
])
def test_reward_bounds_are_attained(style, lowest, highest):
    assert_bounds_attained("countdown", style, CD, lowest, highest)
