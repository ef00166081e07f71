"""The Countdown generator: solvable, deterministic problems that avoid the test set's number tuples."""
from dllm_rl.tasks import countdown_gen, get_task
from dllm_rl.tasks.arith import evaluate


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
