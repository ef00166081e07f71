"""The TPU VM launch scripts in `tpu/`: every script's `--dry-run` output (the exact gcloud / remote command
lines a real run executes), flag and environment-variable handling (only DLLM_TPU_* variables are read), the
checks that refuse a run before anything starts (dirty tree, non-shared workdir), the quoting helper, and
shellcheck.

The scripts run under bash with a `gcloud` on PATH that fails the test if called: dry runs never call it, so
neither gcloud nor a Google Cloud project is needed. `setup.sh` (which refuses a git tree with uncommitted
changes) and the tpu/README command lines run from a committed copy of `tpu/` and `setup.py`, so the outcome does
not depend on the state of this working tree. The whole recipe, run for real against a fake gcloud that emulates
a 2-worker slice on this machine, is tests/test_tpu_recipe.py.
"""
from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU_DIR = REPO / "tpu"
SCRIPTS = sorted(p.name for p in TPU_DIR.glob("*.sh") if p.name != "common.sh")
LOCATION = ["--project", "my-proj", "--zone", "us-east5-a", "--tpu-name", "my-tpu"]
CKPT = "gs://bucket/llada8b"
WORKDIR = "gs://bucket/runs/gsm8k"


def git(*args, cwd):
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=cwd, check=True,
                   capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def clean_repo(tmp_path_factory):
    """A committed git repository holding a copy of tpu/ and setup.py: setup.sh copies HEAD and refuses a tree
    with uncommitted changes, so its dry runs need a clean tree whatever the state of this checkout."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(TPU_DIR, root / "tpu")
    shutil.copy(REPO / "setup.py", root)
    git("init", "--quiet", cwd=root)
    git("add", "-A", cwd=root)
    git("commit", "--quiet", "-m", "copy", cwd=root)
    return root


@pytest.fixture
def env(tmp_path):
    """A minimal environment whose `gcloud` records any call and fails."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gcloud"
    fake.write_text(f"#!/bin/sh\necho called >> {tmp_path / 'gcloud_called'}\nexit 97\n")
    fake.chmod(0o755)
    yield {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    assert not (tmp_path / "gcloud_called").exists(), "a dry run called gcloud"


def run_script(env, script, *args, extra_env=None, check=True, tpu_dir=TPU_DIR):
    proc = subprocess.run(["bash", str(tpu_dir / script), *args], env={**env, **(extra_env or {})},
                          capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def dry_run(env, script, *args, extra_env=None, tpu_dir=TPU_DIR):
    """The printed commands, each split into its argv as the shell would."""
    out = run_script(env, script, "--dry-run", *args, extra_env=extra_env, tpu_dir=tpu_dir).stdout
    return [shlex.split(line) for line in out.splitlines()]


def option(argv, name):
    """The value of `--name=value` or `--name value` in argv."""
    for i, word in enumerate(argv):
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
        if word == name:
            return argv[i + 1]
    raise AssertionError(f"{name} not in {argv}")


def contains(words, sub):
    """Whether `sub` occurs in `words` as a contiguous run."""
    return any(words[i:i + len(sub)] == sub for i in range(len(words) - len(sub) + 1))


def ssh_command(argv, worker):
    """Checks an ssh line's target and returns its remote command split into words."""
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"], argv
    assert f"--worker={worker}" in argv and "--zone=us-east5-a" in argv and "--project=my-proj" in argv
    return shlex.split(option(argv, "--command"))


def launched(words, job):
    """The words of a background launch (`... rm -f JOB.exit && { setsid nohup bash -c JOB_COMMAND > JOB.log ...
    & echo $! > JOB.pid; }`): checks the wrapper and returns JOB_COMMAND's words, without the wrapper's
    `trap : TERM;` and `; echo $? > JOB.exit`."""
    start = words.index("setsid")
    assert words[start - 5:start] == ["rm", "-f", f"{job}.exit", "&&", "{"], words
    assert words[start:start + 3] == ["setsid", "nohup", "bash"] and words[start + 3] == "-c"
    assert words[start + 5:] == [">", f"{job}.log", "2>&1", "<", "/dev/null", "&", "echo", "$!", ">", f"{job}.pid;",
                                 "}"], words
    inner = shlex.split(words[start + 4])
    assert inner[:3] == ["trap", ":", "TERM;"] and inner[-4:] == ["echo", "$?", ">", f"{job}.exit"], inner
    inner = inner[3:-4]
    inner[-1] = inner[-1].removesuffix(";")
    return inner


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_common_flags(env, script):
    text = run_script(env, script, "--help").stdout
    assert text.startswith(f"Usage: tpu/{script}")
    for flag in ("--project", "--zone", "--tpu-name", "--dry-run", "--help"):
        assert flag in text


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_strict_and_executable(script):
    path = TPU_DIR / script
    assert os.access(path, os.X_OK)
    assert "set -euo pipefail" in path.read_text()


def test_unknown_flag_and_missing_setting_fail_with_the_flag_name(env):
    proc = run_script(env, "create.sh", "--dry-run", "--bogus", check=False)
    assert proc.returncode == 2 and "--bogus" in proc.stderr
    proc = run_script(env, "create.sh", "--dry-run", "--project", "p", "--tpu-name", "t", check=False)
    assert proc.returncode == 2 and "--zone (or env DLLM_TPU_ZONE) is required" in proc.stderr
    proc = run_script(env, "train.sh", "--dry-run", *LOCATION, "--ckpt", CKPT, check=False)
    assert proc.returncode == 2 and proc.stderr == "error: --workdir is required\n"
    proc = run_script(env, "create.sh", "--dry-run", "--project", check=False)
    assert proc.returncode == 2 and "needs a value" in proc.stderr


def test_create_tpu_vm(env):
    (argv,) = dry_run(env, "create.sh", *LOCATION, "--spot")
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "my-tpu"]
    assert option(argv, "--accelerator-type") == "v5p-8"
    assert option(argv, "--version") == "v2-alpha-tpuv5"
    assert option(argv, "--zone") == "us-east5-a" and option(argv, "--project") == "my-proj"
    assert "--spot" in argv and "--reserved" not in argv


def test_create_takes_settings_from_the_environment_and_flags_override_them(env):
    settings = {"DLLM_TPU_PROJECT": "env-proj", "DLLM_TPU_ZONE": "us-west4-a", "DLLM_TPU_NAME": "env-tpu",
                "DLLM_TPU_ACCELERATOR_TYPE": "v5litepod-16"}
    (argv,) = dry_run(env, "create.sh", extra_env=settings)
    assert argv[5] == "env-tpu" and option(argv, "--zone") == "us-west4-a"
    assert option(argv, "--accelerator-type") == "v5litepod-16" and option(argv, "--version") == "v2-alpha-tpuv5-lite"
    (argv,) = dry_run(env, "create.sh", "--zone=europe-west4-b", "--runtime-version", "tpu-ubuntu2204-base",
                      extra_env=settings)
    assert option(argv, "--zone") == "europe-west4-b" and option(argv, "--version") == "tpu-ubuntu2204-base"
    # the shell variables' own names are not read from the environment
    unprefixed = {"PROJECT": "env-proj", "ZONE": "us-west4-a", "TPU_NAME": "env-tpu", "ACCELERATOR_TYPE": "v6e-8",
                  "SPOT": "1", "DRY_RUN": "1"}
    (argv,) = dry_run(env, "create.sh", *LOCATION, extra_env=unprefixed)
    assert argv[5] == "my-tpu" and option(argv, "--accelerator-type") == "v5p-8" and "--spot" not in argv
    proc = run_script(env, "create.sh", extra_env=unprefixed, check=False)
    assert proc.returncode == 2 and "--project (or env DLLM_TPU_PROJECT) is required" in proc.stderr


# One invocation per script (with the flags it needs), for the environment-isolation test.
ENV_CASES = {
    "checkpoint.sh": ["--hf-dir", "gs://bucket/hf", "--ckpt", CKPT],
    "create.sh": [],
    "delete.sh": [],
    "eval.sh": ["--workdir", WORKDIR, "--ckpt", CKPT, "--out", WORKDIR + "/eval"],
    "logs.sh": [],
    "setup.sh": [],
    "stop.sh": [],
    "train.sh": ["--workdir", "/mnt/shared/run", "--ckpt", CKPT],
}
# Every shell variable the scripts use for a setting, under its own name, plus a few more generic ones.
STRAY_ENV = {name: "stray" for name in (
    "CKPT", "WORKER", "JOB", "OUT", "STAGE_DIR", "WORKDIR", "PROJECT", "ZONE", "TPU_NAME", "ACCELERATOR_TYPE",
    "REMOTE_DIR", "GIN", "MESH", "TASK", "LENGTHS", "RESULTS_DIR", "HF_DIR", "DTYPE", "SCRATCH", "LOCAL_PYTHON",
    "REPO_URL", "REPO_REF", "PYTHON_VERSION", "JAX_SPEC", "TARBALL", "QUEUED_RESOURCE", "RUNTIME_VERSION",
    "VALID_UNTIL", "SCOPES", "TAIL_LINES", "WORKERS", "COMPILATION_CACHE", "JOB_ENV", "BINDINGS", "EVAL_ARGS",
    "REMOTE_PYTHON", "REPO_ROOT", "DESCRIPTION")}
STRAY_ENV.update({name: "1" for name in ("SPOT", "RESERVED", "ASYNC", "YES", "MERGED", "SHARED_WORKDIR",
                                         "ALLOW_DIRTY", "NO_FOLLOW", "DRY_RUN")})


def test_env_cases_cover_every_script():
    assert sorted(ENV_CASES) == SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_exported_shell_variables_do_not_change_the_commands(env, clean_repo, script):
    args = [*LOCATION, *ENV_CASES[script]]
    tpu_dir = clean_repo / "tpu"
    plain = run_script(env, script, "--dry-run", *args, tpu_dir=tpu_dir)
    stray = run_script(env, script, "--dry-run", *args, extra_env=STRAY_ENV, tpu_dir=tpu_dir)
    assert plain.stdout and stray.stdout == plain.stdout and stray.stderr == plain.stderr
    help_text = run_script(env, script, "--help", tpu_dir=tpu_dir).stdout
    assert run_script(env, script, "--help", extra_env=STRAY_ENV, tpu_dir=tpu_dir).stdout == help_text


def test_create_queued_resource_waits_for_active(env):
    create, poll = dry_run(env, "create.sh", *LOCATION, "--accelerator-type", "v5litepod-16",
                           "--queued-resource", "my-qr", "--reserved", "--valid-until-duration", "6h")
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "my-qr"]
    assert option(create, "--node-id") == "my-tpu"
    assert option(create, "--accelerator-type") == "v5litepod-16"
    assert option(create, "--runtime-version") == "v2-alpha-tpuv5-lite"
    assert "--reserved" in create and option(create, "--valid-until-duration") == "6h"
    assert poll[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "my-qr"]
    assert len(dry_run(env, "create.sh", *LOCATION, "--queued-resource", "my-qr", "--async")) == 1


