"""LLaDA (GSAI-ML/LLaDA-8B-Instruct): its config.json reader and the LLaDA names of the model API.

Architecture (docs/architecture.md): bidirectional attention, RoPE (rotate-half, float32), RMSNorm (fp32
statistics, weight multiply after the cast back), SiLU-gated MLP, untied LM head, grouped-query attention: the
default switches of `models.config.DecoderConfig`, run by `models.decoder`. This module keeps the names other
modules and users call (`llada.forward`, `llada.forward_at`, ...); they are the decoder's functions.

Params layout (letters of docs/shapes.md: layers Ly, d_model D, heads H, kv heads Hk, head_dim Hd, mlp F, vocab V):
  embed   [V, D]          layers/attn_norm [Ly, D]         layers/q_proj  [Ly, D, H*Hd]
  ln_f    [D]             layers/ff_norm   [Ly, D]         layers/k_proj  [Ly, D, Hk*Hd]  (v_proj likewise)
  lm_head [D, V]          layers/attn_out  [Ly, H*Hd, D]   layers/ff_proj [Ly, D, F] (gate; up_proj likewise)
                          layers/ff_out    [Ly, F, D]
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar, Mapping

import jax

from dllm_rl.models import decoder
from dllm_rl.models.config import ConfigError, DecoderConfig, check_settings, read_hf_json, require_keys
from dllm_rl.models.decoder import (REMAT_POLICIES, forward, forward_at, forward_window_at, hidden_states,
                                    hidden_states_and_kv, init_params, param_shapes)

__all__ = ["ConfigError", "LLaDAConfig", "REMAT_POLICIES", "forward", "forward_at", "forward_window_at",
           "hidden_states", "hidden_states_and_kv", "init_params", "lm_head", "param_logical_axes", "param_shapes"]

# HF config keys whose values this port supports only in one setting: key -> (allowed value, why).
_REQUIRED_SETTINGS = {
    "alibi": (False, "ALiBi position biases are not implemented (LLaDA uses RoPE)"),
    "rope": (True, "the LLaDA model requires rotary embeddings"),
    "weight_tying": (False, "tied input/output embeddings are not implemented (LLaDA has an untied LM head)"),
    "block_group_size": (1, "block groups are not implemented"),
    "block_type": ("llama", "only the 'llama' block (separate q/k/v/up projections) is implemented"),
    "activation_type": ("silu", "only SiLU gating (gate=ff_proj, mul=up_proj) is implemented"),
    "layer_norm_type": ("rms", "only RMSNorm is implemented"),
    "include_bias": (False, "linear biases are not implemented"),
    "include_qkv_bias": (False, "q/k/v biases are not implemented"),
    "attention_layer_norm": (False, "q/k norms are not implemented"),
    "bias_for_layer_norm": (False, "norm biases are not implemented"),
    "layer_norm_with_affine": (True, "norms without a weight are not implemented"),
    "scale_logits": (False, "logit scaling is not implemented"),
    "input_emb_norm": (False, "embedding scaling is not implemented"),
    "use_cache": (False, "the reference model asserts use_cache is false"),
}
_REQUIRED_KEYS = ("d_model", "n_layers", "n_heads", "vocab_size")
# The fields `to_hf_dict` writes (LLaDA's config.json names; the switches are fixed by the family).
_HF_FIELDS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "vocab_size", "embedding_size",
              "max_sequence_length", "rope_theta", "rms_norm_eps", "mask_token_id", "eos_token_id", "pad_token_id")


@dataclasses.dataclass(frozen=True)
class LLaDAConfig(DecoderConfig):
    """Model hyper-parameters (names follow the HF config.json of LLaDA); LLaDA's switches."""

    family: ClassVar[str] = "llada"

    @classmethod
    def from_hf_config(cls, path_or_dict: str | os.PathLike | Mapping[str, Any]) -> "LLaDAConfig":
        """Reads an HF `config.json` (a path to the file or its folder, or the parsed dict) and validates it."""
        raw, where = read_hf_json(path_or_dict)
        require_keys(raw, where, _REQUIRED_KEYS, "LLaDA")
        check_settings(raw, where, _REQUIRED_SETTINGS)
        n_heads = int(raw["n_heads"])
        if raw.get("multi_query_attention"):
            n_kv = 1
        else:
            n_kv = int(raw.get("n_kv_heads") or n_heads)
        d_model = int(raw["d_model"])
        mlp = raw.get("mlp_hidden_size") or int(raw.get("mlp_ratio", 4)) * d_model
        try:
            return cls(
                d_model=d_model,
                n_layers=int(raw["n_layers"]),
                n_heads=n_heads,
                n_kv_heads=n_kv,
                mlp_hidden_size=int(mlp),
                vocab_size=int(raw["vocab_size"]),
                embedding_size=int(raw.get("embedding_size") or raw["vocab_size"]),
                max_sequence_length=int(raw.get("max_sequence_length", 4096)),
                # A config.json without the key gets the reference configuration class's default, 10000.
                rope_theta=float(raw.get("rope_theta", 10000.0)),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
                mask_token_id=int(raw.get("mask_token_id", 126336)),
                eos_token_id=int(raw.get("eos_token_id", 126081)),
                pad_token_id=int(raw.get("pad_token_id", raw.get("eos_token_id", 126081))),
            )
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """An HF-style config.json dict that `from_hf_config` reads back to this config."""
        return dict({name: getattr(self, name) for name in _HF_FIELDS}, model_type="llada",
                    architectures=["LLaDAModelLM"], block_type="llama", activation_type="silu",
                    layer_norm_type="rms", rope=True, alibi=False, weight_tying=False, include_bias=False,
                    use_cache=False)


def param_logical_axes() -> dict[str, Any]:
    """Logical axis names per parameter (same tree as the params), mapped to mesh axes by `parallel.mesh`."""
    return decoder.param_logical_axes()


def lm_head(params: dict[str, Any], h_BxTxD: jax.Array) -> jax.Array:
    """Untied LM head; logits in the compute dtype."""
    return h_BxTxD @ params["lm_head"].astype(h_BxTxD.dtype)
