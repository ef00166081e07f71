"""The Sudoku generator: all 288 grids, an answer-disjoint train/test split, unique-solution puzzles."""
from dllm_rl.tasks import get_task, sudoku_gen
from dllm_rl.tasks.prompts import SUDOKU_FEW_SHOT


def test_sudoku_grids_and_answer_disjoint_split():
    grids = sudoku_gen.all_grids()
    assert len(grids) == 288 and len(set(grids)) == 288 and all(sudoku_gen.is_valid_grid(g) for g in grids)
    train_solutions, test_solutions = sudoku_gen.split_solutions(42)
    assert len(train_solutions) == 200 and len(test_solutions) == 88
    assert {s for _, s in SUDOKU_FEW_SHOT} <= set(train_solutions)
    train, test = get_task("sudoku").load("train"), get_task("sudoku").load("test")
    assert not {r["answer"] for r in train} & {r["answer"] for r in test}
    assert {r["answer"] for r in test} == set(test_solutions)
    few_shot_puzzles = {p for p, _ in SUDOKU_FEW_SHOT}
    for row in train[:2000] + test:
        assert sudoku_gen.count_solutions(row["puzzle"]) == 1 and row["puzzle"] not in few_shot_puzzles
        assert all(p in ("0", a) for p, a in zip(row["puzzle"], row["answer"]))
    assert len({r["puzzle"] for r in train}) == len(train)
    assert test == get_task("sudoku").load("test")  # deterministic
