"""d1's MATH answer handling, quirks included: last-box extraction, box removal, Hendrycks equivalence."""
import pytest

from dllm_rl.tasks import d1_math


@pytest.mark.parametrize("text,span", [
    ("a \\boxed{1} b \\boxed{2}", "\\boxed{2}"),  # the last box
    ("no box", "no box"),                        # no box: the text itself
    ("so \\boxed 5$ done", "\\boxed 5"),         # `\boxed x` runs to the next "$"
    ("\\boxed{1", None),                         # unbalanced
    ("\\fbox{7}", "\\fbox{7}"),
])
def test_last_boxed_only_string(text, span):
    assert d1_math.last_boxed_only_string(text) == span


def test_remove_boxed_keeps_what_is_not_a_box():
    assert d1_math.remove_boxed("\\boxed{x}") == "x" and d1_math.remove_boxed("\\boxed x") == "x"
    assert d1_math.remove_boxed("\\fbox{7}") == "\\fbox{7}"
    with pytest.raises(ValueError):
        d1_math.remove_boxed("a \\boxed x")


@pytest.mark.parametrize("a,b,equal", [
    ("\\frac12", "\\frac{1}{2}", True), ("0.5", "\\frac{1}{2}", True), ("\\dfrac{1}{2}", "1/2", True),
    ("x = 3", "3", True), ("90^\\circ", "90", True), ("5 \\text{ cm}", "5", True), ("1/3", "\\frac{1}{2}", False),
    (None, None, True), (None, "1", False),
    ("\\frac", "\\frac", True), ("\\frac", "\\frac ", False),  # normalising raises: exact equality decides
])
def test_is_equiv(a, b, equal):
    assert d1_math.is_equiv(a, b) is equal


def test_completion_answer_falls_back_to_the_whole_completion():
    assert d1_math.completion_answer("x \\boxed{3} y") == "3"
    assert d1_math.completion_answer("no box at all") == "no box at all"
    assert d1_math.completion_answer("x \\boxed{1") == "x \\boxed{1"  # unbalanced: d1's bare except
