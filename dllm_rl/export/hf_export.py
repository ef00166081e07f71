"""Params (optionally + LoRA adapters, merged) → the family's own HF folder: safetensors shards with its names.

Leaves are read one at a time (`sources.LeafReader`) and turned into torch-layout tensors one layer at a time. A
LoRA merge is computed per tensor in float32, W + (α/r)·A@B, and cast to the export dtype once at the very end;
merging into bf16 and casting again would round twice. Without adapters a tensor is only cast (a no-op when the
dtype is unchanged), so HF → dllm_rl → HF is bit-identical.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator

import numpy as np

from dllm_rl.checkpoint.hf import get_path, hf_names, leaf_sources, resolve_dtype
from dllm_rl.export.safetensors_io import DEFAULT_SHARD_SIZE, write_sharded
from dllm_rl.export.sources import LeafReader
from dllm_rl.models import DecoderConfig
from dllm_rl.models.lora import LoRAConfig

# The reference modelling code is loaded through these (trust_remote_code); a config written from our dataclass
# lacks them, so they are added when absent. LLaDA's and Dream's are those of their released config.json (Dream's:
# experiments/configs/model_shapes/dream_v0_7b.json). A2D-Qwen3 and LLaDA-MoE get none added (their released
# auto_map is not known here): an exported folder keeps whatever the source config.json carried.
AUTO_MAPS = {
    "llada": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
              "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
    "dream": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
}


def hf_specs(config: DecoderConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(HF name, torch shape) of every tensor, in the order `merged_tensors` yields them."""
    shapes = hf_names(config)
    return [(name, shapes[name]) for _, names, _ in leaf_sources(config) for name in names]


def merge_kernel(w: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    """W + scale·A@B of one [in, out] kernel, all in float32 (not yet cast); in place on the one float32 buffer
    (the same roundings as `w.astype(f32) + scale * delta`, without its temporaries)."""
    merged = a.astype(np.float32) @ b.astype(np.float32)
    merged *= np.float32(scale)
    merged += w
    return merged


def merged_tensors(config: DecoderConfig, read: LeafReader, dtype: Any, adapters: dict | None = None,
                   lora_config: LoRAConfig | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, torch-layout array in `dtype`) one tensor at a time, with the adapters merged where present."""
    np_dtype = resolve_dtype(dtype)
    shapes = hf_names(config)
    for path, names, transpose in leaf_sources(config):
        leaf = read(path)
        adapter = _adapter_at(adapters, lora_config, path)
        stacked = len(path) > 1  # over layers (and experts: one HF tensor per layer and expert)
        one = shapes[names[0]]
        flat = leaf.reshape((len(names),) + (tuple(reversed(one)) if transpose else one)) if stacked else None
        for i, name in enumerate(names):
            w = flat[i] if stacked else leaf
            if adapter is not None:
                a, b = (adapter["a"][i], adapter["b"][i]) if stacked else (adapter["a"], adapter["b"])
                w = merge_kernel(w, np.asarray(a), np.asarray(b), lora_config.scale)
            yield name, np.ascontiguousarray(w.T if transpose else w, dtype=np_dtype)
        del leaf


def _adapter_at(adapters: dict | None, lora_config: LoRAConfig | None, path: tuple[str, ...]) -> dict | None:
    if adapters is None:
        return None
    adapted = path == ("lm_head",) and lora_config.lm_head or len(path) == 2 and path[1] in lora_config.targets
    return get_path(adapters, path) if adapted else None


def hf_config_json(config: DecoderConfig, raw_config: dict) -> dict:
    """config.json for the export: the model's own, with the family's auto_map added if absent and known."""
    auto_map = raw_config.get("auto_map", AUTO_MAPS.get(config.family))
    return {**raw_config, "auto_map": auto_map} if auto_map else dict(raw_config)


def write_hf(out_dir: str, config: DecoderConfig, raw_config: dict, read: LeafReader, dtype: Any = "bfloat16",
             adapters: dict | None = None, lora_config: LoRAConfig | None = None,
             max_shard_size: int | str = DEFAULT_SHARD_SIZE) -> dict[str, str]:
    """Writes shards (+ index) and config.json into the existing folder `out_dir`; returns the weight map."""
    weight_map = write_sharded(out_dir, hf_specs(config), merged_tensors(config, read, dtype, adapters, lora_config),
                               resolve_dtype(dtype), max_shard_size)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config_json(config, raw_config), f, indent=2)
    return weight_map
