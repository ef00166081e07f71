"""A stand-in for `gcloud` (tests only) that emulates a multi-worker Cloud TPU slice and a Cloud Storage bucket
on this machine, so that the tpu/*.sh scripts can run for real, end to end (tests/test_tpu_recipe.py).

`install(root, bin_dir)` writes a `gcloud` executable into bin_dir (put it first on the scripts' PATH) that runs
this file with the test's interpreter. Every call is appended to ROOT/calls.jsonl, one JSON object per line
(argv, cwd, the calling worker if any, exit status, and for `tpu-vm ssh` each worker's exit status and output).

State, under the root folder named by the environment variable FAKE_GCLOUD_ROOT:

    gcs/BUCKET/PATH      the object gs://BUCKET/PATH (a bucket exists when its folder does)
    slices/NAME.json     a created TPU VM: accelerator type, worker count, network endpoints (all 127.0.0.1)
    queued/NAME.json     a queued resource (ACTIVE as soon as it is created) and the node it holds
    workers/NAME/I       worker I's home directory (where ssh commands start and scp copies to)
    worker_bin/python3   the workers' python3 (see "Installing" below)
    calls.jsonl          the call log

Commands (the subset the scripts use; anything else fails with exit status 2, so a script that drifts from it is
noticed): `compute tpus tpu-vm create|describe|ssh|scp|delete`, `compute tpus queued-resources
create|describe|delete`, `storage rsync [--recursive] [--delete-unmatched-destination-objects] SRC DST` and
`storage cat URL` between gs:// and local paths. `tpu-vm describe` answers `--format=json` and
`--format=value(networkEndpoints.len())`; `queued-resources describe` answers `--format=value(state.state)`.
Worker counts come from WORKERS_PER_TYPE (v4-16: 2 hosts of 4 chips); every worker gets 4 fake CPU devices.

`tpu-vm ssh NAME --worker=W --command C` runs `bash -c C` on every selected worker at once, in its home
directory, and waits for all of them (exit status: the first non-zero one); their output streams through. A
worker's environment is what a login shell on the VM would have, plus the facts JAX needs to form one job:

- On a real TPU VM, `jax.distributed.initialize()` without arguments finds the job through JAX's cluster
  detection (jax/_src/clusters/cloud_tpu_cluster.py): libtpu's start-up marks the process as running on a Cloud
  TPU VM, and the VM metadata server (http://metadata.google.internal) answers `agent-worker-number` (this
  process's index) and `worker-network-endpoints` (every worker's address; the first one hosts the coordinator,
  on port 8476), which also gives the process count.
- Here JAX runs on CPU and no metadata server exists, so the same facts come from the environment of JAX's Slurm
  detector (jax/_src/clusters/slurm_cluster.py), the one cluster environment that reads all of them from plain
  variables: SLURM_JOB_ID, SLURM_STEP_NODELIST=127.0.0.1 (the coordinator host: worker 0, on this machine),
  SLURM_NTASKS=<the slice's worker count> (always the whole slice, as the metadata reports it, even when only
  some workers are selected: a program that starts the distributed runtime on one worker of a multi-worker slice
  blocks here as it would on the VM), SLURM_PROCID=<worker index>, SLURM_LOCALID=0 (one process per host), and
  JAX_COORDINATOR_PORT=<a free port picked per ssh call> (jax/_src/clusters/cluster.py reads it to override the
  port the Slurm detector would derive from the job id). Process 0 (worker 0) then serves the coordinator on
  127.0.0.1:<port>, the other workers connect to it, and the processes' CPU devices form one mesh (with gloo
  collectives, which `dllm_rl.parallel.multihost` turns on).
- JAX_PLATFORMS=cpu and XLA_FLAGS=--xla_force_host_platform_device_count=4 (4 fake devices per worker, a v4
  host's 4 chips); TMPDIR=HOME/tmp, since the workers share this machine's /tmp; PATH = worker_bin, then the
  PATH the test installed the fake with (which holds this gcloud, so workers can call `gcloud storage ...`).

Installing: tpu/setup.sh runs `python3 -m pip install --user --upgrade uv`, `python3 -m uv venv ... .venv` and
`python3 -m uv pip install --python .venv/bin/python -e .[gcs] jax[tpu]...`, which cannot download here. The
workers' `python3` (worker_bin/python3) records those three commands in the call log and makes
`.venv/bin/python` a wrapper that execs the test's interpreter (whose environment has every dependency); any
other python3 invocation execs the real python3. `python -m experiments.run` started in the worker's copy of the
repository imports that copy: the current directory comes first on sys.path, ahead of the test environment's
editable install of this checkout (a finder appended to sys.meta_path).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT_ENV = "FAKE_GCLOUD_ROOT"
WORKER_ENV = "FAKE_GCLOUD_WORKER"
DEVICES_PER_WORKER = 4
WORKERS_PER_TYPE = {"v4-8": 1, "v4-16": 2, "v4-32": 4, "v5p-8": 1, "v5p-16": 2, "v5p-32": 4, "v5litepod-8": 1,
                    "v5litepod-16": 4, "v6e-8": 1, "v6e-16": 4}
SHIM_INSTALL_COMMANDS = ("pip-install-uv", "uv-venv", "uv-pip-install")


class Failure(Exception):
    """An error gcloud would report: printed as `ERROR: (gcloud) ...`, exit status 1 (2 for usage errors)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def install(root: pathlib.Path, bin_dir: pathlib.Path, path: str, python: str = sys.executable) -> dict:
    """Sets up the state root and writes `bin_dir/gcloud`; returns the environment variables the scripts need.

    path: the PATH the scripts run with (bin_dir first); the workers get worker_bin, then this PATH.
    python: the interpreter the fake gcloud runs with and the workers' `.venv/bin/python` execs.
    """
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("gcs", "slices", "queued", "workers", "worker_bin"):
        (root / sub).mkdir(exist_ok=True)
    here = pathlib.Path(__file__).resolve()
    shim_path = os.pathsep.join(p for p in path.split(os.pathsep) if pathlib.Path(p).resolve() != bin_dir.resolve())
    real_python3 = shutil.which("python3", path=shim_path)
    if real_python3 is None:
        raise RuntimeError("no python3 on PATH")
    (root / "config.json").write_text(json.dumps({"python": python, "real_python3": real_python3, "path": path}))
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(f"#!/bin/sh\nexec {python} {here} \"$@\"\n")
    gcloud.chmod(0o755)
    python3 = root / "worker_bin" / "python3"
    python3.write_text(f"#!/bin/sh\nexec {python} {here} --python3-shim \"$@\"\n")
    python3.chmod(0o755)
    return {ROOT_ENV: str(root)}


