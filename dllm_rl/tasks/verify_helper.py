"""The math-verify helper process (run as a script by `equivalence.py`; imports nothing from dllm_rl).

Protocol: one JSON line `[gold, pred]` on stdin → one line `1` (equal) or `0` on stdout. A first line
`ready` is written once math-verify is imported and warmed up. Exits when stdin closes.
"""
import functools
import json
import logging
import sys

logging.disable(logging.WARNING)  # math-verify warns on every call that its own timeouts are off

from math_verify import parse, verify  # noqa: E402


@functools.lru_cache(maxsize=4096)
def _parsed_gold(gold: str):
    return parse(f"${gold}$", parsing_timeout=None)


def _equal(gold: str, pred: str) -> bool:
    try:
        return bool(verify(_parsed_gold(gold), parse(f"${pred}$", parsing_timeout=None), timeout_seconds=None))
    except Exception:  # any math-verify/sympy failure means "not shown equal"
        return False


# One answer of each common kind: the first parse of a kind builds lazy parser state (up to ~0.2 s), which
# is paid here, before `ready`, instead of eating into the first real check's time budget.
_WARM_UP = ("18", "-5", "0.5", "1,200", "x+1", "\\frac{1}{2}", "\\sqrt{2}", "\\pi", "\\infty", "(1,2)", "[1,2)",
            "\\text{Monday}", "a b", "x = 2", "1/0", "the answer is 5.")


def main() -> None:
    sys.setrecursionlimit(10_000)
    for answer in _WARM_UP:
        _equal("1", answer)
    print("ready", flush=True)
    for line in sys.stdin:
        gold, pred = json.loads(line)
        print("1" if _equal(gold, pred) else "0", flush=True)


if __name__ == "__main__":
    main()
