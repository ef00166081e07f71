"""Environments for test subprocesses: N fake CPU devices, and XLA's fast-compile flags, keeping the session's
other XLA flags.

`FAST_COMPILE_FLAGS` turn LLVM's optimisations off: about half the compile time for 1.5-2x slower execution (the
same HLO; rounding may differ in the last bits). tests/conftest.py sets them for the whole fast tier; slow-tier
tests whose subprocesses only compile and run a few steps (sweeps, two-process runs, the tpu/ recipe) ask for them
with `fast_compile=True`. The demo-accuracy tests, which execute hundreds of steps, keep XLA's defaults.
"""
from __future__ import annotations

import os

FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


def xla_flags(devices: int | None = None, fast_compile: bool = False) -> str:
    """The session's XLA_FLAGS with the host device count replaced by `devices` (when given) and the fast-compile
    flags added (with `fast_compile`)."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    if devices is not None:
        flags = [f"--xla_force_host_platform_device_count={devices}",
                 *(f for f in flags if not f.startswith("--xla_force_host_platform_device_count"))]
    if fast_compile:
        flags += [f for f in FAST_COMPILE_FLAGS if f not in flags]
    return " ".join(flags)


def fake_devices_env(devices: int, *, fast_compile: bool = False, **extra: str) -> dict[str, str]:
    """os.environ on the CPU backend with `devices` host devices, plus the session's other XLA flags (the fast-
    compile flags tests/conftest.py sets for the fast tier; with `fast_compile`, in either tier) and `extra`."""
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices, fast_compile), **extra)


def fast_compile_env(**extra: str) -> dict[str, str]:
    """os.environ on the CPU backend with the fast-compile flags added to the session's XLA flags, plus `extra`:
    for subprocesses that compile many programs and run each a few times, in either tier."""
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(fast_compile=True), **extra)
