"""The math-verify helper process (run as a script by `equivalence.py`; imports nothing from dllm_rl).

Protocol: one JSON line `[gold, pred]` on stdin → one line `1` (equal) or `0` on stdout. A first line
`ready` is written once math-verify is imported. Exits when stdin closes.
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


def main() -> None:
    sys.setrecursionlimit(10_000)
    print("ready", flush=True)
    for line in sys.stdin:
        gold, pred = json.loads(line)
        print("1" if _equal(gold, pred) else "0", flush=True)


if __name__ == "__main__":
    main()
