"""Completions for the tasks tests: seeded adversarial ones (fuzz and load tests), MATH-500 answers
rewritten in an equivalent form that sympy must simplify (the load test's hard-but-equal answers), and
small reward assertions shared by the per-task test files."""
import random

import pytest

from dllm_rl.tasks import get_task

FUZZ_EXAMPLES = {
    "gsm8k": {"question": "q", "solution": "#### 18", "answer": "18"},
    "math": {"problem": "p", "solution": r"$\boxed{\frac{\pi}{2}}$", "answer": r"\frac{\pi}{2}"},
    "countdown": {"nums": [30, 100, 93], "target": 23},
    "sudoku": {"puzzle": "3102200002100320", "answer": "3142243142131324"},
}

# gold × (sin²(π/7) + cos²(π/7)): equal to the gold only after a trigonometric simplification (~0.06 s of
# sympy on an idle core, up to ~0.25 s); 36 of the first 40 MATH-500 answers are then found equal.
_HARD_FORM = r"\left({g}\right)\left(\sin^2\left(\frac{{\pi}}{{7}}\right)+\cos^2\left(\frac{{\pi}}{{7}}\right)\right)"


def hard_equivalent(gold: str) -> str:
    return _HARD_FORM.format(g=gold)


def _atom(rng: random.Random) -> str:
    choice = rng.randrange(14)
    if choice == 0:
        return "9" * rng.choice([30, 400, 5000, 50_000])                 # huge written-out numbers
    if choice == 1:
        return rng.choice(["9**9**9", "9^{9^{9}}", "(10^{100})!", "10^{10^{10}}", "2^{2^{2^{2^{2}}}}",
                           "\\binom{10^{9}}{50000}", "99999!", "10^{99999}", "9^{99999}"])
    if choice == 2:
        n = rng.choice([5, 50, 500, 20_000])                              # deep nesting
        return rng.choice("({[") * n + "1" + rng.choice(")}]") * n
    if choice == 3:
        return "".join(rng.choice("١٢٣٤٥６７８９𝟗߁०") for _ in range(rng.randint(1, 20)))  # Unicode digits
    if choice == 4:
        return rng.choice(["<answer>", "</answer>", "<think>", "</think>", "<reasoning>", "\\boxed{", "}"]) * \
            rng.choice([1, 3, 1000])                                      # unbalanced tags
    if choice == 5:
        return "".join(rng.choice("0123456789+-*/()= ") for _ in range(rng.randint(1, 60)))
    if choice == 6:
        return rng.choice(["\\frac{1}{0}", "1/0", "0/0", "\\sqrt{-1}", "\\infty", "nan", "=", "==", "\x00", "\\",
                           "$", "$$", "\\left(", "\\text{ ", "\\boxed ", "\\fbox{", "#### ", "\n", "\r\n"])
    if choice == 7:
        return "".join(rng.choice("1234 0\n") for _ in range(rng.randint(10, 40)))
    if choice == 8:
        return rng.choice(["x", "a" * 1000, "∑", "😀", "\u202e", "\ufeff"]) * rng.randint(1, 5)
    if choice == 9:
        return "=" * rng.choice([1, 100, 10_000]) + "1"
    if choice == 10:
        return "\n".join("1 + 2 = 3" for _ in range(rng.choice([1, 100, 3000])))
    if choice == 11:
        return rng.choice(["-", "+", "*", "/"]) * rng.choice([10, 100, 5000]) + "5"
    if choice == 12:
        return str(rng.randint(-10**6, 10**6))
    return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randint(1, 30)))


def adversarial_completion(rng: random.Random) -> str:
    """Huge written-out numbers, power towers, deep brackets, Unicode digits, unbalanced tags and megabyte
    strings, put into answer templates."""
    if rng.random() < 0.01:
        atom = _atom(rng)
        return (atom * (1_000_000 // len(atom) + 1))[:1_000_000]       # megabyte strings
    body = "".join(_atom(rng) for _ in range(rng.randint(1, 4)))
    template = rng.choice(["{b}", "<answer>{b}</answer>", "<think>{b}</think><answer>\\boxed{{{b}}}</answer>",
                           "<answer>{b} = 23</answer>", "<reasoning>\n{b}\n</reasoning>\n<answer>\n{b}\n</answer>\n",
                           "<answer>\\boxed{{{b}", "{b}<answer>", "<think>{b}"])
    return template.format(b=body)


def reward_components(task_name: str, completion: str, example: dict, style: str = "agrpo") -> dict:
    return dict(get_task(task_name).reward(completion, example, style=style).components)


def assert_bounds_attained(task_name: str, style: str, example: dict, lowest: str, highest: str) -> None:
    """`lowest` and `highest` get exactly the task's `reward_bounds(style)` (so the bounds are tight)."""
    task = get_task(task_name)
    low, high = task.reward_bounds(style)
    assert task.reward(lowest, example, style=style).total == pytest.approx(low, abs=1e-9)
    assert task.reward(highest, example, style=style).total == pytest.approx(high, abs=1e-9)
