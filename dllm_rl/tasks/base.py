"""The task interface, reward/score records, the input caps every reward applies, and the registry.

A task bundles, for one benchmark: its data splits (`load`), its prompts (`prompt`, chat messages for the
tokenizer's template), its training reward (`reward`, a `RewardBreakdown` whose components are logged
separately) and its evaluation metric (`score`). Tasks are stateless singletons looked up by name.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

Example = Mapping[str, object]
Messages = list[dict[str, str]]

PROMPT_STYLES = ("agrpo", "d1")
REWARD_STYLES = ("agrpo", "d1")

# A completion longer than this is pathological (LLaDA completions are at most a few thousand characters):
# every reward component is 0 and no parsing is attempted, which keeps each reward call linear and fast.
MAX_COMPLETION_CHARS = 32_768


@dataclasses.dataclass(frozen=True)
class RewardBreakdown:
    """A training reward: `total` is the sum of the named `components` (each logged on its own).

    `timed_out` is True when a math-verify check ran out of its CPU budget and was graded as wrong (see
    `equivalence.py`); the trainer logs the count per step as `reward/timeouts`.
    """

    components: Mapping[str, float]
    timed_out: bool = False

    @property
    def total(self) -> float:
        return float(sum(self.components.values()))


@dataclasses.dataclass(frozen=True)
class Score:
    """An evaluation result: the answer the metric extracted, its correctness in [0, 1], and whether a
    math-verify check ran out of its CPU budget (then `correct` is 0)."""

    extracted: str
    correct: float
    timed_out: bool = False


class Task:
    """Base class: subclasses set `name`, `splits`, `reward_bounds_by_style` and implement the four methods."""

    name: str = ""
    splits: tuple[str, ...] = ()
    default_eval_split: str = "test"
    reward_bounds_by_style: Mapping[str, tuple[float, float]] = {}

    def load(self, split: str) -> Sequence[dict]:
        """Examples of `split` (plain dicts with the fields the prompt and reward need)."""
        raise NotImplementedError

    def prompt(self, example: Example, style: str = "agrpo") -> Messages:
        """Chat messages ([{"role", "content"}]) for the example, in the `style` ("agrpo" or "d1") format."""
        raise NotImplementedError

    def reward(self, completion: str, example: Example, style: str = "agrpo") -> RewardBreakdown:
        """The training reward of a decoded completion, as the `style` ("agrpo" or "d1") code defines it."""
        raise NotImplementedError

    def reward_bounds(self, style: str = "agrpo") -> tuple[float, float]:
        """The least and the greatest `reward(...).total` of `style` over all completions and examples,
        derived from the reward's definition (each is attained by some completion; see the tests)."""
        check_style(style, REWARD_STYLES, "reward")
        return self.reward_bounds_by_style[style]

    def score(self, completion: str, example: Example, strict: bool = False) -> Score:
        """The evaluation metric; `strict=False` reproduces the reference protocol, quirks included."""
        raise NotImplementedError

    def reference_answer(self, example: Example) -> str:
        """The gold answer as a string: shown in eval logs, and the target of the supervised warm start."""
        return str(example["answer"])

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"task {self.name!r} has no split {split!r}; choose one of {list(self.splits)}")


def check_style(style: str, styles: Sequence[str], what: str) -> None:
    if style not in styles:
        raise ValueError(f"unknown {what} style {style!r}; choose one of {list(styles)}")


def too_long(completion: str) -> bool:
    """True for completions past MAX_COMPLETION_CHARS: they get reward 0 without being parsed."""
    return len(completion) > MAX_COMPLETION_CHARS


_REGISTRY: dict[str, Task] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: registers one instance of `cls` under `cls.name`."""
    if cls.name in _REGISTRY:
        raise ValueError(f"task {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def get_task(name: str) -> Task:
    """The task registered as `name` (see `list_tasks()`: add, countdown, gsm8k, increment, math, reverse, sudoku)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown task {name!r}; registered tasks: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def list_tasks() -> list[str]:
    return sorted(_REGISTRY)


def render_prompt(tokenizer, messages: Messages) -> str:
    """The chat-template text of `messages` with the assistant header appended (no tokenization)."""
    return tokenizer.apply_chat_template(messages)


def render_prompts(tokenizer, task: Task, examples: Sequence[Example], style: str = "agrpo") -> list[str]:
    return [render_prompt(tokenizer, task.prompt(ex, style=style)) for ex in examples]

