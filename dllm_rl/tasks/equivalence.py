"""Math answer equivalence with math-verify, every call bounded by a wall-clock budget.

AGRPO grades with `verify(parse(f"${gold}$"), parse(f"${pred}$"))`. math-verify's own timeouts use
`signal.alarm` (whole seconds, main thread only), and some inputs hang inside C code that no signal can
interrupt (sympy evaluating `9^{9^{9}}`). So the check runs in a helper process (`verify_helper.py`),
and one `math_equal` call never takes longer than CALL_BUDGET_S (plus microseconds of bookkeeping):
the budget covers waiting for the lock, for a helper to be ready and for its reply. An answer past the
budget counts as "not equal" and its helper is killed; a warm standby takes over. If no helper is ready
(two kills within the ~1 s a fresh helper needs to import sympy), the call answers "not equal" rather
than wait. Only the very first check of a process waits for the first helper to start (`warm_up`).

Results are cached per (gold, pred): RL groups repeat answers, and an answer that ran out of time once
is not retried (so it is not graded differently from one call to the next).
"""
from __future__ import annotations

import collections
import json
import pathlib
import select
import subprocess
import sys
import threading
import time

from dllm_rl.tasks.math_screen import screen

CALL_BUDGET_S = 0.4  # the longest one check may take; an overdue check counts as "not equal"
CACHE_SIZE = 8_192  # (gold, pred) pairs remembered; answers are at most 4,096 characters
_STARTUP_TIMEOUT_S = 120.0  # importing sympy in the first helper can take seconds on a loaded machine


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

    def ask(self, gold: str, pred: str, timeout_s: float) -> str | None:
        """The reply ("1" or "0"), or None when it did not come within `timeout_s` or the helper died."""
        try:
            self._process.stdin.write(json.dumps([gold, pred]) + "\n")
            self._process.stdin.flush()
            return self._read_line(timeout_s)
        except (OSError, ValueError):  # the helper died (e.g. a C stack overflow)
            return None

    def kill(self) -> None:
        """SIGKILL without waiting: the zombie is reaped by `subprocess` when the next helper starts."""
        self._process.kill()
        self._process.stdin.close()
        self._process.stdout.close()

    def _read_line(self, timeout_s: float) -> str | None:
        ready, _, _ = select.select([self._process.stdout], [], [], max(timeout_s, 0.0))
        return self._process.stdout.readline().strip() if ready else None


class _Helper:
    """An active helper plus a warm standby, so a killed check does not make the next ones wait for a
    fresh process to import sympy. Thread-safe: calls are serialised by a lock whose wait is budgeted."""

    def __init__(self):
        self._lock = threading.Lock()
        self._active: _HelperProcess | None = None
        self._standby: _HelperProcess | None = None
        self._started = False  # whether any helper has been ready (until then, calls wait for startup)

    def verify(self, gold: str, pred: str, budget_s: float) -> bool | None:
        """True/False from math-verify, or None when no helper was ready in time (nothing was checked)."""
        deadline = time.monotonic() + budget_s
        if not self._lock.acquire(timeout=budget_s):
            return None
        try:
            self._replace_dead_helpers()
            startup = _STARTUP_TIMEOUT_S if not self._started else deadline - time.monotonic()
            if not self._active.wait_ready(startup):
                if not self._started:
                    raise RuntimeError(f"the math-verify helper ({_HelperProcess._SCRIPT}) did not start; "
                                       "is math-verify installed?")
                return None
            if not self._started:
                self._started, deadline = True, time.monotonic() + budget_s
            reply = self._active.ask(gold, pred, deadline - time.monotonic())
            if reply in ("0", "1"):
                return reply == "1"
            self._active.kill()  # overdue or crashed: the standby takes over on the next call
            self._active = None
            return False
        finally:
            self._lock.release()

    def _replace_dead_helpers(self) -> None:
        if self._active is None or not self._active.alive():
            self._active, self._standby = self._standby, None
            if self._active is None or not self._active.alive():
                self._active = _HelperProcess()
        if self._standby is None or not self._standby.alive():
            self._standby = _HelperProcess()


class _Cache:
    """A thread-safe LRU map (gold, pred) → bool."""

    def __init__(self, size: int):
        self._size, self._lock, self._items = size, threading.Lock(), collections.OrderedDict()

    def get(self, key: tuple[str, str]) -> bool | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key: tuple[str, str], value: bool) -> None:
        with self._lock:
            self._items[key] = value
            if len(self._items) > self._size:
                self._items.popitem(last=False)


_HELPER = _Helper()
_CACHE = _Cache(CACHE_SIZE)


def warm_up() -> None:
    """Start the math-verify helpers now (they take about a second to import sympy), not on first use."""
    _HELPER.verify("0", "0", CALL_BUDGET_S)


def math_equal(gold: str, pred: str, budget_s: float = CALL_BUDGET_S) -> bool:
    """AGRPO's `verify(parse("$gold$"), parse("$pred$"))`; False for screened-out or overdue checks.

    Returns within `budget_s` once the first helper has started (see the module docstring).
    """
    if screen(pred) is not None:
        return False
    key = (gold, pred)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    result = _HELPER.verify(gold, pred, budget_s)
    if result is None:  # no helper was ready: not graded this time, and not remembered
        return False
    _CACHE.put(key, result)
    return result
