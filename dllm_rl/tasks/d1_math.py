"""d1's MATH answer handling (`diffu-grpo/math500_utils.py`): boxed extraction and Hendrycks string equivalence.

Reproduced as d1 has it, quirks included: `last_boxed_only_string` returns the whole text when there is no
`\\boxed`/`\\fbox`; `remove_boxed` returns its input when it is not `\\boxed{...}`; `is_equiv` compares
normalised strings and falls back to plain equality when normalisation raises.
"""
from __future__ import annotations


def last_boxed_only_string(text: str) -> str | None:
    """The last `\\boxed{...}` (or `\\boxed x...` up to `$`, or `\\fbox{...}`) span; the text itself if none."""
    idx = text.rfind("\\boxed")
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    if idx < 0:
        idx = text.rfind("\\fbox")
        if idx < 0:
            return text
    depth = 0
    for i in range(idx, len(text)):
        if text[i] == "{":
            depth += 1
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[idx:i + 1]
    return None


def remove_boxed(span: str) -> str:
    """`\\boxed{x}` → x and `\\boxed x` → x; anything else is returned unchanged (d1 catches the assert)."""
    if "\\boxed " in span:
        if not span.startswith("\\boxed "):
            raise ValueError("`\\boxed ` not at the start")  # d1 asserts here; its caller catches
        return span[len("\\boxed "):]
    if span.startswith("\\boxed{") and span.endswith("}"):
        return span[len("\\boxed{"):-1]
    return span


def _fix_fracs(string: str) -> str:
    substrs = string.split("\\frac")
    new_str = substrs[0]
    for substr in substrs[1:]:
        new_str += "\\frac"
        if substr[0] == "{":  # IndexError on "\\frac" at the end: caught by is_equiv, as in d1
            new_str += substr
            continue
        if len(substr) < 2:
            return string
        a, b = substr[0], substr[1]
        if b != "{":
            new_str += "{" + a + "}{" + b + "}" + substr[2:]
        else:
            new_str += "{" + a + "}" + b + substr[2:]
    return new_str


def _fix_a_slash_b(string: str) -> str:
    parts = string.split("/")
    if len(parts) != 2:
        return string
    a, b = int(parts[0]), int(parts[1])  # ValueError propagates to is_equiv, as in d1
    if string != f"{a}/{b}":
        return string
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def _remove_right_units(string: str) -> str:
    if "\\text{ " in string:
        splits = string.split("\\text{ ")
        if len(splits) != 2:
            raise ValueError("more than one `\\text{ `")  # d1 asserts
        return splits[0]
    return string


def _fix_sqrt(string: str) -> str:
    if "\\sqrt" not in string:
        return string
    splits = string.split("\\sqrt")
    new_string = splits[0]
    for split in splits[1:]:
        if split[0] != "{":  # IndexError on a trailing "\\sqrt": caught by is_equiv
            new_string += "\\sqrt{" + split[0] + "}" + split[1:]
        else:
            new_string += "\\sqrt" + split
    return new_string


def strip_string(string: str) -> str:
    """Hendrycks MATH normalisation as d1 copies it."""
    string = string.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    string = string.replace("tfrac", "frac").replace("dfrac", "frac")
    string = string.replace("\\left", "").replace("\\right", "")
    string = string.replace("^{\\circ}", "").replace("^\\circ", "")
    string = string.replace("\\$", "")
    string = _remove_right_units(string)
    string = string.replace("\\%", "")
    string = string.replace(" .", " 0.").replace("{.", "{0.")
    if not string:
        return string
    if string[0] == ".":
        string = "0" + string
    halves = string.split("=")
    if len(halves) == 2 and len(halves[0]) <= 2:
        string = halves[1]
    string = _fix_sqrt(string)
    string = string.replace(" ", "")
    string = _fix_fracs(string)
    if string == "0.5":
        string = "\\frac{1}{2}"
    return _fix_a_slash_b(string)


def is_equiv(str1: str | None, str2: str | None) -> bool:
    if str1 is None and str2 is None:
        return True
    if str1 is None or str2 is None:
        return False
    try:
        return strip_string(str1) == strip_string(str2)
    except Exception:  # d1 falls back to exact equality on any normalisation error
        return str1 == str2


def completion_answer(text: str) -> str:
    """d1's `remove_boxed(last_boxed_only_string(r))` under its bare `except: pass`: on any error (no
    balanced box, a misplaced `\\boxed `) the whole completion is kept as the answer."""
    try:
        return remove_boxed(last_boxed_only_string(text))
    except Exception:
        return text
