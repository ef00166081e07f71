"""4×4 Sudoku: fill a 16-character puzzle string ("0" = blank) with 1-4.

Splits:
- `train` (20,000) / `test` (256): generated with SPG's answer-disjoint recipe (`sudoku_gen`, seed 42):
  no test solution appears in train, as in AGRPO's `train/test_sudoku_split_new.csv` (not shipped);
- `test_d1`: d1's 256-puzzle evaluation subset (seed-42 draw, shipped as indices) of `test_d1_full`, d1's
  500-puzzle `4x4_test_sudoku.csv`. Its solutions also occur among the generated train solutions (only
  288 grids exist), so use `test` for models trained on `train`.

Evaluation quirk reproduced (AGRPO / d1 / SPG): the metric is cell accuracy, the fraction of blank cells
filled correctly (partial credit), on `parse_ans(completion).zfill(16)[:16]`. `score(..., strict=True)`
gives 1 only when the answer is a complete valid grid that keeps every clue.
"""
from __future__ import annotations

from dllm_rl.tasks import sudoku_gen
from dllm_rl.tasks.base import REWARD_STYLES, RewardBreakdown, Score, Task, check_style, register, too_long
from dllm_rl.tasks.extract import d1_last_answer_block, parse_ans, tag_content
from dllm_rl.tasks.files import read_csv, read_indices
from dllm_rl.tasks.prompts import sudoku_prompt

TRAIN_SIZE = 20_000
D1_TEST_FILE = "sudoku/4x4_test_sudoku.csv"
# AGRPO: format in [0, 0.25 + 0.25 + 0.5], correctness 3.0 × cell accuracy in [0, 3.0]. d1: cell accuracy.
REWARD_BOUNDS = {"agrpo": (0.0, 4.0), "d1": (0.0, 1.0)}


def cell_accuracy(grid: str, puzzle: str, solution: str) -> float:
    """Fraction of the puzzle's blank cells where `grid` (16 characters) matches `solution`."""
    blanks = [i for i in range(16) if puzzle[i] == "0"]
    return sum(grid[i] == solution[i] for i in blanks) / len(blanks)


def keeps_clues(grid: str, puzzle: str) -> bool:
    return all(p == "0" or p == g for p, g in zip(puzzle, grid))


def agrpo_format_reward(answer: str | None, puzzle: str) -> float:
    """AGRPO `sudoku_format_reward` on the stripped `<answer>` content: for a 16-character answer, +0.25,
    +0.25 when its characters are four each of 1-4, +0.5 when every clue is kept."""
    if answer is None or len(answer) != 16:
        return 0.0
    return 0.25 + 0.25 * ("".join(sorted(answer)) == "1111222233334444") + 0.5 * keeps_clues(answer, puzzle)


def d1_reward(completion: str, puzzle: str, solution: str) -> float:
    """d1 `sudoku_reward_func`: the digits of the last `<answer>`, right-padded with 0 / cut to 16, scored
    by cell accuracy; 0 without an answer tag or digits."""
    block = d1_last_answer_block(completion)
    if block is None:
        return 0.0
    digits = "".join(ch for ch in block.strip() if ch.isdigit())
    if not digits:
        return 0.0
    return cell_accuracy(digits.ljust(16, "0")[:16], puzzle, solution)


def _load(split: str) -> list[dict]:
    if split in ("train", "test"):
        return [dict(row) for row in sudoku_gen.generate_split(split, TRAIN_SIZE)]
    rows = [{"puzzle": row["Puzzle"].zfill(16), "answer": row["Solution"]} for row in read_csv(D1_TEST_FILE)]
    if split == "test_d1":
        return [rows[i] for i in read_indices("sudoku/d1_eval_subsample_indices.json")]
    return rows


@register
class Sudoku(Task):
    name = "sudoku"
    splits = ("train", "test", "test_d1", "test_d1_full")
    reward_bounds_by_style = REWARD_BOUNDS

    def load(self, split: str) -> list[dict]:
        self._check_split(split)
        return _load(split)

    def prompt(self, example, style: str = "agrpo"):
        return sudoku_prompt(example["puzzle"], style)

    def reward(self, completion: str, example, style: str = "agrpo") -> RewardBreakdown:
        check_style(style, REWARD_STYLES, "reward")
        puzzle, solution = example["puzzle"], example["answer"]
        if style == "d1":
            return RewardBreakdown({"sudoku": 0.0 if too_long(completion) else d1_reward(completion, puzzle, solution)})
        if too_long(completion):
            return RewardBreakdown({"format": 0.0, "correctness": 0.0})
        grid = parse_ans(completion).zfill(16)[:16]
        return RewardBreakdown({
            "format": agrpo_format_reward(tag_content(completion, "answer"), puzzle),
            "correctness": 3.0 * cell_accuracy(grid, puzzle, solution),
        })

    def score(self, completion: str, example, strict: bool = False) -> Score:
        if too_long(completion):
            return Score("", 0.0)
        answer = parse_ans(completion)
        if strict:
            ok = sudoku_gen.is_valid_grid(answer) and keeps_clues(answer, example["puzzle"])
            return Score(answer, float(ok))
        return Score(answer, cell_accuracy(answer.zfill(16)[:16], example["puzzle"], example["answer"]))
