"""Environments for test subprocesses: N fake CPU devices, and XLA's fast-compile flags, keeping the session's
other XLA flags.

`FAST_COMPILE_FLAGS` turn LLVM's optimisations off: about half the compile time for 1.5-2x slower execution (the
same HLO; rounding may differ in the last bits). tests/conftest.py sets them for the whole fast tier; slow-tier
subprocesses that compile much and execute little (test_multihost's runs with one evaluation row per device, the
8-device MoE layer check) ask for them with `fast_compile=True`. Runs that evaluate the demo's 128-row generate
calls (the sweeps, the tpu/ recipe, the notebook, SIGKILL and resume) execute enough to lose by them (BENCHMARKS.md,
"Test suite"), and the demo-accuracy tests execute hundreds of steps: they keep XLA's defaults.
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

