"""System prompts and user turns, verbatim from AGRPO (`data.py`, `<think>`/`<answer>`) and d1
(`diffu-grpo/data_utils.py`, `<reasoning>`/`<answer>`, training prompts).

AGRPO sends a system message plus the raw problem as the user message; d1 sends a single user message
that starts with its format instruction. Both are rendered with the model's chat template.
"""
from __future__ import annotations

from dllm_rl.tasks.base import Messages, PROMPT_STYLES, check_style

AGRPO_MATH_SYSTEM = r"""You will be given a math problem.
Think through the problem step by step, enclosing your reasoning process in <think> tags.
Provide your final answer in <answer> tags, with only the number or expression enclosed in \boxed{}, as follows:
<think>
...
</think>
<answer>
\boxed{...}
</answer>
"""

AGRPO_COUNTDOWN_SYSTEM = r"""You will be given a target number and a list of numbers. Create a mathematical expression using each number exactly once and the operations +, -, *, / (with parentheses allowed) to reach the target.
Think through different combinations systematically, exploring which operations might work. Enclose your reasoning process in <think> tags.
Format your response as:
<think>
reasoning process here
</think>
<answer>
final expression = target
</answer>
For example, if the target is 67 and the numbers are [17, 18, 5], a valid answer is:
<answer>
17 * 5 - 18 = 67
</answer>
"""

# The three few-shot examples are SPG's (spg/data_utils.py), as AGRPO copies them; their puzzles and
# solutions are kept out of the generated Sudoku splits (see sudoku_gen.py).
AGRPO_SUDOKU_SYSTEM = r"""You will be given a 4x4 Sudoku puzzle, provided as a 16-character string from left to right, top to bottom, with 0s representing empty cells.
Fill in the empty cells with the correct digits 1-4 such that each row, column, and 2x2 subgrid contains each digit exactly once.
Think through the puzzle step by step, enclosing your reasoning process in <think> tags.
Your final answer should be a complete 16-character string with only the digits 1-4 representing the filled-in grid.
Format your response as:
<think>
reasoning process here
</think>
<answer>
[16-character string with no spaces]
</answer>

Puzzle: 3014002020004130

<think>
Interpret puzzle as 4 rows of 4:
R1: 3 0 1 4
R2: 0 0 2 0
R3: 2 0 0 0
R4: 4 1 3 0

Fill easy singles:
R1 missing 2 → R1C2=2.
R4 missing 2 → R4C4=2.
Box D (R3-4,C3-4) then needs {1,4}; column4 can only accept 1 → R3C4=1, R3C3=4.
R3 now missing 3 → R3C2=3.
Column1 missing 1 → R2C1=1.
Column2 missing 4 → R2C2=4.
Last cell R2C4=3.

Final grid:
R1: 3 2 1 4
R2: 1 4 2 3
R3: 2 3 4 1
R4: 4 1 3 2
</think>
<answer>
3214142323414132
</answer>

Puzzle: 0000100420013142

<think>
Interpret puzzle as 4 rows of 4:
R1: 0 0 0 0
R2: 1 0 0 4
R3: 2 0 0 1
R4: 3 1 4 2

Fill easy singles:
Col1 missing 4 → R1C1=4.
Col4 missing 3 → R1C4=3.
Box A (R1-2,C1-2) missing {2,3} and R1 now needs {1,2} → R1C2=2, R2C2=3.
R1C3=1.
R2 now missing 2 → R2C3=2.
Col2 missing 4 → R3C2=4, then R3C3=3.

Final grid:
R1: 4 2 1 3
R2: 1 3 2 4
R3: 2 4 3 1
R4: 3 1 4 2
</think>
<answer>
4213132424313142
</answer>

Puzzle: 2001403002001420

<think>
Interpret puzzle as 4 rows of 4:
R1: 2 0 0 1
R2: 4 0 3 0
R3: 0 2 0 0
R4: 1 4 2 0

Fill easy singles:
R1 missing {3,4}; Col2 can't be 1 so R1C2=3 → R1C3=4.
R4 missing 3 → R4C4=3.
Col4 missing {2,4}; R2 must take 2 → R2C4=2 → R2C2=1.
Col1 missing 3 → R3C1=3.
Col3 missing 1 → R3C3=1 → R3C4=4.

Final grid:
R1: 2 3 4 1
R2: 4 1 3 2
R3: 3 2 1 4
R4: 1 4 2 3
</think>
<answer>
2341413232141423
</answer>
"""

# (puzzle, solution) of the few-shot examples above.
SUDOKU_FEW_SHOT = (
    ("3014002020004130", "3214142323414132"),
    ("0000100420013142", "4213132424313142"),
    ("2001403002001420", "2341413232141423"),
)

D1_SYSTEM = """
Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
...
</answer>
"""

D1_MATH_INSTRUCTION = ("You are a math expert. You will be given a question to solve. Solve it step by step. "
                       "Wrap the final answer in a \\boxed{}. \n\n")

D1_COUNTDOWN_INSTRUCTION = (
    "Using only the numbers {nums}, create an arithmetic expression that evaluates to exactly {target}. "
    "You must use all numbers from the list, and each number must be used exactly once. You may use the "
    "operations +, -, *, and / as needed. After reasoning, provide only your final expression inside "
    "<answer></answer> tags without including an equals sign or the target number. For example, if the "
    "numbers are [2, 3, 4] and the target is 5, a valid answer is: <answer>\n2*4-3\n</answer>")

D1_SUDOKU_SYSTEM = """
Please solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading left-to-right, top-to-bottom, where '0' represents empty cells.

Rules:
- Fill empty cells with digits 1-4
- Each row must contain digits 1-4 exactly once
- Each column must contain digits 1-4 exactly once
- Each 2x2 box must contain digits 1-4 exactly once

Important: Your solution must be a COMPLETE 16-character string with only the digits 1-4, representing your final solved grid.

Respond in this exact format:
<reasoning>
Your step-by-step solving process
</reasoning>
<answer>
[16-character solution string with no spaces or separators]
</answer>
"""


def system_and_user(system: str, user: str) -> Messages:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def user_only(user: str) -> Messages:
    return [{"role": "user", "content": user}]


def math_prompt(problem: str, style: str, *, is_math: bool) -> Messages:
    """GSM8K (`is_math=False`) and MATH prompts."""
    check_style(style, PROMPT_STYLES, "prompt")
    if style == "agrpo":
        return system_and_user(AGRPO_MATH_SYSTEM, problem)
    if is_math:
        return user_only(f"{D1_SYSTEM}\n\n{D1_MATH_INSTRUCTION}{problem}")
    return user_only(f"{D1_SYSTEM}\n\n{problem}")


def countdown_prompt(nums: list[int], target: int, style: str) -> Messages:
    check_style(style, PROMPT_STYLES, "prompt")
    if style == "agrpo":
        return system_and_user(AGRPO_COUNTDOWN_SYSTEM, f"Target: {target}\nNumbers: {nums}")
    return user_only(f"{D1_SYSTEM}\n" + D1_COUNTDOWN_INSTRUCTION.format(nums=nums, target=target))


def sudoku_prompt(puzzle: str, style: str) -> Messages:
    check_style(style, PROMPT_STYLES, "prompt")
    if style == "agrpo":
        return system_and_user(AGRPO_SUDOKU_SYSTEM, f"Puzzle: {puzzle}")
    return user_only(f"{D1_SUDOKU_SYSTEM}\n\nSolve the following Sudoku puzzle: {puzzle}\n")
