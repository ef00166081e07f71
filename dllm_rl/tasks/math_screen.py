"""Cheap, linear-time screens that keep answers math-verify would choke on away from it.

math-verify (latex2sympy + sympy) takes seconds or hangs on some inputs: astronomically large numbers
(`9^{9^{9}}`, `(10^{100})!`, `\\binom{10^{9}}{50000}`), nested brackets, and long runs of letters (parsed
as a product of hundreds of symbols: 1,000 letters take ~0.75 s). Such answers are never a short math
answer, so they are counted wrong without being sent. The time bound itself is enforced by
`equivalence.py`; these screens only keep the helper from being killed (and restarted) often.
"""
from __future__ import annotations

import re

MAX_ANSWER_CHARS = 4_096  # longer extracted answers are not graded (LLaDA answers are far shorter)
MAX_NESTING = 8  # deeper brackets are not graded (MATH golds nest ≤ 3; math-verify takes ~0.3 s at 8, ~3 s at 40)
MAX_EXPONENT_DIGITS = 4  # an exponent, factorial or binomial argument with a longer integer is not graded
MAX_POWERS = 32  # answers with more power operators (or factorials) than this are not graded
MAX_LETTER_RUN = 48  # a longer run of letters is no word or symbol (and costs math-verify ~0.05 s per 100)

_POWER = re.compile(r"\^|\*\*")
_BINOMIAL = re.compile(r"\\[dt]?binom(?![a-zA-Z])")
_BIG_INT = re.compile(rf"\d{{{MAX_EXPONENT_DIGITS + 1},}}")
_LETTER_RUN = re.compile(rf"[^\W\d_]{{{MAX_LETTER_RUN + 1},}}")
_CLOSING = {"{": "}", "(": ")", "[": "]"}
_OPENING = {v: k for k, v in _CLOSING.items()}


def nesting_depth(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch in "({[":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")}]":
            depth = max(depth - 1, 0)
    return deepest


def _operand_after(text: str, start: int) -> int:
    """End index of the operand starting at `start`: a balanced bracket group, or one token of digits."""
    while start < len(text) and text[start].isspace():
        start += 1
    if start < len(text) and text[start] in _CLOSING:
        depth = 0
        for j in range(start, len(text)):
            if text[j] in "({[":
                depth += 1
            elif text[j] in ")}]":
                depth -= 1
                if depth == 0:
                    return j + 1
        return len(text)
    end = start + 1
    while end < len(text) and text[end].isdigit():
        end += 1
    return min(end, len(text))


def _operand_before(text: str, end: int) -> str:
    """The operand that ends just before `end`: a balanced bracket group, or a run of digits."""
    j = end - 1
    while j >= 0 and text[j].isspace():
        j -= 1
    if j >= 0 and text[j] in _OPENING:
        depth = 0
        for i in range(j, -1, -1):
            if text[i] in ")}]":
                depth += 1
            elif text[i] in "({[":
                depth -= 1
                if depth == 0:
                    return text[i:j + 1]
        return text[:j + 1]
    i = j
    while i >= 0 and text[i].isdigit():
        i -= 1
    return text[i + 1:j + 1]


def _is_big(operand: str) -> bool:
    return bool(_POWER.search(operand) or "!" in operand or _BIG_INT.search(operand))


def builds_huge_number(text: str) -> bool:
    """True when `text` may make sympy build an astronomically large number.

    Flags power towers, exponents that contain a power, a factorial or an integer literal with more than
    MAX_EXPONENT_DIGITS digits, and factorials and binomials of such operands. Ordinary answers (2^{10},
    3^{2010}, 10!, \\frac{9!}{3!}, \\binom{10}{3}) pass.
    """
    for match in _POWER.finditer(text):
        end = _operand_after(text, match.end())
        if _is_big(text[match.end():end]) or _POWER.match(text[end:].lstrip()):
            return True
    for match in _BINOMIAL.finditer(text):
        first_end = _operand_after(text, match.end())
        second_end = _operand_after(text, first_end)
        if _is_big(text[match.end():first_end]) or _is_big(text[first_end:second_end]):
            return True
    return any(_is_big(_operand_before(text, m.start())) for m in re.finditer("!", text))


def screen(answer: str) -> str | None:
    """Why `answer` is not graded (a short reason), or None when it may be sent to math-verify."""
    if len(answer) > MAX_ANSWER_CHARS:
        return "too_long"
    if nesting_depth(answer) > MAX_NESTING:
        return "too_deep"
    if len(_POWER.findall(answer)) > MAX_POWERS or answer.count("!") > MAX_POWERS:
        return "too_many_powers"
    if _LETTER_RUN.search(answer):
        return "letter_run"
    if builds_huge_number(answer):
        return "huge_number"
    return None
