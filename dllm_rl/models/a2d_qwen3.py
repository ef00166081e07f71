"""A2D-Qwen3 (autoregressive-to-diffusion Qwen3, e.g. dllm-hub/Qwen3-0.6B-diffusion-mdlm): its config.json reader.

Qwen3 layout (transformers' `Qwen3Model`, run by dllm's `A2DQwen3Model` with the causal mask replaced by a
key-padding mask): per-head RMSNorm of q and k over an explicit `head_dim` before RoPE, GQA, no projection
biases, SiLU-gated MLP, tied embeddings when `tie_word_embeddings` (Qwen3-0.6B). Bidirectional; positions 0..T-1;
same-position logits (the MDLM default of that code, no shift).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar, Mapping

from dllm_rl.models.config import ConfigError, DecoderConfig, check_settings, first_id, read_hf_json, require_keys

_REQUIRED_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
_REQUIRED_SETTINGS = {
    "hidden_act": ("silu", "only SiLU gating is implemented"),
    "rope_scaling": (None, "RoPE scaling is not implemented"),
    "use_sliding_window": (False, "sliding-window attention is not implemented"),
    "attention_bias": (False, "projection biases are not implemented for Qwen3 (its checkpoints have none)"),
}
# transformers' Qwen3Config defaults for keys a config.json may omit.
_DEFAULTS = {"num_key_value_heads": 32, "head_dim": 128, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
             "rope_theta": 10000.0}


@dataclasses.dataclass(frozen=True)
class A2DQwen3Config(DecoderConfig):
    """A2D-Qwen3's sizes and ids in the decoder's names; Qwen3's switches."""

    family: ClassVar[str] = "a2d_qwen3"

    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    qk_norm: bool = True

    @classmethod
    def from_hf_config(cls, path_or_dict: str | os.PathLike | Mapping[str, Any]) -> "A2DQwen3Config":
        """Reads an A2D-Qwen3 config.json (a path to the file or its folder, or the parsed dict) and validates it."""
        raw, where = read_hf_json(path_or_dict)
        require_keys(raw, where, _REQUIRED_KEYS, "A2D-Qwen3")
        check_settings(raw, where, _REQUIRED_SETTINGS)
        if "mask_token_id" not in raw:
            raise ConfigError(f"{where}: missing key 'mask_token_id'; add the tokenizer's mask token id to "
                              "config.json (Qwen3's config class has none)")
        if any(kind != "full_attention" for kind in raw.get("layer_types") or ()):
            raise ConfigError(f"{where}: unsupported layer_types {raw['layer_types']!r}; only full attention")
        get = lambda key: raw[key] if raw.get(key) is not None else _DEFAULTS[key]
        eos = first_id(raw["eos_token_id"]) if raw.get("eos_token_id") is not None else None
        pad = first_id(raw["pad_token_id"]) if raw.get("pad_token_id") is not None else eos
        if eos is None or pad is None:
            raise ConfigError(f"{where}: missing key 'eos_token_id' (the sampler needs the EOS id)")
        try:
            return cls(
                d_model=int(raw["hidden_size"]),
                n_layers=int(raw["num_hidden_layers"]),
                n_heads=int(raw["num_attention_heads"]),
                n_kv_heads=int(get("num_key_value_heads")),
                mlp_hidden_size=int(raw["intermediate_size"]),
                vocab_size=int(raw["vocab_size"]),
                embedding_size=int(raw["vocab_size"]),
                max_sequence_length=int(get("max_position_embeddings")),
                rope_theta=float(get("rope_theta")),
                rms_norm_eps=float(get("rms_norm_eps")),
                mask_token_id=first_id(raw["mask_token_id"]),
                eos_token_id=eos,
                pad_token_id=pad,
                explicit_head_dim=int(get("head_dim")),
                tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
            )
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """A2D-Qwen3's config.json keys for this config (`from_hf_config` reads it back)."""
        return dict(model_type="a2d-qwen3", architectures=["A2DQwen3LMHeadModel"], hidden_size=self.d_model,
                    num_hidden_layers=self.n_layers, num_attention_heads=self.n_heads,
                    num_key_value_heads=self.n_kv_heads, head_dim=self.head_dim,
                    intermediate_size=self.mlp_hidden_size, vocab_size=self.vocab_size,
                    max_position_embeddings=self.max_sequence_length, rope_theta=self.rope_theta,
                    rms_norm_eps=self.rms_norm_eps, hidden_act="silu", attention_bias=False,
                    tie_word_embeddings=self.tie_embeddings, use_sliding_window=False, rope_scaling=None,
                    mask_token_id=self.mask_token_id, eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id)
