"""The decoder's configuration: sizes plus the switches by which the model families differ, and config.json I/O.

One frozen dataclass, `DecoderConfig`, describes every family the library runs (as MaxText's decoder reads one
config's block options). Its field names are LLaDA's (`d_model`, `n_layers`, ...) and its switches default to
LLaDA's architecture; each family subclasses it (`llada.LLaDAConfig`, `dream.DreamConfig`,
`a2d_qwen3.A2DQwen3Config`, `llada_moe.LLaDAMoEConfig`) with its own `family` name, switch defaults and a
`from_hf_config` / `to_hf_dict` pair that reads and writes that family's own config.json keys.

Switches (docs/architecture.md, "Model families"):
  explicit_head_dim       head width when it is not d_model // n_heads (Qwen3 sets `head_dim`)
  qkv_bias                biases on the q/k/v projections (Qwen2.5 layout: Dream)
  qk_norm                 per-head RMSNorm of q and k over the head dimension, before RoPE (Qwen3, LLaDA-MoE)
  tie_embeddings          the LM head is the embedding matrix transposed (stored once)
  logit_shift             the raw logits at i score token i + 1 (Dream, initialised from an autoregressive model);
                          the library's outputs are aligned: `models.forward` shifts them right by one
  positions_skip_padding  RoPE positions cumsum(mask) - 1 under left padding (Dream's sampler) instead of 0..T-1
  moe                     a `moe.MoEConfig` (experts, router, which layers are MoE) or None for dense FFNs
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, ClassVar, Mapping

from dllm_rl import paths
from dllm_rl.models.moe import MoEConfig


class ConfigError(ValueError):
    """A model config that this port cannot represent; the message names the key and the fix."""


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Model sizes (LLaDA's names), token ids and architecture switches (defaults: LLaDA's architecture)."""

    family: ClassVar[str] = "llada"

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_hidden_size: int
    vocab_size: int
    embedding_size: int
    max_sequence_length: int = 4096
    rope_theta: float = 500000.0  # the LLaDA 8B checkpoints' value (dllm_rl/assets/llada_8b_instruct_meta/config.json)
    rms_norm_eps: float = 1e-5
    mask_token_id: int = 126336
    eos_token_id: int = 126081
    pad_token_id: int = 126081
    explicit_head_dim: int | None = None
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = False
    logit_shift: bool = False
    positions_skip_padding: bool = False
    moe: MoEConfig | None = None

    def __post_init__(self):
        name = type(self).__name__
        for field in ("d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "vocab_size",
                      "embedding_size", "max_sequence_length"):
            if int(getattr(self, field)) <= 0:
                raise ConfigError(f"{name}.{field} must be positive, got {getattr(self, field)}")
        if self.explicit_head_dim is None and self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if self.head_dim <= 0 or self.head_dim % 2:
            raise ConfigError(f"head_dim {self.head_dim} must be positive and even for rotary embeddings")
        if self.embedding_size < self.vocab_size:
            raise ConfigError(f"embedding_size {self.embedding_size} < vocab_size {self.vocab_size}")
        if self.moe is not None and len(self.moe.layers) != self.n_layers:
            raise ConfigError(f"moe.layers has {len(self.moe.layers)} entries for {self.n_layers} layers")

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.d_model // self.n_heads

    @property
    def num_params(self) -> int:
        from dllm_rl.models.decoder import param_shapes  # the layout lives with the model code

        return sum(math.prod(shape) for shape in _leaves(param_shapes(self)))


def _leaves(tree) -> list[tuple]:
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in _leaves(value)]
    return [tree]


def read_hf_json(path_or_dict: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """(parsed config.json, where it came from for messages) from a path to the file or its folder, or a dict."""
    if isinstance(path_or_dict, Mapping):
        return dict(path_or_dict), "config dict"
    path = paths.absolute(path_or_dict)  # local or gs://
    if path.is_dir():
        path = path / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")), os.fspath(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; pass the HF model folder holding config.json") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def check_settings(raw: Mapping[str, Any], where: str, required: Mapping[str, tuple[Any, str]]) -> None:
    """Rejects a config.json key whose value the port does not implement: key -> (allowed value, why)."""
    for key, (allowed, why) in required.items():
        if key in raw and raw[key] is not None and raw[key] != allowed:
            raise ConfigError(f"{where}: unsupported {key}={raw[key]!r} ({why}); expected {allowed!r}")


def require_keys(raw: Mapping[str, Any], where: str, keys: tuple[str, ...], family: str) -> None:
    missing = [k for k in keys if k not in raw]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}; is this a {family} config.json?")


def first_id(value: Any) -> int:
    """A token id from config.json, where some configs give a list (the first is used)."""
    return int(value[0] if isinstance(value, (list, tuple)) else value)
