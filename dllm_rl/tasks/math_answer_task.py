"""`MathAnswerTask`: what GSM8K and MATH share as tasks. AGRPO reward: format + math-verify on `parse_ans`;
d1 reward: each task's own; eval score: math-verify on the extracted answer (after a task's quirk)."""
from __future__ import annotations

from dllm_rl.tasks import math_rewards
from dllm_rl.tasks.base import Example, Messages, REWARD_STYLES, RewardBreakdown, Score, Task, check_style, too_long
from dllm_rl.tasks.extract import parse_ans
from dllm_rl.tasks.prompts import math_prompt


class MathAnswerTask(Task):
    """Subclasses set `question_field` and `is_math`, implement `d1_reward` and may override `eval_answer`."""

    question_field: str = ""
    is_math: bool = False  # the d1 prompt adds its MATH instruction

    def prompt(self, example: Example, style: str = "agrpo") -> Messages:
        return math_prompt(example[self.question_field], style, is_math=self.is_math)

    def reward(self, completion: str, example: Example, style: str = "agrpo") -> RewardBreakdown:
        check_style(style, REWARD_STYLES, "reward")
        if style == "agrpo":
            return math_rewards.agrpo_reward(completion, example["answer"])
        return self.d1_reward(completion, example)

    def d1_reward(self, completion: str, example: Example) -> RewardBreakdown:
        raise NotImplementedError

    def eval_answer(self, answer: str, strict: bool) -> str:
        """What the eval grades of `parse_ans`'s output: all of it, unless the task reproduces a quirk."""
        return answer

    def score(self, completion: str, example: Example, strict: bool = False) -> Score:
        if too_long(completion):
            return Score("", 0.0)
        return math_rewards.verified_score(self.eval_answer(parse_ans(completion), strict), example["answer"])
