"""LoRA adapters ⇄ a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`) for each family's PyTorch code.

PEFT names a module's adapter `base_model.model.<module>.lora_A.weight` [r, in] and `...lora_B.weight` [out, r]
(torch layout, i.e. our A [in, r] and B [r, out] transposed) and scales the update by lora_alpha / r, as we do.
Module names are each family's own (`checkpoint.hf.leaf_sources`): LLaDA's `model.transformer.blocks.N.q_proj`,
the Qwen-style `model.layers.N.self_attn.q_proj` / `.mlp.down_proj` of Dream, A2D-Qwen3 and LLaDA-MoE (whose
shared expert is `model.layers.N.shared_expert.gate_proj`).
PEFT picks the adapted modules by name: a list `target_modules` matches a module whose name equals an entry or
ends with "." + entry, a string is a regex that must match the whole name. The suffix rule has traps: with LLaDA's
names "ff_out" matches both every block's MLP output `blocks.{i}.ff_out` and the untied LM head
`model.transformer.ff_out`; with LLaDA-MoE's, "gate_proj" matches the shared expert's and every routed expert's
`mlp.experts.{e}.gate_proj` (which dllm_rl does not adapt). We therefore write the plain suffix list only when PEFT
would adapt exactly our modules with it, and an exact regex otherwise.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from safetensors import safe_open

from dllm_rl.assets import LLADA_8B_META_DIR
from dllm_rl.checkpoint.hf import (INDEX_FILE, CheckpointError, get_path, hf_names, leaf_sources, resolve_dtype,
                                   set_path)
from dllm_rl.export.safetensors_io import write_file
from dllm_rl.models import DecoderConfig
from dllm_rl.models.lora import TARGETS, LoRAConfig

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
LLADA_8B_INDEX = LLADA_8B_META_DIR / INDEX_FILE
_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$")
_LAYER_MODULE = re.compile(r"^(.*\.(?:blocks|layers))\.\d+\.(.+)$")  # (prefix, name inside the layer)


def module_names(config: DecoderConfig) -> list[str]:
    """Every module of the torch model that owns a weight (`model.transformer.blocks.0.q_proj`,
    `model.layers.0.self_attn.q_proj`, ...), in checkpoint order; a tied LM head owns none."""
    return [name[: -len(".weight")] for name in hf_names(config) if name.endswith(".weight")]


def index_module_names(index_path: str | os.PathLike = LLADA_8B_INDEX) -> set[str]:
    """Module names of an HF shard index (default: the real LLaDA-8B-Instruct one shipped in dllm_rl/assets)."""
    with open(index_path, encoding="utf-8") as f:
        return {name[: -len(".weight")] for name in json.load(f)["weight_map"]}


def peft_matches(target_modules: str | Sequence[str], name: str) -> bool:
    """PEFT's rule: a regex string must match the whole name; a list entry must equal it or be a "."-suffix."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return name in target_modules or any(name.endswith("." + t) for t in target_modules)


def peft_adapted(target_modules: str | Sequence[str], names: Iterable[str]) -> set[str]:
    return {n for n in names if peft_matches(target_modules, n)}


def _adapted_sources(lora_config: LoRAConfig, config: DecoderConfig) -> Iterator[tuple[tuple[str, ...], list[str]]]:
    """(params path, module name per stacked layer, or the single module) of every kernel `lora_config` adapts
    that the model has (a kernel stacked on `layers`, `dense_ffn` or `moe_ffn`; the untied LM head)."""
    for path, names, _ in leaf_sources(config):
        if (path[-1] in lora_config.targets and len(path) == 2) or (path == ("lm_head",) and lora_config.lm_head):
            yield path, [n[: -len(".weight")] for n in names]


def lora_module_names(lora_config: LoRAConfig, config: DecoderConfig) -> set[str]:
    """Torch module names our adapters cover."""
    return {m for _, modules in _adapted_sources(lora_config, config) for m in modules}


