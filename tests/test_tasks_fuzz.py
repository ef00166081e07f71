"""10,000 adversarial completions per task: no exception escapes a reward or score call, none costs > 1 s
of CPU time (this process's plus the math-verify helper's: wall-clock time would measure the machine's
load), every reward lies within its task's `reward_bounds` and every score in [0, 1].

Cross-task on purpose (not one file per task module): the same seeded generator (tests/helpers) drives every
task through the public `Task` interface, so a task added to FUZZ_EXAMPLES is fuzzed the same way.
"""
import os
import pathlib
import random
import time
import zlib

import pytest

from dllm_rl.tasks import REWARD_STYLES, equivalence, get_task, warm_up_math_verify
from tests.helpers.task_completions import FUZZ_EXAMPLES, adversarial_completion

N_COMPLETIONS = 10_000
MAX_SECONDS = 1.0
ROUNDING = 1e-9  # bounds are exact; the sums of float parts may round past them by an ulp


def _cpu_seconds() -> float:
    """CPU seconds used so far by this process and the live math-verify helpers (Linux /proc; reaches into
    the helper pair)."""
    total = time.process_time()
    for helper in (equivalence._HELPER._active, equivalence._HELPER._standby):
        if helper is not None and helper.alive():
            stat = pathlib.Path(f"/proc/{helper._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return total


def _check(task, style, result) -> None:
    if style is None:
        value, (low, high) = result.correct, (0.0, 1.0)
    else:
        value, (low, high) = result.total, task.reward_bounds(style)
    assert value == value and low - ROUNDING <= value <= high + ROUNDING, (style, value, (low, high))
    assert not result.timed_out  # every fuzz answer is screened out or checked well within the CPU budget


# gsm8k and math (the slow answer checkers) run in the slow tier; countdown and sudoku in the fast tier.
@pytest.mark.parametrize("task_name", [pytest.param(name, marks=pytest.mark.slow) if name in ("gsm8k", "math")
                                       else name for name in sorted(FUZZ_EXAMPLES)])
def test_rewards_and_scores_survive_adversarial_completions(task_name):
    task, example = get_task(task_name), FUZZ_EXAMPLES[task_name]
    warm_up_math_verify()
    rng = random.Random(zlib.crc32(task_name.encode()))  # str hash() is salted per process: not reproducible
    durations, max_cpu = [], 0.0
    for i in range(N_COMPLETIONS):
        completion = adversarial_completion(rng)
        calls = [(s, lambda style=s: task.reward(completion, example, style=style)) for s in REWARD_STYLES]
        if i % 10 == 0:
            calls += [(None, lambda: task.score(completion, example)),
                      (None, lambda: task.score(completion, example, strict=True))]
        for style, call in calls:
            start_cpu = _cpu_seconds()
            start = time.perf_counter()
            result = call()
            durations.append(time.perf_counter() - start)
            cpu = _cpu_seconds() - start_cpu
            max_cpu = max(max_cpu, cpu)
            assert cpu < MAX_SECONDS, f"{task_name}: {cpu:.2f} CPU s on {completion[:200]!r}"
            _check(task, style, result)
    durations.sort()
    print(f"{task_name}: {len(durations)} calls, p50 {durations[len(durations) // 2] * 1e3:.2f} ms, "
          f"p99 {durations[int(len(durations) * 0.99)] * 1e3:.1f} ms, max {durations[-1] * 1e3:.0f} ms, "
          f"total {sum(durations):.1f} s; max CPU {max_cpu * 1e3:.0f} ms")