def setup_py_jax_requirement():
    match = re.search(r'"jax([<>=!~][^"]*)"', (REPO / "setup.py").read_text())
    return "jax[tpu]" + match.group(1)


def test_setup_copies_this_checkout_and_installs_on_every_worker(env, clean_repo, tmp_path):
    archive, scp, extract, install, check = dry_run(env, "setup.sh", *LOCATION, tpu_dir=clean_repo / "tpu")
    tarball = str(tmp_path / "dllm_rl_src.tar.gz")
    assert archive == ["git", "-C", str(clean_repo), "archive", "--format=tar.gz", f"--output={tarball}", "HEAD"]
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert scp[5] == tarball and "my-tpu:dllm_rl_src.tar.gz" in scp
    assert contains(ssh_command(extract, "all"), ["tar", "-xzf", "dllm_rl_src.tar.gz", "-C", "dllm_rl"])
    words = ssh_command(install, "all")
    assert words[:3] == ["cd", "dllm_rl", "&&"]
    assert contains(words, ["uv", "venv", "--quiet", "--allow-existing", "--python", "3.12", ".venv"])
    assert contains(words, ["--python", ".venv/bin/python", "-e", ".[gcs]", setup_py_jax_requirement()])
    # the check starts JAX the way the trainer does; it must not initialize the distributed runtime itself
    assert ssh_command(check, "all") == ["cd", "dllm_rl", "&&", ".venv/bin/python", "-m", "dllm_rl.parallel.multihost",
                                         "--distributed"]


