"""Shared test fixtures: paths of the golden data copied into tests/fixtures.

The whole suite runs with implicit rank promotion disabled, so a broadcast that silently adds leading axes
(e.g. [B] + [B, L]) is an error in tests rather than a wrong-shaped result. Under CI (`CI=true`) a skip is a
failure: a missing libtpu, nbclient, shellcheck or wandb must not hide an area of the suite.

Compiling XLA programs is most of this suite's time (tiny models whose programs run a few times each), so
compiled programs are shared across tests: the session uses one persistent XLA compilation cache (JAX's own, the
one `experiments.run --compilation_cache` uses) in a fresh temporary folder, removed at the end, unless
JAX_COMPILATION_CACHE_DIR names one (`./run test` shares one between its fast and slow tiers). Subprocesses
inherit it through that variable (tests starting `experiments.run`, whose cache defaults to
WORKDIR/compilation_cache, pass it as --compilation_cache), so a program that several tests compile the same way
(a trainer's step, a sampler configuration) compiles once.
"""
import os
import pathlib
import shutil
import tempfile

import jax
import pytest

from tests.helpers.xla_env import xla_flags

jax.config.update("jax_numpy_rank_promotion", "raise")

_OWN_CACHE_DIR = None if os.environ.get("JAX_COMPILATION_CACHE_DIR") else tempfile.mkdtemp(prefix="dllm_rl_tests_xla_")
if _OWN_CACHE_DIR:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE_DIR
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
# Cache programs that take half a second or more to compile (JAX's default: 1 s), here and in subprocesses.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


# `./run test` runs each tier on pytest-xdist workers that take whole modules (--dist loadfile) in collection order;
# the costliest modules are collected first so that none of them starts last and leaves one worker running alone.
# Order from CPU seconds per module measured on 2026-12-06 (BENCHMARKS.md "Test suite"); unlisted modules follow.
_COSTLIEST_MODULES_FIRST = ("test_train.py", "test_sampling.py", "test_multihost.py", "test_sweep.py",
                            "test_tpu_recipe.py", "test_sampling_fast.py", "test_tasks_fuzz.py", "test_evaluate.py",
                            "test_lora.py", "test_agrpo.py", "test_notebooks.py", "test_truncation.py")


# The fast tier's programs are tiny and mostly run a few times, so compiling them is most of its time: it compiles
# with LLVM's optimisations off (about half the compile time for 1.5-2x slower execution; the same HLO, rounding
# may differ in the last bits, e.g. without fused multiply-adds). The slow tier keeps XLA's defaults: its end-to-end
# runs execute for long (its subprocesses that compile much and execute little ask for the flags themselves:
# tests/helpers/xla_env.py).
# Subprocesses inherit the flags (tests/helpers/xla_env.py keeps them with the device count).
def pytest_configure(config):
    if config.getoption("markexpr", "").strip() == "slow":
        return
    os.environ["XLA_FLAGS"] = xla_flags(fast_compile=True)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_COSTLIEST_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module keeps its own order


def pytest_unconfigure(config):
    if _OWN_CACHE_DIR:
        shutil.rmtree(_OWN_CACHE_DIR, ignore_errors=True)


FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_dir() -> pathlib.Path:
    """The tiny MHA LLaDA checkpoint (HF layout) with its golden.npz."""
    return FIXTURES / "llada_tiny"


@pytest.fixture(scope="session")
def tiny_gqa_dir() -> pathlib.Path:
    return FIXTURES / "llada_tiny" / "gqa"


@pytest.fixture(scope="session")
def tiny_tokenizer_dir() -> pathlib.Path:
    """Character-level tokenizer in LLaDA's format matching the tiny model (vocab 160, EOS 150, mask 156);
    written by `dllm_rl.tokenizer.build_char_tokenizer` (see tests/fixtures/tiny_tokenizer/README.md)."""
    return FIXTURES / "tiny_tokenizer"


@pytest.fixture
def uncompiled_generate(monkeypatch):
    """`sampling.generate` whose compiled program raises if reached: input errors must come before compiling."""
    import importlib

    module = importlib.import_module("dllm_rl.sampling.generate")

    def no_compile(*args, **kwargs):
        raise AssertionError("reached the compiled program")

    monkeypatch.setattr(module, "_generate", no_compile)
    return module.generate


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _fail_skips_in_ci(report) -> None:
    if report.skipped and _in_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every area must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skips_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_skips_in_ci(outcome.get_result())
