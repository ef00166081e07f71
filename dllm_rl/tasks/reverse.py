"""Digit reversal: reverse a string of `DIGITS` digits (a procedural task; format, split and reward in
digit_strings.py).

The warm-start demonstrations are deliberately noisy: for half of the strings (chosen by a hash) they copy the
digits instead of reversing them. A warm-started model therefore mixes both behaviours, and reinforcement
learning has to pick the rewarded one. The 4-layer demo model learns reversal too slowly for a CPU demo (see
BENCHMARKS.md); the demo uses increment.py.
"""
from __future__ import annotations

from dllm_rl.tasks.base import register
from dllm_rl.tasks.digit_strings import DigitStringTask, hash_byte

DIGITS = 4


@register
class Reverse(DigitStringTask):
    name = "reverse"
    verb = "reverse"
    num_digits = DIGITS

    def transform(self, digits: str) -> str:
        return digits[::-1]

    def demonstration(self, digits: str) -> str:
        """Reversed, or for half of the strings (odd hash byte 1) copied unchanged."""
        return digits if hash_byte(digits, 1) % 2 else digits[::-1]