def test_setup_refuses_uncommitted_changes_unless_allowed(env, clean_repo, tmp_path):
    dirty = tmp_path / "dirty"
    shutil.copytree(clean_repo, dirty)
    (dirty / "untracked.txt").write_text("untracked files are not shipped either, but do not count\n")
    assert len(dry_run(env, "setup.sh", *LOCATION, tpu_dir=dirty / "tpu")) == 5
    with open(dirty / "setup.py", "a") as f:
        f.write("# an uncommitted change\n")
    proc = run_script(env, "setup.sh", "--dry-run", *LOCATION, tpu_dir=dirty / "tpu", check=False)
    assert proc.returncode == 2 and not proc.stdout
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: ") and "uncommitted changes" in line and "would not be shipped" in line
    assert "--allow-dirty" in line
    proc = run_script(env, "setup.sh", "--dry-run", *LOCATION, "--allow-dirty", tpu_dir=dirty / "tpu")
    assert proc.stdout.splitlines()[0].split()[-1] == "HEAD"
    assert proc.stderr.startswith("warning: ") and "uncommitted changes" in proc.stderr
    # cloning --repo-url ships what is pushed there, not this tree: no check
    assert len(dry_run(env, "setup.sh", *LOCATION, "--repo-url", "u", tpu_dir=dirty / "tpu")) == 3


