"""math_verdict: a CPU-time budget, not the machine's load, decides timeouts; timeouts are reported and
never cached; a stuck or crashed helper is replaced and the check retried."""
import os
import pathlib
import random
import select
import signal
import subprocess
import sys
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


@pytest.fixture
def helper_checks(monkeypatch) -> list[tuple[str, str]]:
    """The (gold, pred) of every check that reaches the helpers, in order (test-only: wraps `_HELPER.check`)."""
    calls, check = [], equivalence._HELPER.check

    def recorded(gold, pred, cpu_budget_s):
        calls.append((gold, pred))
        return check(gold, pred, cpu_budget_s)

    monkeypatch.setattr(equivalence._HELPER, "check", recorded)
    return calls


def ready_helpers(timeout_s: float = 120.0) -> equivalence._HelperProcess:
    """The active helper, once it and the standby have imported math-verify (test-only: reaches inside)."""
    warm_up()
    equivalence._HELPER._replace_dead_helpers()
    for helper in (equivalence._HELPER._active, equivalence._HELPER._standby):
        assert helper.wait_ready(timeout_s)
    return equivalence._HELPER._active


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat; a zombie keeps its last value)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_over_budget_is_a_timeout_that_is_not_cached(fresh_cache, helper_checks):
    assert screen(SLOW) is None
    helper = ready_helpers()
    assert math_verdict("1/2", "0.5") is Verdict.EQUAL
    assert math_verdict("1", SLOW, cpu_budget_s=SMALL_BUDGET_S) is Verdict.TIMED_OUT
    assert math_verdict("1", SLOW, cpu_budget_s=SMALL_BUDGET_S) is Verdict.TIMED_OUT
    assert helper_checks.count(("1", SLOW)) == 2  # not cached: the helper checked it again
    assert equivalence._HELPER._active is helper  # the helper answered "timeout" and lives on
    assert math_verdict("\\frac{1}{3}", "1/3") is Verdict.EQUAL
    assert math_verdict("3", "4") is Verdict.NOT_EQUAL


def test_a_helper_ended_by_the_kernel_cpu_limit_is_a_timeout(fresh_cache, monkeypatch):
    """SIGXCPU (RLIMIT_CPU) ends a check stuck in C code; here it is sent by hand once the helper works on the
    request: after the request is sent, when the idle helper has used 0.05 s more CPU (or, should it answer
    first, never: the verdict then fails the test)."""
    helper = ready_helpers()
    pid, stdout, read_line = helper._process.pid, helper._process.stdout, helper._read_line
    idle_s = cpu_seconds(pid)

    def kill_once_busy(timeout_s):  # `ask` waits here for the reply, the request written
        while not select.select([stdout], [], [], 0.01)[0]:
            if cpu_seconds(pid) > idle_s + 0.05:
                os.kill(pid, signal.SIGXCPU)
                break
        return read_line(timeout_s)

    monkeypatch.setattr(helper, "_read_line", kill_once_busy)
    assert math_verdict("1", SLOW, cpu_budget_s=30.0) is Verdict.TIMED_OUT
    assert helper._process.wait(60) == -signal.SIGXCPU
    assert math_verdict("\\sqrt{4}", "2") is Verdict.EQUAL  # the standby took over


def test_a_wedged_helper_is_killed_at_the_wall_limit_and_the_check_retried(fresh_cache, monkeypatch):
    """A stopped helper never answers, so any wall limit expires for it: it gets a short one, and when it is
    killed the limit returns to its default for the retry, which the standby answers however busy the machine."""
    helper = ready_helpers()
    default_limit_s, kill = equivalence.WALL_LIMIT_S, helper.kill

    def kill_and_restore_the_limit():
        monkeypatch.setattr(equivalence, "WALL_LIMIT_S", default_limit_s)
        kill()

    monkeypatch.setattr(equivalence, "WALL_LIMIT_S", 0.1)
    monkeypatch.setattr(helper, "kill", kill_and_restore_the_limit)
    os.kill(helper._process.pid, signal.SIGSTOP)  # uses no CPU, never answers
    assert math_verdict("\\frac{2}{4}", "0.5") is Verdict.EQUAL  # answered by the standby on the retry
    assert helper._process.wait(60) == -signal.SIGKILL
    assert equivalence._HELPER._active not in (helper, None)


def test_a_crashed_helper_is_replaced(fresh_cache):
    helper = ready_helpers()
    helper._process.kill()
    assert math_verdict("\\frac{3}{6}", "0.5") is Verdict.EQUAL


def test_cached_verdicts_are_not_checked_again(fresh_cache, helper_checks):
    ready_helpers()
    assert math_verdict("5", "10/2") is Verdict.EQUAL
    assert math_verdict("5", "10/2") is Verdict.EQUAL
    assert helper_checks.count(("5", "10/2")) == 1


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
