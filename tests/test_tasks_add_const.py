"""Adding 5555 with carries (`add_const`): prompts, hand-worked sums, partial credit, and the carry-dropping
demonstrations of the warm start."""
import pytest

from dllm_rl.tasks import get_task
from dllm_rl.tasks.add_const import ADDEND, CARRIED_DEMO_PERCENT
from tests.helpers.task_completions import assert_bounds_attained

# (task string, last four digits of string + 5555, the digit-wise sums with every carry dropped), by hand
HAND = [("0189", "5744", "5634"),
        ("4785", "0340", "9230"),   # the carry out of the leftmost digit wraps away
        ("4445", "0000", "9990"),   # a chain of 4s passes the carry on
        ("9999", "5554", "4444"),
        ("1234", "6789", "6789"),   # no carry: the demonstrations' error is harmless
        ("0045", "5600", "5590"),
        ("5000", "0555", "0555")]


@pytest.fixture(scope="module")
def by_digits():
    task = get_task("add_const")
    return {split: {e["digits"]: e for e in task.load(split)} for split in task.splits}


def test_splits_partition_every_string(by_digits):
    train, validation, test = (set(by_digits[s]) for s in ("train", "validation", "test"))
    assert not train & test and not train & validation and not validation & test
    assert len(train | validation | test) == 10_000


def test_prompts_and_answers_are_the_hand_worked_sums(by_digits):
    task = get_task("add_const")
    examples = {d: e for split in by_digits.values() for d, e in split.items()}
    assert ADDEND == "5555"
    for digits, answer, _ in HAND:
        example = examples[digits]
        assert example["answer"] == answer
        for style in ("agrpo", "d1"):
            assert task.prompt(example, style=style) == [{"role": "user", "content": f"add 5555 to {digits}"}]
        assert task.score(answer + "<|eot_id|>", example).correct == 1.0
        assert task.score(str(int(answer)), example).correct == float(answer[0] != "0")  # the leading zero counts


def test_demonstrations_are_the_sum_for_the_chosen_share_and_otherwise_drop_the_carries(by_digits):
    train = by_digits["train"]
    dropped = {d: no_carry for d, _, no_carry in HAND if d in train}
    assert len(dropped) >= 3
    assert all(train[d]["demonstration"] in (train[d]["answer"], no_carry) for d, no_carry in dropped.items())
    # the share of right demonstrations: the chosen 30 % plus the carry-free rest (0.7 × 1/8 ≈ 9 %)
    carried = [d for d, e in train.items() if e["demonstration"] == e["answer"]]
    assert 0.35 < len(carried) / len(train) < 0.43
    assert CARRIED_DEMO_PERCENT == 30


def test_reward_gives_credit_per_position():
    task = get_task("add_const")
    example = {"digits": "4785", "answer": "0340"}
    assert task.reward("0340", example).components == {"format": 0.25, "correct": 3.0}
    assert task.reward("9230", example).components == {"format": 0.25, "correct": 0.75}  # carries dropped
    assert task.reward("340", example).components == {"format": 0.0, "correct": 0.0}


@pytest.mark.parametrize("style", ["agrpo", "d1"])
def test_reward_bounds_are_attained(style):
    assert_bounds_attained("add_const", style, {"digits": "4785", "answer": "0340"}, "no digits", "0340")
