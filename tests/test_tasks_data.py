"""Shipped data, generators (Countdown solvable and deterministic; Sudoku splits answer-disjoint), Grain."""
import pytest

from dllm_rl.tasks import countdown_gen, get_task, make_dataset, render_prompt, sudoku_gen
from dllm_rl.tasks.arith import evaluate
from dllm_rl.tasks.prompts import SUDOKU_FEW_SHOT

SIZES = {("gsm8k", "train"): 7473, ("gsm8k", "test"): 1319, ("math", "train"): 8502, ("math", "test"): 500,
         ("countdown", "test"): 256, ("countdown", "test_d1"): 256, ("countdown", "train_upstream"): 4920,
         ("sudoku", "test_d1"): 256, ("sudoku", "test_d1_full"): 500, ("sudoku", "test"): 256,
         ("sudoku", "train"): 20000}


@pytest.mark.parametrize("task,split", sorted(SIZES))
def test_split_sizes(task, split):
    assert len(get_task(task).load(split)) == SIZES[task, split]


def test_math_train_is_filtered_like_agrpo():
    train, test = get_task("math").load("train"), get_task("math").load("test")
    assert all(row["level"] <= 4 and row["answer"] for row in train)
    assert not {row["problem"] for row in train} & {row["problem"] for row in test}


def test_d1_indices_reorder_the_test_sets():
    cd = get_task("countdown")
    assert sorted(map(str, cd.load("test_d1"))) == sorted(map(str, cd.load("test")))
    assert cd.load("test_d1")[0] == cd.load("test")[228]  # d1's first evaluated row
    assert get_task("sudoku").load("test_d1")[0] == get_task("sudoku").load("test_d1_full")[361]


def test_countdown_generator_is_solvable_deterministic_and_excludes_test():
    test_tuples = {tuple(sorted(ex["nums"])) for ex in get_task("countdown").load("test")}
    problems = countdown_gen.generate(2000, seed=7, exclude=test_tuples)
    assert problems == countdown_gen.generate(2000, seed=7, exclude=test_tuples)
    assert problems != countdown_gen.generate(2000, seed=8, exclude=test_tuples)
    for p in problems:
        assert len(p["nums"]) == 3 and 10 <= p["target"] <= 100 and all(1 <= n <= 99 for n in p["nums"])
        assert evaluate(p["solution"]) == p["target"]
        assert sorted(int(t) for t in p["solution"].replace("(", " ").replace(")", " ").split()
                      if t.isdigit()) == sorted(p["nums"])
        assert tuple(sorted(p["nums"])) not in test_tuples


def test_countdown_solver_finds_the_prompt_example_and_refuses_impossible():
    assert evaluate(countdown_gen.solve([17, 18, 5], 67)) == 67
    assert countdown_gen.solve([1, 1, 1], 100) is None


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


def test_grain_pipeline_shards_shuffles_and_resumes():
    task = get_task("countdown")
    seen = []
    for shard in range(2):
        it = iter(make_dataset(task, "test", seed=3, shard_index=shard, shard_count=2, num_epochs=1))
        seen.append([str(ex) for ex in it])
    assert len(seen[0]) == len(seen[1]) == 128 and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(str(ex) for ex in task.load("test"))
    assert seen[0] != [str(ex) for ex in task.load("test")[0::2]]  # shuffled

    ds = make_dataset(task, "test", seed=3, shard_index=0, shard_count=2)
    it = iter(ds)
    first_epoch = [next(it) for _ in range(128)]
    state = it.get_state()
    rest = [next(it) for _ in range(5)]
    resumed = iter(ds)
    resumed.set_state(state)
    assert [next(resumed) for _ in range(5)] == rest
    assert rest != first_epoch[:5]  # a new order in the second epoch
    with pytest.raises(ValueError, match="shard_index"):
        make_dataset(task, "test", seed=0, shard_index=2, shard_count=2)


@pytest.mark.parametrize("task,split", [("gsm8k", "test"), ("math", "test"), ("countdown", "test"), ("sudoku", "test")])
@pytest.mark.parametrize("style", ["agrpo", "d1"])
def test_prompts_render_through_the_chat_template(task, split, style, tiny_tokenizer_dir):
    from dllm_rl.tokenizer import Tokenizer
    example = get_task(task).load(split)[0]
    messages = get_task(task).prompt(example, style=style)
    assert [m["role"] for m in messages] == (["system", "user"] if style == "agrpo" else ["user"])
    text = render_prompt(Tokenizer.from_dir(tiny_tokenizer_dir), messages)
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    tag = "<think>" if style == "agrpo" else "<reasoning>"
    assert tag in text
