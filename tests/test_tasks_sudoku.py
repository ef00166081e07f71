"""Sudoku: shipped splits, AGRPO and d1 rewards (cell accuracy), their bounds, and the strict score."""
import pytest

from dllm_rl.tasks import get_task
from tests.helpers.task_completions import assert_bounds_attained, reward_components as components

SUDOKU = {"puzzle": "3014002020004130", "answer": "3214142323414132"}


@pytest.mark.parametrize("split,size", [("test_d1", 256), ("test_d1_full", 500), ("test", 256), ("train", 20000)])
def test_split_sizes(split, size):
    assert len(get_task("sudoku").load(split)) == size


def test_d1_indices_pick_the_d1_test_subset():
    assert get_task("sudoku").load("test_d1")[0] == get_task("sudoku").load("test_d1_full")[361]


@pytest.mark.parametrize("completion,format_reward,correct", [
    ("<think>x</think><answer>\n3214142323414132\n</answer>", 1.0, 3.0),
    ("<answer>3214142323414123</answer>", 0.5, 3.0 * 7 / 8),     # last clue and blank swapped
    ("<answer>1111222233334444</answer>", 0.5, 3.0 * 1 / 8),     # clues broken, one blank right
    ("<answer>3214 1423 2341 4132</answer>", 0.0, 3.0 * 1 / 8),  # 19 characters: no format, shifted cells
    ("<answer>32141423</answer>", 0.0, 0.0),                     # zfill pads on the left
    ("no answer at all", 0.0, 0.0),
])
def test_sudoku_agrpo_reward(completion, format_reward, correct):
    c = components("sudoku", completion, SUDOKU)
    assert c["format"] == pytest.approx(format_reward) and c["correctness"] == pytest.approx(correct)


def test_sudoku_scores():
    task = get_task("sudoku")
    half = "<answer>3214142323404130</answer>"  # blanks 11 and 15 left empty
    assert task.score(half, SUDOKU).correct == pytest.approx(6 / 8)
    assert task.score(half, SUDOKU, strict=True).correct == 0.0
    assert task.score("<answer>3214142323414132</answer>", SUDOKU, strict=True).correct == 1.0
    assert components("sudoku", "<answer>3 2 1 4 1 4 2 3 2 3 4 1 4 1</answer>", SUDOKU, "d1") == {
        "sudoku": pytest.approx(7 / 8)}  # d1: digits only, right-padded with 0: blank 15 wrong


@pytest.mark.parametrize("style,lowest,highest", [
    ("agrpo", "no answer at all", "<think>x</think><answer>\n3214142323414132\n</answer>"),
    ("d1", "", "<answer>3214142323414132</answer>"),
])
def test_reward_bounds_are_attained(style, lowest, highest):
    assert_bounds_attained("sudoku", style, SUDOKU, lowest, highest)
