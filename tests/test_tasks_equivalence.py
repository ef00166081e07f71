"""math_verdict: a CPU-time budget, not the machine's load, decides timeouts; timeouts are reported and
never cached; a stuck or crashed helper is replaced and the check retried."""
import os
import random
import signal
import subprocess
import sys
import threading
import time
import zlib

import pytest

from dllm_rl.tasks import REWARD_STYLES, equivalence, get_task
from dllm_rl.tasks.equivalence import Verdict, math_verdict, warm_up
from dllm_rl.tasks.math_screen import screen
from tests.helpers.task_completions import FUZZ_EXAMPLES, adversarial_completion, hard_equivalent

SMALL_BUDGET_S = 0.2  # CPU seconds: keeps the timeout tests short
# Passes every screen but makes math-verify multiply ~2,000 symbols: seconds of work, over any budget here.
SLOW = "a b " * 1_000


@pytest.fixture
def fresh_cache(monkeypatch):
    """An empty verdict cache, so every check below really runs in the helper."""
    monkeypatch.setattr(equivalence, "_CACHE", equivalence._Cache(equivalence.CACHE_SIZE))


def ready_helpers(timeout_s: float = 120.0) -> equivalence._HelperProcess:
    """The active helper, once it and the standby have imported math-verify (test-only: reaches inside)."""
    warm_up()
    equivalence._HELPER._replace_dead_helpers()
    for helper in (equivalence._HELPER._active, equivalence._HELPER._standby):
        assert helper.wait_ready(timeout_s)
    return equivalence._HELPER._active


def test_over_budget_is_a_timeout_that_is_not_cached(fresh_cache):
    assert screen(SLOW) is None
    ready_helpers()
    assert math_verdict("1/2", "0.5") is Verdict.EQUAL
    assert math_verdict("1", SLOW, cpu_budget_s=SMALL_BUDGET_S) is Verdict.TIMED_OUT
    start = time.process_time(), time.perf_counter()
    assert math_verdict("1", SLOW, cpu_budget_s=SMALL_BUDGET_S) is Verdict.TIMED_OUT
    assert time.perf_counter() - start[1] >= SMALL_BUDGET_S  # checked again (wall ≥ the helper's CPU time)
    assert math_verdict("\\frac{1}{3}", "1/3") is Verdict.EQUAL  # the helper answered "timeout" and lives on
    assert math_verdict("3", "4") is Verdict.NOT_EQUAL


def test_a_helper_ended_by_the_kernel_cpu_limit_is_a_timeout(fresh_cache):
    """SIGXCPU (RLIMIT_CPU) ends a check stuck in C code; here it is sent by hand during a long check."""
    helper = ready_helpers()
    pid = helper._process.pid
    threading.Timer(0.3, os.kill, (pid, signal.SIGXCPU)).start()
    assert math_verdict("1", SLOW, cpu_budget_s=30.0) is Verdict.TIMED_OUT
    assert math_verdict("\\sqrt{4}", "2") is Verdict.EQUAL  # the standby took over


def test_a_wedged_helper_is_killed_at_the_wall_limit_and_the_check_retried(fresh_cache, monkeypatch):
    helper = ready_helpers()
    monkeypatch.setattr(equivalence, "WALL_LIMIT_S", 3.0)
    os.kill(helper._process.pid, signal.SIGSTOP)  # uses no CPU, never answers
    assert math_verdict("\\frac{2}{4}", "0.5") is Verdict.EQUAL  # answered by the standby on the retry
    assert not helper.alive() or helper._process.wait(5) == -signal.SIGKILL


def test_a_crashed_helper_is_replaced(fresh_cache):
    helper = ready_helpers()
    helper._process.kill()
    assert math_verdict("\\frac{3}{6}", "0.5") is Verdict.EQUAL


def test_cached_verdicts_are_not_checked_again(fresh_cache):
    ready_helpers()
    assert math_verdict("5", "10/2") is Verdict.EQUAL
    start = time.perf_counter()
    assert math_verdict("5", "10/2") is Verdict.EQUAL and time.perf_counter() - start < 0.01


# --- verdicts on a saturated machine ----------------------------------------------------------------------

N_HARD = 50  # MATH-500 answers rewritten so that sympy must simplify (~0.06 s each on an idle core)
N_FUZZ = 100  # adversarial completions per task (the fuzz test's generator)
N_GOLDEN = 20  # MATH-500 and GSM8K reference answers, written as AGRPO's format asks


def _reward_cases() -> list[tuple[str, str, dict]]:
    """(task name, completion, example) triples: hard-but-equal, golden and adversarial completions."""
    math_test, gsm_test = get_task("math").load("test"), get_task("gsm8k").load("test")
    cases = [("math", f"<think>x</think><answer>\\boxed{{{hard_equivalent(ex['answer'])}}}</answer>", ex)
             for ex in math_test[:N_HARD]]
    cases += [(name, f"<think>x</think><answer>\\boxed{{{ex['answer']}}}</answer>", ex)
              for name, rows in (("math", math_test), ("gsm8k", gsm_test)) for ex in rows[-N_GOLDEN // 2:]]
    for name, example in sorted(FUZZ_EXAMPLES.items()):
        rng = random.Random(zlib.crc32(name.encode()))
        cases += [(name, adversarial_completion(rng), example) for _ in range(N_FUZZ)]
    return cases


def _rewards(cases) -> list[tuple]:
    """Every reward (both styles) and score of every case, timeout flags included, with an empty cache."""
    equivalence._CACHE = equivalence._Cache(equivalence.CACHE_SIZE)
    out = []
    for name, completion, example in cases:
        task = get_task(name)
        out += [task.reward(completion, example, style=style) for style in REWARD_STYLES]
        out.append(task.score(completion, example))
    return out


@pytest.mark.slow
def test_rewards_do_not_depend_on_machine_load(fresh_cache):
    cases = _reward_cases()
    ready_helpers()
    idle = _rewards(cases)
    hard_rewards = [r.total for r in idle[:3 * N_HARD:3]]
    assert sum(r == 4.0 for r in hard_rewards) >= 0.8 * N_HARD  # the hard set is mostly graded correct
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * os.cpu_count())]
    try:
        loaded = _rewards(cases)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert loaded == idle
    assert not any(r.timed_out for r in idle)