def test_setup_from_git(env):
    fetch = dry_run(env, "setup.sh", *LOCATION, "--repo-url", "https://example.com/dllm_rl.git",
                    "--repo-ref", "v1", "--jax-spec", "jax[tpu]==0.10.2")[0]
    words = ssh_command(fetch, "all")
    assert contains(words, ["git", "clone", "--quiet", "https://example.com/dllm_rl.git", "dllm_rl;"])
    assert contains(words, ["fetch", "--quiet", "origin", "v1"])
    install = dry_run(env, "setup.sh", *LOCATION, "--repo-url", "u", "--jax-spec", "jax[tpu]==0.10.2")[1]
    assert "jax[tpu]==0.10.2" in ssh_command(install, "all")


def test_checkpoint_converts_on_worker_0_on_cpu_and_uploads(env):
    (argv,) = dry_run(env, "checkpoint.sh", *LOCATION, "--hf-dir", "gs://bucket/LLaDA-8B-Instruct", "--ckpt", CKPT)
    words = ssh_command(argv, "0")
    assert words[:3] == ["cd", "dllm_rl", "&&"]  # relative --scratch paths mean the same folder throughout
    assert contains(words, ["rsync", "--recursive", "--delete-unmatched-destination-objects",
                            "gs://bucket/LLaDA-8B-Instruct", "/tmp/dllm_rl_convert/hf"])
    assert contains(words, ["&&", "env", "JAX_PLATFORMS=cpu", ".venv/bin/python", "-m", "dllm_rl.convert", "--hf_dir",
                            "/tmp/dllm_rl_convert/hf", "--out_dir", "/tmp/dllm_rl_convert/out", "--dtype", "bfloat16"])
    assert words[-4:] == ["rsync", "--recursive", "/tmp/dllm_rl_convert/out", CKPT]


