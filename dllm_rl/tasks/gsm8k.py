"""GSM8K: grade-school word problems; the answer is the integer after `####` in the worked solution.

Splits: `train` (7,473) and `test` (the original 1,319). AGRPO's released eval uses GSM8K-Platinum
(1,209 cleaned test problems), which is not shipped; numbers on `test` compare with d1's.

Evaluation quirk reproduced (AGRPO `eval.py`): the prediction is the FIRST run of digits in the extracted
answer, so "1,200" grades as "1", "-3" as "3" and "2.5" as "2". `score(..., strict=True)` grades the
whole extracted answer with math-verify instead (the training reward's criterion).
"""
from __future__ import annotations

from dllm_rl.tasks import math_rewards
from dllm_rl.tasks.base import Example, RewardBreakdown, register
from dllm_rl.tasks.extract import first_integer
from dllm_rl.tasks.files import read_jsonl
from dllm_rl.tasks.math_answer_task import MathAnswerTask

_FILES = {"train": "gsm8k/train.jsonl.gz", "test": "gsm8k/test.jsonl.gz"}


def final_answer(solution: str) -> str:
    """The text after `####`, stripped (AGRPO and d1 `extract_hash_answer`)."""
    return solution.split("####")[1].strip()


@register
class GSM8K(MathAnswerTask):
    name = "gsm8k"
    splits = tuple(_FILES)
    reward_bounds_by_style = {"agrpo": math_rewards.AGRPO_BOUNDS, "d1": math_rewards.D1_GSM8K_BOUNDS}
    question_field = "question"

    def load(self, split: str) -> list[dict]:
        self._check_split(split)
        return [{"question": row["question"], "solution": row["answer"], "answer": final_answer(row["answer"])}
                for row in read_jsonl(_FILES[split])]

    def d1_reward(self, completion: str, example: Example) -> RewardBreakdown:
        return math_rewards.d1_gsm8k_reward(completion, example["answer"])

    def eval_answer(self, answer: str, strict: bool) -> str:
        return answer if strict else first_integer(answer) or answer
