"""MATH: competition problems graded on the final `\\boxed{}` answer.

Splits: `test` = MATH-500 (500); `train` = the 12,000 MATH problems outside MATH-500, filtered as AGRPO
does (Level 5 and unknown levels dropped, rows without a balanced `\\boxed{}` dropped): 8,502 problems.
`answer` is AGRPO's gold (the first balanced `\\boxed{}` of the solution; MATH-500's own `answer` field
for the test split); `solution` is kept for d1's reward, which re-extracts the last box.

Evaluation (AGRPO `eval.py`): math-verify on `parse_ans` (answer tag → first `\\boxed{}`); there is no
quirk, so `strict` changes nothing here.
"""
from __future__ import annotations

from dllm_rl.tasks import math_rewards
from dllm_rl.tasks.base import Example, RewardBreakdown, register
from dllm_rl.tasks.files import read_jsonl
from dllm_rl.tasks.math_answer_task import MathAnswerTask

_FILES = {"train": "math/train_agrpo.jsonl.gz", "test": "math500/test.jsonl.gz"}
_FIELDS = ("problem", "solution", "answer", "subject", "level", "unique_id")


@register
class MATH(MathAnswerTask):
    name = "math"
    splits = tuple(_FILES)
    reward_bounds_by_style = {"agrpo": math_rewards.AGRPO_BOUNDS, "d1": math_rewards.D1_MATH_BOUNDS}
    question_field = "problem"
    is_math = True

    def load(self, split: str) -> list[dict]:
        self._check_split(split)
        return [{k: row[k] for k in _FIELDS} for row in read_jsonl(_FILES[split])]

    def d1_reward(self, completion: str, example: Example) -> RewardBreakdown:
        return math_rewards.d1_math_reward(completion, example["solution"])