def test_checkpoint_converts_locally(env):
    convert, upload = dry_run(env, "checkpoint.sh", "--hf-dir", "/data/LLaDA-8B-Instruct", "--ckpt", CKPT,
                              "--scratch", "/scratch")
    assert convert == ["python3", "-m", "dllm_rl.convert", "--hf_dir", "/data/LLaDA-8B-Instruct", "--out_dir",
                       "/scratch/out", "--dtype", "bfloat16", "--overwrite"]
    assert upload == ["gcloud", "storage", "rsync", "--recursive", "/scratch/out", CKPT]
    proc = run_script(env, "checkpoint.sh", "--dry-run", "--hf-dir", "/x", "--ckpt", "/local", check=False)
    assert proc.returncode == 2 and "gs://" in proc.stderr


def test_train_launches_the_same_command_on_every_worker(env):
    mesh = "{'data': -1, 'fsdp': 4, 'tensor': 1}"
    (argv,) = dry_run(env, "train.sh", *LOCATION, "--workdir", WORKDIR, "--ckpt", CKPT, "--mesh", mesh,
                      "--binding", "dllm_rl.TrainConfig.grad_accum=8", "--env", "LIBTPU_INIT_ARGS=--xla_x=1")
    words = ssh_command(argv, "all")
    assert words[:3] == ["cd", "dllm_rl", "&&"]
    assert contains(words, ["rsync", "--recursive", "--delete-unmatched-destination-objects", CKPT,
                            "/tmp/dllm_rl_train_model", "&&", "rm", "-f", "train.exit"])
    assert launched(words, "train") == [
        "env", "PYTHONUNBUFFERED=1", "LIBTPU_INIT_ARGS=--xla_x=1", ".venv/bin/python", "-m", "experiments.run",
        "--distributed", "--gin", "experiments/configs/gsm8k_agrpo.gin", "--workdir", WORKDIR,
        "--gin_binding", "dllm_rl.ModelSource.ckpt_dir='/tmp/dllm_rl_train_model'",
        "--gin_binding", f"dllm_rl.MeshConfig.shape={mesh}",
        "--gin_binding", "dllm_rl.TrainConfig.grad_accum=8", "--no_progress"]
    assert words.index("setsid") > words.index("rsync")  # the copy finishes before the detached start


def test_train_can_read_the_checkpoint_in_place_and_passes_the_compilation_cache(env):
    (argv,) = dry_run(env, "train.sh", *LOCATION, "--workdir", WORKDIR, "--ckpt", CKPT, "--stage-dir=",
                      "--gin", "experiments/configs/gsm8k_d1.gin", "--compilation-cache", "gs://bucket/xla")
    words = ssh_command(argv, "all")
    assert "rsync" not in words
    job = launched(words, "train")
    assert job[:4] == ["env", "PYTHONUNBUFFERED=1", ".venv/bin/python", "-m"]
    assert contains(job, ["--gin", "experiments/configs/gsm8k_d1.gin"])
    assert f"dllm_rl.ModelSource.ckpt_dir='{CKPT}'" in job
    assert contains(job, ["--compilation_cache", "gs://bucket/xla", "--no_progress"])


def test_train_requires_workdir_and_checkpoint(env):
    proc = run_script(env, "train.sh", "--dry-run", *LOCATION, "--ckpt", CKPT, check=False)
    assert proc.returncode == 2 and "--workdir" in proc.stderr
    proc = run_script(env, "train.sh", "--dry-run", *LOCATION, "--workdir", WORKDIR, check=False)
    assert proc.returncode == 2 and "--ckpt" in proc.stderr


def test_train_dry_run_prints_the_worker_count_query_for_a_local_workdir(env):
    describe, ssh = dry_run(env, "train.sh", *LOCATION, "--workdir", "/mnt/run", "--ckpt", CKPT)
    assert describe == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "my-tpu", "--project=my-proj",
                        "--zone=us-east5-a", "--format=value(networkEndpoints.len())"]
    assert contains(launched(ssh_command(ssh, "all"), "train"), ["--workdir", "/mnt/run"])
    for flags in (["--workers", "1"], ["--shared-workdir"], ["--workers", "4", "--shared-workdir"]):
        assert len(dry_run(env, "train.sh", *LOCATION, "--workdir", "/mnt/run", "--ckpt", CKPT, *flags)) == 1
    proc = run_script(env, "train.sh", "--dry-run", *LOCATION, "--workdir", "/mnt/run", "--ckpt", CKPT,
                      "--workers", "2", check=False)
    assert proc.returncode == 2 and not proc.stdout
    assert "not on gs://" in proc.stderr and "--shared-workdir" in proc.stderr
    proc = run_script(env, "train.sh", "--dry-run", *LOCATION, "--workdir", WORKDIR, "--ckpt", CKPT,
                      "--workers", "two", check=False)
    assert proc.returncode == 2 and "--workers" in proc.stderr


