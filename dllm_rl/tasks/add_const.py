"""Adding a fixed number with carries: "add 5555 to 0189" → "5744", the last `DIGITS` digits of the sum (the
carry out of the leftmost digit wraps away, as increment's 9 wraps to 0; format, split and reward in
digit_strings.py).

Every answer digit is a 10-entry map of its own input digit (+5 mod 10, read at a constant offset as in
`increment`) plus the carry out of the digits to its right, which is mostly "the next digit is ≥ 5" (a chain of 4s
passes a carry on). The warm-start demonstrations make the matching error: only `CARRIED_DEMO_PERCENT` % of them
(strings chosen by a hash) are the true sum; the others add digit by digit and drop every carry (0189 → "5634"),
which is right only for the strings with no carry (about 12 %). A warm-started model knows the format, the
per-digit map and the carry rule's answers for some strings; reinforcement learning, whose per-digit reward pays
for carried digits, has to teach the carry on held-out strings. The CPU method comparison's task (BENCHMARKS.md).
"""
from __future__ import annotations

from dllm_rl.tasks.base import register
from dllm_rl.tasks.digit_strings import DigitStringTask, chosen

DIGITS = 4
ADDEND = "5555"
CARRIED_DEMO_PERCENT = 30


def add_const(digits: str) -> str:
    """The last DIGITS digits of digits + ADDEND."""
    return f"{(int(digits) + int(ADDEND)) % 10 ** DIGITS:0{DIGITS}d}"


def add_without_carry(digits: str) -> str:
    """Digit-by-digit sums mod 10 with every carry dropped (the demonstrations' error)."""
    return "".join(str((int(d) + int(a)) % 10) for d, a in zip(digits, ADDEND))


@register
class AddConst(DigitStringTask):
    name = "add_const"
    verb = f"add {ADDEND} to"
    num_digits = DIGITS

    def transform(self, digits: str) -> str:
        return add_const(digits)

    def demonstration(self, digits: str) -> str:
        """The true sum for about CARRIED_DEMO_PERCENT % of the strings, else the sum without carries."""
        return add_const(digits) if chosen(digits, CARRIED_DEMO_PERCENT) else add_without_carry(digits)
