"""One flushed line per training step for runs without progress bars (a TPU worker's log, CI, `nohup`): step,
reward, held-out accuracy when evaluated, seconds per step and the time left, so a log tells progress from a hang.
"""
from __future__ import annotations

import datetime
import sys
import time
from typing import Mapping, TextIO


def format_seconds(seconds: float) -> str:
    """H:MM:SS."""
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


class StepLog:
    """Prints `step k/N  reward r  accuracy a%  s s/step  ETA h:mm:ss` after each step of steps start+1..N; the ETA
    is the mean wall time of the steps this process ran (compilation included) times the steps left."""

    def __init__(self, start_step: int, num_steps: int, stream: TextIO | None = None, clock=time.perf_counter):
        self.start_step, self.num_steps = start_step, num_steps
        self.stream, self.clock = stream, clock
        self.started = clock()

    def line(self, step: int, row: Mapping[str, float], now: float) -> str:
        done = step - self.start_step
        per_step = (now - self.started) / max(done, 1)
        parts = [f"step {step}/{self.num_steps}", f"reward {row['reward_mean']:.3f}"]
        if "eval_accuracy" in row:
            parts.append(f"accuracy {100 * row['eval_accuracy']:.1f}%")
        parts += [f"{per_step:.1f} s/step", f"ETA {format_seconds(per_step * (self.num_steps - step))}"]
        return "  ".join(parts)

    def emit(self, step: int, row: Mapping[str, float]) -> None:
        print(self.line(step, row, self.clock()), file=self.stream or sys.stdout, flush=True)


def say(message: str, stream: TextIO | None = None) -> None:
    """One flushed status line (start, resume, warm start, stop)."""
    print(message, file=stream or sys.stdout, flush=True)