def read_calls(root: pathlib.Path) -> list[dict]:
    """The call log: one dict per gcloud call (and per recorded python3 install command)."""
    path = root / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- state ------------------------------------------------------------------------------------------------------

def _root() -> pathlib.Path:
    try:
        return pathlib.Path(os.environ[ROOT_ENV])
    except KeyError:
        raise Failure(f"{ROOT_ENV} is not set: this fake gcloud needs a state folder", 2) from None


def _config() -> dict:
    return json.loads((_root() / "config.json").read_text())


def _log(entry: dict) -> None:
    entry = {"time": round(time.time(), 3), "cwd": os.getcwd(), "worker": os.environ.get(WORKER_ENV), **entry}
    line = (json.dumps(entry) + "\n").encode()
    fd = os.open(_root() / "calls.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _slice_file(name: str) -> pathlib.Path:
    return _root() / "slices" / f"{name}.json"


def _load_slice(name: str, flags: dict) -> dict:
    path = _slice_file(name)
    if not path.exists():
        raise Failure(f"NOT_FOUND: Resource 'projects/{flags.get('project')}/locations/{flags.get('zone')}/nodes/"
                      f"{name}' was not found")
    node = json.loads(path.read_text())
    if (node["project"], node["zone"]) != (flags.get("project"), flags.get("zone")):
        raise Failure(f"NOT_FOUND: node {name} is in {node['project']}/{node['zone']}, not "
                      f"{flags.get('project')}/{flags.get('zone')}")
    return node


def _create_slice(name: str, accelerator: str, flags: dict) -> dict:
    if accelerator not in WORKERS_PER_TYPE:
        raise Failure(f"INVALID_ARGUMENT: accelerator type {accelerator!r} is not in the fake's table "
                      f"{sorted(WORKERS_PER_TYPE)}")
    if _slice_file(name).exists():
        raise Failure(f"ALREADY_EXISTS: node {name} already exists")
    workers = WORKERS_PER_TYPE[accelerator]
    node = {"name": name, "project": flags["project"], "zone": flags["zone"], "acceleratorType": accelerator,
            "state": "READY", "workers": workers,
            "networkEndpoints": [{"ipAddress": "127.0.0.1", "port": 8470} for _ in range(workers)]}
    for i in range(workers):
        (_root() / "workers" / name / str(i) / "tmp").mkdir(parents=True, exist_ok=True)
    _slice_file(name).write_text(json.dumps(node, indent=2))
    return node


def started_here(pid: int, root: pathlib.Path) -> bool:
    """Whether process `pid` runs on a worker of the fake slices under `root` (its environment names the root), so
    that a recycled pid in a stale pid file never leads to signalling someone else's process."""
    try:
        environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{ROOT_ENV}={root}".encode() in environ


def kill_jobs(homes: pathlib.Path, root: pathlib.Path) -> list[int]:
    """SIGKILLs the process group of every JOB.pid under `homes` whose job is still running there; returns them."""
    killed = []
    for pid_file in homes.rglob("*.pid"):
        try:
            pgid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if started_here(pgid, root):
            try:
                os.killpg(pgid, signal.SIGKILL)
                killed.append(pgid)
            except (ProcessLookupError, PermissionError):
                pass
    return killed


def _delete_slice(name: str, flags: dict) -> None:
    """Removes the node and its workers' disks; like a VM going away, ends the jobs still running there."""
    _load_slice(name, flags)
    homes = _root() / "workers" / name
    kill_jobs(homes, _root())
    shutil.rmtree(homes, ignore_errors=True)
    _slice_file(name).unlink()


# ---- argument parsing -------------------------------------------------------------------------------------------

COMMON_VALUE_FLAGS = {"project", "zone", "format"}
COMMON_BOOL_FLAGS = {"quiet"}


def _parse(args: list[str], value_flags: set[str], bool_flags: set[str]) -> tuple[list[str], dict]:
    """(positionals, flags) of a command's arguments; unknown flags fail, as they would in gcloud."""
    value_flags = value_flags | COMMON_VALUE_FLAGS
    bool_flags = bool_flags | COMMON_BOOL_FLAGS
    positionals, flags = [], {}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--"):
            positionals.append(arg)
            continue
        name, eq, value = arg[2:].partition("=")
        if name in bool_flags and not eq:
            flags[name] = True
        elif name in value_flags:
            if not eq:
                if i >= len(args):
                    raise Failure(f"argument --{name}: expected one argument", 2)
                value = args[i]
                i += 1
            if name == "ssh-flag":
                flags.setdefault(name, []).append(value)
            else:
                flags[name] = value
        else:
            raise Failure(f"unrecognized arguments: {arg}", 2)
    return positionals, flags


def _one(positionals: list[str], what: str) -> str:
    if len(positionals) != 1:
        raise Failure(f"expected one {what}, got {positionals}", 2)
    return positionals[0]


def _located(flags: dict) -> None:
    for name in ("project", "zone"):
        if not flags.get(name):
            raise Failure(f"--{name} is required (the scripts always pass it)", 2)


# ---- compute tpus tpu-vm -----------------------------------------------------------------------------------------

def tpu_vm_create(args: list[str]) -> int:
    positionals, flags = _parse(args, {"accelerator-type", "version", "scopes"}, {"spot", "reserved"})
    _located(flags)
    name = _one(positionals, "node name")
    if not flags.get("accelerator-type") or not flags.get("version"):
        raise Failure("--accelerator-type and --version are required", 2)
    _create_slice(name, flags["accelerator-type"], flags)
    print(f"Created tpu [{name}].", file=sys.stderr)
    return 0


def tpu_vm_describe(args: list[str]) -> int:
    positionals, flags = _parse(args, set(), set())
    _located(flags)
    node = _load_slice(_one(positionals, "node name"), flags)
    fmt = flags.get("format", "json")
    public = {k: v for k, v in node.items() if k not in ("project", "zone", "workers")}
    if fmt == "json":
        print(json.dumps(public, indent=2))
    elif fmt == "value(networkEndpoints.len())":
        print(len(node["networkEndpoints"]))
    else:
        raise Failure(f"the fake gcloud does not implement --format={fmt}", 2)
    return 0


def tpu_vm_delete(args: list[str]) -> int:
    positionals, flags = _parse(args, set(), set())
    _located(flags)
    name = _one(positionals, "node name")
    _delete_slice(name, flags)
    print(f"Deleted tpu [{name}].", file=sys.stderr)
    return 0


def _workers(node: dict, selection: str | None) -> list[int]:
    if selection is None:
        return [0]
    if selection == "all":
        return list(range(node["workers"]))
    try:
        chosen = [int(w) for w in selection.split(",")]
    except ValueError:
        raise Failure(f"--worker={selection}: give all, or worker indices like 0 or 0,1", 2) from None
    for w in chosen:
        if not 0 <= w < node["workers"]:
            raise Failure(f"--worker={selection}: {node['name']} has workers 0..{node['workers'] - 1}")
    return chosen


def _home(node: dict, worker: int) -> pathlib.Path:
    return _root() / "workers" / node["name"] / str(worker)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(node: dict, worker: int, port: int) -> dict:
    """The environment of a command run on `worker` (see the module docstring)."""
    config = _config()
    home = _home(node, worker)
    return {
        "PATH": os.pathsep.join([str(_root() / "worker_bin"), config["path"]]),
        "HOME": str(home),
        "USER": os.environ.get("USER", "tpu"),
        "LANG": "C.UTF-8",
        "TMPDIR": str(home / "tmp"),
        ROOT_ENV: str(_root()),
        WORKER_ENV: str(worker),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES_PER_WORKER}",
        "SLURM_JOB_ID": str(port),
        "SLURM_STEP_NODELIST": node["networkEndpoints"][0]["ipAddress"],
        "SLURM_NTASKS": str(node["workers"]),
        "SLURM_PROCID": str(worker),
        "SLURM_LOCALID": "0",
        "JAX_COORDINATOR_PORT": str(port),
    }


