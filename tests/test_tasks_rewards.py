"""Rewards and eval scores of every task against hand-written completions (right, wrong, malformed, partial)."""
import pytest

from dllm_rl.tasks import MAX_COMPLETION_CHARS, get_task

GSM = {"question": "q", "solution": "... #### 1200", "answer": "1200"}
MATH = {"problem": "p", "solution": r"so $\boxed{\frac{1}{2}}$", "answer": r"\frac{1}{2}"}
CD = {"nums": [17, 18, 5], "target": 67}
SUDOKU = {"puzzle": "3014002020004130", "answer": "3214142323414132"}


def components(task, completion, example, style="agrpo"):
    return dict(get_task(task).reward(completion, example, style=style).components)


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


def test_reward_total_is_sum_of_components():
    r = get_task("gsm8k").reward("<think>x</think><answer>\\boxed{1200}</answer>", GSM)
    assert r.total == 4.0


def test_gsm8k_eval_reproduces_first_integer_quirk():
    task = get_task("gsm8k")
    quirky = "<answer>\\boxed{1,200}</answer>"
    assert task.score(quirky, GSM).extracted == "1" and task.score(quirky, GSM).correct == 0.0
    assert task.score("<answer>1200 dollars</answer>", GSM).correct == 1.0
    assert task.score("<answer>-1200</answer>", {**GSM, "answer": "-1200"}).correct == 0.0  # sign dropped
    assert task.score("<answer>-1200</answer>", {**GSM, "answer": "-1200"}, strict=True).correct == 1.0


def test_gsm8k_d1_reward():
    perfect = "<reasoning>\nshort\n</reasoning>\n<answer>\n1200\n</answer>\n"
    c = components("gsm8k", perfect, GSM, style="d1")
    # d1's soft-format regex lacks DOTALL, so the newline after <reasoning> already defeats it
    assert c == pytest.approx({"xml_count": 0.5, "soft_format": 0.0, "strict_format": 0.5, "int_answer": 0.5,
                               "correctness": 2.0})
    assert components("gsm8k", "<reasoning>a</reasoning> <answer>1200</answer>", GSM, "d1")["soft_format"] == 0.5
    multiline = "<reasoning>\nline1\nline2\n</reasoning>\n<answer>\n1200\n</answer>\n"
    c = components("gsm8k", multiline, GSM, style="d1")
    assert c["soft_format"] == 0.0 and c["strict_format"] == 0.0  # d1's regexes lack DOTALL
    c = components("gsm8k", "<answer>\n1,200\n</answer>trailing", GSM, style="d1")
    assert c["correctness"] == 0.0 and c["int_answer"] == 0.0 and c["xml_count"] < 0.25


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


@pytest.mark.parametrize("completion,format_reward,correct", [
    ("<think>x</think><answer>\n17 * 5 - 18 = 67\n</answer>", 1.0, 3.0),
    ("<answer>(17*5)-18=67</answer>", 1.0, 3.0),
    ("<answer>17 * 5 - 18 = 68</answer>", 2 / 3, 3.0),      # AGRPO grades the LHS only: a wrong RHS still scores
    ("<answer>17 * 5 + 18 = 67</answer>", 1.0, 0.0),        # evaluates to 103
    ("<answer>17 * 5 - 18 = 67 = 67</answer>", 0.5, 3.0),   # two "=": −0.5
    ("<answer>17 × 5 − 18 = 67</answer>", 2 / 3, 3.0),      # Unicode operators: not AGRPO's LHS charset
    ("<answer>17 * 5 - 18</answer>", 0.0, 0.0),             # no "="
    ("<answer>17 * 5 - 18 - 0 = 67</answer>", 2 / 3, 0.0),  # extra number
    ("<answer>17 * 5 - 18 / 0 = 67</answer>", 2 / 3, 0.0),  # division by zero
    ("17 * 5 - 18 = 67", 0.0, 0.0),                         # no answer tag
    ("<answer>x = 67</answer>", 1 / 3, 0.0),
])
def test_countdown_agrpo_reward(completion, format_reward, correct):
    c = components("countdown", completion, CD)
    assert c["format"] == pytest.approx(format_reward) and c["correctness"] == correct


