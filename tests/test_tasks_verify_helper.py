"""The helper process: its line protocol, and a CPU-time budget (not wall-clock) that even a check stuck
in C code cannot escape. Each test runs the helper in its own process (`check` sets RLIMIT_CPU)."""
import json
import pathlib
import signal
import subprocess
import sys

from dllm_rl.tasks import verify_helper

SCRIPT = pathlib.Path(verify_helper.__file__)
SLOW = "a b " * 1_000  # seconds of sympy work in Python code


def test_protocol_replies_equal_not_equal_and_timeout():
    helper = subprocess.Popen([sys.executable, "-u", str(SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert helper.stdout.readline().strip() == "ready"
        replies = []
        for request in (["1/2", "0.5", 1.0], ["1", "2", 1.0], ["1", SLOW, 0.1], ["2", "\\sqrt{4}", 1.0]):
            helper.stdin.write(json.dumps(request) + "\n")
            helper.stdin.flush()
            replies.append(helper.stdout.readline().strip())
        assert replies == ["1", "0", verify_helper.TIMEOUT, "1"]  # still serving after a timeout
    finally:
        helper.kill()
        helper.wait()


def _check_with(equal_source: str, cpu_budget_s: float) -> subprocess.CompletedProcess:
    """Runs `verify_helper.check` in a fresh process with `_equal` replaced by `lambda gold, pred: ...`."""
    code = (f"import signal, sys, time; sys.path.insert(0, {str(SCRIPT.parent)!r}); import verify_helper as h; "
            f"signal.signal(signal.SIGPROF, h._on_sigprof); h._equal = lambda gold, pred: {equal_source}; "
            f"print(h.check('1', '1', {cpu_budget_s}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_waiting_is_not_cpu_time():
    assert _check_with("time.sleep(0.5) or True", cpu_budget_s=0.1).stdout.strip() == "1"


def test_python_code_over_budget_is_interrupted():
    assert _check_with("[0 for _ in iter(int, 1)]", cpu_budget_s=0.1).stdout.strip() == verify_helper.TIMEOUT


def test_c_code_over_budget_is_ended_by_the_kernel():
    # one C call with no signal check (minutes of hashing): no Python handler can run before it returns
    result = _check_with("__import__('hashlib').pbkdf2_hmac('sha256', b'x', b'y', 10**9) and True",
                         cpu_budget_s=0.1)
    assert result.returncode == -signal.SIGXCPU and result.stdout == ""
