"""The screens that keep answers math-verify would choke on away from it, and let ordinary answers through."""
import pytest

from dllm_rl.tasks.math_screen import screen


@pytest.mark.parametrize("answer,reason", [
    ("9^{9^{9}}", "huge_number"), ("9**9**9", "huge_number"), ("10^{10000000}", "huge_number"),
    ("(10^{100})!", "huge_number"), ("100000!", "huge_number"), ("{" * 50, "too_deep"), ("1" * 5000, "too_long"),
    ("\\binom{10^{9}}{50000}", "huge_number"), ("\\dbinom{7}{123456}", "huge_number"), ("a" * 49, "letter_run"),
    ("2^{10}", None), ("3^{2010}", None), ("\\frac{9!}{3!}", None), ("(2n)!", None), ("x^2+1", None),
    ("\\binom{10}{3}", None), ("\\text{Wednesday}", None), ("\\displaystyle\\frac{\\sqrt{3}}{2}", None),
])
def test_math_verify_screen(answer, reason):
    assert screen(answer) == reason