def peft_target_modules(lora_config: LoRAConfig, config: DecoderConfig) -> list[str] | str:
    """`target_modules` for adapter_config.json: the suffix list when PEFT's rule gives exactly our modules,
    else a regex matching exactly them (per layer prefix, any layer index: e.g. LLaDA's block ff_out adapted but
    not its LM head, or LLaDA-MoE's shared expert but not its routed experts)."""
    ours = lora_module_names(lora_config, config)
    suffixes = sorted({m.rsplit(".", 1)[-1] for m in ours})
    if peft_adapted(suffixes, module_names(config)) == ours:
        return suffixes
    inner: dict[str, set[str]] = {}
    alternatives = set()
    for module in ours:
        match = _LAYER_MODULE.match(module)
        if match:
            inner.setdefault(match.group(1), set()).add(match.group(2))
        else:
            alternatives.add(re.escape(module))
    for prefix, names in inner.items():
        alternatives.add(re.escape(prefix) + r"\.\d+\.(?:" + "|".join(re.escape(n) for n in sorted(names)) + ")")
    return "|".join(sorted(alternatives))


def adapter_config_json(lora_config: LoRAConfig, config: DecoderConfig, base_model: str = "") -> dict[str, Any]:
    return {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model,
            "r": lora_config.rank, "lora_alpha": lora_config.alpha,
            "target_modules": peft_target_modules(lora_config, config), "lora_dropout": lora_config.dropout,
            "bias": "none",
            "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
            "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {},
            "alpha_pattern": {}, "inference_mode": True}


def adapter_tensors(adapters: dict, lora_config: LoRAConfig, config: DecoderConfig,
                    dtype: Any) -> Iterator[tuple[str, np.ndarray]]:
    """(PEFT name, torch-layout array in `dtype`) for every adapter matrix, one at a time."""
    np_dtype = resolve_dtype(dtype)
    for path, modules in _adapted_sources(lora_config, config):
        node = get_path(adapters, path)
        a, b = np.asarray(node["a"]), np.asarray(node["b"])
        for i, module in enumerate(modules):
            a_i, b_i = (a[i], b[i]) if len(path) > 1 else (a, b)
            yield f"{PEFT_PREFIX}{module}.lora_A.weight", np.ascontiguousarray(a_i.T, dtype=np_dtype)
            yield f"{PEFT_PREFIX}{module}.lora_B.weight", np.ascontiguousarray(b_i.T, dtype=np_dtype)


def write_peft(out_dir: str, adapters: dict, lora_config: LoRAConfig, config: DecoderConfig,
               dtype: Any = "float32", base_model: str = "") -> None:
    """Writes the two PEFT files into the existing folder `out_dir`."""
    np_dtype = resolve_dtype(dtype)
    write_file(os.path.join(out_dir, ADAPTER_WEIGHTS), _adapter_specs(lora_config, config),
               adapter_tensors(adapters, lora_config, config, np_dtype), np_dtype)
    with open(os.path.join(out_dir, ADAPTER_CONFIG), "w", encoding="utf-8") as f:
        json.dump(adapter_config_json(lora_config, config, base_model), f, indent=2)


def _adapter_specs(lora_config: LoRAConfig, config: DecoderConfig) -> list[tuple[str, tuple[int, int]]]:
    """(PEFT name, torch shape) of every adapter matrix, in file order."""
    shapes = hf_names(config)
    specs = []
    for _, modules in _adapted_sources(lora_config, config):
        for module in modules:
            d_out, d_in = shapes[module + ".weight"]
            specs += [(f"{PEFT_PREFIX}{module}.lora_A.weight", (lora_config.rank, d_in)),
                      (f"{PEFT_PREFIX}{module}.lora_B.weight", (d_out, lora_config.rank))]
    return specs


