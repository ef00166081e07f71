"""Math answer equivalence with math-verify, bounded in time.

AGRPO grades with `verify(parse(f"${gold}$"), parse(f"${pred}$"))`. math-verify's own timeouts use
`signal.alarm` (whole seconds, main thread only), and some inputs hang inside C code that no signal can
interrupt (sympy evaluating `9^{9^{9}}` or `(10^{100})!`). So the check runs in a helper process that is
killed when it passes its deadline; a killed, crashed or timed-out check counts as "not equal". Cheap
screens before that reject inputs that are too long, too deeply nested, or that build huge powers or
factorials, so the helper rarely has to be killed.
"""
from __future__ import annotations

import json
import pathlib
import re
import select
import subprocess
import sys
import threading

MAX_ANSWER_CHARS = 4_096  # longer extracted answers are not graded (LLaDA answers are far shorter)
MAX_NESTING = 40  # brackets nested deeper than this are not graded
MAX_EXPONENT_DIGITS = 4  # an exponent or factorial argument with a longer integer literal is not graded
DEADLINE_S = 0.5  # a check that runs longer is killed and counts as "not equal"
_STARTUP_TIMEOUT_S = 120.0  # importing sympy in a fresh helper can take seconds on a loaded machine

MAX_POWERS = 32  # answers with more power operators than this are not graded

_POWER = re.compile(r"\^|\*\*")
_BIG_INT = re.compile(rf"\d{{{MAX_EXPONENT_DIGITS + 1},}}")
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
    MAX_EXPONENT_DIGITS digits, and factorials of such operands. Ordinary answers (2^{10}, 3^{2010}, 10!,
    \\frac{9!}{3!}) pass.
    """
    for match in _POWER.finditer(text):
        end = _operand_after(text, match.end())
        if _is_big(text[match.end():end]) or _POWER.match(text[end:].lstrip()):
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
    if builds_huge_number(answer):
        return "huge_number"
    return None


# --- the helper processes ---------------------------------------------------------------------------------

class _HelperProcess:
    """One `verify_helper.py` process: a plain subprocess, so nothing re-imports `__main__` and no JAX
    process is forked."""

    _SCRIPT = pathlib.Path(__file__).with_name("verify_helper.py")

    def __init__(self):
        self._process = subprocess.Popen(
            [sys.executable, "-u", str(self._SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, encoding="utf-8")
        self._ready = False

    def alive(self) -> bool:
        return self._process.poll() is None

    def wait_ready(self) -> None:
        if not self._ready:
            self._ready = self._read_line(_STARTUP_TIMEOUT_S) == "ready"
            if not self._ready:
                self.kill()
                raise RuntimeError(f"the math-verify helper ({self._SCRIPT}) did not start; "
                                   "is math-verify installed?")

    def ask(self, gold: str, pred: str, deadline_s: float) -> str | None:
        try:
            self._process.stdin.write(json.dumps([gold, pred]) + "\n")
            self._process.stdin.flush()
            return self._read_line(deadline_s)
        except OSError:  # the helper died (e.g. a C stack overflow)
            return None

    def kill(self) -> None:
        self._process.kill()
        self._process.wait()
        self._process.stdin.close()
        self._process.stdout.close()

    def _read_line(self, timeout_s: float) -> str | None:
        ready, _, _ = select.select([self._process.stdout], [], [], timeout_s)
        return self._process.stdout.readline().strip() if ready else None


class _Helper:
    """An active helper plus a warm standby, so a killed check does not make the next call wait for a
    fresh process to import sympy. Calls are serialised by a lock (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._active: _HelperProcess | None = None
        self._standby: _HelperProcess | None = None

    def verify(self, gold: str, pred: str, deadline_s: float) -> bool:
        with self._lock:
            if self._active is None or not self._active.alive():
                self._active = self._standby if self._standby and self._standby.alive() else _HelperProcess()
                self._standby = _HelperProcess()
            self._active.wait_ready()
            reply = self._active.ask(gold, pred, deadline_s)
            if reply in ("0", "1"):
                return reply == "1"
            self._active.kill()  # overdue or crashed: the standby takes over on the next call
            self._active = None
            return False

    def warm_up(self) -> None:
        """Start the helpers now (they take about a second to import sympy) instead of on first use."""
        self.verify("0", "0", _STARTUP_TIMEOUT_S)


_HELPER = _Helper()


def warm_up() -> None:
    """Start the math-verify helpers ahead of the first reward call."""
    _HELPER.warm_up()


def math_equal(gold: str, pred: str, deadline_s: float = DEADLINE_S) -> bool:
    """AGRPO's `verify(parse("$gold$"), parse("$pred$"))`, False for screened-out or overdue checks."""
    if screen(pred) is not None:
        return False
    return _HELPER.verify(gold, pred, deadline_s)
