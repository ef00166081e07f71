"""The task interface shared by every task: reward totals, the completion-length cap, the registry and
clear errors for unknown names."""
import pytest

from dllm_rl.tasks import MAX_COMPLETION_CHARS, REWARD_STYLES, get_task, list_tasks

GSM = {"question": "q", "solution": "... #### 1200", "answer": "1200"}
MATH = {"problem": "p", "solution": r"so $\boxed{\frac{1}{2}}$", "answer": r"\frac{1}{2}"}
CD = {"nums": [17, 18, 5], "target": 67}
SUDOKU = {"puzzle": "3014002020004130", "answer": "3214142323414132"}


def test_reward_total_is_sum_of_components():
    r = get_task("gsm8k").reward("<think>x</think><answer>\\boxed{1200}</answer>", GSM)
    assert r.total == 4.0 and not r.timed_out


@pytest.mark.parametrize("task,example", [("gsm8k", GSM), ("math", MATH), ("countdown", CD), ("sudoku", SUDOKU)])
@pytest.mark.parametrize("style", ["agrpo", "d1"])
def test_overlong_completion_gets_zero(task, example, style):
    right = {"gsm8k": "<answer>1200</answer>", "math": "<answer>\\boxed{1/2}</answer>",
             "countdown": "<answer>17*5-18 = 67</answer>", "sudoku": "<answer>3214142323414132</answer>"}[task]
    assert get_task(task).reward(right, example, style=style).total > 0
    assert get_task(task).reward(right + " " * MAX_COMPLETION_CHARS, example, style=style).total == 0


@pytest.mark.parametrize("style", REWARD_STYLES)
def test_every_task_has_reward_bounds_around_zero(style):
    assert list_tasks() == ["add_const", "countdown", "gsm8k", "increment", "math", "reverse", "sudoku"]
    for name in list_tasks():
        low, high = get_task(name).reward_bounds(style)
        assert low <= 0.0 < high  # 0 is the reward of an overlong completion


def test_unknown_names_fail_clearly():
    with pytest.raises(KeyError, match="registered tasks"):
        get_task("gsm9k")
    with pytest.raises(ValueError, match="choose one of"):
        get_task("gsm8k").load("validation")
    with pytest.raises(ValueError, match="reward style"):
        get_task("gsm8k").reward("", GSM, style="grpo")
    with pytest.raises(ValueError, match="prompt style"):
        get_task("gsm8k").prompt(GSM, style="grpo")
    with pytest.raises(ValueError, match="reward style"):
        get_task("gsm8k").reward_bounds("grpo")
