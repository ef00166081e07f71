"""What GSM8K and MATH share: prompts from each task's question field, and an eval score that
math-verifies the extracted answer (after GSM8K's quirk; MATH has none), timeouts flagged."""
from dllm_rl.tasks import MAX_COMPLETION_CHARS, Score, get_task, math_rewards
from dllm_rl.tasks.equivalence import Verdict

GSM = {"question": "how many?", "solution": "... #### 1200", "answer": "1200"}
MATH = {"problem": "what is it?", "solution": r"so $\boxed{\frac{1}{2}}$", "answer": r"\frac{1}{2}"}


def test_prompts_read_each_tasks_question_field():
    assert get_task("gsm8k").prompt(GSM)[-1]["content"] == "how many?"
    assert get_task("math").prompt(MATH, style="d1")[-1]["content"].endswith("what is it?")


def test_math_scores_the_whole_answer_in_both_modes():
    task, completion = get_task("math"), "<answer>\\boxed{0.5}</answer>"
    assert task.score(completion, MATH) == task.score(completion, MATH, strict=True) == \
        Score("0.5", 1.0)
    assert task.score(completion + " " * MAX_COMPLETION_CHARS, MATH) == Score("", 0.0)


def test_a_timed_out_score_is_flagged(monkeypatch):
    monkeypatch.setattr(math_rewards, "math_verdict", lambda gold, pred: Verdict.TIMED_OUT)
    score = get_task("gsm8k").score("<answer>1200</answer>", GSM)
    assert score.timed_out and score.correct == 0.0 and score.extracted == "1200"
