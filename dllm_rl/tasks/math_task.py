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
from dllm_rl.tasks.base import REWARD_STYLES, RewardBreakdown, Score, Task, check_style, register, too_long
from dllm_rl.tasks.extract import parse_ans
from dllm_rl.tasks.files import read_jsonl
from dllm_rl.tasks.prompts import math_prompt

_FILES = {"train": "math/train_agrpo.jsonl.gz", "test": "math500/test.jsonl.gz"}
_FIELDS = ("problem", "solution", "answer", "subject", "level", "unique_id")


@register
class MATH(Task):
    name = "math"
    splits = tuple(_FILES)
    reward_bounds_by_style = {"agrpo": math_rewards.AGRPO_BOUNDS, "d1": math_rewards.D1_MATH_BOUNDS}

    def load(self, split: str) -> list[dict]:
        self._check_split(split)
        return [{k: row[k] for k in _FIELDS} for row in read_jsonl(_FILES[split])]

    def prompt(self, example, style: str = "agrpo"):
        return math_prompt(example["problem"], style, is_math=True)

    def reward(self, completion: str, example, style: str = "agrpo") -> RewardBreakdown:
        check_style(style, REWARD_STYLES, "reward")
        if style == "agrpo":
            return math_rewards.agrpo_reward(completion, example["answer"])
        return math_rewards.d1_math_reward(completion, example["solution"])

    def score(self, completion: str, example, strict: bool = False) -> Score:
        if too_long(completion):
            return Score("", 0.0)
        answer = parse_ans(completion)
        return math_rewards.verified_score(answer, example["answer"])
