"""The TPU VM launch scripts in `tpu/`: every script's `--dry-run` output (the exact gcloud / remote command
lines a real run executes), flag and environment-variable handling, the quoting helper, and shellcheck.

The scripts run under bash with a `gcloud` on PATH that fails the test if called: dry runs never call it, so
neither gcloud nor a Google Cloud project is needed.
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


def run_script(env, script, *args, extra_env=None, check=True):
    proc = subprocess.run(["bash", str(TPU_DIR / script), *args], env={**env, **(extra_env or {})},
                          capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def dry_run(env, script, *args, extra_env=None):
    """The printed commands, each split into its argv as the shell would."""
    out = run_script(env, script, "--dry-run", *args, extra_env=extra_env).stdout
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
    assert proc.returncode == 2 and "--zone (or env ZONE) is required" in proc.stderr
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
    settings = {"PROJECT": "env-proj", "ZONE": "us-west4-a", "TPU_NAME": "env-tpu", "ACCELERATOR_TYPE": "v5litepod-16"}
    (argv,) = dry_run(env, "create.sh", extra_env=settings)
    assert argv[5] == "env-tpu" and option(argv, "--zone") == "us-west4-a"
    assert option(argv, "--accelerator-type") == "v5litepod-16" and option(argv, "--version") == "v2-alpha-tpuv5-lite"
    (argv,) = dry_run(env, "create.sh", "--zone=europe-west4-b", "--runtime-version", "tpu-ubuntu2204-base",
                      extra_env=settings)
    assert option(argv, "--zone") == "europe-west4-b" and option(argv, "--version") == "tpu-ubuntu2204-base"


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


def test_setup_copies_this_checkout_and_installs_on_every_worker(env, tmp_path):
    archive, scp, extract, install, check = dry_run(env, "setup.sh", *LOCATION)
    tarball = str(tmp_path / "dllm_rl_src.tar.gz")
    assert archive == ["git", "-C", str(REPO), "archive", "--format=tar.gz", f"--output={tarball}", "HEAD"]
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert scp[5] == tarball and "my-tpu:dllm_rl_src.tar.gz" in scp
    assert contains(ssh_command(extract, "all"), ["tar", "-xzf", "dllm_rl_src.tar.gz", "-C", "dllm_rl"])
    words = ssh_command(install, "all")
    assert words[:3] == ["cd", "dllm_rl", "&&"]
    assert contains(words, ["uv", "venv", "--quiet", "--allow-existing", "--python", "3.12", ".venv"])
    assert contains(words, ["--python", ".venv/bin/python", "-e", ".[gcs]", setup_py_jax_requirement()])
    assert "jax.distributed.initialize()" in " ".join(ssh_command(check, "all"))


def test_setup_from_git(env):
    fetch = dry_run(env, "setup.sh", *LOCATION, "--repo-url", "https://example.com/dllm_rl.git",
                    "--repo-ref", "v1", "--jax-spec", "jax[tpu]==0.10.2")[0]
    words = ssh_command(fetch, "all")
    assert contains(words, ["git", "clone", "--quiet", "https://example.com/dllm_rl.git", "dllm_rl;"])
    assert contains(words, ["fetch", "--quiet", "origin", "v1"])
    install = dry_run(env, "setup.sh", *LOCATION, "--repo-url", "u", "--jax-spec", "jax[tpu]==0.10.2")[1]
    assert "jax[tpu]==0.10.2" in ssh_command(install, "all")


def test_checkpoint_converts_on_worker_0_and_uploads(env):
    (argv,) = dry_run(env, "checkpoint.sh", *LOCATION, "--hf-dir", "gs://bucket/LLaDA-8B-Instruct", "--ckpt", CKPT)
    words = ssh_command(argv, "0")
    assert contains(words, ["rsync", "--recursive", "--delete-unmatched-destination-objects",
                            "gs://bucket/LLaDA-8B-Instruct", "/tmp/dllm_rl_convert/hf"])
    assert contains(words, [".venv/bin/python", "-m", "dllm_rl.convert", "--hf_dir", "/tmp/dllm_rl_convert/hf",
                            "--out_dir", "/tmp/dllm_rl_convert/out", "--dtype", "bfloat16"])
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
    assert contains(words, ["rsync", "--recursive", "--delete-unmatched-destination-objects", CKPT,
                            "/tmp/dllm_rl_train_model"])
    assert contains(words, ["setsid", "nohup", "env", "LIBTPU_INIT_ARGS=--xla_x=1", ".venv/bin/python", "-m",
                            "experiments.run", "--gin", "experiments/configs/gsm8k_agrpo.gin", "--workdir", WORKDIR,
                            "--gin_binding", "dllm_rl.ModelSource.ckpt_dir='/tmp/dllm_rl_train_model'",
                            "--gin_binding", f"dllm_rl.MeshConfig.shape={mesh}",
                            "--gin_binding", "dllm_rl.TrainConfig.grad_accum=8", "--no_progress", ">", "train.log"])
    assert words.index("cd") > words.index("rsync")  # the copy finishes before the detached start
    assert contains(words, ["echo", "$!", ">", "train.pid;", "}"])


def test_train_can_read_the_checkpoint_in_place(env):
    (argv,) = dry_run(env, "train.sh", *LOCATION, "--workdir", WORKDIR, "--ckpt", CKPT, "--stage-dir=",
                      "--gin", "experiments/configs/gsm8k_d1.gin")
    words = ssh_command(argv, "all")
    assert "rsync" not in words
    assert contains(words, ["--gin", "experiments/configs/gsm8k_d1.gin"])
    assert f"dllm_rl.ModelSource.ckpt_dir='{CKPT}'" in words


def test_train_requires_workdir_and_checkpoint(env):
    proc = run_script(env, "train.sh", "--dry-run", *LOCATION, "--ckpt", CKPT, check=False)
    assert proc.returncode == 2 and "--workdir" in proc.stderr


def test_eval_runs_on_worker_0_and_uploads(env):
    (argv,) = dry_run(env, "eval.sh", *LOCATION, "--workdir", WORKDIR, "--out", WORKDIR + "/eval",
                      "--arg=--limit=100")
    words = ssh_command(argv, "0")
    assert contains(words, ["rsync", "--recursive", "--delete-unmatched-destination-objects",
                            WORKDIR + "/final_model", "/tmp/dllm_rl_eval_model"])
    job = shlex.split(words[words.index("-c") + 1])
    assert job[:5] == ["rm", "-rf", "/tmp/dllm_rl_eval_results", "&&", ".venv/bin/python"]
    assert contains(job, [".venv/bin/python", "-m", "experiments.eval", "--task", "gsm8k", "--lengths",
                          "128,256,512", "--ckpt_dir", "/tmp/dllm_rl_eval_model", "--out_dir",
                          "/tmp/dllm_rl_eval_results", "--limit=100", "&&"])
    assert job[-4:] == ["rsync", "--recursive", "/tmp/dllm_rl_eval_results", WORKDIR + "/eval"]


def test_logs_and_stop(env):
    (logs,) = dry_run(env, "logs.sh", *LOCATION, "--lines", "20")
    assert ssh_command(logs, "0") == ["cd", "dllm_rl", "&&", "tail", "-n", "20", "-F", "train.log"]
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


def test_readme_commands_are_valid(env):
    commands = readme_commands()
    assert {c.split()[0] for c in commands} == {f"tpu/{s}" for s in SCRIPTS}
    settings = {"PROJECT": "p", "ZONE": "us-east5-a", "TPU_NAME": "t", "BUCKET": "b", "DRY_RUN": "1"}
    for command in commands:
        proc = subprocess.run(["bash", "-c", command], cwd=REPO, env={**env, **settings}, capture_output=True,
                              text=True, timeout=60)
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
