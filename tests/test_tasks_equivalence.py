"""math_equal's time budget: an overdue check, and a check while no helper is ready, return in time."""
import time

from dllm_rl.tasks import equivalence
from dllm_rl.tasks.equivalence import CALL_BUDGET_S, math_equal, warm_up
from dllm_rl.tasks.math_screen import screen

SLACK_S = 0.1  # bookkeeping around the budget (spawning a standby, killing a helper)
# Passes every screen but makes math-verify multiply ~2,000 symbols: seconds of work, so it is killed.
SLOW = "a b " * 1_000


def timed(gold: str, pred: str) -> tuple[bool, float]:
    start = time.perf_counter()
    result = math_equal(gold, pred)
    return result, time.perf_counter() - start


def wait_for_helpers(timeout_s: float = 60.0) -> None:
    """Block until both helpers have imported math-verify (test-only: reaches into the helper pair)."""
    for helper in (equivalence._HELPER._active, equivalence._HELPER._standby):
        assert helper is not None and helper.wait_ready(timeout_s)


def test_overdue_checks_are_cut_at_the_budget_and_grading_recovers():
    assert screen(SLOW) is None
    warm_up()
    wait_for_helpers()
    result, elapsed = timed("1/2", "0.5")
    assert result is True and elapsed < CALL_BUDGET_S

    result, elapsed = timed("1", SLOW)
    assert result is False and elapsed < CALL_BUDGET_S + SLACK_S
    # the standby was warm, so it takes over at once
    result, elapsed = timed("\\frac{1}{3}", "1/3")
    assert result is True and elapsed < CALL_BUDGET_S + SLACK_S

    # a second kill right away: the new standby is still importing sympy, so the next fresh check
    # answers "not equal" within the budget instead of waiting for it
    result, elapsed = timed("2", SLOW + " ")
    assert result is False and elapsed < CALL_BUDGET_S + SLACK_S
    result, elapsed = timed("\\sqrt{4}", "2")
    assert elapsed < CALL_BUDGET_S + SLACK_S

    wait_for_helpers()
    assert timed("\\sqrt{4}", "2")[0] is True  # not remembered as wrong: graded once a helper is ready
    assert timed("3", "4")[0] is False


def test_overdue_answers_are_remembered_as_wrong():
    warm_up()
    wait_for_helpers()
    result, elapsed = timed("5", SLOW + "c")
    assert result is False and elapsed < CALL_BUDGET_S + SLACK_S
    result, elapsed = timed("5", SLOW + "c")
    assert result is False and elapsed < 0.01  # cached: no second kill