def tpu_vm_ssh(args: list[str]) -> int:
    positionals, flags = _parse(args, {"worker", "command", "ssh-flag"}, set())
    _located(flags)
    node = _load_slice(_one(positionals, "node name"), flags)
    if "command" not in flags:
        raise Failure("the fake gcloud runs commands only (--command), no interactive shell", 2)
    workers = _workers(node, flags.get("worker"))
    port = _free_port()
    lock = threading.Lock()
    outputs = {w: {"stdout": [], "stderr": []} for w in workers}

    def pump(stream, worker, name, sink):
        for line in iter(stream.readline, b""):
            with lock:
                outputs[worker][name].append(line.decode(errors="replace"))
                sink.write(line)
                sink.flush()
        stream.close()

    procs, threads = {}, []
    for w in workers:
        procs[w] = subprocess.Popen(["bash", "-c", flags["command"]], cwd=_home(node, w), env=worker_env(node, w, port),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, sink in (("stdout", sys.stdout.buffer), ("stderr", sys.stderr.buffer)):
            t = threading.Thread(target=pump, args=(getattr(procs[w], name), w, name, sink), daemon=True)
            t.start()
            threads.append(t)
    codes = {w: p.wait() for w, p in procs.items()}
    for t in threads:
        t.join()
    status = next((c for c in codes.values() if c != 0), 0)
    _log({"argv": ["compute", "tpus", "tpu-vm", "ssh", *args], "status": status, "port": port,
          "workers": {str(w): {"status": codes[w], "stdout": "".join(outputs[w]["stdout"]),
                               "stderr": "".join(outputs[w]["stderr"])} for w in workers}})
    return status


def tpu_vm_scp(args: list[str]) -> int:
    positionals, flags = _parse(args, {"worker"}, {"recurse"})
    _located(flags)
    if len(positionals) != 2 or ":" not in positionals[1]:
        raise Failure("usage: tpu-vm scp LOCAL NODE:REMOTE (only uploads are implemented)", 2)
    local, target = positionals
    name, remote = target.split(":", 1)
    node = _load_slice(name, flags)
    if not os.path.isfile(local):
        raise Failure(f"{local}: no such file")
    for w in _workers(node, flags.get("worker")):
        dest = _home(node, w) / remote
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(local, dest)
    return 0


# ---- compute tpus queued-resources -------------------------------------------------------------------------------

def _queued_file(name: str) -> pathlib.Path:
    return _root() / "queued" / f"{name}.json"


def queued_create(args: list[str]) -> int:
    positionals, flags = _parse(args, {"node-id", "accelerator-type", "runtime-version", "scopes",
                                       "valid-until-duration"}, {"spot", "reserved"})
    _located(flags)
    name = _one(positionals, "queued resource name")
    if _queued_file(name).exists():
        raise Failure(f"ALREADY_EXISTS: queued resource {name} already exists")
    if not flags.get("node-id") or not flags.get("accelerator-type") or not flags.get("runtime-version"):
        raise Failure("--node-id, --accelerator-type and --runtime-version are required", 2)
    _create_slice(flags["node-id"], flags["accelerator-type"], flags)
    _queued_file(name).write_text(json.dumps({"name": name, "node": flags["node-id"], "project": flags["project"],
                                              "zone": flags["zone"], "state": {"state": "ACTIVE"}}))
    return 0


def _load_queued(name: str, flags: dict) -> dict:
    path = _queued_file(name)
    if not path.exists():
        raise Failure(f"NOT_FOUND: queued resource {name} was not found")
    return json.loads(path.read_text())


def queued_describe(args: list[str]) -> int:
    positionals, flags = _parse(args, set(), set())
    _located(flags)
    resource = _load_queued(_one(positionals, "queued resource name"), flags)
    fmt = flags.get("format", "json")
    if fmt == "value(state.state)":
        print(resource["state"]["state"])
    elif fmt == "json":
        print(json.dumps(resource, indent=2))
    else:
        raise Failure(f"the fake gcloud does not implement --format={fmt}", 2)
    return 0


def queued_delete(args: list[str]) -> int:
    positionals, flags = _parse(args, set(), {"force", "async"})
    _located(flags)
    name = _one(positionals, "queued resource name")
    resource = _load_queued(name, flags)
    if _slice_file(resource["node"]).exists():
        if not flags.get("force"):
            raise Failure(f"queued resource {name} still holds node {resource['node']}; pass --force")
        _delete_slice(resource["node"], flags)
    _queued_file(name).unlink()
    return 0


# ---- storage -----------------------------------------------------------------------------------------------------

def _storage_path(url: str) -> pathlib.Path:
    """gs://BUCKET/PATH -> ROOT/gcs/BUCKET/PATH (the bucket must exist); a local path as given."""
    if not url.startswith("gs://"):
        return pathlib.Path(url)
    bucket, _, path = url[len("gs://"):].partition("/")
    bucket_dir = _root() / "gcs" / bucket
    if not bucket or not bucket_dir.is_dir():
        raise Failure(f"NotFoundError: 404 gs://{bucket} bucket does not exist.")
    return bucket_dir / path.strip("/")


def _files(top: pathlib.Path, recursive: bool) -> set[pathlib.Path]:
    if recursive:
        return {p.relative_to(top) for p in top.rglob("*") if p.is_file()}
    return {p.relative_to(top) for p in top.iterdir() if p.is_file()}


def storage_rsync(args: list[str]) -> int:
    positionals, flags = _parse(args, set(), {"recursive", "delete-unmatched-destination-objects"})
    if len(positionals) != 2:
        raise Failure("usage: storage rsync SOURCE DESTINATION", 2)
    src, dst = (_storage_path(p) for p in positionals)
    if not src.is_dir():
        raise Failure(f"{positionals[0]}: no such folder or prefix")
    recursive = bool(flags.get("recursive"))
    wanted = _files(src, recursive)
    dst.mkdir(parents=True, exist_ok=True)
    for rel in sorted(wanted):
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, target)
    if flags.get("delete-unmatched-destination-objects"):
        for rel in _files(dst, recursive) - wanted:
            (dst / rel).unlink()
    return 0


