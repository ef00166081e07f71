"""Answer extraction as AGRPO's `rewards.py` / `eval.py` and d1's reward code do it, in linear time.

The reference regular expressions (`<think>\\s*(.*?)\\s*</think>` with DOTALL|IGNORECASE, and
`([^=\\n]+=.*)$` with MULTILINE) backtrack quadratically on long adversarial strings. The functions here
return exactly what `re.search(...).group(1)` / `re.findall(...)[-1]` return (tests compare them on random
strings) but scan each string a bounded number of times.
"""
from __future__ import annotations

import re

_TAG_PATTERNS: dict[str, tuple[re.Pattern, re.Pattern]] = {
    tag: (re.compile(re.escape(f"<{tag}>"), re.IGNORECASE), re.compile(re.escape(f"</{tag}>"), re.IGNORECASE))
    for tag in ("think", "answer", "reasoning")
}


def tag_content(text: str, tag: str) -> str | None:
    """Stripped text between the first `<tag>` and the first `</tag>` after it (case-insensitive), or None.

    Equals `re.search(rf"<{tag}>\\s*(.*?)\\s*</{tag}>", text, re.DOTALL | re.IGNORECASE).group(1)`.
    """
    opening, closing = _TAG_PATTERNS[tag]
    start = opening.search(text)
    if start is None:
        return None
    end = closing.search(text, start.end())
    if end is None:
        return None
    return text[start.end():end.start()].strip()


def extract_boxed(text: str) -> str | None:
    """Content of the first `\\boxed{` with balanced braces (AGRPO `extract_boxed`); None when unbalanced."""
    start = text.find("\\boxed{")
    if start < 0:
        return None
    depth = 1
    begin = start + len("\\boxed{")
    for j in range(begin, len(text)):
        ch = text[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[begin:j]
    return None


def parse_ans(completion: str) -> str:
    """AGRPO `parse_ans`: the `<answer>` content if any, then its first non-empty balanced `\\boxed{}` if any.

    With neither, the whole completion is returned (and graded).
    """
    answer = tag_content(completion, "answer")
    if answer is not None:
        completion = answer.strip()
    boxed = extract_boxed(completion)
    if boxed:
        completion = boxed
    return completion


def first_integer(text: str) -> str | None:
    """The first run of digits (`re.search(r"\\d+")`, Unicode digits included): AGRPO's GSM8K eval quirk."""
    match = re.search(r"\d+", text)
    return match.group(0) if match else None


def last_equation_line(text: str) -> str:
    """AGRPO Countdown eval: the last match of `([^=\\n]+=.*)$` (MULTILINE) in `text`, or "".

    In a line, the match starts at the first character that is not "=" when an "=" follows it, and runs to
    the end of the line.
    """
    found = ""
    for line in text.split("\n"):
        start = 0
        while start < len(line) and line[start] == "=":
            start += 1
        if start < len(line) and "=" in line[start + 1:]:
            found = line[start:]
    return found


# --- d1 (diffu-GRPO) helpers -------------------------------------------------------------------------------

def d1_xml_answer(text: str) -> str:
    """d1 `extract_xml_answer`: the text after the last `<answer>` and before the next `</answer>`, stripped."""
    answer = text.split("<answer>")[-1]
    answer = answer.split("</answer>")[0]
    return answer.strip()


def d1_last_answer_block(text: str) -> str | None:
    """The last match of `re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)` (case-sensitive), or None."""
    last, pos = None, 0
    while (start := text.find("<answer>", pos)) >= 0:
        end = text.find("</answer>", start + len("<answer>"))
        if end < 0:
            break
        last, pos = text[start + len("<answer>"):end], end + len("</answer>")
    return last
