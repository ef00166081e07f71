"""Streaming HF safetensors → params tree, with name mapping, transposes and shape/dtype checks.

Tensors are read one at a time from memory-mapped safetensors files (single file or sharded with
`model.safetensors.index.json`), transposed from torch `[out, in]` to `[in, out]`, stacked per layer, cast to the
target dtype and (optionally) placed straight onto their target sharding, so no full host copy of the model and
no random initialisation is ever made.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import safe_open
from tqdm.auto import tqdm

from dllm_rl.models.llada import LLaDAConfig, param_shapes

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# Per-layer HF names → (params leaf under "layers", transpose?).
_LAYER_TENSORS = {
    "attn_norm": ("attn_norm", False), "q_proj": ("q_proj", True), "k_proj": ("k_proj", True),
    "v_proj": ("v_proj", True), "attn_out": ("attn_out", True), "ff_norm": ("ff_norm", False),
    "ff_proj": ("ff_proj", True), "up_proj": ("up_proj", True), "ff_out": ("ff_out", True),
}
_TOP_TENSORS = {
    "model.transformer.wte.weight": ("embed", False),
    "model.transformer.ln_f.weight": ("ln_f", False),
    "model.transformer.ff_out.weight": ("lm_head", True),
}
_LAYER_NAME = re.compile(r"^model\.transformer\.blocks\.(\d+)\.(\w+)\.weight$")
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64}


class CheckpointError(ValueError):
    """A checkpoint that does not match its config; the message names the file/tensor and the fix."""


def resolve_dtype(dtype: Any) -> np.dtype:
    """'float32' / 'bfloat16' / 'float16' / a numpy or jnp dtype → numpy dtype; anything else is an error."""
    names = {"float32": np.float32, "fp32": np.float32, "bfloat16": ml_dtypes.bfloat16, "bf16": ml_dtypes.bfloat16,
             "float16": np.float16, "fp16": np.float16}
    if isinstance(dtype, str):
        if dtype not in names:
            raise CheckpointError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
        return np.dtype(names[dtype])
    try:
        result = np.dtype(dtype)
    except TypeError:
        raise CheckpointError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16") from None
    if result not in (np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)):
        raise CheckpointError(f"unsupported dtype {result}; use float32, bfloat16 or float16")
    return result


def hf_names(config: LLaDAConfig) -> dict[str, tuple[Any, ...]]:
    """Every HF tensor name the config implies → expected torch shape."""
    shapes = param_shapes(config)
    names = {}
    for hf, (leaf, transpose) in _TOP_TENSORS.items():
        names[hf] = tuple(reversed(shapes[leaf])) if transpose else shapes[leaf]
    for i in range(config.n_layers):
        for short, (leaf, transpose) in _LAYER_TENSORS.items():
            per_layer = shapes["layers"][leaf][1:]
            names[f"model.transformer.blocks.{i}.{short}.weight"] = (
                tuple(reversed(per_layer)) if transpose else per_layer)
    return names


def _shard_map(hf_dir: str) -> dict[str, str]:
    """HF tensor name → safetensors file path, from the index or the single file."""
    index_path = os.path.join(hf_dir, INDEX_FILE)
    if os.path.exists(index_path):
        try:
            with open(index_path, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index_path}: not a safetensors index with a 'weight_map' ({e})") from None
        return {name: os.path.join(hf_dir, fname) for name, fname in weight_map.items()}
    single = os.path.join(hf_dir, SINGLE_FILE)
    if not os.path.exists(single):
        raise CheckpointError(f"{hf_dir}: neither {INDEX_FILE} nor {SINGLE_FILE} found; pass the HF model folder")
    with _open_safetensors(single) as f:
        return {name: single for name in f.keys()}


def _open_safetensors(path: str):
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: shard listed in the index is missing; re-download the checkpoint")
    try:
        return safe_open(path, framework="numpy")
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointError(f"{path}: cannot read safetensors file ({e}); the file is truncated or "
                              "corrupt, re-download it") from None


def _check_names(expected: dict[str, tuple], found: dict[str, str], hf_dir: str) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:8]}{' …' if len(missing) > 8 else ''} ({len(missing)} in all)")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:8]}{' …' if len(unexpected) > 8 else ''} "
                         f"({len(unexpected)} in all)")
        raise CheckpointError(f"{hf_dir}: checkpoint does not match config.json: {'; '.join(parts)}")


def _read_tensor(handle, name: str, path: str, expected_shape: tuple) -> np.ndarray:
    """One tensor as a (memory-mapped where possible) numpy array, checked against its expected shape."""
    try:
        sl = handle.get_slice(name)
        dtype_name = sl.get_dtype()
        shape = tuple(sl.get_shape())
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read tensor {name} ({e})") from None
    if dtype_name not in _SAFETENSORS_DTYPES:
        raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {dtype_name}; expected F32/BF16/F16")
    if shape != tuple(expected_shape):
        raise CheckpointError(f"{path}: tensor {name} has shape {list(shape)}, config.json implies "
                              f"{list(expected_shape)}; the config and weights belong to different models")
    try:
        return handle.get_tensor(name)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read tensor {name} ({e}); the file is truncated or corrupt") from None


def leaf_sources(config: LLaDAConfig) -> Iterator[tuple[tuple[str, ...], list[str], bool]]:
    """(params path, HF names stacked along axis 0 or a single name, transpose?) for every params leaf.

    The one mapping between our tree and HF names, used both ways (loading here, exporting in `dllm_rl.export`)."""
    for hf, (leaf, transpose) in _TOP_TENSORS.items():
        yield (leaf,), [hf], transpose
    for short, (leaf, transpose) in _LAYER_TENSORS.items():
        names = [f"model.transformer.blocks.{i}.{short}.weight" for i in range(config.n_layers)]
        yield ("layers", leaf), names, transpose


def iter_params(hf_dir: str, config: LLaDAConfig, dtype: Any = "float32",
                progress: bool = False) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Yields (params path, host array in `dtype`) leaf by leaf; only one leaf is materialised at a time."""
    np_dtype = resolve_dtype(dtype)
    expected = hf_names(config)
    shard_of = _shard_map(hf_dir)
    _check_names(expected, shard_of, hf_dir)
    bar = tqdm(total=len(expected), desc="loading tensors", unit="tensor", disable=not progress)
    try:
        for path, names, transpose in leaf_sources(config):
            stacked = path[0] == "layers"
            out = None
            for i, name in enumerate(names):
                file = shard_of[name]
                # A fresh memory map per tensor: mapped pages of finished tensors are released at once
                # instead of accumulating in the resident set until the whole shard is done.
                with _open_safetensors(file) as handle:
                    t = _read_tensor(handle, name, file, expected[name])
                t = t.T if transpose else t
                if not stacked:
                    out = np.ascontiguousarray(t, dtype=np_dtype)
                else:
                    if out is None:
                        out = np.empty((len(names),) + t.shape, np_dtype)
                    out[i] = t
                del t
                bar.update(1)
            yield path, out
    finally:
        bar.close()


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
    """tree[path[0]][path[1]]... = value, creating the inner dicts."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def load_hf(hf_dir: str | os.PathLike, dtype: Any = "float32", shardings: Any = None,
            progress: bool = False) -> tuple[LLaDAConfig, dict]:
    """Loads an HF LLaDA folder → (config, params of jax arrays).

    `shardings`: optional tree of `jax.sharding.Sharding` matching the params (e.g. from
    `parallel.mesh.param_shardings`); each leaf is placed onto it as soon as it is read.
    """
    hf_dir = os.fspath(hf_dir)
    config = LLaDAConfig.from_hf_config(hf_dir)
    placer: Callable[[tuple[str, ...], np.ndarray], jax.Array]
    if shardings is None:
        placer = lambda path, arr: jnp.asarray(arr)
    else:
        # Each device receives only its own slice (also across hosts, where device_put of the whole array fails).
        placer = lambda path, arr: jax.make_array_from_callback(arr.shape, get_path(shardings, path),
                                                                lambda index: arr[index])
    params: dict = {}
    for path, arr in iter_params(hf_dir, config, dtype, progress=progress):
        set_path(params, path, placer(path, arr))
        del arr
    return config, params


def get_path(tree, path: tuple[str, ...]):
    """tree[path[0]][path[1]]..."""
    for key in path:
        tree = tree[key]
    return tree


def to_hf_tensors(config: LLaDAConfig, params: dict) -> dict[str, np.ndarray]:
    """Inverse mapping: params tree → {HF name: torch-layout array} (for exporting and for tests)."""
    out = {}
    for path, names, transpose in leaf_sources(config):
        arr = np.asarray(get_path(params, path))
        if path[0] != "layers":
            out[names[0]] = np.ascontiguousarray(arr.T if transpose else arr)
            continue
        for i, name in enumerate(names):
            out[name] = np.ascontiguousarray(arr[i].T if transpose else arr[i])
    return out
