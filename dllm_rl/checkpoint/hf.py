"""Streaming HF safetensors → params tree, with each family's name mapping, transposes and shape/dtype checks.

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

from dllm_rl.models import DecoderConfig, config_from_hf
from dllm_rl.models.decoder import layer_kinds, param_shapes

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# Each family's HF tensor names: top-level leaves → (name, transpose?), and per-layer leaves → (name template,
# transpose?) with {i} the layer index and {e} the expert index. Leaves are yielded in this order (the order
# `dllm_rl.export` writes LLaDA's shards in); a leaf the config's params do not have is skipped.
_LLADA_TOP = {"embed": ("model.transformer.wte.weight", False), "ln_f": ("model.transformer.ln_f.weight", False),
              "lm_head": ("model.transformer.ff_out.weight", True)}
_LLADA_LAYER = {leaf: (f"model.transformer.blocks.{{i}}.{leaf}.weight", leaf not in ("attn_norm", "ff_norm"))
                for leaf in ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj",
                             "ff_out")}
_QWEN_TOP = {"embed": ("model.embed_tokens.weight", False), "ln_f": ("model.norm.weight", False),
             "lm_head": ("lm_head.weight", True)}
_QWEN_LAYER = {  # Qwen2.5 (Dream), Qwen3 (A2D) and OLMoE-style LLaDA-MoE share these names
    "attn_norm": ("model.layers.{i}.input_layernorm.weight", False),
    "q_proj": ("model.layers.{i}.self_attn.q_proj.weight", True),
    "k_proj": ("model.layers.{i}.self_attn.k_proj.weight", True),
    "v_proj": ("model.layers.{i}.self_attn.v_proj.weight", True),
    "q_bias": ("model.layers.{i}.self_attn.q_proj.bias", False),
    "k_bias": ("model.layers.{i}.self_attn.k_proj.bias", False),
    "v_bias": ("model.layers.{i}.self_attn.v_proj.bias", False),
    "q_norm": ("model.layers.{i}.self_attn.q_norm.weight", False),
    "k_norm": ("model.layers.{i}.self_attn.k_norm.weight", False),
    "attn_out": ("model.layers.{i}.self_attn.o_proj.weight", True),
    "ff_norm": ("model.layers.{i}.post_attention_layernorm.weight", False),
    "ff_proj": ("model.layers.{i}.mlp.gate_proj.weight", True),
    "up_proj": ("model.layers.{i}.mlp.up_proj.weight", True),
    "ff_out": ("model.layers.{i}.mlp.down_proj.weight", True),
    "router": ("model.layers.{i}.mlp.gate.weight", True),
    "expert_ff_proj": ("model.layers.{i}.mlp.experts.{e}.gate_proj.weight", True),
    "expert_up_proj": ("model.layers.{i}.mlp.experts.{e}.up_proj.weight", True),
    "expert_ff_out": ("model.layers.{i}.mlp.experts.{e}.down_proj.weight", True),
    "shared_ff_proj": ("model.layers.{i}.shared_expert.gate_proj.weight", True),
    "shared_up_proj": ("model.layers.{i}.shared_expert.up_proj.weight", True),
    "shared_ff_out": ("model.layers.{i}.shared_expert.down_proj.weight", True),
}
_LAYER_INDEX = re.compile(r"\.(?:blocks|layers)\.(\d+)\.")
_LAYOUTS = {"llada": (_LLADA_TOP, _LLADA_LAYER), "dream": (_QWEN_TOP, _QWEN_LAYER),
            "a2d_qwen3": (_QWEN_TOP, _QWEN_LAYER), "llada_moe": (_QWEN_TOP, _QWEN_LAYER)}
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


def hf_names(config: DecoderConfig) -> dict[str, tuple[Any, ...]]:
    """Every HF tensor name the config implies → expected torch shape; top-level tensors first, then layer by
    layer (the order of the checkpoint's modules)."""
    entries = [(name, shape) for _, names, _, shape in _sources(config) for name in names]
    layer_of = lambda entry: int(m.group(1)) if (m := _LAYER_INDEX.search(entry[0])) else -1
    return dict(sorted(entries, key=layer_of))  # a stable sort keeps each layer's tensors in layout order


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


def _check_names(expected: dict[str, tuple], found: dict[str, str], hf_dir: str,
                 ignored: tuple[str, ...] = ()) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected) - set(ignored))
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


