"""Multi-host training: 2 processes × 4 fake CPU devices (gloo) train exactly as 1 process × 8 devices, with FSDP
and with data parallelism; a 2-process checkpoint resumes in 1 process."""
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from dllm_rl.checkpoint import load_orbax
from dllm_rl.metrics import read_metrics
from dllm_rl.rl.train import FINAL_MODEL_DIR, TIMING_KEYS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "experiments/configs/demo.gin")
# 3 steps of the demo model, no SFT, no evaluation: 2 prompts × G=4 = 8 rollout rows (one per device).
TINY = ["dllm_rl.TrainConfig.num_steps = 3", "dllm_rl.TrainConfig.sft_steps = 0", "dllm_rl.TrainConfig.eval_every = 0",
        "dllm_rl.TrainConfig.prompts_per_micro_batch = 2", "dllm_rl.TrainConfig.checkpoint_every = 2",
        "dllm_rl.AGRPOConfig.num_generations = 4", "dllm_rl.AGRPOConfig.mc_samples = 2",
        "experiment.mesh = @dllm_rl.MeshConfig()"]
FSDP = "dllm_rl.MeshConfig.shape = {'data': 1, 'fsdp': 8, 'tensor': 1}"
DATA = "dllm_rl.MeshConfig.shape = {'data': 8, 'fsdp': 1, 'tensor': 1}"
TIMEOUT = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(workdir, mesh, num_processes=1):
    """Runs `experiments.run` as `num_processes` processes sharing 8 fake CPU devices; returns the metric rows."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // num_processes}")
    cmd = [sys.executable, "-m", "experiments.run", "--gin", DEMO, "--workdir", str(workdir), "--no_progress"]
    for binding in TINY + [mesh]:
        cmd += ["--gin_binding", binding]
    if num_processes > 1:
        cmd += ["--coordinator_address", f"127.0.0.1:{_free_port()}", "--num_processes", str(num_processes)]
    procs = [subprocess.Popen(cmd + (["--process_id", str(i)] if num_processes > 1 else []), cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(num_processes)]
    try:
        outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(workdir)]


def _assert_same_run(rows, params, ref_rows, ref_params):
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
    for row, ref in zip(rows, ref_rows):
        assert row.keys() == ref.keys()
        for k in ref:
            np.testing.assert_allclose(row[k], ref[k], rtol=2e-4, atol=1e-5, err_msg=f"step {ref['step']} {k}")
    for a, b in zip(_leaves(params), _leaves(ref_params)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def _leaves(params):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(params)]


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_in_one(tmp_path):
    ref_rows = _train(tmp_path / "ref", FSDP)
    _, ref_params = load_orbax(tmp_path / "ref" / FINAL_MODEL_DIR)
    assert [r["step"] for r in ref_rows] == [1, 2, 3]

    for name, mesh in (("fsdp", FSDP), ("data", DATA)):
        rows = _train(tmp_path / name, mesh, num_processes=2)
        assert sorted(os.listdir(tmp_path / name / "checkpoints")) == ["2", "3"]
        assert os.path.exists(tmp_path / name / "operative_config.gin")
        _assert_same_run(rows, load_orbax(tmp_path / name / FINAL_MODEL_DIR)[1], ref_rows, ref_params)

    # The 2-process FSDP run's step-2 checkpoint, resumed by 1 process on a data-parallel mesh, redoes step 3.
    shutil.copytree(tmp_path / "fsdp", tmp_path / "resumed", ignore=shutil.ignore_patterns(FINAL_MODEL_DIR))
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "3")
    rows = _train(tmp_path / "resumed", DATA)
    _assert_same_run(rows, load_orbax(tmp_path / "resumed" / FINAL_MODEL_DIR)[1], ref_rows, ref_params)
