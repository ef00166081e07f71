"""SIGTERM → a stop request that every process of a run agrees on (one process here; the two-process case, with
the signal sent to one process only, is in test_multihost.py)."""
import os
import signal

from dllm_rl.rl.stopping import StopRequest


def test_sigterm_is_recorded_while_active_and_the_previous_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    stop = StopRequest()
    with stop:
        assert not stop.agreed()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested_here and stop.agreed()
    assert signal.getsignal(signal.SIGTERM) is before


def test_agreement_is_sticky():
    stop = StopRequest()
    stop.requested_here = True
    assert stop.agreed()
    stop.requested_here = False  # a later check still says stop: every process already acted on it
    assert stop.agreed()
