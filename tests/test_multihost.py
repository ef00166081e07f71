"""Multi-host training and sharding strategies: the same 3 training steps (rollout, loss, update) and held-out
evaluations unsharded on one device, by 2 processes × 4 fake CPU devices (gloo) with FSDP and with data parallelism, and — resumed from the
2-process FSDP checkpoint — by 1 process × 8 devices with FSDP × tensor parallelism, give the same metrics and
params within float tolerance."""
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from dllm_rl.checkpoint import load_orbax
from dllm_rl.metrics import read_metrics
from dllm_rl.parallel import mesh as pm, multihost
from dllm_rl.rl.train import FINAL_MODEL_DIR, TIMING_KEYS
from tests.helpers.xla_env import fake_devices_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "experiments/configs/demo.gin")
# 3 steps of the demo model, no SFT: 2 prompts × G=4 = 8 rollout rows (one per device); held-out evaluation of
# 8 examples (one per device) at steps 0 and 3.
TINY = ["dllm_rl.TrainConfig.num_steps = 3", "dllm_rl.TrainConfig.sft_steps = 0", "dllm_rl.TrainConfig.eval_every = 3",
        "dllm_rl.TrainConfig.eval_examples = 8", "dllm_rl.TrainConfig.eval_rows_per_device = 1",
        "dllm_rl.TrainConfig.prompts_per_micro_batch = 2", "dllm_rl.TrainConfig.checkpoint_every = 2",
        "dllm_rl.AGRPOConfig.num_generations = 4", "dllm_rl.AGRPOConfig.mc_samples = 2",
        "experiment.mesh = @dllm_rl.MeshConfig()"]
UNSHARDED = "dllm_rl.MeshConfig.shape = {'data': 1, 'fsdp': 1, 'tensor': 1}"
FSDP = "dllm_rl.MeshConfig.shape = {'data': 1, 'fsdp': 8, 'tensor': 1}"
DATA = "dllm_rl.MeshConfig.shape = {'data': 8, 'fsdp': 1, 'tensor': 1}"
FSDP_TENSOR = "dllm_rl.MeshConfig.shape = {'data': 2, 'fsdp': 2, 'tensor': 2}"
TIMEOUT = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir, mesh, num_processes=1, devices=8, extra=(), flags=()):
    """Starts `experiments.run` (with `flags`) as `num_processes` processes sharing `devices` fake CPU devices."""
    # Compilation dominates these short runs; every run compiles the same way, so results stay comparable.
    env = fake_devices_env(devices // num_processes, fast_compile=True)
    cmd = [sys.executable, "-m", "experiments.run", "--gin", DEMO, "--workdir", str(workdir), "--no_progress",
           "--compilation_cache", os.environ["JAX_COMPILATION_CACHE_DIR"], *flags]  # the session's cache (conftest)
    for binding in TINY + [mesh, *extra]:
        cmd += ["--gin_binding", binding]
    if num_processes > 1:
        cmd += ["--coordinator_address", f"127.0.0.1:{_free_port()}", "--num_processes", str(num_processes)]
    return [subprocess.Popen(cmd + (["--process_id", str(i)] if num_processes > 1 else []), cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(num_processes)]


def _train(workdir, mesh, num_processes=1, devices=8, extra=(), flags=()):
    """Runs `experiments.run` (see `_start`) to the end; returns the metric rows (without timings)."""
    procs = _start(workdir, mesh, num_processes, devices, extra, flags)
    try:
        outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(workdir)]


def _assert_same_run(rows, params, ref_rows, ref_params, params_atol=3e-5):
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
    for row, ref in zip(rows, ref_rows):
        assert row.keys() == ref.keys()
        for k in ref:
            np.testing.assert_allclose(row[k], ref[k], rtol=2e-4, atol=1e-5, err_msg=f"step {ref['step']} {k}")
    for a, b in zip(_leaves(params), _leaves(ref_params)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=params_atol)  # Adam steps are lr = 3e-4 per element


def _leaves(params):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(params)]


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_in_one(tmp_path):
    ref_rows = _train(tmp_path / "ref", UNSHARDED, devices=1)
    _, ref_params = load_orbax(tmp_path / "ref" / FINAL_MODEL_DIR)
    assert [r["step"] for r in ref_rows] == [0, 1, 2, 3]  # step 0: the evaluation before training

    for name, mesh in (("fsdp", FSDP), ("data", DATA)):
        rows = _train(tmp_path / name, mesh, num_processes=2)
        assert sorted(os.listdir(tmp_path / name / "checkpoints")) == ["2", "3"]
        assert os.path.exists(tmp_path / name / "operative_config.gin")
        _assert_same_run(rows, load_orbax(tmp_path / name / FINAL_MODEL_DIR)[1], ref_rows, ref_params)

    # The 2-process FSDP run's step-2 checkpoint, resumed by 1 process on an FSDP × tensor mesh, redoes step 3
    # (the mesh is part of the config: the resume says it changes it on purpose).
    shutil.copytree(tmp_path / "fsdp", tmp_path / "resumed", ignore=shutil.ignore_patterns(FINAL_MODEL_DIR))
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "3")
    rows = _train(tmp_path / "resumed", FSDP_TENSOR, flags=["--allow_config_change"])
    _assert_same_run(rows, load_orbax(tmp_path / "resumed" / FINAL_MODEL_DIR)[1], ref_rows, ref_params)