def answering_gcloud(tmp_path, answer):
    """A PATH directory whose `gcloud` records its arguments and prints `answer` to `describe`."""
    bin_dir = tmp_path / "answering"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "answering_calls"
    fake = bin_dir / "gcloud"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\ncase "$*" in *" describe "*) echo {answer} ;; esac\n')
    fake.chmod(0o755)
    return bin_dir, log


@pytest.mark.parametrize("workers, ok", [("1", True), ("2", False)])
def test_train_asks_gcloud_how_many_workers_share_a_local_workdir(tmp_path, workers, ok):
    bin_dir, log = answering_gcloud(tmp_path, workers)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)}
    proc = run_script(env, "train.sh", *LOCATION, "--workdir", "/mnt/run", "--ckpt", CKPT, check=False)
    calls = log.read_text().splitlines()
    assert calls[0].startswith("compute tpus tpu-vm describe my-tpu ")
    assert calls[0].endswith(" --format=value(networkEndpoints.len())")
    if ok:
        assert proc.returncode == 0 and len(calls) == 2 and calls[1].startswith("compute tpus tpu-vm ssh my-tpu ")
    else:
        assert proc.returncode == 2 and len(calls) == 1 and "has 2 workers" in proc.stderr


def test_eval_evaluates_the_trained_policy_on_every_worker_and_uploads_from_process_0(env):
    (argv,) = dry_run(env, "eval.sh", *LOCATION, "--workdir", WORKDIR, "--ckpt", CKPT, "--out", WORKDIR + "/eval",
                      "--arg=--limit=100")
    words = ssh_command(argv, "all")
    assert words[:3] == ["cd", "dllm_rl", "&&"]
    # the base model is staged exactly as train.sh stages it
    assert contains(words, ["rsync", "--recursive", "--delete-unmatched-destination-objects", CKPT,
                            "/tmp/dllm_rl_eval_model"])
    results = "/tmp/dllm_rl_eval_results"
    assert launched(words, "eval") == [
        "rm", "-rf", results, "&&", "env", "PYTHONUNBUFFERED=1", ".venv/bin/python", "-m", "experiments.eval",
        "--distributed", "--task", "gsm8k", "--lengths", "128,256,512", "--lora_dir", WORKDIR,
        "--ckpt_dir", "/tmp/dllm_rl_eval_model", "--out_dir", results, "--limit=100", "&&",
        "if", "[", "-f", f"{results}/summary.json", "];", "then", "gcloud", "storage", "rsync", "--recursive",
        results, WORKDIR + "/eval;", "fi"]


def test_eval_of_the_merged_copy_or_a_model_folder(env):
    (argv,) = dry_run(env, "eval.sh", *LOCATION, "--workdir", WORKDIR, "--merged", "--out", "gs://b/e",
                      "--worker", "0", "--results-dir", "results", "--compilation-cache", "cache")
    words = ssh_command(argv, "0")
    assert contains(words, ["--delete-unmatched-destination-objects", WORKDIR + "/final_model"])
    job = launched(words, "eval")
    assert "--lora_dir" not in job
    assert contains(job, ["--ckpt_dir", "/tmp/dllm_rl_eval_model", "--out_dir", "results", "--compilation_cache",
                          "cache", "&&"])
    assert job[-3:] == ["results", "gs://b/e;", "fi"]
    (argv,) = dry_run(env, "eval.sh", *LOCATION, "--ckpt", CKPT, "--out", "gs://b/base", "--stage-dir=")
    words = ssh_command(argv, "all")
    assert "rsync" not in words[:words.index("setsid")]
    job = launched(words, "eval")
    assert "--lora_dir" not in job and contains(job, ["--ckpt_dir", CKPT])