def storage_cat(args: list[str]) -> int:
    positionals, _ = _parse(args, set(), set())
    for url in positionals:
        if not url.startswith("gs://"):
            raise Failure(f"{url}: storage cat reads gs:// objects", 2)
        path = _storage_path(url)
        if not path.is_file():
            raise Failure(f"NotFoundError: {url} not found")
        sys.stdout.buffer.write(path.read_bytes())
    sys.stdout.flush()
    return 0


# ---- the workers' python3 ---------------------------------------------------------------------------------------

def python3_shim(args: list[str]) -> int:
    """The workers' python3: records setup.sh's three install commands (and does what they leave behind that the
    rest of the recipe needs: `.venv/bin/python`), and execs the real python3 for anything else."""
    kind = None
    if args[:3] == ["-m", "pip", "install"] and "uv" in args:
        kind = "pip-install-uv"
    elif args[:3] == ["-m", "uv", "venv"]:
        kind = "uv-venv"
        venv = pathlib.Path([a for a in args[3:] if not a.startswith("-") and a not in _option_values(args)][-1])
        (venv / "bin").mkdir(parents=True, exist_ok=True)
        python = venv / "bin" / "python"
        python.write_text(f"#!/bin/sh\nexec {_config()['python']} \"$@\"\n")
        python.chmod(0o755)
    elif args[:4] == ["-m", "uv", "pip", "install"]:
        kind = "uv-pip-install"
        target = args[args.index("--python") + 1] if "--python" in args else None
        if target is None or not os.access(target, os.X_OK):
            _log({"python3_shim": kind, "args": args, "status": 1})
            print(f"error: no interpreter at --python {target}", file=sys.stderr)
            return 1
    if kind is None:
        real = _config()["real_python3"]
        os.execv(real, [real, *args])
    _log({"python3_shim": kind, "args": args, "status": 0})
    return 0


