"""Rewards and the math-verify score shared by GSM8K and MATH: AGRPO's format parts + math-verify
correctness, and d1's reward sets; with the bounds of each reward's total, derived next to it."""
from __future__ import annotations

import re

from dllm_rl.tasks import d1_math
from dllm_rl.tasks.base import MAX_COMPLETION_CHARS, RewardBreakdown, Score, too_long
from dllm_rl.tasks.equivalence import math_verdict
from dllm_rl.tasks.extract import d1_xml_answer, parse_ans, tag_content

# d1 @ 837888f: neither format regex uses re.DOTALL, so "." stops at newlines (a quirk reproduced here).
_D1_SOFT_FORMAT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>")
_D1_STRICT_FORMAT = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$")

AGRPO_BOUNDS = (0.0, 4.0)  # three non-negative parts: 0.5 + 0.5 + 3.0


def agrpo_reward(completion: str, gold: str) -> RewardBreakdown:
    """+0.5 `<think>…</think>`, +0.5 `<answer>…</answer>`, +3.0 when math-verify finds `parse_ans` equal to gold."""
    if too_long(completion):
        return RewardBreakdown({"think_format": 0.0, "answer_format": 0.0, "correctness": 0.0})
    verdict = math_verdict(gold, parse_ans(completion))
    return RewardBreakdown({
        "think_format": 0.5 * (tag_content(completion, "think") is not None),
        "answer_format": 0.5 * (tag_content(completion, "answer") is not None),
        "correctness": 3.0 * verdict.equal,
    }, timed_out=verdict.timed_out)


def verified_score(answer: str, gold: str) -> Score:
    """The eval score of an extracted answer: 1.0 when math-verify finds it equal to `gold`."""
    verdict = math_verdict(gold, answer)
    return Score(answer, float(verdict.equal), timed_out=verdict.timed_out)


# d1_xml_count's least value. Each trailing-text penalty comes with its own +0.125 and costs 0.001 per
# character: the "\n<answer>\n" term at most the whole completion (n characters, when "\n</answer>\n" is
# absent), the "\n</answer>" term at most n − 10 − 1 (the characters after that 10-character tag, less one).
# So the count is ≥ 0.25 − 0.001·(2n − 11), attained by "\n</answer>x\n<answer>\n" + filler, n at the cap.
D1_XML_COUNT_MIN = 0.25 - 0.001 * (2 * MAX_COMPLETION_CHARS - 11)
# Upper: xml count ≤ 0.5 (four tags; a completion ending on "\n</answer>" earns +0.001 from that tag, but
# then "\n</answer>\n" is absent and the "\n<answer>\n" tag, if present, costs ≥ 0.019), soft and strict
# format never both match (strict needs "<reasoning>\n", soft a "</reasoning>" on that first line),
# integer answer 0.5, exact match 2.0.
D1_GSM8K_BOUNDS = (D1_XML_COUNT_MIN, 0.5 + 0.5 + 0.5 + 2.0)


def d1_xml_count(text: str) -> float:
    """d1 `count_xml`: 0.125 per well-placed tag, minus 0.001 per character after the closing tag."""
    count = 0.0
    if text.count("<reasoning>\n") == 1:
        count += 0.125
    if text.count("\n</reasoning>\n") == 1:
        count += 0.125
    if text.count("\n<answer>\n") == 1:
        count += 0.125
        count -= len(text.split("\n</answer>\n")[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        count += 0.125
        count -= (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return count


def d1_format_parts(completion: str) -> dict[str, float]:
    return {
        "xml_count": d1_xml_count(completion),
        "soft_format": 0.5 * bool(_D1_SOFT_FORMAT.match(completion)),
        "strict_format": 0.5 * bool(_D1_STRICT_FORMAT.match(completion)),
    }


def d1_gsm8k_reward(completion: str, gold: str) -> RewardBreakdown:
    """d1's five GSM8K rewards: xml count, soft and strict format, integer answer (0.5), exact match (2.0)."""
    if too_long(completion):
        return RewardBreakdown({"xml_count": 0.0, "soft_format": 0.0, "strict_format": 0.0,
                                "int_answer": 0.0, "correctness": 0.0})
    answer = d1_xml_answer(completion)
    return RewardBreakdown({
        **d1_format_parts(completion),
        "int_answer": 0.5 * answer.isdigit(),
        "correctness": 2.0 * (answer == gold),
    })


# answer_format is 0.5 × (0.5, 1.0, 1.5 or 2.0), or 0 past the length cap; correctness 0 or 2.0.
D1_MATH_BOUNDS = (0.0, 0.5 * 2.0 + 2.0)


def d1_boxed_in_answer(completion: str) -> float:
    """d1 `boxed_in_answer`: 1.0 for an `<answer>…</answer>` split, plus 0.5 (its `"\\boxed"` literal is
    '\\x08oxed', a backspace, so the 1.0 branch fires only on a literal backspace + "oxed"; the bug is kept)."""
    parts = completion.split("<answer>")
    reward = 1.0 if len(parts) > 1 else 0.0
    inner = parts[1].split("</answer>")[0] if len(parts) > 1 else completion
    return reward + (1.0 if "\x08oxed" in inner else 0.5)


def d1_math_reward(completion: str, solution: str) -> RewardBreakdown:
    """d1's MATH rewards: 2.0 when the last boxed answers are Hendrycks-equivalent, + 0.5 × boxed_in_answer."""
    if too_long(completion):
        return RewardBreakdown({"answer_format": 0.0, "correctness": 0.0})
    gold = d1_math.remove_boxed(d1_math.last_boxed_only_string(solution))
    return RewardBreakdown({
        "answer_format": 0.5 * d1_boxed_in_answer(completion),
        "correctness": 2.0 * d1_math.is_equiv(d1_math.completion_answer(completion), gold),
    })