def _read_adapter_config(folder: str) -> dict:
    path = os.path.join(folder, ADAPTER_CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the PEFT adapter config ({e}); pass a PEFT LoRA folder") from None
    unsupported = {"peft_type": "LORA", "use_dora": False, "use_rslora": False, "fan_in_fan_out": False,
                   "bias": "none", "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
                   "modules_to_save": None}
    for field, plain in unsupported.items():
        if cfg.get(field, plain) not in (plain, None, {}):
            raise CheckpointError(f"{path}: {field}={cfg[field]!r} is not supported; only plain LoRA "
                                  f"({field}={plain!r}) maps onto dllm_rl's adapters")
    return cfg


def load_peft(folder: str, config: DecoderConfig, dtype: Any = "float32") -> tuple[LoRAConfig, dict]:
    """Reads a PEFT LoRA folder back into (LoRAConfig, adapters in our layout)."""
    cfg = _read_adapter_config(folder)
    path = os.path.join(folder, ADAPTER_WEIGHTS)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: missing; a PEFT folder holds {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
    with safe_open(path, framework="numpy") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    modules = {m.group(1) for m in map(_KEY.match, tensors) if m}
    strays = sorted(n for n in tensors if not _KEY.match(n))
    known = set(module_names(config))
    if not modules:
        raise CheckpointError(f"{path}: holds no LoRA weights (base_model.model.<module>.lora_A/B.weight)")
    if strays or not modules <= known:
        raise CheckpointError(f"{path}: tensors {(strays + sorted(modules - known))[:4]} are not LoRA weights of "
                              f"{config.family} modules; the adapters belong to another model")
    adaptable = {m: src for src, mods in _adapted_sources(LoRAConfig(targets=TARGETS, lm_head=True), config)
                 for m in mods}
    if not modules <= set(adaptable):
        raise CheckpointError(f"{path}: adapters on {sorted(modules - set(adaptable))[:3]}, which dllm_rl does not "
                              f"adapt (routed experts, router, norms, embedding); adaptable kernels: {list(TARGETS)}")
    chosen = {adaptable[m] for m in modules}
    lora_config = LoRAConfig(rank=int(cfg["r"]), alpha=float(cfg["lora_alpha"]), lm_head=("lm_head",) in chosen,
                             targets=tuple(t for t in TARGETS if any(src[-1] == t and len(src) == 2 for src in chosen)))
    expected = lora_module_names(lora_config, config)
    if modules != expected:
        odd = sorted(modules ^ expected)
        raise CheckpointError(f"{path}: adapters for {odd[:3]} ({len(odd)} modules in all) break the pattern: dllm_rl "
                              f"adapts the same kernels in each of the model's {config.n_layers} layers; the adapters "
                              "belong to another model or were trained with layers_to_transform")
    if peft_adapted(cfg.get("target_modules") or [], known) != expected:
        raise CheckpointError(f"{path}: target_modules {cfg.get('target_modules')!r} selects other modules than "
                              "the weights hold; fix target_modules in adapter_config.json")
    wrong = [(n, list(tensors[n].shape) if n in tensors else "missing", list(s))
             for n, s in _adapter_specs(lora_config, config) if n not in tensors or tuple(tensors[n].shape) != s]
    if wrong:
        raise CheckpointError(f"{path}: tensor {wrong[0][0]} is {wrong[0][1]}, r={lora_config.rank} and the "
                              f"model's config.json imply {wrong[0][2]}; the adapters belong to another model")
    np_dtype = resolve_dtype(dtype)
    adapters: dict = {}
    for src_path, mods in _adapted_sources(lora_config, config):
        a = [tensors[f"{PEFT_PREFIX}{m}.lora_A.weight"].T.astype(np_dtype) for m in mods]
        b = [tensors[f"{PEFT_PREFIX}{m}.lora_B.weight"].T.astype(np_dtype) for m in mods]
        pair = {"a": np.stack(a), "b": np.stack(b)} if len(src_path) > 1 else {"a": a[0], "b": b[0]}
        set_path(adapters, src_path, pair)
    return lora_config, adapters
