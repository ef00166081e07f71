"""tpu/README's recipe, run for real through the tpu/*.sh scripts against a fake `gcloud`
(tests/helpers/fake_gcloud.py) that emulates a 2-worker v4-16 slice on this machine: every worker a home
directory, gs:// a local folder, JAX on 4 fake CPU devices per worker, the two workers' processes forming one
JAX job (the fake hands them the coordinator address, process count and index that a real VM's metadata server
would, through the environment of JAX's Slurm detector).

Stages (each asserts its effect): create (v4-16) → setup (a clean commit of this working tree; both workers join
one 2-process job) → checkpoint (the demo model's HF folder converted on worker 0) → train (demo config, 4 steps on
both workers, a shared local workdir) → logs (the per-step lines) → eval (the trained policy on both workers,
summary.json uploaded) → stop (SIGTERM while a longer run is in flight: both exit 0 with one checkpoint) →
resume (the same command finishes the run) → delete. A few minutes on 2 CPU cores.
"""
from __future__ import annotations

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from tests.helpers import fake_gcloud

REPO = pathlib.Path(__file__).resolve().parents[1]
NAME = "dllm-v4"
LOCATION = {"DLLM_TPU_PROJECT": "fake-project", "DLLM_TPU_ZONE": "us-central2-b", "DLLM_TPU_NAME": NAME}
WORKERS = 2
MESH = "{'data': 1, 'fsdp': 8, 'tensor': 1}"
# The demo config shrunk to seconds per step: no SFT warm start, 2 prompts x 4 completions = 8 rows per
# micro-batch (one per device of the 8), the model read from the converted checkpoint instead of initialised.
DEMO = ["--gin", "experiments/configs/demo.gin", "--mesh", MESH, "--stage-dir", "model",
        "--binding", "dllm_rl.ModelSource.init_config=None",
        "--binding", "dllm_rl.TrainConfig.sft_steps=0",
        "--binding", "dllm_rl.TrainConfig.prompts_per_micro_batch=2",
        "--binding", "dllm_rl.TrainConfig.eval_examples=8",
        "--binding", "dllm_rl.TrainConfig.eval_batch_size=8",
        "--binding", "dllm_rl.AGRPOConfig.num_generations=4",
        "--binding", "dllm_rl.AGRPOConfig.mc_samples=2"]
JOB_TIMEOUT = 300


def working_tree_commit(dest: pathlib.Path) -> pathlib.Path:
    """A fresh git repository whose HEAD is this working tree (tracked and untracked-but-not-ignored files as they
    are now, without committing anything here): what setup.sh ships is what is being tested."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             check=True, capture_output=True, timeout=60).stdout.decode().split("\0")
    for rel in filter(None, listing):
        src = REPO / rel
        if src.is_file() and not src.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for args in (["init", "--quiet"], ["add", "-A"], ["commit", "--quiet", "-m", "working tree"]):
        subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=dest,
                       check=True, capture_output=True, timeout=120)
    return dest


def write_demo_hf_folder(out: pathlib.Path) -> None:
    """An HF LLaDA folder (config.json, safetensors, tokenizer) of the randomly initialised demo model, written by
    the library's own exporter: what `hf download` gives for the real model."""
    code = (
        "import json, sys\n"
        "from dllm_rl.checkpoint import load_model\n"
        "from dllm_rl.export import export_hf\n"
        "src = 'dllm_rl/assets/demo_model'\n"
        "config, params = load_model(init_config=src + '/config.json', dtype='float32')\n"
        "raw = json.load(open(src + '/config.json'))\n"
        "export_hf(sys.argv[1], config, params, dtype='float32', raw_config=raw, side_files_dir=src)\n")
    subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, check=True, timeout=300,
                   env={**os.environ, "JAX_PLATFORMS": "cpu"})


