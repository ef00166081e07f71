"""Linear-time extractors agree with the reference regular expressions; the arithmetic evaluator is exact."""
import re
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from dllm_rl.tasks import arith
from dllm_rl.tasks.math_screen import screen
from dllm_rl.tasks.extract import d1_last_answer_block, last_equation_line, tag_content

PIECES = st.sampled_from(["<think>", "</think>", "<THINK>", "<answer>", "</answer>", "<Answer>", " ", "\n",
                          "=", "a", "1", "\t", "</", ">", "\u2003"])
TEXT = st.lists(PIECES, max_size=30).map("".join)


@settings(max_examples=500, deadline=None)
@given(TEXT)
def test_tag_content_matches_agrpo_regex(text):
    for tag in ("think", "answer"):
        m = re.search(rf"<{tag}>\s*(.*?)\s*</{tag}>", text, re.DOTALL | re.IGNORECASE)
        assert tag_content(text, tag) == (m.group(1) if m else None)


@settings(max_examples=500, deadline=None)
@given(TEXT)
def test_last_equation_line_matches_agrpo_regex(text):
    matches = re.findall(r"([^=\n]+=.*)$", text, re.MULTILINE)
    assert last_equation_line(text) == (matches[-1] if matches else "")


@settings(max_examples=500, deadline=None)
@given(TEXT)
def test_d1_last_answer_block_matches_d1_regex(text):
    matches = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    assert d1_last_answer_block(text) == (matches[-1] if matches else None)


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


@pytest.mark.parametrize("answer,reason", [
    ("9^{9^{9}}", "huge_number"), ("9**9**9", "huge_number"), ("10^{10000000}", "huge_number"),
    ("(10^{100})!", "huge_number"), ("100000!", "huge_number"), ("{" * 50, "too_deep"), ("1" * 5000, "too_long"),
    ("\\binom{10^{9}}{50000}", "huge_number"), ("\\dbinom{7}{123456}", "huge_number"), ("a" * 49, "letter_run"),
    ("2^{10}", None), ("3^{2010}", None), ("\\frac{9!}{3!}", None), ("(2n)!", None), ("x^2+1", None),
    ("\\binom{10}{3}", None), ("\\text{Wednesday}", None), ("\\displaystyle\\frac{\\sqrt{3}}{2}", None),
])
def test_math_verify_screen(answer, reason):
    assert screen(answer) == reason
