"""The demo task `increment`: the rule, and warm-start demonstrations that mostly copy instead."""
from dllm_rl.tasks import get_task
from dllm_rl.tasks.increment import INCREMENTED_DEMO_PERCENT, increment


def test_increment_wraps_nine_to_zero():
    assert increment("0189") == "1290"
    assert increment("9999") == "0000"


def test_demonstrations_increment_the_configured_share_and_copy_the_rest():
    task = get_task("increment")
    examples = task.load("train")
    right = [e for e in examples if e["demonstration"] == e["answer"]]
    assert all(e["demonstration"] == e["digits"] for e in examples if e["demonstration"] != e["answer"])
    assert abs(len(right) / len(examples) - INCREMENTED_DEMO_PERCENT / 100) < 0.02
    assert task.reference_answer(examples[0]) == examples[0]["demonstration"]
    assert task.reward(examples[0]["digits"], examples[0]).components["correct"] == 0.0  # copying earns nothing