class Slice:
    """The fake slice and the scripts run against it (from the committed copy of the repository)."""

    def __init__(self, root: pathlib.Path, repo: pathlib.Path, env: dict):
        self.root, self.repo, self.env = root, repo, env
        self.timings: dict[str, float] = {}

    def script(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["bash", str(self.repo / "tpu" / name), *args], cwd=self.repo, env=self.env,
                              capture_output=True, text=True, timeout=JOB_TIMEOUT)
        if check:
            assert proc.returncode == 0, f"tpu/{name} {shlex.join(args)}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def home(self, worker: int) -> pathlib.Path:
        return self.root / "workers" / NAME / str(worker)

    def repo_dir(self, worker: int) -> pathlib.Path:
        return self.home(worker) / "dllm_rl"

    def bucket(self, path: str = "") -> pathlib.Path:
        return self.root / "gcs" / "bucket" / path

    def calls(self) -> list[dict]:
        return fake_gcloud.read_calls(self.root)

    def logs(self, job: str) -> str:
        return "\n".join(f"--- worker {w} {job}.log ---\n" + (self.repo_dir(w) / f"{job}.log").read_text(errors="replace")
                         for w in range(WORKERS) if (self.repo_dir(w) / f"{job}.log").exists())

    def wait_for(self, job: str, timeout: float = JOB_TIMEOUT) -> list[str]:
        """Waits until the job has ended on every worker (JOB.exit written); returns the exit statuses."""
        deadline = time.monotonic() + timeout
        files = [self.repo_dir(w) / f"{job}.exit" for w in range(WORKERS)]
        while not all(f.exists() and f.read_text().strip() for f in files):
            assert time.monotonic() < deadline, f"{job} did not end within {timeout}s\n{self.logs(job)}"
            time.sleep(1)
        return [f.read_text().strip() for f in files]

    def wait_for_log(self, job: str, text: str, timeout: float = JOB_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        log = self.repo_dir(0) / f"{job}.log"
        while not (log.exists() and text in log.read_text(errors="replace")):
            assert time.monotonic() < deadline, f"no {text!r} in {job}.log within {timeout}s\n{self.logs(job)}"
            exit_file = self.repo_dir(0) / f"{job}.exit"
            assert not exit_file.exists(), f"{job} ended before printing {text!r}\n{self.logs(job)}"
            time.sleep(0.5)

    def timed(self, stage: str):
        slice_ = self

        class Timer:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                slice_.timings[stage] = round(time.perf_counter() - self.start, 1)

        return Timer()


@pytest.fixture
def fake_slice(tmp_path):
    root = tmp_path / "gcloud"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    path = os.pathsep.join([str(bin_dir), os.environ["PATH"]])
    env = {"PATH": path, "HOME": str(tmp_path / "workstation"), "TMPDIR": str(tmp_path), "LANG": "C.UTF-8",
           **LOCATION, **fake_gcloud.install(root, bin_dir, path)}
    (tmp_path / "workstation").mkdir()
    (root / "gcs" / "bucket").mkdir()
    repo = working_tree_commit(tmp_path / "repo")
    fake = Slice(root, repo, env)
    yield fake
    killed = fake_gcloud.kill_jobs(root / "workers", root)  # a failed test leaves no job running
    print(f"stage seconds: {fake.timings}" + (f"; killed leftover job groups {killed}" if killed else ""))


def test_queued_resource_create_and_delete(fake_slice):
    fake_slice.script("create.sh", "--accelerator-type", "v4-16", "--queued-resource", "dllm-qr")
    node = json.loads((fake_slice.root / "slices" / f"{NAME}.json").read_text())
    assert node["acceleratorType"] == "v4-16" and len(node["networkEndpoints"]) == 2
    verbs = [c["argv"][2:4] for c in fake_slice.calls()]
    assert verbs == [["queued-resources", "create"], ["queued-resources", "describe"]]
    fake_slice.script("delete.sh", "--queued-resource", "dllm-qr", "--yes")
    assert not (fake_slice.root / "slices" / f"{NAME}.json").exists()
    assert not (fake_slice.root / "workers" / NAME).exists()


STAND_IN_TRAINER = """#!/bin/bash
# stands for .venv/bin/python: prints its arguments and a line per "step"; SIGTERM: a last line, exit 0
echo "args: $*"
echo "unbuffered: $PYTHONUNBUFFERED process $SLURM_PROCID of $SLURM_NTASKS"
if [ -n "$FAIL" ]; then echo "failing with $FAIL"; exit "$FAIL"; fi
trap 'echo "SIGTERM: checkpoint saved"; exit 0' TERM
step=0
while true; do step=$((step + 1)); echo "step $step"; sleep 0.2; done
"""


def test_jobs_start_log_stop_and_end_with_the_slice(fake_slice):
    """The background-job plumbing of train.sh / logs.sh / stop.sh / delete.sh on both workers, with a stand-in
    for the workers' Python (no setup, no JAX: seconds)."""
    s = fake_slice
    s.script("create.sh", "--accelerator-type", "v4-16")
    for w in range(WORKERS):
        python = s.repo_dir(w) / ".venv" / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text(STAND_IN_TRAINER)
        python.chmod(0o755)
    s.bucket("model").mkdir()
    (s.bucket("model") / "config.json").write_text("{}")
    # (a relative --stage-dir: the fake workers share this machine's /tmp)
    train = ["--workdir", "gs://bucket/run", "--ckpt", "gs://bucket/model", "--stage-dir", "model"]
    s.script("train.sh", *train)
    s.wait_for_log("train", "step 3")
    logs = s.script("logs.sh", "--no-follow", "--lines", "1000").stdout
    assert "unbuffered: 1 process 0 of 2" in logs and "args: -m experiments.run --distributed" in logs
    assert "dllm_rl.ModelSource.ckpt_dir='model'" in logs
    assert all((s.repo_dir(w) / "model" / "config.json").exists() for w in range(WORKERS))
    assert "unbuffered: 1 process 1 of 2" in s.script("logs.sh", "--no-follow", "--worker", "1").stdout
    s.script("stop.sh")
    assert s.wait_for("train", timeout=30) == ["0", "0"]
    for w in range(WORKERS):
        assert (s.repo_dir(w) / "train.log").read_text().endswith("SIGTERM: checkpoint saved\n")
    # a program that fails leaves its status
    s.script("train.sh", *train, "--env", "FAIL=3")
    assert s.wait_for("train", timeout=30) == ["3", "3"]
    # a job still running when the slice is deleted is ended
    s.script("train.sh", *train, "--stage-dir=")
    s.wait_for_log("train", "step 1")
    pgid = int((s.repo_dir(0) / "train.pid").read_text())
    assert fake_gcloud.started_here(pgid, s.root)
    s.script("delete.sh", "--yes")
    deadline = time.monotonic() + 10
    while fake_gcloud.started_here(pgid, s.root) and not is_zombie(pgid):
        assert time.monotonic() < deadline, "the job outlived its slice"
        time.sleep(0.1)


def is_zombie(pid: int) -> bool:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
def test_readme_recipe_on_a_two_worker_slice(fake_slice, tmp_path):
    s = fake_slice
    shared = tmp_path / "shared"  # a folder both workers see: stands for Filestore / gcsfuse
    workdir = str(shared / "run")

    with s.timed("create"):
        s.script("create.sh", "--accelerator-type", "v4-16")
    node = json.loads((s.root / "slices" / f"{NAME}.json").read_text())
    assert node["acceleratorType"] == "v4-16" and node["workers"] == WORKERS

    # setup: ships HEAD of the clean commit, installs (recorded by the workers' python3), checks the job
    with s.timed("setup"):
        setup = s.script("setup.sh")
    assert "process 0 of 2: 4 local devices, 8 global devices (cpu)" in setup.stdout, setup.stdout + setup.stderr
    assert "process 1 of 2: 4 local devices, 8 global devices (cpu)" in setup.stdout, setup.stdout + setup.stderr
    installs = [(c["worker"], c["python3_shim"]) for c in s.calls() if "python3_shim" in c]
    assert sorted(installs) == sorted((str(w), k) for w in range(WORKERS) for k in fake_gcloud.SHIM_INSTALL_COMMANDS)
    for w in range(WORKERS):
        assert (s.repo_dir(w) / "tpu" / "train.sh").read_bytes() == (s.repo / "tpu" / "train.sh").read_bytes()
        assert not (s.repo_dir(w) / ".git").exists()  # git archive of HEAD, not a clone
    # `python -m` from the worker's copy imports that copy, not the test environment's editable install
    probe = ("printf 'import dllm_rl, experiments.run\\nprint(dllm_rl.__file__)\\nprint(experiments.run.__file__)\\n' "
             "> probe_imports.py && .venv/bin/python -m probe_imports; status=$?; rm -f probe_imports.py; exit $status")
    proc = subprocess.run(["gcloud", "compute", "tpus", "tpu-vm", "ssh", NAME, "--project=fake-project",
                           "--zone=us-central2-b", "--worker=all", "--command", f"cd dllm_rl && {probe}"],
                          env=s.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    imported = sorted(proc.stdout.split())
    assert imported == sorted(str(s.repo_dir(w) / f) for w in range(WORKERS)
                              for f in ("dllm_rl/__init__.py", "experiments/run.py")), imported

    # checkpoint: the demo model's HF folder, uploaded, converted on worker 0 (CPU backend), uploaded back
    write_demo_hf_folder(s.bucket("hf/demo"))
    with s.timed("checkpoint"):
        s.script("checkpoint.sh", "--hf-dir", "gs://bucket/hf/demo", "--ckpt", "gs://bucket/demo", "--dtype",
                 "float32", "--scratch", "convert")
    assert (s.bucket("demo") / "config.json").exists() and (s.bucket("demo") / "tokenizer.json").exists()
    assert (s.bucket("demo") / "params").is_dir()
    assert not (s.repo_dir(1) / "convert").exists()  # worker 0 only

    # train: a local workdir is refused on 2 workers (gcloud describe says so) unless shared
    proc = s.script("train.sh", "--workdir", workdir, "--ckpt", "gs://bucket/demo", *DEMO, check=False)
    assert proc.returncode == 2 and "has 2 workers" in proc.stderr, proc.stderr
    assert "describe" in s.calls()[-1]["argv"]
    cache = str(shared / "xla_cache")
    train = ["--workdir", workdir, "--shared-workdir", "--ckpt", "gs://bucket/demo", "--compilation-cache", cache,
             *DEMO, "--binding", "dllm_rl.TrainConfig.num_steps=4", "--binding", "dllm_rl.TrainConfig.checkpoint_every=2",
             "--binding", "dllm_rl.TrainConfig.eval_every=2"]
    with s.timed("train (4 steps)"):
        s.script("train.sh", *train)
        assert s.wait_for("train") == ["0", "0"], s.logs("train")
    steps = [r["step"] for r in read_metrics(workdir) if "reward_mean" in r]
    assert steps == [1, 2, 3, 4], (steps, s.logs("train"))
    assert sorted(r["step"] for r in read_metrics(workdir) if "eval_accuracy" in r) == [0, 2, 4]
    # saves at steps 0 (the start), 2 and 4, of which the last 2 are kept (TrainConfig.keep_checkpoints)
    assert checkpoint_steps(workdir) == [2, 4], (os.listdir(shared / "run" / "checkpoints"), s.logs("train"))
    assert (shared / "run" / "final_model" / "config.json").exists()
    assert os.path.isdir(cache) and os.listdir(cache)  # the persistent compilation cache was used
    for w in range(WORKERS):
        assert (s.repo_dir(w) / "model" / "config.json").exists()  # each worker staged the model itself

    # logs: the per-step lines, without following
    with s.timed("logs"):
        logs = s.script("logs.sh", "--no-follow", "--lines", "200").stdout
    for step in range(1, 5):
        assert f"step {step}/4  reward " in logs, logs
    assert "--ssh-flag=-t" not in s.calls()[-1]["argv"]

    # eval: the trained policy (the run's checkpoint on the staged base model), on both workers
    with s.timed("eval"):
        s.script("eval.sh", "--workdir", workdir, "--ckpt", "gs://bucket/demo", "--task", "increment",
                 "--lengths", "8", "--arg=--block_length=8", "--arg=--steps_per_token=1", "--arg=--limit=8",
                 "--out", "gs://bucket/eval", "--stage-dir", "model", "--results-dir", "eval_results")
        assert s.wait_for("eval") == ["0", "0"], s.logs("eval")
    summary = json.loads(s.bucket("eval/summary.json").read_text())
    assert summary["increment"]["8"]["n"] == 8, summary
    assert (s.bucket("eval") / "summary.md").exists()
    assert not (s.repo_dir(1) / "eval_results" / "summary.json").exists()  # process 0 writes, its worker uploads
    evaluated = [c for c in s.calls() if c.get("argv", [])[:2] == ["storage", "rsync"]
                 and c["argv"][-1] == "gs://bucket/eval"]
    assert [c["worker"] for c in evaluated] == ["0"], evaluated

    # stop: SIGTERM while a longer run is in flight; both workers save one checkpoint together and exit 0
    workdir2 = str(shared / "run2")
    long_run = ["--workdir", workdir2, "--shared-workdir", "--ckpt", "gs://bucket/demo", "--compilation-cache",
                cache, *DEMO, "--binding", "dllm_rl.TrainConfig.num_steps=8",
                "--binding", "dllm_rl.TrainConfig.checkpoint_every=100", "--binding", "dllm_rl.TrainConfig.eval_every=0"]
    with s.timed("stop"):
        s.script("train.sh", *long_run)
        s.wait_for_log("train", "step 1/8  ")
        s.script("stop.sh")
        assert s.wait_for("train") == ["0", "0"], s.logs("train")
    start, saved = checkpoint_steps(workdir2)  # the start's step-0 save and the one the stop made
    assert start == 0 and saved >= 1
    stopped_steps = [r["step"] for r in read_metrics(workdir2) if "reward_mean" in r]
    assert stopped_steps == list(range(1, saved + 1)) and saved < 8, (saved, stopped_steps, s.logs("train"))
    for w in range(WORKERS):
        assert "SIGTERM" in (s.repo_dir(w) / "train.log").read_text()
    assert not (shared / "run2" / "final_model").exists()

    # resume: the same command continues from the saved step and finishes
    with s.timed("resume"):
        s.script("train.sh", *long_run)
        assert s.wait_for("train") == ["0", "0"], s.logs("train")
    resumed_log = (s.repo_dir(0) / "train.log").read_text()
    assert f"(resumed from the step-{saved} checkpoint)" in resumed_log, resumed_log
    assert f"step {saved + 1}/8  " in resumed_log and f"step {saved}/8  " not in resumed_log, resumed_log
    assert [r["step"] for r in read_metrics(workdir2) if "reward_mean" in r] == list(range(1, 9))
    assert checkpoint_steps(workdir2)[-1] == 8 and (shared / "run2" / "final_model" / "config.json").exists()

    with s.timed("delete"):
        s.script("delete.sh", "--yes")
    assert not (s.root / "slices" / f"{NAME}.json").exists() and not (s.root / "workers" / NAME).exists()
    assert all(c["status"] == 0 for c in s.calls() if c.get("worker") is not None), "a call on a worker failed"


def read_metrics(workdir: str) -> list[dict]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def checkpoint_steps(workdir: str) -> list[int]:
    """The step folders under WORKDIR/checkpoints; anything else there (a temporary folder) fails."""
    entries = os.listdir(pathlib.Path(workdir) / "checkpoints")
    assert all(e.isdigit() for e in entries), entries
    return sorted(int(e) for e in entries)