def _sources(config: DecoderConfig) -> Iterator[tuple[tuple[str, ...], list[str], bool, tuple[int, ...]]]:
    """(params path, HF names, transpose?, torch shape of one tensor) for every params leaf of the config.

    A stacked leaf's names run over its leading axes in row-major order: layers (those of the leaf's FFN kind for
    `dense_ffn` / `moe_ffn`), then experts."""
    top, layer = _LAYOUTS[config.family]
    shapes = param_shapes(config)
    kinds = layer_kinds(config)
    for leaf, (name, transpose) in top.items():
        if leaf in shapes:
            yield (leaf,), [name], transpose, tuple(reversed(shapes[leaf])) if transpose else shapes[leaf]
    groups = [(group, [i for i, kind in enumerate(kinds) if group == "layers" or group == f"{kind}_ffn"])
              for group in ("layers", "dense_ffn", "moe_ffn") if group in shapes]
    for leaf, (template, transpose) in layer.items():
        for group, layer_ids in groups:
            if leaf not in shapes[group]:
                continue
            shape = shapes[group][leaf]
            experts = range(shape[1]) if "{e}" in template else [None]
            names = [template.format(i=i, e=e) for i in layer_ids for e in experts]
            one = shape[1 if experts == [None] else 2:]
            yield (group, leaf), names, transpose, tuple(reversed(one)) if transpose else one


def leaf_sources(config: DecoderConfig) -> Iterator[tuple[tuple[str, ...], list[str], bool]]:
    """(params path, HF names stacked along the leading axes or a single name, transpose?) for every params leaf.

    The one mapping between our tree and each family's HF names, used both ways (loading here, exporting in
    `dllm_rl.export`)."""
    for path, names, transpose, _ in _sources(config):
        yield path, names, transpose


def iter_params(hf_dir: str, config: DecoderConfig, dtype: Any = "float32",
                progress: bool = False) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Yields (params path, host array in `dtype`) leaf by leaf; only one leaf is materialised at a time."""
    np_dtype = resolve_dtype(dtype)
    expected = hf_names(config)
    shard_of = _shard_map(hf_dir)
    # A tied head is the embedding; a checkpoint that also stores it keeps a copy we do not read.
    _check_names(expected, shard_of, hf_dir, ignored=_QWEN_TOP["lm_head"][:1] if config.tie_embeddings else ())
    shapes = param_shapes(config)
    bar = tqdm(total=len(expected), desc="loading tensors", unit="tensor", disable=not progress)
    try:
        for path, names, transpose in leaf_sources(config):
            stacked = len(path) > 1
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
                        out = np.empty(get_path(shapes, path), np_dtype)
                    out.reshape((len(names),) + t.shape)[i] = t
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
            progress: bool = False) -> tuple[DecoderConfig, dict]:
    """Loads an HF folder of any supported family (its own config.json and tensor names, one safetensors file or
    shards, any float dtype) → (config of the family's class, params of jax arrays in `dtype`).

    `shardings`: optional tree of `jax.sharding.Sharding` matching the params (e.g. from
    `parallel.mesh.param_shardings`); each leaf is placed onto it as soon as it is read.
    """
    hf_dir = os.fspath(hf_dir)
    config = config_from_hf(hf_dir)
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


def to_hf_tensors(config: DecoderConfig, params: dict) -> dict[str, np.ndarray]:
    """Inverse mapping: params tree → {HF name: torch-layout array} (for exporting and for tests)."""
    out = {}
    for path, names, transpose, torch_shape in _sources(config):
        one = tuple(reversed(torch_shape)) if transpose else torch_shape
        flat = np.asarray(get_path(params, path)).reshape((len(names),) + one)
        for i, name in enumerate(names):
            out[name] = np.ascontiguousarray(flat[i].T if transpose else flat[i])
    return out
