"""Two-digit addition with carries: "add 47 85" → "132", the sum written with `ANSWER_DIGITS` = 3 digits
(leading zero kept: "add 12 35" → "047"), so every answer has the same length and position-wise partial credit
lines up (format, train/validation/test split and reward in digit_strings.py; the split is by the 4-digit
string "4785" of both operands).

Unlike `increment`, where each output digit depends on one input digit, an answer digit here depends on the
carry out of the digits to its right: the tens digit of 47 + 85 needs 7 + 5 ≥ 10. The warm-start demonstrations
make the matching error: only `CARRIED_DEMO_PERCENT` % of them (strings chosen by a hash) are the true sum; the
others add column by column and drop every carry (47 + 85 → "022"), which is right only for the strings with
no carry at all (about 30 %). Reinforcement learning has to teach the carry on held-out strings. With the demo
model and demo.gin's SFT budget (400 or 2000 steps) the warm start does not yet learn the column sums
(BENCHMARKS.md, "Method comparison").
"""
from __future__ import annotations

from dllm_rl.tasks.base import Example, Messages, check_style, register
from dllm_rl.tasks.digit_strings import DigitStringTask, chosen

OPERAND_DIGITS = 2
ANSWER_DIGITS = OPERAND_DIGITS + 1
CARRIED_DEMO_PERCENT = 30


def operands(digits: str) -> tuple[str, str]:
    """The two operands a task string stands for: "4785" → ("47", "85")."""
    return digits[:OPERAND_DIGITS], digits[OPERAND_DIGITS:]


def add(digits: str) -> str:
    """The sum of the two operands, zero-padded to ANSWER_DIGITS digits."""
    a, b = operands(digits)
    return f"{int(a) + int(b):0{ANSWER_DIGITS}d}"


def add_without_carry(digits: str) -> str:
    """Column-wise sums mod 10 with every carry dropped (the demonstrations' error), zero-padded likewise."""
    a, b = operands(digits)
    return "0" * (ANSWER_DIGITS - OPERAND_DIGITS) + "".join(str((int(x) + int(y)) % 10) for x, y in zip(a, b))


@register
class Add(DigitStringTask):
    name = "add"
    verb = "add"
    num_digits = 2 * OPERAND_DIGITS

    def transform(self, digits: str) -> str:
        return add(digits)

    def demonstration(self, digits: str) -> str:
        """The true sum for about CARRIED_DEMO_PERCENT % of the strings, else the sum without carries."""
        return add(digits) if chosen(digits, CARRIED_DEMO_PERCENT) else add_without_carry(digits)

    def prompt(self, example: Example, style: str = "agrpo") -> Messages:
        check_style(style, ("agrpo", "d1"), "prompt")
        return [{"role": "user", "content": f"{self.verb} {' '.join(operands(example['digits']))}"}]
