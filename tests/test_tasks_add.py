"""Two-digit addition with carries (`add`): prompts, hand-worked sums, partial credit, and the carry-dropping
demonstrations of the warm start."""
import pytest

from dllm_rl.tasks import get_task
from dllm_rl.tasks.add import CARRIED_DEMO_PERCENT
from tests.helpers.task_completions import assert_bounds_attained

# (task string, prompt, sum as three digits, the sum with every carry dropped), all worked out by hand
HAND = [("4785", "add 47 85", "132", "022"),
        ("1235", "add 12 35", "047", "047"),
        ("9999", "add 99 99", "198", "088"),
        ("0509", "add 05 09", "014", "004"),
        ("0000", "add 00 00", "000", "000"),
        ("5050", "add 50 50", "100", "000")]


@pytest.fixture(scope="module")
def by_digits():
    task = get_task("add")
    return {split: {e["digits"]: e for e in task.load(split)} for split in task.splits}


def test_splits_partition_every_pair_of_operands(by_digits):
    train, validation, test = (set(by_digits[s]) for s in ("train", "validation", "test"))
    assert not train & test and not train & validation and not validation & test
    assert len(train | validation | test) == 10_000


def test_prompts_and_answers_are_the_hand_worked_sums(by_digits):
    task = get_task("add")
    examples = {d: e for split in by_digits.values() for d, e in split.items()}
    for digits, prompt, answer, _ in HAND:
        example = examples[digits]
        assert example["answer"] == answer
        for style in ("agrpo", "d1"):
            assert task.prompt(example, style=style) == [{"role": "user", "content": prompt}]
        assert task.score(answer + "<|eot_id|>", example).correct == 1.0
        assert task.score(str(int(answer)), example).correct == float(answer[0] != "0")  # the leading zero counts


def test_demonstrations_are_the_sum_for_the_chosen_share_and_otherwise_drop_the_carries(by_digits):
    train = by_digits["train"]
    carried = [d for d, e in train.items() if e["demonstration"] == e["answer"]]
    dropped = {d: no_carry for d, _, _, no_carry in HAND if d in train}
    assert len(dropped) >= 3
    assert all(train[d]["demonstration"] in (train[d]["answer"], no_carry) for d, no_carry in dropped.items())
    # the share of right demonstrations: the chosen 30 % plus the carry-free rest (about 0.7 × 0.3025 ≈ 21 %)
    assert 0.45 < len(carried) / len(train) < 0.56
    wrong = [e for e in train.values() if e["demonstration"] != e["answer"]]
    assert all(int(e["demonstration"]) < int(e["answer"]) for e in wrong)  # a dropped carry only loses
    assert CARRIED_DEMO_PERCENT == 30


def test_reward_gives_credit_per_position_of_the_three_digit_sum():
    task = get_task("add")
    example = {"digits": "4785", "answer": "132"}
    assert task.reward("132", example).components == {"format": 0.25, "correct": 3.0}
    assert task.reward("022", example).components == {"format": 0.25, "correct": 1.0}  # carries dropped
    assert task.reward("32", example).components == {"format": 0.0, "correct": 0.0}
    assert task.reward("13", example).components == {"format": 0.0, "correct": 2.0}


@pytest.mark.parametrize("style", ["agrpo", "d1"])
def test_reward_bounds_are_attained(style):
    assert_bounds_attained("add", style, {"digits": "4785", "answer": "132"}, "no digits", "132")
