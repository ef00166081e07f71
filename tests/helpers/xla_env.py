"""Environments for test subprocesses that need N fake CPU devices, keeping the session's XLA flags."""
from __future__ import annotations

import os


def fake_devices_env(devices: int, **extra: str) -> dict[str, str]:
    """os.environ on the CPU backend with `devices` host devices, plus the session's other XLA flags (the fast-
    compile flags tests/conftest.py sets for the fast tier) and `extra` variables."""
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")]
    flags = " ".join([f"--xla_force_host_platform_device_count={devices}", *kept])
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags, **extra)