def test_countdown_eval_reads_last_equation_line():
    task = get_task("countdown")
    text = "<think>try 17+18 = 35</think>\n17 * 5 - 18 = 67"
    assert task.score(text, CD).correct == 1.0 and task.score(text, CD).extracted == "17 * 5 - 18 = 67"
    assert task.score("so 17 * 5 - 18 = 67", CD).correct == 0.0  # prose in the LHS: not an expression
    assert task.score(text, CD, strict=True).correct == 0.0


def test_countdown_d1_reward():
    assert components("countdown", "<answer>17*5-18</answer>", CD, "d1") == {"countdown": 1.0}
    assert components("countdown", "<answer>17*5+18</answer>", CD, "d1") == {"countdown": 0.1}
    assert components("countdown", "<answer>17*5</answer>", CD, "d1") == {"countdown": 0.1}
    assert components("countdown", "17*5-18", CD, "d1") == {"countdown": 0.0}


@pytest.mark.parametrize("completion,format_reward,correct", [
    ("<think>x</think><answer>\n3214142323414132\n</answer>", 1.0, 3.0),
    ("<answer>3214142323414123</answer>", 0.5, 3.0 * 7 / 8),     # last clue and blank swapped
    ("<answer>1111222233334444</answer>", 0.5, 3.0 * 1 / 8),     # clues broken, one blank right
    ("<answer>3214 1423 2341 4132</answer>", 0.0, 3.0 * 1 / 8),  # 19 characters: no format, shifted cells
    ("<answer>32141423</answer>", 0.0, 0.0),                     # zfill pads on the left
    ("no answer at all", 0.0, 0.0),
])
def test_sudoku_agrpo_reward(completion, format_reward, correct):
    c = components("sudoku", completion, SUDOKU)
    assert c["format"] == pytest.approx(format_reward) and c["correctness"] == pytest.approx(correct)


def test_sudoku_scores():
    task = get_task("sudoku")
    half = "<answer>3214142323404130</answer>"  # blanks 11 and 15 left empty
    assert task.score(half, SUDOKU).correct == pytest.approx(6 / 8)
    assert task.score(half, SUDOKU, strict=True).correct == 0.0
    assert task.score("<answer>3214142323414132</answer>", SUDOKU, strict=True).correct == 1.0
    assert components("sudoku", "<answer>3 2 1 4 1 4 2 3 2 3 4 1 4 1</answer>", SUDOKU, "d1") == {
        "sudoku": pytest.approx(7 / 8)}  # d1: digits only, right-padded with 0: blank 15 wrong


@pytest.mark.parametrize("task,example", [("gsm8k", GSM), ("math", MATH), ("countdown", CD), ("sudoku", SUDOKU)])
@pytest.mark.parametrize("style", ["agrpo", "d1"])
def test_overlong_completion_gets_zero(task, example, style):
    right = {"gsm8k": "<answer>1200</answer>", "math": "<answer>\\boxed{1/2}</answer>",
             "countdown": "<answer>17*5-18 = 67</answer>", "sudoku": "<answer>3214142323414132</answer>"}[task]
    assert get_task(task).reward(right, example, style=style).total > 0
    assert get_task(task).reward(right + " " * MAX_COMPLETION_CHARS, example, style=style).total == 0


def test_unknown_names_fail_clearly():
    with pytest.raises(KeyError, match="registered tasks"):
        get_task("gsm9k")
    with pytest.raises(ValueError, match="choose one of"):
        get_task("gsm8k").load("validation")
    with pytest.raises(ValueError, match="reward style"):
        get_task("gsm8k").reward("", GSM, style="grpo")
    with pytest.raises(ValueError, match="prompt style"):
        get_task("gsm8k").prompt(GSM, style="grpo")
