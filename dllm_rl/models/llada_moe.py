"""LLaDA-MoE (inclusionAI/LLaDA-MoE-7B-A1B): its config.json reader; the model is `models.decoder` + `models.moe`.

OLMoE-style layout (the reference `modeling_lladamoe.py`): bidirectional attention with a key-padding mask,
positions 0..T-1, per-head RMSNorm of q and k (`qk_layernorm`) before RoPE, head_dim = hidden_size / heads, and
per layer (`moe_layer_freq[i]`: 1 MoE, 0 dense) either a SiLU-gated MLP of `dense_intermediate_size` or an MoE
FFN: float32 softmax router over `num_experts`, top `num_experts_per_tok`, plus a shared expert of
`shared_expert_intermediate_size` when that is set. Same-position logits.

Read as the reference code behaves, not as every key suggests: it routes with `norm_topk_prob = False` whatever
config.json says, and never reads `routed_scaling_factor`, `router_num_group` or `router_topk_group` in its
forward, so those are ignored. Keys whose other values it would act on, and this port does not implement, are
rejected (`clip_qkv`, `moe_router_enable_expert_bias`, a non-softmax router, partial rotary, attention biases).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar, Mapping

from dllm_rl.models.config import ConfigError, DecoderConfig, check_settings, first_id, read_hf_json, require_keys
from dllm_rl.models.moe import MoEConfig

_REQUIRED_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "num_experts",
                  "num_experts_per_tok", "expert_intermediate_size", "moe_layer_freq", "rope_theta")
_REQUIRED_SETTINGS = {
    "hidden_act": ("silu", "only SiLU gating is implemented"),
    "rope_scaling": (None, "RoPE scaling is not implemented"),
    "partial_rotary_factor": (1.0, "partial rotary embeddings are not implemented"),
    "attention_bias": (False, "attention biases are not implemented (LLaDA-MoE checkpoints have none)"),
    "clip_qkv": (None, "q/k/v clipping is not implemented"),
    "moe_router_enable_expert_bias": (False, "router expert biases are not implemented"),
    "moe_router_score_function": ("softmax", "only the softmax router is implemented"),
}
# LLaDAMoEConfig's defaults (configuration_lladamoe.py) for keys a config.json may omit; the mask id is the one
# LLaDA-MoE's own generate() uses (assumed: the released config.json may not carry it).
_DEFAULTS = {"max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "pad_token_id": 1, "eos_token_id": 50279,
             "mask_token_id": 156895}


@dataclasses.dataclass(frozen=True)
class LLaDAMoEConfig(DecoderConfig):
    """LLaDA-MoE's sizes and ids in the decoder's names; q/k norm and an MoE FFN."""

    family: ClassVar[str] = "llada_moe"

    rope_theta: float = 50000.0
    mask_token_id: int = 156895
    qk_norm: bool = True

    @classmethod
    def from_hf_config(cls, path_or_dict: str | os.PathLike | Mapping[str, Any]) -> "LLaDAMoEConfig":
        """Reads LLaDA-MoE's config.json (a path to the file or its folder, or the parsed dict) and validates it."""
        raw, where = read_hf_json(path_or_dict)
        require_keys(raw, where, _REQUIRED_KEYS, "LLaDA-MoE")
        check_settings(raw, where, _REQUIRED_SETTINGS)
        get = lambda key: raw[key] if raw.get(key) is not None else _DEFAULTS[key]
        n_layers, n_heads = int(raw["num_hidden_layers"]), int(raw["num_attention_heads"])
        freq = list(raw["moe_layer_freq"])
        if len(freq) != n_layers or any(x not in (0, 1) for x in freq):
            raise ConfigError(f"{where}: moe_layer_freq must list 0 (dense) or 1 (MoE) for each of the {n_layers} "
                              f"layers, got {freq!r}")
        dense = int(raw.get("dense_intermediate_size") or -1)
        if 0 in freq and dense <= 0:
            raise ConfigError(f"{where}: dense layers in moe_layer_freq need dense_intermediate_size > 0")
        expert = int(raw["expert_intermediate_size"])
        try:
            moe = MoEConfig(n_experts=int(raw["num_experts"]), n_experts_per_tok=int(raw["num_experts_per_tok"]),
                            expert_hidden_size=expert, layers=tuple(bool(x) for x in freq),
                            shared_expert_hidden_size=int(raw.get("shared_expert_intermediate_size") or 0),
                            norm_topk_prob=False)  # the reference hard-codes it (module doc)
            return cls(
                d_model=int(raw["hidden_size"]),
                n_layers=n_layers,
                n_heads=n_heads,
                n_kv_heads=int(raw.get("num_key_value_heads") or n_heads),
                mlp_hidden_size=dense if dense > 0 else expert,  # only dense layers read it
                vocab_size=int(raw["vocab_size"]),
                embedding_size=int(raw["vocab_size"]),
                max_sequence_length=int(get("max_position_embeddings")),
                rope_theta=float(raw["rope_theta"]),
                rms_norm_eps=float(get("rms_norm_eps")),
                mask_token_id=first_id(get("mask_token_id")),
                eos_token_id=first_id(get("eos_token_id")),
                pad_token_id=first_id(get("pad_token_id")),
                qk_norm=bool(raw.get("qk_layernorm")),
                tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
                moe=moe,
            )
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """LLaDA-MoE's config.json keys for this config (`from_hf_config` reads it back)."""
        moe = self.moe
        return dict(model_type="lladamoe", architectures=["LLaDAMoEModelLM"], hidden_size=self.d_model,
                    num_hidden_layers=self.n_layers, num_attention_heads=self.n_heads,
                    num_key_value_heads=self.n_kv_heads, dense_intermediate_size=self.mlp_hidden_size,
                    expert_intermediate_size=moe.expert_hidden_size,
                    shared_expert_intermediate_size=moe.shared_expert_hidden_size or None,
                    num_experts=moe.n_experts, num_experts_per_tok=moe.n_experts_per_tok,
                    moe_layer_freq=[int(x) for x in moe.layers], norm_topk_prob=False, vocab_size=self.vocab_size,
                    max_position_embeddings=self.max_sequence_length, rope_theta=self.rope_theta,
                    rms_norm_eps=self.rms_norm_eps, hidden_act="silu", qk_layernorm=self.qk_norm,
                    tie_word_embeddings=self.tie_embeddings, partial_rotary_factor=1.0, rope_scaling=None,
                    attention_bias=False, clip_qkv=None, moe_router_enable_expert_bias=False,
                    moe_router_score_function="softmax", mask_token_id=self.mask_token_id,
                    eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id, use_cache=False)
