"""Dream (Dream-org/Dream-v0-Instruct-7B): its config.json reader; the model is `models.decoder`.

Qwen2.5 layout: q/k/v projection biases (none on o_proj), GQA, RoPE theta from the config, RMSNorm, SiLU-gated MLP,
untied head unless `tie_word_embeddings`. Bidirectional. As Dream's own sampler (`generation_utils._sample`) calls
it: under left padding the RoPE positions are cumsum(mask) - 1, and its logits are shifted right by one (raw logits
at i score token i + 1; the library returns them aligned). Dream's sampler also masks padded query rows
(mask[b, i, j] = valid[b, i] & valid[b, j]); that changes only the padded rows' own outputs, which no other position
reads (padded keys are hidden everywhere), so the decoder's key-padding mask gives the same logits at every valid
position.
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
    "use_sliding_window": (False, "sliding-window attention is not implemented (Dream attends to every position)"),
}
# DreamConfig's defaults (configuration_dream.py) for keys a config.json may omit.
_DEFAULTS = {"num_key_value_heads": 32, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
             "rope_theta": 10000.0, "mask_token_id": 151666, "pad_token_id": 151643}


@dataclasses.dataclass(frozen=True)
class DreamConfig(DecoderConfig):
    """Dream's sizes and ids in the decoder's names; Dream's switches."""

    family: ClassVar[str] = "dream"

    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    mask_token_id: int = 151666
    eos_token_id: int = 151643
    pad_token_id: int = 151643
    qkv_bias: bool = True
    logit_shift: bool = True
    positions_skip_padding: bool = True

    @classmethod
    def from_hf_config(cls, path_or_dict: str | os.PathLike | Mapping[str, Any]) -> "DreamConfig":
        """Reads Dream's config.json (a path to the file or its folder, or the parsed dict) and validates it."""
        raw, where = read_hf_json(path_or_dict)
        require_keys(raw, where, _REQUIRED_KEYS, "Dream")
        check_settings(raw, where, _REQUIRED_SETTINGS)
        get = lambda key: raw[key] if raw.get(key) is not None else _DEFAULTS[key]
        pad = first_id(get("pad_token_id"))
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
                mask_token_id=first_id(get("mask_token_id")),
                # Dream's EOS when the config names none: its pad token, <|endoftext|> (assumed).
                eos_token_id=first_id(raw["eos_token_id"]) if raw.get("eos_token_id") is not None else pad,
                pad_token_id=pad,
                tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
            )
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """Dream's config.json keys for this config (`from_hf_config` reads it back)."""
        return dict(model_type="Dream", architectures=["DreamModel"], hidden_size=self.d_model,
                    num_hidden_layers=self.n_layers, num_attention_heads=self.n_heads,
                    num_key_value_heads=self.n_kv_heads, intermediate_size=self.mlp_hidden_size,
                    vocab_size=self.vocab_size, max_position_embeddings=self.max_sequence_length,
                    rope_theta=self.rope_theta, rms_norm_eps=self.rms_norm_eps, hidden_act="silu",
                    tie_word_embeddings=self.tie_embeddings, use_sliding_window=False, rope_scaling=None,
                    mask_token_id=self.mask_token_id, eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id,
                    use_cache=False)
