"""The digit-string tasks (`reverse`, `increment`): split, prompt, reward and score shared by both."""
import pytest

from dllm_rl.tasks import get_task
from dllm_rl.tasks.digit_strings import chosen

import dllm_rl.tasks.increment  # noqa: F401  (registers `increment`)

TASKS = ("reverse", "increment")


@pytest.mark.parametrize("name", TASKS)
def test_train_validation_and_test_partition_every_string(name):
    task = get_task(name)
    train, validation, test = ({e["digits"] for e in task.load(s)} for s in ("train", "validation", "test"))
    assert not train & test and not train & validation and not validation & test
    assert len(train | validation | test) == 10 ** task.num_digits
    assert 0.15 < len(test) / 10 ** task.num_digits < 0.25
    assert 0.07 < len(validation) / 10 ** task.num_digits < 0.13
    with pytest.raises(ValueError, match="no split"):
        task.load("dev")


# (digits, answer) worked out by hand: increment adds 1 to every digit, 9 wrapping to 0; reverse reverses
HAND_ANSWERS = {
    "increment": [("0189", "1290"), ("9999", "0000"), ("1234", "2345"), ("5090", "6101")],
    "reverse": [("0189", "9810"), ("1200", "0021"), ("1234", "4321"), ("5090", "0905")],
}


@pytest.mark.parametrize("name", TASKS)
def test_answers_follow_the_rule_and_score_exact_match(name):
    """The loaded examples carry the hand-written answers, which score as exact matches."""
    task = get_task(name)
    by_digits = {e["digits"]: e for split in task.splits for e in task.load(split)}
    for digits, answer in HAND_ANSWERS[name]:
        example = by_digits[digits]
        assert example["answer"] == answer
        assert task.score(answer + "<|eot_id|>", example).correct == 1.0
        assert task.score(" " + answer, example).correct == 1.0
        assert task.score(answer + "0", example).correct == 0.0
        assert task.score(digits, example).correct == 0.0  # the copied digits
        assert task.score("", example).correct == 0.0


@pytest.mark.parametrize("name", TASKS)
def test_reward_is_format_plus_per_position_credit(name):
    task = get_task(name)
    digits, answer = HAND_ANSWERS[name][2]
    example = {"digits": digits, "answer": answer}
    assert task.reward(answer, example).total == 3.25
    one_wrong = str((int(answer[0]) + 5) % 10) + answer[1:]
    assert task.reward(one_wrong, example).components == {"format": 0.25, "correct": 2.25}
    assert task.reward(answer[:2], example).components == {"format": 0.0, "correct": 1.5}
    assert task.reward("no digits", example).total == 0.0
    assert task.reward("9" * 40_000, example).total == 0.0  # past MAX_COMPLETION_CHARS: not parsed


@pytest.mark.parametrize("name", TASKS)
def test_prompt_names_the_rule_and_the_digits(name):
    task = get_task(name)
    example = task.load("train")[0]
    for style in ("agrpo", "d1"):
        assert task.prompt(example, style=style) == [{"role": "user", "content": f"{name} {example['digits']}"}]
    with pytest.raises(ValueError, match="style"):
        task.prompt(example, style="chatml")


def test_reverse_demonstrations_copy_half_of_the_strings():
    examples = get_task("reverse").load("train")
    copied = [e for e in examples if e["demonstration"] != e["answer"]]
    assert all(e["demonstration"] == e["digits"] for e in copied)
    assert 0.45 < len(copied) / len(examples) < 0.55


def test_chosen_selects_about_the_given_percent():
    strings = [f"{i:04d}" for i in range(10_000)]
    assert not any(chosen(s, 0) for s in strings) and all(chosen(s, 100) for s in strings)
    assert 0.28 < sum(chosen(s, 30) for s in strings) / len(strings) < 0.32
