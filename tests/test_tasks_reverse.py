"""Digit reversal (the CPU demo task): disjoint splits, partial-credit reward and its bounds, noisy demos."""
import pytest

from dllm_rl.tasks import get_task
from tests.helpers.task_completions import assert_bounds_attained, reward_components as components

EXAMPLE = {"digits": "1234", "answer": "4321", "demonstration": "1234"}


def test_splits_are_disjoint_and_cover_every_string():
    train, validation, test = (get_task("reverse").load(s) for s in ("train", "validation", "test"))
    assert not {ex["digits"] for ex in train} & {ex["digits"] for ex in test}
    assert len(train) + len(validation) + len(test) == 10_000


def test_reward_gives_partial_credit():
    assert components("reverse", "4321", EXAMPLE) == {"format": 0.25, "correct": 3.0}
    assert components("reverse", " 4300 tail", EXAMPLE) == {"format": 0.25, "correct": 1.5}
    assert components("reverse", "43", EXAMPLE) == {"format": 0.0, "correct": 1.5}
    assert get_task("reverse").score("4321", EXAMPLE).correct == 1.0


@pytest.mark.parametrize("style", ["agrpo", "d1"])
def test_reward_bounds_are_attained(style):
    assert_bounds_attained("reverse", style, EXAMPLE, "no digits", "4321")
