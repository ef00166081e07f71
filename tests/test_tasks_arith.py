"""The Countdown arithmetic evaluator: exact values, and refusals of anything it does not accept."""
from fractions import Fraction

import pytest

from dllm_rl.tasks import arith


@pytest.mark.parametrize("text,value", [
    ("17 * 5 - 18", 67), ("(1+2)*3", 9), ("7/2", Fraction(7, 2)), ("-3 + 5", 2), ("2*-3", -6),
    ("8 ÷ 2 × 3 − 1", 11), ("1 - 2 - 3", -4), ("24 / 4 / 3", 2), ("((((5))))", 5),
])
def test_arith_evaluates_exactly(text, value):
    assert arith.evaluate(text) == value


@pytest.mark.parametrize("text", [
    "", "1 +", "(1", "1)", "2(3)", "3 ** 2", "1 / 0", "1/(2-2)", "x + 1", "١٢ + 1", "1.5", "9" * 19,
    "(" * 40 + "1" + ")" * 40, "-" * 40 + "1", "1+" * 600 + "1", "__import__('os')",
])
def test_arith_rejects(text):
    with pytest.raises(ArithmeticError):
        arith.evaluate(text)
