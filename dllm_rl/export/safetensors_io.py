"""Streaming safetensors writer with HF's sharded layout, holding one tensor in memory at a time.

A safetensors file is an 8-byte little-endian header length, a JSON header giving every tensor's dtype, shape and
byte range, then the raw bytes in that order. All of that is known from names, shapes and the dtype, so the shard
plan and headers are computed up front and the tensors are appended one by one as an iterator produces them.
Sharding follows transformers' `save_pretrained`: files `model-0000k-of-0000n.safetensors` with
`model.safetensors.index.json`, or a single `model.safetensors` (no index) when everything fits in one shard.
"""
from __future__ import annotations

import json
import os
import re
import struct
from typing import Iterable, Iterator, Sequence

import ml_dtypes
import numpy as np

from dllm_rl.checkpoint.hf import INDEX_FILE, SINGLE_FILE, CheckpointError

DEFAULT_SHARD_SIZE = "5GB"  # transformers' default max_shard_size
_DTYPE_CODES = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.float16): "F16"}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}

Spec = tuple[str, tuple[int, ...]]  # (tensor name, shape)


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like '5GB', '500MB', '2GiB' (decimal units as transformers reads them)."""
    if isinstance(size, int):
        value = size
    else:
        match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(size))
        unit = match.group(2).upper() if match else None
        if match is None or unit not in _UNITS:
            raise CheckpointError(f"shard size {size!r} is not a size; write e.g. 5GB, 500MB or a byte count")
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise CheckpointError(f"shard size {size!r} must be positive")
    return value


def plan_shards(specs: Sequence[Spec], itemsize: int, max_shard_bytes: int) -> list[list[Spec]]:
    """Greedy split in order: a shard is closed when the next tensor would push it past `max_shard_bytes` (a
    tensor larger than the limit gets a shard of its own, as in transformers)."""
    shards: list[list[Spec]] = [[]]
    size = 0
    for spec in specs:
        nbytes = int(np.prod(spec[1], dtype=np.int64)) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    return shards


def shard_file_names(count: int) -> list[str]:
    return [SINGLE_FILE] if count == 1 else [f"model-{k:05d}-of-{count:05d}.safetensors" for k in range(1, count + 1)]


def _header(specs: Sequence[Spec], code: str, itemsize: int) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in specs:
        end = offset + int(np.prod(shape, dtype=np.int64)) * itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    return text + b" " * (-len(text) % 8)  # 8-byte aligned data, as safetensors itself writes


def write_file(path: str, specs: Sequence[Spec], tensors: Iterator[tuple[str, np.ndarray]], dtype: np.dtype) -> None:
    """Writes `specs` to one safetensors file, pulling each tensor from `tensors` just in time."""
    header = _header(specs, _DTYPE_CODES[dtype], dtype.itemsize)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for name, shape in specs:
            got_name, arr = next(tensors)
            if got_name != name or tuple(arr.shape) != tuple(shape) or arr.dtype != dtype:
                raise AssertionError(f"tensor stream out of plan: got {got_name} {arr.shape} {arr.dtype}, "
                                     f"planned {name} {shape} {dtype}")
            np.ascontiguousarray(arr).tofile(f)


def write_sharded(out_dir: str, specs: Sequence[Spec], tensors: Iterable[tuple[str, np.ndarray]], dtype,
                  max_shard_size: int | str = DEFAULT_SHARD_SIZE) -> dict[str, str]:
    """Writes the tensors (in `specs` order) as HF shards (+ index when more than one); returns the weight map."""
    dtype = np.dtype(dtype)
    if dtype not in _DTYPE_CODES:
        raise CheckpointError(f"cannot write dtype {dtype} to safetensors; use float32, bfloat16 or float16")
    shards = plan_shards(specs, dtype.itemsize, parse_size(max_shard_size))
    files = shard_file_names(len(shards))
    stream = iter(tensors)
    for file, shard in zip(files, shards):
        write_file(os.path.join(out_dir, file), shard, stream, dtype)
    if next(stream, None) is not None:
        raise AssertionError("tensor stream has more tensors than planned")
    weight_map = {name: file for file, shard in zip(files, shards) for name, _ in shard}
    if len(files) > 1:
        total = sum(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for _, shape in specs)
        with open(os.path.join(out_dir, INDEX_FILE), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f,
                      indent=2)
    return weight_map
