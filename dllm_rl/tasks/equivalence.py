"""Math answer equivalence with math-verify, each check bounded by a CPU-time budget, so verdicts do not
depend on machine load.

AGRPO grades with `verify(parse(f"${gold}$"), parse(f"${pred}$"))`. math-verify's own timeouts use
`signal.alarm` (wall-clock, whole seconds, main thread only), and some inputs hang inside C code that no
signal can interrupt (sympy evaluating `9^{9^{9}}`). So the check runs in a helper process
(`verify_helper.py`) that stops any check using more than CPU_BUDGET_S seconds of its own CPU time. CPU
time, unlike wall-clock time, barely changes when other processes compete for the cores (a training host
runs JAX on all of them), so the same answer gets the same verdict on a busy and on an idle machine.

A check has three outcomes (`Verdict`): EQUAL, NOT_EQUAL, or TIMED_OUT (over the CPU budget; graded as not
equal, never cached, and reported so the trainer can log `reward/timeouts`). Wall-clock time only bounds
the damage of a wedged helper: a check with no reply after WALL_LIMIT_S (far above the CPU budget, so only
a stuck helper reaches it) is killed and retried once on a fresh helper, as is a check whose helper
crashed; a second stuck helper gives TIMED_OUT, a second crash NOT_EQUAL (the input crashes the parser).
A killed helper is replaced by a warm standby, so the next check does not wait for sympy to import.

EQUAL and NOT_EQUAL are cached per (gold, pred): RL groups repeat answers.
"""
from __future__ import annotations

import collections
import enum
import json
import pathlib
import select
import signal
import subprocess
import sys
import threading

from dllm_rl.tasks.math_screen import screen

CPU_BUDGET_S = 1.0  # helper CPU seconds one check may use (~0.06 s is typical of a hard MATH answer)
WALL_LIMIT_S = 60.0  # safety net against a wedged helper: ~60× the budget, so load alone never reaches it
CACHE_SIZE = 8_192  # (gold, pred) pairs remembered; answers are at most 4,096 characters
_STARTUP_TIMEOUT_S = 120.0  # importing sympy in a fresh helper can take seconds on a loaded machine
_REAP_TIMEOUT_S = 60.0  # a helper that closed its stdout is exiting; a saturated machine can take seconds
_CRASHED, _WEDGED = "crashed", "wedged"  # attempt outcomes that say nothing about the answer


class Verdict(enum.Enum):
    """The outcome of one equivalence check (the values are the helper's replies)."""

    EQUAL = "1"
    NOT_EQUAL = "0"
    TIMED_OUT = "timeout"  # over the CPU budget (or a helper stuck twice): graded as not equal

    @property
    def equal(self) -> bool:
        return self is Verdict.EQUAL

    @property
    def timed_out(self) -> bool:
        return self is Verdict.TIMED_OUT


