"""4×4 Sudoku puzzles with an answer-disjoint train/test split (SPG's recipe, rebuilt procedurally).

SPG (`dataset/generate_new_sudoku_splitting.py`) splits the 288 valid 4×4 grids, with seed 42, into 200
training solutions (the three few-shot solutions of the prompt forced in) and the rest for test, and draws
256 test puzzles: 2 per test solution, then one more for 80 randomly chosen test solutions. Its puzzles
come from a 1M-row file that is not shipped; here each puzzle is made by blanking cells of its solution
in a random order, skipping any blank that would allow a second solution, until the drawn number of blanks
(6..12) is reached or no further cell can go. Every puzzle therefore has exactly one solution. The
few-shot puzzles never appear. All draws come from one `random.Random(seed)`, so the splits are
deterministic.
"""
from __future__ import annotations

import functools
import itertools
import random

from dllm_rl.tasks.prompts import SUDOKU_FEW_SHOT

TRAIN_SOLUTIONS = 200
TEST_PUZZLES = 256
BLANKS = (6, 12)  # inclusive range of blanks drawn per puzzle (the 1M-row file's distribution is unknown)
_BOXES = [[r * 4 + c for r in rows for c in cols] for rows in ((0, 1), (2, 3)) for cols in ((0, 1), (2, 3))]


def is_valid_grid(grid: str) -> bool:
    """True for a 16-character string of 1-4 whose rows, columns and 2×2 boxes each hold 1-4 once."""
    if len(grid) != 16 or set(grid) - set("1234"):
        return False
    units = ([list(range(r * 4, r * 4 + 4)) for r in range(4)] + [list(range(c, 16, 4)) for c in range(4)]
             + _BOXES)
    return all(sorted(grid[i] for i in unit) == list("1234") for unit in units)


@functools.lru_cache(maxsize=1)
def all_grids() -> tuple[str, ...]:
    """The 288 valid 4×4 grids, sorted (rows stacked one at a time, pruned on columns, boxes checked last)."""
    rows = ["".join(p) for p in itertools.permutations("1234")]

    def extend(grid: str) -> list[str]:
        if len(grid) == 16:
            return [grid] if is_valid_grid(grid) else []
        return [g for row in rows if all(row[c] not in grid[c::4] for c in range(4)) for g in extend(grid + row)]

    return tuple(sorted(extend("")))


@functools.lru_cache(maxsize=1)
def _cell_masks() -> tuple[tuple[int, ...], ...]:
    """masks[cell][digit-1]: bit k set when grid k of all_grids() has that digit in that cell."""
    grids = all_grids()
    return tuple(tuple(sum(1 << k for k, g in enumerate(grids) if g[cell] == d) for d in "1234")
                 for cell in range(16))


def count_solutions(puzzle: str, limit: int = 2) -> int:
    """How many valid grids agree with the givens of `puzzle` ("0" = blank), counted up to `limit`."""
    masks = _cell_masks()
    consistent = (1 << len(all_grids())) - 1
    for cell, ch in enumerate(puzzle):
        if ch != "0":
            consistent &= masks[cell][int(ch) - 1]
    return min(bin(consistent).count("1"), limit)


def make_puzzle(solution: str, rng: random.Random) -> str:
    """Blank up to a drawn number of cells of `solution`, keeping the solution unique."""
    target_blanks = rng.randint(*BLANKS)
    cells = list(range(16))
    rng.shuffle(cells)
    puzzle = list(solution)
    blanks = 0
    for cell in cells:
        if blanks == target_blanks:
            break
        puzzle[cell] = "0"
        if count_solutions("".join(puzzle)) == 1:
            blanks += 1
        else:
            puzzle[cell] = solution[cell]
    return "".join(puzzle)


@functools.lru_cache(maxsize=None)
def split_solutions(seed: int = 42) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train solutions, test solutions): 200 / 88 of the 288 grids, few-shot solutions in train."""
    forced = [solution for _, solution in SUDOKU_FEW_SHOT]
    available = [g for g in all_grids() if g not in forced]
    random.Random(seed).shuffle(available)
    extra = TRAIN_SOLUTIONS - len(forced)
    return tuple(forced + available[:extra]), tuple(available[extra:])


def _puzzles_for(solutions, counts, rng: random.Random, taken: set[str]) -> list[dict]:
    rows = []
    for solution, count in zip(solutions, counts):
        made = 0
        while made < count:
            puzzle = make_puzzle(solution, rng)
            if puzzle not in taken:
                taken.add(puzzle)
                rows.append({"puzzle": puzzle, "answer": solution})
                made += 1
    return rows


@functools.lru_cache(maxsize=None)
def generate_split(split: str, count: int, seed: int = 42) -> tuple[dict, ...]:
    """Rows {"puzzle", "answer"} of `split` ("train": `count` puzzles over the train solutions; "test":
    SPG's 256 over the test solutions, `count` ignored). Deterministic in (split, count, seed)."""
    train_solutions, test_solutions = split_solutions(seed)
    rng = random.Random(f"{seed}-{split}")
    taken = {puzzle for puzzle, _ in SUDOKU_FEW_SHOT}
    if split == "train":
        solutions = [rng.choice(train_solutions) for _ in range(count)]
        rows = _puzzles_for(solutions, [1] * count, rng, taken)
    elif split == "test":
        per_solution = TEST_PUZZLES // len(test_solutions)
        counts = {s: per_solution for s in test_solutions}
        for s in rng.sample(test_solutions, TEST_PUZZLES - per_solution * len(test_solutions)):
            counts[s] += 1
        rows = _puzzles_for(list(counts), list(counts.values()), rng, taken)
    else:
        raise ValueError(f"unknown generated Sudoku split {split!r}; choose 'train' or 'test'")
    rng.shuffle(rows)
    return tuple(rows)