@pytest.mark.parametrize("flags, message", [
    (["--workdir", WORKDIR], "--ckpt is required with --workdir"),
    (["--workdir", WORKDIR, "--merged", "--ckpt", CKPT], "drop --ckpt"),
    (["--ckpt", CKPT, "--merged"], "--merged needs --workdir"),
    ([], "--workdir (with --ckpt) or --ckpt is required"),
])
def test_eval_rejects_an_unclear_model(env, flags, message):
    proc = run_script(env, "eval.sh", "--dry-run", *LOCATION, "--out", "gs://b/e", *flags, check=False)
    assert proc.returncode == 2 and message in proc.stderr and not proc.stdout


def test_logs_and_stop(env):
    (logs,) = dry_run(env, "logs.sh", *LOCATION, "--lines", "20")
    assert ssh_command(logs, "0") == ["cd", "dllm_rl", "&&", "tail", "-n", "20", "-F", "train.log"]
    assert "--ssh-flag=-t" in logs
    (logs,) = dry_run(env, "logs.sh", *LOCATION, "--no-follow", "--job", "eval", "--worker", "1")
    assert ssh_command(logs, "1") == ["cd", "dllm_rl", "&&", "tail", "-n", "100", "eval.log"]
    assert "--ssh-flag=-t" not in logs
    (stop,) = dry_run(env, "stop.sh", *LOCATION, "--job", "eval", "--worker", "0")
    assert ssh_command(stop, "0") == ["cd", "dllm_rl", "&&", "kill", "-TERM", "--", "-$(cat eval.pid)"]


def test_delete(env):
    (vm,) = dry_run(env, "delete.sh", *LOCATION)
    assert vm == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "my-tpu", "--project=my-proj",
                  "--zone=us-east5-a"]
    (qr,) = dry_run(env, "delete.sh", *LOCATION, "--queued-resource", "my-qr", "--yes")
    assert qr == ["gcloud", "compute", "tpus", "queued-resources", "delete", "my-qr", "--project=my-proj",
                  "--zone=us-east5-a", "--force", "--quiet"]


def readme_commands():
    """The `tpu/*.sh` command lines of tpu/README.md's bash blocks, continuation lines joined."""
    text = (TPU_DIR / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line for line in lines if line.startswith("tpu/")]


def test_readme_commands_are_valid(env, clean_repo):
    commands = readme_commands()
    assert {c.split()[0] for c in commands} == {f"tpu/{s}" for s in SCRIPTS}
    settings = {"DLLM_TPU_PROJECT": "p", "DLLM_TPU_ZONE": "us-east5-a", "DLLM_TPU_NAME": "t", "BUCKET": "b"}
    for command in commands:
        script, rest = command.split(" ", 1) if " " in command else (command, "")
        proc = subprocess.run(["bash", "-c", f"{script} --dry-run {rest}"], cwd=clean_repo, env={**env, **settings},
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout, (command, proc.stderr)


@pytest.mark.parametrize("words", [
    ["plain", "--a=b", "gs://x/y"],
    ["it's", "say \"hi\"", "$HOME", "a b", "", "x'$y'", "{'data': -1}", "back\\slash", "!bang", "~/t", "*"],
])
def test_quote_round_trips_through_bash(env, words):
    script = f'source {shlex.quote(str(TPU_DIR / "common.sh"))}; line=$(q "$@"); eval "set -- $line"; printf "%s\\0" "$@"'
    proc = subprocess.run(["bash", "-c", script, "_", *words], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\0")[:-1] == words


def test_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not on PATH (apt-get install shellcheck)")
    proc = subprocess.run(["shellcheck", "-x", *sorted(str(p) for p in TPU_DIR.glob("*.sh"))], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
