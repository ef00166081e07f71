"""GSM8K: shipped split sizes and AGRPO's first-integer eval quirk."""
import pytest

from dllm_rl.tasks import get_task

GSM = {"question": "q", "solution": "... #### 1200", "answer": "1200"}


@pytest.mark.parametrize("split,size", [("train", 7473), ("test", 1319)])
def test_split_sizes(split, size):
    assert len(get_task("gsm8k").load(split)) == size


def test_gsm8k_eval_reproduces_first_integer_quirk():
    task = get_task("gsm8k")
    quirky = "<answer>\\boxed{1,200}</answer>"
    assert task.score(quirky, GSM).extracted == "1" and task.score(quirky, GSM).correct == 0.0
    assert task.score("<answer>1200 dollars</answer>", GSM).correct == 1.0
    assert task.score("<answer>-1200</answer>", {**GSM, "answer": "-1200"}).correct == 0.0  # sign dropped
    assert task.score("<answer>-1200</answer>", {**GSM, "answer": "-1200"}, strict=True).correct == 1.0