def _option_values(args: list[str]) -> set[str]:
    """Values of `uv venv` options that take one (so `--python 3.12` is not taken for the venv path)."""
    return {args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--python", "-p", "--prompt")}


# ---- dispatch ----------------------------------------------------------------------------------------------------

COMMANDS = {
    ("compute", "tpus", "tpu-vm", "create"): tpu_vm_create,
    ("compute", "tpus", "tpu-vm", "describe"): tpu_vm_describe,
    ("compute", "tpus", "tpu-vm", "delete"): tpu_vm_delete,
    ("compute", "tpus", "tpu-vm", "ssh"): tpu_vm_ssh,
    ("compute", "tpus", "tpu-vm", "scp"): tpu_vm_scp,
    ("compute", "tpus", "queued-resources", "create"): queued_create,
    ("compute", "tpus", "queued-resources", "describe"): queued_describe,
    ("compute", "tpus", "queued-resources", "delete"): queued_delete,
    ("storage", "rsync"): storage_rsync,
    ("storage", "cat"): storage_cat,
}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--python3-shim"]:
        return python3_shim(argv[1:])
    for key, command in COMMANDS.items():
        if tuple(argv[:len(key)]) == key:
            try:
                status = command(argv[len(key):])
            except Failure as e:
                print(f"ERROR: (gcloud.{'.'.join(key)}) {e}", file=sys.stderr)
                _log({"argv": argv, "status": e.status, "error": str(e)})
                return e.status
            if key[-1] != "ssh":  # ssh logs itself, with the workers' output
                _log({"argv": argv, "status": status})
            return status
    print(f"ERROR: (gcloud) the fake gcloud does not implement: gcloud {' '.join(argv)}", file=sys.stderr)
    try:
        _log({"argv": argv, "status": 2})
    except Failure:
        pass
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
