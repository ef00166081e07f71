"""The per-step line of a run without progress bars: step, reward, accuracy when evaluated, seconds per step, ETA."""
import io

from dllm_rl import progress


def test_step_line_reports_rate_and_time_left_from_the_steps_run_here():
    now = [100.0]
    log = progress.StepLog(start_step=10, num_steps=40, stream=io.StringIO(), clock=lambda: now[0])
    now[0] = 130.0  # 3 steps (11, 12, 13) in 30 s: 10 s per step, 27 steps left
    assert log.line(13, {"reward_mean": 1.23456}, now[0]) == "step 13/40  reward 1.235  10.0 s/step  ETA 0:04:30"
    row = {"reward_mean": 2.0, "eval_accuracy": 0.4567}
    assert log.line(13, row, now[0]) == "step 13/40  reward 2.000  accuracy 45.7%  10.0 s/step  ETA 0:04:30"


def test_emit_writes_one_flushed_line():
    class Flushes(io.StringIO):
        flushed = 0

        def flush(self):
            self.flushed += 1

    stream = Flushes()
    log = progress.StepLog(0, 2, stream=stream, clock=lambda: 0.0)
    log.emit(1, {"reward_mean": 0.5})
    assert stream.getvalue().count("\n") == 1 and stream.getvalue().startswith("step 1/2") and stream.flushed


def test_format_seconds():
    assert progress.format_seconds(3725.4) == "1:02:05" and progress.format_seconds(-3) == "0:00:00"
