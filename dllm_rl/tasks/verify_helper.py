"""The math-verify helper process (run as a script by `equivalence.py`; imports nothing from dllm_rl).

Protocol: one JSON line `[gold, pred, cpu_budget_s]` on stdin → one line on stdout: `1` (equal), `0` (not
shown equal) or `timeout` (the check used more than `cpu_budget_s` seconds of this process's CPU time). A
first line `ready` is written once math-verify is imported and warmed up. Exits when stdin closes.

The budget is CPU time, not wall-clock time, so a verdict does not depend on how busy the machine is. It
is enforced twice: `ITIMER_PROF` raises `CpuBudgetExceeded` in Python code (most of sympy), and for C code
that never returns to the interpreter, `RLIMIT_CPU` makes the kernel end this process with SIGXCPU a
second or two later (the parent reads that death as a timeout).
"""
import functools
import json
import logging
import math
import resource
import signal
import sys
import time

logging.disable(logging.WARNING)  # math-verify warns on every call that its own timeouts are off

from math_verify import parse, verify  # noqa: E402

TIMEOUT = "timeout"
_RLIMIT_SLACK_S = 1  # whole CPU seconds past the budget before the kernel's SIGXCPU ends a check stuck in C


class CpuBudgetExceeded(BaseException):
    """Raised by the SIGPROF handler: a BaseException, so math-verify's `except Exception` cannot swallow it."""


def _on_sigprof(signum, frame):
    raise CpuBudgetExceeded


@functools.lru_cache(maxsize=4096)
def _parsed_gold(gold: str):
    return parse(f"${gold}$", parsing_timeout=None)


def _equal(gold: str, pred: str) -> bool:
    try:
        return bool(verify(_parsed_gold(gold), parse(f"${pred}$", parsing_timeout=None), timeout_seconds=None))
    except Exception:  # any math-verify/sympy failure means "not shown equal"
        return False


def check(gold: str, pred: str, cpu_budget_s: float) -> str:
    """`1`, `0`, or TIMEOUT when the check used more than `cpu_budget_s` of CPU time (also measured after
    the fact, so an interrupted or slow check is never reported as a verdict)."""
    start = time.process_time()
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(start + cpu_budget_s) + _RLIMIT_SLACK_S, hard))
    try:
        signal.setitimer(signal.ITIMER_PROF, cpu_budget_s)
        try:
            equal = _equal(gold, pred)
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
    except CpuBudgetExceeded:
        return TIMEOUT
    if time.process_time() - start > cpu_budget_s:
        return TIMEOUT
    return "1" if equal else "0"


# One answer of each common kind: the first parse of a kind builds lazy parser state (up to ~0.2 s), which
# is paid here, before `ready`, instead of counting against the first real check's budget.
_WARM_UP = ("18", "-5", "0.5", "1,200", "x+1", "\\frac{1}{2}", "\\sqrt{2}", "\\pi", "\\infty", "(1,2)", "[1,2)",
            "\\text{Monday}", "a b", "x = 2", "1/0", "the answer is 5.")


def main() -> None:
    sys.setrecursionlimit(10_000)
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))  # no core files
    signal.signal(signal.SIGPROF, _on_sigprof)
    for answer in _WARM_UP:
        _equal("1", answer)
    print("ready", flush=True)
    for line in sys.stdin:
        gold, pred, cpu_budget_s = json.loads(line)
        print(check(gold, pred, cpu_budget_s), flush=True)


if __name__ == "__main__":
    main()
