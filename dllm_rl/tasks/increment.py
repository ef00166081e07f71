"""Digit increment: add 1 to every digit of a `DIGITS`-digit string, 9 wrapping to 0 (the embedded CPU demo's
task; format, train/test split and reward in digit_strings.py).

The warm-start demonstrations mix a rewarded and an unrewarded behaviour: only `INCREMENTED_DEMO_PERCENT` % of
them (strings chosen by a hash) are incremented; the others copy the digits unchanged (the "forgot to apply the
rule" error). A warm-started model knows the format and both behaviours but prefers copying, so its greedy
answers are almost never right; reinforcement learning, whose reward pays only for incremented digits, has to
make it prefer the rewarded behaviour on held-out strings.
"""
from __future__ import annotations

from dllm_rl.tasks.base import register
from dllm_rl.tasks.digit_strings import DigitStringTask, chosen

DIGITS = 4
INCREMENTED_DEMO_PERCENT = 30


def increment(digits: str) -> str:
    return "".join(str((int(d) + 1) % 10) for d in digits)


@register
class Increment(DigitStringTask):
    name = "increment"
    verb = "increment"
    num_digits = DIGITS

    def transform(self, digits: str) -> str:
        return increment(digits)

    def demonstration(self, digits: str) -> str:
        """Incremented for about INCREMENTED_DEMO_PERCENT % of the strings, else copied unchanged."""
        return increment(digits) if chosen(digits, INCREMENTED_DEMO_PERCENT) else digits
