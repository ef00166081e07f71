"""GSM8K and MATH rewards (AGRPO and d1 styles) on hand-written completions, their bounds, and the
timeout flag they carry for the trainer."""
import pytest

from dllm_rl.tasks import MAX_COMPLETION_CHARS, get_task, math_rewards
from dllm_rl.tasks.equivalence import Verdict
from tests.helpers.task_completions import assert_bounds_attained, reward_components as components

GSM = {"question": "q", "solution": "... #### 1200", "answer": "1200"}
MATH = {"problem": "p", "solution": r"so $\boxed{\frac{1}{2}}$", "answer": r"\frac{1}{2}"}
D1_PERFECT = "<reasoning>\nshort\n</reasoning>\n<answer>\n1200\n</answer>\n"


@pytest.mark.parametrize("completion,expected", [
    ("<think>\n600*2\n</think>\n<answer>\n\\boxed{1200}\n</answer>", (0.5, 0.5, 3.0)),
    ("<THINK>x</THINK><answer>1200.0</answer>", (0.5, 0.5, 3.0)),       # tags are case-insensitive
    ("<think>x</think><answer>\\boxed{1100}</answer>", (0.5, 0.5, 0.0)),  # wrong
    ("<answer>\\boxed{1200}</answer>", (0.0, 0.5, 3.0)),                  # no think tag
    ("<think>x<answer>\\boxed{1200}", (0.0, 0.0, 3.0)),                   # unclosed tags: boxed still graded
    ("the answer is 1200", (0.0, 0.0, 3.0)),                              # no tags: whole text is graded
    ("", (0.0, 0.0, 0.0)),
])
def test_gsm8k_agrpo_reward(completion, expected):
    c = components("gsm8k", completion, GSM)
    assert (c["think_format"], c["answer_format"], c["correctness"]) == expected


def test_gsm8k_d1_reward():
    c = components("gsm8k", D1_PERFECT, GSM, style="d1")
    # d1's soft-format regex lacks DOTALL, so the newline after <reasoning> already defeats it
    assert c == pytest.approx({"xml_count": 0.5, "soft_format": 0.0, "strict_format": 0.5, "int_answer": 0.5,
                               "correctness": 2.0})
    assert components("gsm8k", "<reasoning>a</reasoning> <answer>1200</answer>", GSM, "d1")["soft_format"] == 0.5
    multiline = "<reasoning>\nline1\nline2\n</reasoning>\n<answer>\n1200\n</answer>\n"
    c = components("gsm8k", multiline, GSM, style="d1")
    assert c["soft_format"] == 0.0 and c["strict_format"] == 0.0  # d1's regexes lack DOTALL
    c = components("gsm8k", "<answer>\n1,200\n</answer>trailing", GSM, style="d1")
    assert c["correctness"] == 0.0 and c["int_answer"] == 0.0 and c["xml_count"] < 0.25


def test_d1_trailing_text_costs_a_thousandth_per_character_twice():
    """A right d1 answer followed by 10k characters scores −17.0: far outside AGRPO's [0, 4]."""
    reward = get_task("gsm8k").reward(D1_PERFECT + "x" * 10_000, GSM, style="d1")
    assert reward.components["xml_count"] == pytest.approx(0.5 - 2 * 10.0)
    assert reward.total == pytest.approx(-17.0)
    low, high = get_task("gsm8k").reward_bounds("d1")
    assert low < -17.0 < high


@pytest.mark.parametrize("completion,correct", [
    ("<think>x</think><answer>\\boxed{\\frac{1}{2}}</answer>", 3.0),
    ("<think>x</think><answer>\\boxed{0.5}</answer>", 3.0),
    ("<think>x</think><answer>\\boxed{\\dfrac12}</answer>", 3.0),
    ("<think>x</think><answer>\\boxed{\\frac{1}{3}}</answer>", 0.0),
    ("<think>x</think><answer>\\boxed{\\frac{1}{2}</answer>", 0.0),  # unbalanced box
    ("<answer>\\boxed{9^{9^{9}}}</answer>", 0.0),                     # screened: huge number
])
def test_math_agrpo_reward(completion, correct):
    assert components("math", completion, MATH)["correctness"] == correct


def test_math_d1_reward_keeps_boxed_literal_bug():
    c = components("math", "<answer>\\boxed{\\frac12}</answer>", MATH, style="d1")
    assert c == {"answer_format": 0.75, "correctness": 2.0}  # 0.5 * (1 + 0.5): "\boxed" is never found
    c = components("math", "no box, no tags 1/2", MATH, style="d1")
    assert c == {"answer_format": 0.25, "correctness": 0.0}


# The least d1 GSM8K reward: both trailing-text penalties over a completion at the length cap.
D1_LOWEST = "\n</answer>x\n<answer>\n" + "y" * (MAX_COMPLETION_CHARS - 21)


@pytest.mark.parametrize("task,example,style,lowest,highest", [
    ("gsm8k", GSM, "agrpo", "", "<think>x</think><answer>\\boxed{1200}</answer>"),
    ("gsm8k", GSM, "d1", D1_LOWEST, D1_PERFECT),
    ("math", MATH, "agrpo", "", "<think>x</think><answer>\\boxed{\\frac{1}{2}}</answer>"),
    ("math", MATH, "d1", " " * (MAX_COMPLETION_CHARS + 1), "<answer>\x08oxed \\boxed{\\frac12}</answer>"),
])
def test_reward_bounds_are_attained(task, example, style, lowest, highest):
    assert_bounds_attained(task, style, example, lowest, highest)


def test_a_timed_out_check_is_flagged_and_graded_wrong(monkeypatch):
    monkeypatch.setattr(math_rewards, "math_verdict", lambda gold, pred: Verdict.TIMED_OUT)
    reward = get_task("math").reward("<think>x</think><answer>\\boxed{\\frac{1}{2}}</answer>", MATH)
    assert reward.timed_out and reward.components["correctness"] == 0.0 and reward.total == 1.0
    score = math_rewards.verified_score("1200", "1200")
    assert score.timed_out and score.correct == 0.0
    assert not get_task("math").reward("x", MATH, style="d1").timed_out  # d1 styles never call math-verify