TRACERL = ["experiment.tracerl = @dllm_rl.TraceRLConfig()", "dllm_rl.TrainConfig.algorithm = 'tracerl'",
           "dllm_rl.TraceRLConfig.num_generations = 4", "dllm_rl.TraceRLConfig.sampling_steps = 8",
           "dllm_rl.TraceRLConfig.shrink = 2", "dllm_rl.TraceRLConfig.post_num = None",
           "dllm_rl.TraceRLConfig.row_batch_size = 8", "dllm_rl.TraceRLConfig.row_batches_per_update = 2",
           "dllm_rl.TrainConfig.num_steps = 2", "dllm_rl.TrainConfig.eval_every = 0",
           "dllm_rl.TrainConfig.sft_steps = 40"]  # a warm start that earns rewards: nonzero advantages


@pytest.mark.slow
def test_tracerl_row_batches_on_two_processes_train_like_one_device(tmp_path):
    """TraceRL regroups the rollout into trace rows chosen on the host (the rows that score something, gathered
    from every process) and cut into row batches: 2 processes × 4 devices (FSDP) pick the same rows in the same
    order and reach the same metrics and params as one device."""
    ref_rows = _train(tmp_path / "ref", UNSHARDED, devices=1, extra=TRACERL)
    assert [r["step"] for r in ref_rows] == [1, 2] and all(r["trace_rows"] == 32 for r in ref_rows)
    assert all(r["reward_std"] > 0 and r["grad_norm"] > 1e-2 for r in ref_rows), ref_rows  # a real update
    rows = _train(tmp_path / "fsdp", FSDP, num_processes=2, extra=TRACERL)
    # (params within one SFT Adam step, 1e-3: an element whose SFT gradient is rounding noise may step either way)
    _assert_same_run(rows, load_orbax(tmp_path / "fsdp" / FINAL_MODEL_DIR)[1],
                     ref_rows, load_orbax(tmp_path / "ref" / FINAL_MODEL_DIR)[1], params_atol=1e-3)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step_and_the_resumed_run_is_exact(tmp_path):
    """A preemption notice reaches one host only: SIGTERM to process 1 of 2 makes both processes stop at the same
    point, save one checkpoint and exit 0; rerunning the same command finishes the run with exactly the metrics
    of an uninterrupted run."""
    longer = ["dllm_rl.TrainConfig.num_steps = 10", "dllm_rl.TrainConfig.checkpoint_every = 0",
              "dllm_rl.TrainConfig.eval_every = 5"]
    stopped = tmp_path / "stopped"
    procs = _start(stopped, FSDP, num_processes=2, extra=longer)
    try:
        deadline = time.time() + TIMEOUT
        while not read_metrics(stopped) or read_metrics(stopped)[-1]["step"] < 1:
            assert time.time() < deadline and all(p.poll() is None for p in procs), "the run did not reach step 1"
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGTERM)  # process 0 (the one writing metrics) gets no signal
        outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0 and "stopped" in out, out[-3000:]
    saved = sorted(int(d) for d in os.listdir(stopped / "checkpoints"))
    assert saved[0] == 0 and len(saved) == 2 and 0 < saved[1] < 10, saved  # step 0 and the stop's one checkpoint
    assert read_metrics(stopped)[-1]["step"] == saved[1] and not (stopped / FINAL_MODEL_DIR).exists()

    resumed = _train(stopped, FSDP, num_processes=2, extra=longer)
    straight = _train(tmp_path / "straight", FSDP, num_processes=2, extra=longer)
    assert [r["step"] for r in straight] == list(range(11))
    assert resumed == straight


# ---- the helpers, in one process ---------------------------------------------------------------------------------

class _Rows:
    """A stand-in sharding whose addressable devices hold the given row spans of a batch."""

    def __init__(self, *spans):
        self.spans = spans

    def addressable_devices_indices_map(self, shape):
        return {i: (slice(a, b),) for i, (a, b) in enumerate(self.spans)}


def test_local_rows_are_the_contiguous_rows_of_this_process():
    assert multihost.local_rows(_Rows((4, 6), (6, 8), (4, 6)), 8) == slice(4, 8)  # replicas counted once
    with pytest.raises(ValueError, match="non-contiguous"):
        multihost.local_rows(_Rows((0, 2), (4, 6)), 8)


def test_single_process_rows_round_trip():
    import jax

    mesh = pm.make_mesh({"data": -1})
    sharding = pm.batch_sharding(mesh, 2)
    x = np.arange(12, dtype=np.int32).reshape(6, 2)
    rows = multihost.local_rows(sharding, 6)
    assert rows == slice(0, 6)
    placed = multihost.place_rows(x[rows], sharding, 6)
    assert placed.sharding == sharding
    np.testing.assert_array_equal(multihost.host_rows(placed, sharding), x)
    np.testing.assert_array_equal(multihost.gather_rows(x, rows, 6), x)
    np.testing.assert_array_equal(multihost.all_rows(placed), x)
    np.testing.assert_array_equal(multihost.all_rows(x), x)
    assert multihost.is_primary() and jax.process_count() == 1
    multihost.sync("no-op with one process")


def test_distributed_start_up_is_explicit_or_any_cloud_tpu_vm():
    assert not multihost.wants_distributed(None, False, tpu_vm=False)
    assert multihost.wants_distributed("10.0.0.1:1234", False, tpu_vm=False)
    assert multihost.wants_distributed(None, True, tpu_vm=False)
    assert multihost.wants_distributed(None, False, tpu_vm=True)  # one host or several: always


def test_any_process_is_the_local_flag_with_one_process():
    assert multihost.any_process(True) and not multihost.any_process(False)


def test_shared_directory_replaces_the_destination(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old").write_text("x")
    with multihost.shared_directory(str(tmp_path / "out")) as tmp_dir:
        (pathlib.Path(tmp_dir) / "new").write_text("y")
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(tmp_path / "out") == ["new"]
