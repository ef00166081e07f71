"""Countdown: combine 3 numbers with + − × ÷ to reach a target.

Splits:
- `test`: d1's `countdown_cd3_test.jsonl` (256) in file order, as AGRPO evaluates it;
- `test_d1`: the same 256 in d1's evaluation order (its seed-42 permutation, shipped as indices);
- `train`: 10,000 generated problems (`countdown_gen`, seed 42), none sharing a number multiset with test;
- `train_upstream`: the 3-number rows among rows 0..10001 of Countdown-Tasks-3to4 (4,927; AGRPO trains on
  the 3-number rows among the first 20,000), minus test number tuples.

Answers are evaluated exactly by `arith.evaluate` (never `eval`). Where AGRPO calls math-verify on the
left-hand side, this grader instead requires a plain arithmetic expression (digits, + − × ÷, brackets):
for such expressions the two agree; anything else (letters, LaTeX, Unicode digits) counts as wrong.

Evaluation quirk reproduced (AGRPO `eval.py`): the graded equation is the last line of `parse_ans`
output that contains "=", wherever it is (no answer tag needed). `score(..., strict=True)` grades only the
`<answer>` content, as the training reward does.
"""
from __future__ import annotations

import functools
import re

from dllm_rl.tasks import countdown_gen
from dllm_rl.tasks.arith import evaluate, numbers_in
from dllm_rl.tasks.base import REWARD_STYLES, RewardBreakdown, Score, Task, check_style, register, too_long
from dllm_rl.tasks.extract import d1_last_answer_block, last_equation_line, parse_ans, tag_content
from dllm_rl.tasks.files import read_indices, read_jsonl
from dllm_rl.tasks.prompts import countdown_prompt

TEST_FILE = "countdown/countdown_cd3_test.jsonl"
TRAIN_SIZE = 10_000
TRAIN_SEED = 42
_AGRPO_LHS = re.compile(r"^[\d\s+\-*/()]+$")
# AGRPO: format in [−0.5 (several "=", nothing else right), 1.0 (three thirds)], correctness 0 or 3.0.
# d1: 0 (no answer tag), 0.1 or 1.0.
REWARD_BOUNDS = {"agrpo": (-0.5, 4.0), "d1": (0.0, 1.0)}


def equation_is_correct(equation: str, target: int, nums: list[int]) -> bool:
    """AGRPO `verify_equation`: the left of the first "=" uses exactly `nums` and evaluates to `target`."""
    if "=" not in equation:
        return False
    lhs = equation.split("=", 1)[0]
    try:
        return sorted(numbers_in(lhs)) == sorted(nums) and evaluate(lhs) == target
    except ArithmeticError:
        return False


def agrpo_format_reward(answer: str | None, target: int, nums: list[int]) -> float:
    """AGRPO `countdown_format_reward` on the `<answer>` content: −0.5 for several "=", +1/3 each for
    RHS == target, an arithmetic-only LHS and LHS numbers == nums; any parsing error makes it 0."""
    if answer is None or "=" not in answer:
        return 0.0
    sides = answer.split("=")
    lhs, rhs = sides[0].strip(), sides[-1].strip()
    reward = -0.5 if len(sides) > 2 else 0.0
    try:
        if re.match(r"^\d+$", rhs) and int(rhs) == target:
            reward += 1 / 3
        if _AGRPO_LHS.match(lhs):
            reward += 1 / 3
        if sorted(int(n) for n in re.findall(r"\d+", lhs)) == sorted(nums):
            reward += 1 / 3
    except ValueError:  # int() of a >4300-digit literal; AGRPO returns None, summed as 0
        return 0.0
    return reward


def d1_reward(completion: str, target: int, nums: list[int]) -> float:
    """d1 `compute_score`: 0 without an answer tag, 1.0 when the last `<answer>` expression (no "=")
    uses exactly the numbers and equals the target within 1e-5, else 0.1."""
    block = d1_last_answer_block(completion)
    if block is None:
        return 0.0
    expression = block.strip()
    try:
        if sorted(numbers_in(expression)) != sorted(nums):
            return 0.1
        return 1.0 if abs(evaluate(expression) - target) < 1e-5 else 0.1
    except ArithmeticError:
        return 0.1


@functools.lru_cache(maxsize=1)
def _test_number_tuples() -> frozenset[tuple[int, ...]]:
    return frozenset(tuple(sorted(map(int, row["input"].split(",")))) for row in read_jsonl(TEST_FILE))


@functools.lru_cache(maxsize=None)
def _load(split: str) -> tuple[dict, ...]:
    if split == "train":
        return tuple(countdown_gen.generate(TRAIN_SIZE, TRAIN_SEED, exclude=_test_number_tuples()))
    if split == "train_upstream":
        rows = read_jsonl("countdown/tasks_3to4_cd3_rows_0_10001.jsonl.gz")
        return tuple({"nums": row["nums"], "target": row["target"]} for row in rows
                     if tuple(sorted(row["nums"])) not in _test_number_tuples())
    test = [{"nums": [int(n) for n in row["input"].split(",")], "target": int(row["output"])}
            for row in read_jsonl(TEST_FILE)]
    if split == "test_d1":
        return tuple(test[i] for i in read_indices("countdown/d1_eval_subsample_indices.json"))
    return tuple(test)


@register
class Countdown(Task):
    name = "countdown"
    splits = ("train", "train_upstream", "test", "test_d1")
    reward_bounds_by_style = REWARD_BOUNDS

    def load(self, split: str) -> list[dict]:
        self._check_split(split)
        return [dict(row) for row in _load(split)]

    def prompt(self, example, style: str = "agrpo"):
        return countdown_prompt(list(example["nums"]), int(example["target"]), style)

    def reference_answer(self, example) -> str:
        return f"{example['nums']} -> {example['target']}"

    def reward(self, completion: str, example, style: str = "agrpo") -> RewardBreakdown:
        check_style(style, REWARD_STYLES, "reward")
        target, nums = int(example["target"]), list(example["nums"])
        if style == "d1":
            return RewardBreakdown({"countdown": 0.0 if too_long(completion) else d1_reward(completion, target, nums)})
        if too_long(completion):
            return RewardBreakdown({"format": 0.0, "correctness": 0.0})
        answer = tag_content(completion, "answer")
        return RewardBreakdown({
            "format": agrpo_format_reward(answer, target, nums),
            "correctness": 3.0 * (answer is not None and equation_is_correct(answer, target, nums)),
        })

    def score(self, completion: str, example, strict: bool = False) -> Score:
        if too_long(completion):
            return Score("", 0.0)
        if strict:
            equation = tag_content(completion, "answer") or ""
        else:
            equation = last_equation_line(parse_ans(completion))
        return Score(equation, float(equation_is_correct(equation, int(example["target"]), list(example["nums"]))))
