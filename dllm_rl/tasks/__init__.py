"""Tasks (GSM8K, MATH, Countdown, Sudoku; the procedural digit-string tasks `increment` (the CPU demo's),
`add_const` (the CPU method comparison's) and `reverse`): data, prompts, rewards, metrics.

    task = get_task("gsm8k")
    example = task.load("train")[0]
    messages = task.prompt(example)                       # AGRPO <think>/<answer>; style="d1" for <reasoning>
    breakdown = task.reward(completion, example)          # RewardBreakdown(components=..., total=..., timed_out=...)
    low, high = task.reward_bounds("agrpo")               # the least and greatest breakdown.total
    score = task.score(completion, example)               # Score(extracted, correct) as AGRPO's eval grades

`timed_out` is True when a math-verify check ran out of its CPU budget (graded 0; see equivalence.py).
See README.md in this folder for the reproduced quirks and bounds, docs/reference_quirks.md for the
reference behaviours reproduced on purpose, and data/README.md for data provenance.
"""
from dllm_rl.tasks import (add_const, countdown, gsm8k, increment, math_task, reverse,  # noqa: F401  (registers the tasks)
                           sudoku)
from dllm_rl.tasks.base import (MAX_COMPLETION_CHARS, PROMPT_STYLES, REWARD_STYLES, RewardBreakdown, Score, Task,
                                get_task, list_tasks, render_prompt, render_prompts)
from dllm_rl.tasks.equivalence import warm_up as warm_up_math_verify

__all__ = ["MAX_COMPLETION_CHARS", "PROMPT_STYLES", "REWARD_STYLES", "RewardBreakdown", "Score", "Task", "get_task",
           "list_tasks", "render_prompt", "render_prompts", "warm_up_math_verify", "make_dataset"]


def __getattr__(name):
    if name == "make_dataset":  # grain is imported only when a pipeline is built
        from dllm_rl.tasks.data import make_dataset
        return make_dataset
    raise AttributeError(f"module 'dllm_rl.tasks' has no attribute {name!r}")
