"""A stop every process agrees on: SIGTERM (a Spot/preemption notice, `tpu/stop.sh`) to any one process of a run
makes all of them stop at the same point of the program.

Each process's handler only sets a local flag. The trainer asks `StopRequest.agreed()` at fixed points of its loop
that every process reaches in the same order (before each micro-batch of a step, and at each step end); with
several processes that is one tiny all-gather of the flags, so every process gets the same answer at the same
point and none is left waiting in a collective the others skipped. A local flag read at a step end is not enough:
processes that see a signal on different sides of a step boundary would disagree, one saving while the others
enter the next step's collectives, and the job would hang.

JAX's own preemption sync point (`multihost_utils.reached_preemption_sync_point`, which Orbax's
`CheckpointManager.reached_preemption` uses) agrees only once per step; a step of the 8B is minutes long and a
Spot notice is about 30 s, so the trainer checks between micro-batches too.
"""
from __future__ import annotations

import signal
import sys

from dllm_rl.parallel import multihost


class StopRequest:
    """Context manager: while active, SIGTERM sets `requested_here`; `agreed()` says whether any process got one."""

    def __init__(self):
        self.requested_here = False
        self._agreed = False
        self._previous = None

    def __enter__(self) -> "StopRequest":
        def handler(signum, frame):
            if not self.requested_here:
                print("SIGTERM: stopping at the next micro-batch or step boundary; a checkpoint will be saved",
                      file=sys.stderr, flush=True)
            self.requested_here = True

        try:
            self._previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def agreed(self) -> bool:
        """True once any process has been asked to stop (sticky). Every process must call it at the same points."""
        if not self._agreed:
            self._agreed = multihost.any_process(self.requested_here)
        return self._agreed
