"""The model families and their one API, chosen by the config.

`config_from_hf(path)` reads any supported family's config.json (by `model_type`, then `architectures`) into
that family's config class (LLaDA-MoE's released config.json says `model_type` "llada", as its
configuration_lladamoe.py names it; its MoE keys tell it from LLaDA's); every function below takes such a config
and reads its switches, so one call serves every family. Logits are aligned: `forward(...)[:, i]` scores the token
at position i, whatever the family's own convention (Dream's right shift is applied inside).

| family | config class | HF `model_type` / `architectures` |
| --- | --- | --- |
| llada | `llada.LLaDAConfig` | `llada` / `LLaDAModelLM` |
| dream | `dream.DreamConfig` | `Dream` / `DreamModel` |
| a2d_qwen3 | `a2d_qwen3.A2DQwen3Config` | `a2d-qwen3` / `A2DQwen3LMHeadModel` |
| llada_moe | `llada_moe.LLaDAMoEConfig` | `lladamoe` (or `llada` with MoE keys, as released) / `LLaDAMoEModelLM` |
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from dllm_rl.models.a2d_qwen3 import A2DQwen3Config
from dllm_rl.models.config import ConfigError, DecoderConfig, read_hf_json
from dllm_rl.models.decoder import (REMAT_POLICIES, align, forward, forward_at, forward_window_at, hidden_states,
                                    hidden_states_and_kv, init_params, lm_head, logits_at, param_logical_axes,
                                    param_shapes, rope_positions)
from dllm_rl.models.dream import DreamConfig
from dllm_rl.models.llada import LLaDAConfig
from dllm_rl.models.llada_moe import LLaDAMoEConfig

FAMILIES: dict[str, type[DecoderConfig]] = {cls.family: cls for cls in
                                            (LLaDAConfig, DreamConfig, A2DQwen3Config, LLaDAMoEConfig)}
_MODEL_TYPES = {"llada": LLaDAConfig, "dream": DreamConfig, "a2d-qwen3": A2DQwen3Config,
                "lladamoe": LLaDAMoEConfig}
# Keys only LLaDA-MoE's config.json has: they pick LLaDA-MoE when model_type is LLaDA's "llada".
_LLADA_MOE_KEYS = ("num_experts", "expert_intermediate_size", "moe_layer_freq")
_ARCHITECTURES = {"LLaDAModelLM": LLaDAConfig, "DreamModel": DreamConfig, "A2DQwen3LMHeadModel": A2DQwen3Config,
                  "LLaDAMoEModelLM": LLaDAMoEConfig}

__all__ = ["FAMILIES", "REMAT_POLICIES", "A2DQwen3Config", "ConfigError", "DecoderConfig", "DreamConfig",
           "LLaDAConfig", "LLaDAMoEConfig", "align", "config_class", "config_from_hf", "forward", "forward_at",
           "forward_window_at", "hidden_states", "hidden_states_and_kv", "init_params", "lm_head", "logits_at",
           "param_logical_axes", "param_shapes", "rope_positions"]


def config_class(raw: Mapping[str, Any], where: str = "config dict") -> type[DecoderConfig]:
    """The family config class of a parsed config.json: by `model_type`, then `architectures`; a config with
    neither but LLaDA's keys (`d_model`, `n_layers`) is LLaDA; "llada" with LLaDA-MoE's keys is LLaDA-MoE."""
    model_type = str(raw.get("model_type") or "").lower()
    if model_type == "llada" and any(key in raw for key in _LLADA_MOE_KEYS):
        return LLaDAMoEConfig
    if model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    for arch in raw.get("architectures") or ():
        if arch in _ARCHITECTURES:
            return _ARCHITECTURES[arch]
    if not model_type and "d_model" in raw and "n_layers" in raw:
        return LLaDAConfig
    raise ConfigError(f"{where}: unknown model family (model_type={raw.get('model_type')!r}, "
                      f"architectures={raw.get('architectures')!r}); supported model_type values: "
                      f"{sorted(_MODEL_TYPES)}")


def config_from_hf(path_or_dict: str | os.PathLike | Mapping[str, Any]) -> DecoderConfig:
    """Reads any supported family's HF config.json (a path to the file or its folder, or the parsed dict)."""
    raw, where = read_hf_json(path_or_dict)
    return config_class(raw, where).from_hf_config(raw if isinstance(path_or_dict, Mapping) else path_or_dict)