class _HelperProcess:
    """One `verify_helper.py` process: a plain subprocess, so nothing re-imports `__main__` and no JAX
    process is forked."""

    _SCRIPT = pathlib.Path(__file__).with_name("verify_helper.py")

    def __init__(self):
        self._process = subprocess.Popen(
            [sys.executable, "-u", str(self._SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, encoding="utf-8")
        self.ready = False

    def alive(self) -> bool:
        return self._process.poll() is None

    def wait_ready(self, timeout_s: float) -> bool:
        """Whether the helper has imported math-verify, waiting at most `timeout_s` for it."""
        if not self.ready:
            self.ready = self._read_line(timeout_s) == "ready"
        return self.ready

    def ask(self, gold: str, pred: str, cpu_budget_s: float, wall_limit_s: float) -> str:
        """The helper's reply ("1", "0", "timeout"); "timeout" also when the kernel ended it for CPU time;
        _WEDGED when no reply came within `wall_limit_s`, _CRASHED when it died otherwise (it is then killed)."""
        try:
            self._process.stdin.write(json.dumps([gold, pred, cpu_budget_s]) + "\n")
            self._process.stdin.flush()
            reply = self._read_line(wall_limit_s)
        except (OSError, ValueError):  # the helper died before reading the request
            reply = ""
        if reply in (Verdict.EQUAL.value, Verdict.NOT_EQUAL.value, Verdict.TIMED_OUT.value):
            return reply
        if reply is None:
            outcome = _WEDGED
        else:  # EOF: RLIMIT_CPU's SIGXCPU ends a check stuck in C code; anything else is a crash
            outcome = Verdict.TIMED_OUT.value if self._exit_signal() == signal.SIGXCPU else _CRASHED
        self.kill()
        return outcome

    def kill(self) -> None:
        """SIGKILL without waiting: the zombie is reaped by `subprocess` when the next helper starts."""
        self._process.kill()
        for pipe in (self._process.stdin, self._process.stdout):
            try:
                pipe.close()
            except OSError:  # unflushed input to a dead helper
                pass

    def _exit_signal(self) -> int | None:
        try:
            code = self._process.wait(_REAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None
        return -code if code < 0 else None

    def _read_line(self, timeout_s: float) -> str | None:
        ready, _, _ = select.select([self._process.stdout], [], [], max(timeout_s, 0.0))
        return self._process.stdout.readline().strip() if ready else None


class _Helper:
    """An active helper plus a warm standby, so a killed check does not make the next ones wait for a
    fresh process to import sympy. Thread-safe: checks are serialised by a lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._active: _HelperProcess | None = None
        self._standby: _HelperProcess | None = None
        self._started = False  # whether any helper has been ready (a first helper that never is raises)

    def check(self, gold: str, pred: str, cpu_budget_s: float) -> Verdict:
        """math-verify's verdict, retried once on a fresh helper when the helper crashed or got stuck."""
        with self._lock:
            outcome = self._attempt(gold, pred, cpu_budget_s)
            if outcome in (_CRASHED, _WEDGED):
                outcome = self._attempt(gold, pred, cpu_budget_s)
        return {_CRASHED: Verdict.NOT_EQUAL, _WEDGED: Verdict.TIMED_OUT}.get(outcome) or Verdict(outcome)

    def _attempt(self, gold: str, pred: str, cpu_budget_s: float) -> str:
        self._replace_dead_helpers()
        if not self._active.wait_ready(_STARTUP_TIMEOUT_S):
            if not self._started:
                raise RuntimeError(f"the math-verify helper ({_HelperProcess._SCRIPT}) did not start; "
                                   "is math-verify installed?")
            self._active.kill()
            outcome = _WEDGED
        else:
            self._started = True
            outcome = self._active.ask(gold, pred, cpu_budget_s, WALL_LIMIT_S)
        if not self._active.alive() or outcome in (_CRASHED, _WEDGED):
            self._active = None  # the standby takes over on the next attempt
        return outcome

    def _replace_dead_helpers(self) -> None:
        if self._active is None or not self._active.alive():
            self._active, self._standby = self._standby, None
            if self._active is None or not self._active.alive():
                self._active = _HelperProcess()
        if self._standby is None or not self._standby.alive():
            self._standby = _HelperProcess()


class _Cache:
    """A thread-safe LRU map (gold, pred) → Verdict."""

    def __init__(self, size: int):
        self._size, self._lock, self._items = size, threading.Lock(), collections.OrderedDict()

    def get(self, key: tuple[str, str]) -> Verdict | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key: tuple[str, str], value: Verdict) -> None:
        with self._lock:
            self._items[key] = value
            if len(self._items) > self._size:
                self._items.popitem(last=False)


_HELPER = _Helper()
_CACHE = _Cache(CACHE_SIZE)


def warm_up() -> None:
    """Start the math-verify helpers now (they take about a second to import sympy), not on first use."""
    _HELPER.check("0", "0", CPU_BUDGET_S)


def math_verdict(gold: str, pred: str, cpu_budget_s: float = CPU_BUDGET_S) -> Verdict:
    """AGRPO's `verify(parse("$gold$"), parse("$pred$"))` as a Verdict; screened-out answers are NOT_EQUAL.

    Waits for a helper when none is ready (only the first check of a process, or one right after a kill).
    """
    if screen(pred) is not None:
        return Verdict.NOT_EQUAL
    key = (gold, pred)
    verdict = _CACHE.get(key)
    if verdict is None:
        verdict = _HELPER.check(gold, pred, cpu_budget_s)
        if not verdict.timed_out:  # a timeout is not remembered as a verdict: the answer is checked again
            _CACHE.put(key, verdict)
    return verdict
