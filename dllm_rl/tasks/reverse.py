"""Digit reversal: a small procedural task for the embedded CPU demo (no downloads, seconds per step).

The prompt asks to reverse a string of `DIGITS` digits; the answer is that string reversed. Train and test
strings are disjoint (split by a hash of the string, deterministic), so held-out reward measures a learned
algorithm rather than memorised pairs. Reward: 0.25 if the completion starts with exactly `DIGITS` digits,
plus 3.0 × the fraction of positions right (partial credit, as Sudoku's reward), so the maximum is 3.25.

The demonstrations used for supervised warm starts (`reference_answer`) are deliberately noisy: for half of
the strings (chosen by a hash) they copy the digits instead of reversing them. A warm-started model therefore
mixes both behaviours, and reinforcement learning with the reward above has to pick the rewarded one, which is
the situation RL fine-tuning of a pretrained model is for.
"""
from __future__ import annotations

import hashlib
import itertools
import re

from dllm_rl.tasks.base import Example, Messages, RewardBreakdown, Score, Task, check_style, register, too_long

DIGITS = 4
_TEST_FRACTION_PERCENT = 20
_LEADING_DIGITS = re.compile(r"\s*(\d+)")


def _hash_byte(digits: str, index: int) -> int:
    return hashlib.sha256(digits.encode()).digest()[index]


def _is_test(digits: str) -> bool:
    return _hash_byte(digits, 0) * 100 < 256 * _TEST_FRACTION_PERCENT


def _demonstration(digits: str) -> str:
    """The (noisy) supervised answer: reversed, or for half of the strings copied unchanged."""
    return digits if _hash_byte(digits, 1) % 2 else digits[::-1]


def _answer_digits(completion: str) -> str:
    match = _LEADING_DIGITS.match(completion)
    return match.group(1) if match else ""


@register
class Reverse(Task):
    name = "reverse"
    splits = ("train", "test")
    reward_bounds_by_style = {"agrpo": (0.0, 3.25), "d1": (0.0, 3.25)}  # both styles: 0.25 format + 3.0 × accuracy

    def load(self, split: str) -> list[dict]:
        self._check_split(split)
        strings = ("".join(t) for t in itertools.product("0123456789", repeat=DIGITS))
        return [{"digits": s, "answer": s[::-1], "demonstration": _demonstration(s)}
                for s in strings if _is_test(s) == (split == "test")]

    def prompt(self, example: Example, style: str = "agrpo") -> Messages:
        check_style(style, ("agrpo", "d1"), "prompt")
        return [{"role": "user", "content": f"reverse {example['digits']}"}]

    def reward(self, completion: str, example: Example, style: str = "agrpo") -> RewardBreakdown:
        check_style(style, ("agrpo", "d1"), "reward")
        if too_long(completion):
            return RewardBreakdown({"format": 0.0, "correct": 0.0})
        got, want = _answer_digits(completion), str(example["answer"])
        right = sum(a == b for a, b in zip(got, want))
        return RewardBreakdown({"format": 0.25 if len(got) == len(want) else 0.0,
                                "correct": 3.0 * right / len(want)})

    def reference_answer(self, example: Example) -> str:
        """The warm-start demonstration (noisy on purpose, see the module docstring); rewards use `answer`."""
        return str(example["demonstration"])

    def score(self, completion: str, example: Example, strict: bool = False) -> Score:
        got = _answer_digits(completion[:1000])
        return Score(extracted=got, correct=float(got == example["answer"]))
