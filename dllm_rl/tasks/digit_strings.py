"""Digit-string tasks: small procedural tasks for the embedded CPU demo (no downloads, seconds per step).

A `DigitStringTask` prompts "<verb> <digits>" for every string of `num_digits` decimal digits; the answer is
`transform(digits)`. The train, validation and test strings are disjoint (split by a hash of the string,
deterministic: about 70 / 10 / 20 %), so held-out reward measures a rule applied to strings never trained on
(string-level disjointness: every position-digit pair still occurs in training). Tune on validation; report test. Reward: 0.25 if the completion starts with
exactly `num_digits` digits, plus 3.0 × the fraction of positions right (partial credit, as Sudoku's reward),
so the maximum is 3.25. Score: exact match of the completion's leading digits.

`demonstration` is the answer supervised warm starts imitate (`reference_answer`); the shipped tasks make it
deliberately imperfect, so that reinforcement learning has something to fix (reverse.py, increment.py).
"""
from __future__ import annotations

import hashlib
import itertools
import re

from dllm_rl.tasks.base import Example, Messages, RewardBreakdown, Score, Task, check_style, too_long

_TEST_FRACTION_PERCENT = 20
_VALIDATION_FRACTION_PERCENT = 10
_LEADING_DIGITS = re.compile(r"\s*(\d+)")


def hash_byte(digits: str, index: int) -> int:
    """Byte `index` of the string's SHA-256: a deterministic pseudo-random choice per string."""
    return hashlib.sha256(digits.encode()).digest()[index]


def chosen(digits: str, percent: int) -> bool:
    """True for about `percent` % of the strings (by hash byte 1; byte 0 decides the split)."""
    return hash_byte(digits, 1) * 100 < 256 * percent


def split_of(digits: str) -> str:
    """'test' for about 20 % of the strings, 'validation' for about 10 %, else 'train' (by hash byte 0)."""
    percent_scaled = hash_byte(digits, 0) * 100
    if percent_scaled < 256 * _TEST_FRACTION_PERCENT:
        return "test"
    if percent_scaled < 256 * (_TEST_FRACTION_PERCENT + _VALIDATION_FRACTION_PERCENT):
        return "validation"
    return "train"


def _answer_digits(completion: str) -> str:
    match = _LEADING_DIGITS.match(completion)
    return match.group(1) if match else ""


class DigitStringTask(Task):
    """Subclasses set `name`, `verb`, `num_digits` and implement `transform` and `demonstration`."""

    splits = ("train", "validation", "test")
    reward_bounds_by_style = {"agrpo": (0.0, 3.25), "d1": (0.0, 3.25)}  # both styles: 0.25 format + 3.0 × accuracy
    verb: str = ""
    num_digits: int = 4

    def transform(self, digits: str) -> str:
        """The correct answer for `digits`."""
        raise NotImplementedError

    def demonstration(self, digits: str) -> str:
        """The warm-start answer for `digits` (may be wrong on purpose)."""
        raise NotImplementedError

    def load(self, split: str) -> list[dict]:
        self._check_split(split)
        strings = ("".join(t) for t in itertools.product("0123456789", repeat=self.num_digits))
        return [{"digits": s, "answer": self.transform(s), "demonstration": self.demonstration(s)}
                for s in strings if split_of(s) == split]

    def prompt(self, example: Example, style: str = "agrpo") -> Messages:
        check_style(style, ("agrpo", "d1"), "prompt")
        return [{"role": "user", "content": f"{self.verb} {example['digits']}"}]

    def reward(self, completion: str, example: Example, style: str = "agrpo") -> RewardBreakdown:
        check_style(style, ("agrpo", "d1"), "reward")
        if too_long(completion):
            return RewardBreakdown({"format": 0.0, "correct": 0.0})
        got, want = _answer_digits(completion), str(example["answer"])
        right = sum(a == b for a, b in zip(got, want))
        return RewardBreakdown({"format": 0.25 if len(got) == len(want) else 0.0,
                                "correct": 3.0 * right / len(want)})

    def reference_answer(self, example: Example) -> str:
        """The warm-start demonstration (see `demonstration`); rewards and scores use `answer`."""
        return str(example["demonstration"])

    def score(self, completion: str, example: Example, strict: bool = False) -> Score:
        got = _answer_digits(completion[:1000])
        return Score(extracted=got, correct=float(got == example["answer"]))
