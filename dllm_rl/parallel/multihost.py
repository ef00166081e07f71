"""Multi-host (multi-controller) JAX: process start-up, this process's rows of a global batch, cross-host
gathers, and the process-0 rule for files every host would otherwise write.

Every process runs the same program on global arrays (JAX SPMD). A `[B, ...]` batch laid out by
`mesh.batch_sharding` has its rows spread over the processes' devices; `local_rows` says which contiguous rows
live here, `place_rows` assembles each host's rows into the global array (`make_array_from_process_local_data`),
`host_rows` reads this host's rows back, `all_rows` gives every host all rows of a small global array (sampled
tokens), and `gather_rows` all rows of a small per-row host array (rewards). With one process all of these
reduce to plain NumPy slicing.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from dllm_rl import paths



class DistributedError(RuntimeError):
    """The distributed runtime was asked for but cannot start as configured."""


def on_cloud_tpu_vm() -> bool:
    """Whether this process runs on a Cloud TPU VM, by JAX's own test (evaluated when `jax` is imported: libtpu is
    installed and the machine has TPU chips on its PCI bus), so nothing touches a backend."""
    from jax._src import cloud_tpu_init  # private, but the flag JAX's own TPU cluster detection reads

    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def wants_distributed(coordinator_address: str | None, distributed: bool, tpu_vm: bool | None = None) -> bool:
    """Whether to start JAX's distributed runtime: explicit flags, `--distributed`, or any Cloud TPU VM (single or
    multi-host: Orbax's checkpoints and the cross-host gathers need the distributed client)."""
    return bool(coordinator_address) or distributed or (on_cloud_tpu_vm() if tpu_vm is None else tpu_vm)


def start(coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None,
          distributed: bool = False) -> bool:
    """Starts JAX's distributed runtime when `wants_distributed` (before anything touches a device) and says
    whether it did. Missing arguments are found by JAX's cluster detection: a Cloud TPU VM's metadata server,
    Slurm, Open MPI, GKE. gloo collectives are turned on first, so processes of fake CPU devices form one mesh
    (only CPU reads the setting)."""
    if not wants_distributed(coordinator_address, distributed):
        return False
    if jax.distributed.is_initialized():
        return True
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except ValueError as e:  # JAX found no cluster to fill in what was not given
        asked = "--distributed" if distributed else "a Cloud TPU VM"
        raise DistributedError(f"{asked}: JAX found no cluster to join ({str(e).rstrip('.')}); outside a Cloud TPU "
                               "VM, Slurm, Open MPI or GKE pass --coordinator_address HOST:PORT --num_processes N "
                               "--process_id I") from None
    return True


def describe() -> str:
    """One line naming this process's place in the job: process index and count, local and global devices."""
    return (f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local devices, "
            f"{jax.device_count()} global devices ({jax.devices()[0].device_kind})")


def is_primary() -> bool:
    """Process 0 writes the files every host would otherwise write (metrics, plots, configs, exports)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier across processes (no-op with one)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """Whether `flag` is true on any process (one small all-gather; every process must call it at the same point)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).any())


def local_rows(sharding: jax.sharding.Sharding, num_rows: int) -> slice:
    """The rows of a `[num_rows, ...]` array on `sharding` held by this process's devices (contiguous)."""
    index_map = sharding.addressable_devices_indices_map((num_rows,))
    spans = sorted({s[0].indices(num_rows)[:2] for s in index_map.values()})
    start, stop = spans[0][0], spans[-1][1]
    covered = sum(b - a for a, b in spans)
    if covered != stop - start or any(b0 != a1 for (_, b0), (a1, _) in zip(spans, spans[1:])):
        raise ValueError(f"this process holds the non-contiguous rows {spans} of a batch; order the mesh's "
                         "devices by process (jax.devices() order) along its batch axes")
    return slice(start, stop)


def place_rows(rows: np.ndarray, sharding: jax.sharding.Sharding, num_rows: int) -> jax.Array:
    """The global `[num_rows, ...]` array on `sharding` whose rows `local_rows(sharding, num_rows)` are `rows`."""
    rows = np.asarray(rows)
    return jax.make_array_from_process_local_data(sharding, rows, (num_rows,) + rows.shape[1:])


def host_rows(x: jax.Array, sharding: jax.sharding.Sharding) -> np.ndarray:
    """This process's rows (`local_rows`) of the global `x`, resharded onto the batch `sharding` first."""
    if x.is_fully_addressable:
        return np.asarray(x)[local_rows(sharding, x.shape[0])]
    if x.sharding != sharding:
        x = jax.device_put(x, sharding)
    first = {}
    for shard in x.addressable_shards:
        first.setdefault(shard.index[0].indices(x.shape[0])[0], shard.data)
    return np.concatenate([np.asarray(first[k]) for k in sorted(first)])


def all_rows(x) -> np.ndarray:
    """Every row of a global `[B, ...]` array (or a host array) on this host; multi-host, the hosts exchange their
    rows, so keep it to small arrays (sampled tokens)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def gather_rows(rows: np.ndarray, row_slice: slice, num_rows: int) -> np.ndarray:
    """All `num_rows` rows on every process, from each process's `rows` at its `row_slice` (small host data)."""
    rows = np.asarray(rows)
    if jax.process_count() == 1:
        return rows
    index = np.arange(row_slice.start, row_slice.stop, dtype=np.int32)
    all_index, gathered = multihost_utils.process_allgather((index, rows), tiled=True)
    out = np.empty((num_rows,) + rows.shape[1:], rows.dtype)
    out[np.asarray(all_index)] = np.asarray(gathered)
    return out


@contextlib.contextmanager
def shared_directory(out_dir: str) -> Iterator[str]:
    """Like `dllm_rl.atomic.atomic_directory`, for a folder all processes write into together (local or gs://):
    one deterministic temporary sibling, made and finally renamed onto `out_dir` by process 0 between barriers."""
    out_path = paths.absolute(out_dir)
    tmp_path = out_path.parent / f".{out_path.name}.tmp-shared"
    if is_primary():
        if tmp_path.exists():
            tmp_path.rmtree()
        tmp_path.mkdir(parents=True)
    sync(f"create {tmp_path}")
    yield os.fspath(tmp_path)
    sync(f"written {tmp_path}")
    if is_primary():
        if out_path.exists():
            out_path.rmtree()
        tmp_path.rename(out_path)
    sync(f"renamed {tmp_path}")


def main(argv=None) -> int:
    """Starts JAX the way the trainer does and prints this process's place in the job (`describe`); tpu/setup.sh
    runs it on every worker of a slice, where each must report every chip:

        python -m dllm_rl.parallel.multihost --distributed
    """
    from dllm_rl import cli

    parser = cli.make_parser(main.__doc__)
    cli.add_distributed_flags(parser)
    cli.start_distributed(parser.parse_args(argv), parser)
    print(describe(), flush=True)
    return 0


if __name__ == "__main__":
    from dllm_rl.cli import run_main

    run_main(main)
