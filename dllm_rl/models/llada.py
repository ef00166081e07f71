"""LLaDA masked-diffusion transformer as pure functions over a params pytree.

Architecture of GSAI-ML/LLaDA-8B-Instruct (docs/architecture.md): bidirectional attention, RoPE (rotate-half,
float32), RMSNorm (fp32 statistics, weight multiply after the cast back), SiLU-gated MLP, untied LM head,
grouped-query attention. Layers are stacked on a leading axis and run with `lax.scan` (one compiled layer,
optional remat), as MaxText does. The config parsing and the model functions share this module (about 400
lines) because every forward variant reads the same config fields and layer helpers.

Params layout (letters of docs/shapes.md: layers Ly, d_model D, heads H, kv heads Hk, head_dim Hd, mlp F, vocab V):
  embed   [V, D]          layers/attn_norm [Ly, D]         layers/q_proj  [Ly, D, H*Hd]
  ln_f    [D]             layers/ff_norm   [Ly, D]         layers/k_proj  [Ly, D, Hk*Hd]  (v_proj likewise)
  lm_head [D, V]          layers/attn_out  [Ly, H*Hd, D]   layers/ff_proj [Ly, D, F] (gate; up_proj likewise)
                          layers/ff_out    [Ly, F, D]
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from dllm_rl import paths
from dllm_rl.models import tpu_attention

Params = dict[str, Any]

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


class ConfigError(ValueError):
    """A model config that this port cannot represent; the message names the key and the fix."""


@dataclasses.dataclass(frozen=True)
class LLaDAConfig:
    """Model hyper-parameters (names follow the HF config.json of LLaDA)."""

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_hidden_size: int
    vocab_size: int
    embedding_size: int
    max_sequence_length: int = 4096
    rope_theta: float = 500000.0  # the 8B checkpoints' value (dllm_rl/assets/llada_8b_instruct_meta/config.json)
    rms_norm_eps: float = 1e-5
    mask_token_id: int = 126336
    eos_token_id: int = 126081
    pad_token_id: int = 126081

    def __post_init__(self):
        for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "vocab_size",
                     "embedding_size", "max_sequence_length"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"LLaDAConfig.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if self.embedding_size < self.vocab_size:
            raise ConfigError(f"embedding_size {self.embedding_size} < vocab_size {self.vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def num_params(self) -> int:
        d, f, v = self.d_model, self.mlp_hidden_size, self.embedding_size
        kv = self.n_kv_heads * self.head_dim
        per_layer = 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d
        return self.n_layers * per_layer + 2 * v * d + d

    @classmethod
    def from_hf_config(cls, path_or_dict: str | os.PathLike | Mapping[str, Any]) -> "LLaDAConfig":
        """Reads an HF `config.json` (a path to the file or its folder, or the parsed dict) and validates it."""
        where = "config dict"
        if isinstance(path_or_dict, Mapping):
            raw = dict(path_or_dict)
        else:
            path = paths.absolute(path_or_dict)  # local or gs://
            if path.is_dir():
                path = path / "config.json"
            where = os.fspath(path)
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise ConfigError(f"{path}: no such file; pass the HF model folder holding config.json") from None
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}: not valid JSON ({e})") from None
        missing = [k for k in _REQUIRED_KEYS if k not in raw]
        if missing:
            raise ConfigError(f"{where}: missing key(s) {missing}; is this a LLaDA config.json?")
        for key, (allowed, why) in _REQUIRED_SETTINGS.items():
            if key in raw and raw[key] is not None and raw[key] != allowed:
                raise ConfigError(f"{where}: unsupported {key}={raw[key]!r} ({why}); expected {allowed!r}")
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
        return dict(dataclasses.asdict(self), model_type="llada", architectures=["LLaDAModelLM"],
                    block_type="llama", activation_type="silu", layer_norm_type="rms", rope=True, alibi=False,
                    weight_tying=False, include_bias=False, use_cache=False)


def param_shapes(config: LLaDAConfig) -> dict[str, Any]:
    """Shapes of every parameter (same tree structure as the params)."""
    ly, d, f, v = config.n_layers, config.d_model, config.mlp_hidden_size, config.embedding_size
    q, kv = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    return {
        "embed": (v, d),
        "layers": {
            "attn_norm": (ly, d), "q_proj": (ly, d, q), "k_proj": (ly, d, kv), "v_proj": (ly, d, kv),
            "attn_out": (ly, q, d), "ff_norm": (ly, d), "ff_proj": (ly, d, f), "up_proj": (ly, d, f),
            "ff_out": (ly, f, d),
        },
        "ln_f": (d,),
        "lm_head": (d, v),
    }


def param_logical_axes() -> dict[str, Any]:
    """Logical axis names per parameter (same tree as the params), mapped to mesh axes by `parallel.mesh`."""
    return {
        "embed": ("vocab", "embed"),
        "layers": {
            "attn_norm": ("layers", "norm"), "q_proj": ("layers", "embed", "heads"),
            "k_proj": ("layers", "embed", "kv_heads"), "v_proj": ("layers", "embed", "kv_heads"),
            "attn_out": ("layers", "heads", "embed"), "ff_norm": ("layers", "norm"),
            "ff_proj": ("layers", "embed", "mlp"), "up_proj": ("layers", "embed", "mlp"),
            "ff_out": ("layers", "mlp", "embed"),
        },
        "ln_f": ("norm",),
        "lm_head": ("embed", "vocab"),
    }


def init_params(config: LLaDAConfig, rng: jax.Array, dtype=jnp.float32) -> Params:
    """Random params (norm weights 1, linear N(0, 1/fan_in), embeddings N(0, 1)): for tests and benchmarks."""
    shapes = param_shapes(config)
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
    paths = [jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda s: isinstance(s, tuple))[0]]
    keys = jax.random.split(rng, len(leaves))
    out = []
    for path, shape, key in zip(paths, leaves, keys):
        if "norm" in path or path == "['ln_f']":
            out.append(jnp.ones(shape, dtype))
        elif path == "['embed']":
            out.append(jax.random.normal(key, shape, dtype))
        else:
            fan_in = shape[-2]
            out.append((jax.random.normal(key, shape, jnp.float32) / np.sqrt(fan_in)).astype(dtype))
    return jax.tree.unflatten(treedef, out)


def rms_norm(x_BxTxD: jax.Array, weight_D: jax.Array, eps: float) -> jax.Array:
    """RMSNorm as the reference: statistics in float32, cast back, then multiply by the weight."""
    x32 = x_BxTxD.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    weight_1xD = weight_D.astype(x_BxTxD.dtype).reshape((1,) * (x_BxTxD.ndim - 1) + weight_D.shape)
    return weight_1xD * y.astype(x_BxTxD.dtype)


def rope_tables(positions_T: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """float32 (sin, cos) tables [T, Hd] for rotate-half RoPE: angle t / theta^(2i/Hd), i = 0..Hd/2-1, twice."""
    exponent_Hd = (2 * (jnp.arange(head_dim, dtype=jnp.int32) % (head_dim // 2))).astype(jnp.float32) / head_dim
    inv_freq_Hd = 1.0 / (theta ** exponent_Hd)
    angles_TxHd = positions_T.astype(jnp.float32)[:, None] * inv_freq_Hd[None, :]
    return jnp.sin(angles_TxHd), jnp.cos(angles_TxHd)


def apply_rope(x_BxTxHxHd: jax.Array, sin_TxHd: jax.Array, cos_TxHd: jax.Array) -> jax.Array:
    """Rotate-half RoPE computed in float32, cast back to the input dtype (H query or Hk key heads)."""
    x = x_BxTxHxHd.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x * cos_TxHd[None, :, None, :] + rotated * sin_TxHd[None, :, None, :]
    return out.astype(x_BxTxHxHd.dtype)


def _attention(q_BxTxHxHd, k_BxSxHkxHd, v_BxSxHkxHd, key_mask_BxS, implementation):
    """Bidirectional softmax attention; GQA kv head j serves query heads j*Hg .. j*Hg+Hg-1."""
    h, hk = q_BxTxHxHd.shape[2], k_BxSxHkxHd.shape[2]
    if implementation in tpu_attention.IMPLEMENTATIONS:
        return tpu_attention.splash_attention(q_BxTxHxHd, k_BxSxHkxHd, v_BxSxHkxHd, key_mask_BxS, implementation)
    if implementation is not None:
        bias = None if key_mask_BxS is None else _key_bias(key_mask_BxS, q_BxTxHxHd.dtype)[:, None, None, :]
        return jax.nn.dot_product_attention(q_BxTxHxHd, k_BxSxHkxHd, v_BxSxHkxHd, bias=bias,
                                            implementation=implementation)
    b, t, _, hd = q_BxTxHxHd.shape
    q_BxTxHkxHgxHd = q_BxTxHxHd.reshape(b, t, hk, h // hk, hd)
    scores_BxHkxHgxTxS = jnp.einsum("btkgd,bskd->bkgts", q_BxTxHkxHgxHd, k_BxSxHkxHd,
                                    preferred_element_type=jnp.float32) / np.sqrt(hd)
    if key_mask_BxS is not None:
        scores_BxHkxHgxTxS = scores_BxHkxHgxTxS + _key_bias(key_mask_BxS, jnp.float32)[:, None, None, None, :]
    probs_BxHkxHgxTxS = jax.nn.softmax(scores_BxHkxHgxTxS, axis=-1).astype(v_BxSxHkxHd.dtype)
    out_BxTxHkxHgxHd = jnp.einsum("bkgts,bskd->btkgd", probs_BxHkxHgxTxS, v_BxSxHkxHd)
    return out_BxTxHkxHgxHd.reshape(b, t, h, hd)


def _key_bias(key_mask_BxS: jax.Array, dtype) -> jax.Array:
    """Additive key-padding bias: 0 where attended, the dtype's most negative value on padded keys."""
    return jnp.where(key_mask_BxS.astype(bool), 0.0, jnp.finfo(dtype).min).astype(dtype)


def _qkv(config: LLaDAConfig, x_BxTxD, layer, sin_TxHd, cos_TxHd):
    """Pre-norm q/k/v projections of one layer; q and k rotated for the positions of sin/cos."""
    b, t, _ = x_BxTxD.shape
    hd, h, hk = config.head_dim, config.n_heads, config.n_kv_heads
    dt = x_BxTxD.dtype
    h_BxTxD = rms_norm(x_BxTxD, layer["attn_norm"], config.rms_norm_eps)
    q_BxTxHxHd = (h_BxTxD @ layer["q_proj"].astype(dt)).reshape(b, t, h, hd)
    k_BxTxHkxHd = (h_BxTxD @ layer["k_proj"].astype(dt)).reshape(b, t, hk, hd)
    v_BxTxHkxHd = (h_BxTxD @ layer["v_proj"].astype(dt)).reshape(b, t, hk, hd)
    return apply_rope(q_BxTxHxHd, sin_TxHd, cos_TxHd), apply_rope(k_BxTxHkxHd, sin_TxHd, cos_TxHd), v_BxTxHkxHd


def _attn_out_mlp(config: LLaDAConfig, x_BxTxD, a_BxTxHxHd, layer):
    """The rest of a layer after attention: output projection, residual, SiLU-gated MLP, residual."""
    b, t, _ = x_BxTxD.shape
    dt = x_BxTxD.dtype
    x_BxTxD = x_BxTxD + a_BxTxHxHd.reshape(b, t, config.n_heads * config.head_dim) @ layer["attn_out"].astype(dt)
    h_BxTxD = rms_norm(x_BxTxD, layer["ff_norm"], config.rms_norm_eps)
    gate_BxTxF = h_BxTxD @ layer["ff_proj"].astype(dt)
    up_BxTxF = h_BxTxD @ layer["up_proj"].astype(dt)
    return x_BxTxD + (jax.nn.silu(gate_BxTxF) * up_BxTxF) @ layer["ff_out"].astype(dt)


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _embed(params: Params, input_ids_BxT: jax.Array, compute_dtype) -> jax.Array:
    """Token embeddings [B, T, D] in the compute dtype (default: the embedding dtype)."""
    return jnp.take(params["embed"], input_ids_BxT, axis=0).astype(compute_dtype or params["embed"].dtype)


def _layers(config: LLaDAConfig, params: Params, x_BxTxD: jax.Array, positions_T: jax.Array,
            key_mask_BxS: jax.Array | None, cache_kv=None, *, emit: str | None = None, remat: str = "none",
            attention_impl: str | None = None):
    """Every layer in one `lax.scan` (one compiled layer, optionally rematerialised): (x_out, per-layer output).

    The T input tokens sit at absolute `positions_T` (RoPE). With `cache_kv` = (k, v) [Ly, B, S', Hk, Hd] each
    (keys already rotated), every layer's queries also attend to that layer's cached keys/values, placed before
    the input's own: `key_mask_BxS` then covers S = S' + T keys. `emit` picks the per-layer output stacked on a
    leading Ly axis: None (nothing), "hidden" (each layer's output) or "kv" (each layer's own (k, v), rotated).
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r}; choose one of {sorted(REMAT_POLICIES)}")
    sin_TxHd, cos_TxHd = rope_tables(positions_T, config.head_dim, config.rope_theta)

    def layer_fn(x_BxTxD, layer_and_cache):
        layer, cache = layer_and_cache
        q_BxTxHxHd, k_BxTxHkxHd, v_BxTxHkxHd = _qkv(config, x_BxTxD, layer, sin_TxHd, cos_TxHd)
        k_BxSxHkxHd, v_BxSxHkxHd = k_BxTxHkxHd, v_BxTxHkxHd
        if cache is not None:
            k_BxSxHkxHd = jnp.concatenate([cache[0].astype(x_BxTxD.dtype), k_BxTxHkxHd], axis=1)
            v_BxSxHkxHd = jnp.concatenate([cache[1].astype(x_BxTxD.dtype), v_BxTxHkxHd], axis=1)
        a_BxTxHxHd = _attention(q_BxTxHxHd, k_BxSxHkxHd, v_BxSxHkxHd, key_mask_BxS, attention_impl)
        y_BxTxD = _attn_out_mlp(config, x_BxTxD, a_BxTxHxHd, layer)
        return y_BxTxD, {None: None, "hidden": y_BxTxD, "kv": (k_BxTxHkxHd, v_BxTxHkxHd)}[emit]

    if remat != "none":
        layer_fn = jax.checkpoint(layer_fn, policy=REMAT_POLICIES[remat], prevent_cse=False)
    return jax.lax.scan(layer_fn, x_BxTxD, (params["layers"], cache_kv))


def hidden_states(config: LLaDAConfig, params: Params, input_ids_BxT: jax.Array,
                  attention_mask_BxT: jax.Array | None = None, *, compute_dtype=None,
                  remat: str = "none", attention_impl: str | None = None,
                  return_all: bool = False):
    """Final hidden states ln_f(x) [B, T, D]; with return_all also the HF `output_hidden_states` tuple.

    compute_dtype defaults to the embedding dtype. `remat` names a policy in REMAT_POLICIES (checkpointing
    each layer for training). `attention_impl` is passed to `jax.nn.dot_product_attention` ("cudnn" on GPU),
    or is "splash" for the Pallas TPU kernel (`models.tpu_attention`; "splash_interpret" on CPU);
    None uses the plain einsum path (float32 scores).
    """
    x_BxTxD = _embed(params, input_ids_BxT, compute_dtype)
    x_out_BxTxD, y_LyxBxTxD = _layers(config, params, x_BxTxD, jnp.arange(input_ids_BxT.shape[1]),
                                      attention_mask_BxT, emit="hidden" if return_all else None, remat=remat,
                                      attention_impl=attention_impl)
    final_BxTxD = rms_norm(x_out_BxTxD, params["ln_f"], config.rms_norm_eps)
    if not return_all:
        return final_BxTxD
    # HF tuple: [embeddings, block 0 .. block Ly-2 outputs, ln_f(last block)].
    all_states = jnp.concatenate([x_BxTxD[None], y_LyxBxTxD[:-1], final_BxTxD[None]], axis=0)
    return final_BxTxD, all_states


def lm_head(params: Params, h_BxTxD: jax.Array) -> jax.Array:
    """Untied LM head; logits in the compute dtype."""
    return h_BxTxD @ params["lm_head"].astype(h_BxTxD.dtype)


def forward(config: LLaDAConfig, params: Params, input_ids: jax.Array, attention_mask: jax.Array | None = None,
            **kwargs) -> jax.Array:
    """Logits [B, T, V] of `input_ids` [B, T]; `attention_mask` [B, T] (1 = token, 0 = padding) masks padded keys
    only. Keyword arguments go to `hidden_states`."""
    return lm_head(params, hidden_states(config, params, input_ids, attention_mask, **kwargs))


def _logits_at(params: Params, h_BxTxD: jax.Array, positions_BxN: jax.Array) -> jax.Array:
    """Logits [B, N, V] at `positions_BxN`: hidden states are gathered before the LM head."""
    return lm_head(params, jnp.take_along_axis(h_BxTxD, positions_BxN[..., None].astype(jnp.int32), axis=1))


def forward_at(config: LLaDAConfig, params: Params, input_ids: jax.Array, positions_BxN: jax.Array,
               attention_mask: jax.Array | None = None, **kwargs) -> jax.Array:
    """Logits [B, N, V] only at `positions_BxN` of `input_ids` [B, T]: hidden states are gathered before the LM
    head."""
    return _logits_at(params, hidden_states(config, params, input_ids, attention_mask, **kwargs), positions_BxN)


def hidden_states_and_kv(config: LLaDAConfig, params: Params, input_ids_BxT: jax.Array,
                         attention_mask_BxT: jax.Array | None = None, *, compute_dtype=None,
                         attention_impl: str | None = None, remat: str = "none"
                         ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """ln_f hidden states [B, T, D] and every layer's keys (after RoPE) and values, [Ly, B, T, Hk, Hd] each.

    Slices [:, :, :P] of the K/V are the prefix cache `forward_window_at` attends to. Computed from the whole
    sequence they are exact for that sequence (bidirectional attention: a prefix position's K/V at layers > 0
    depend on the tokens right of it); computed from the prefix alone they are not.
    """
    x_BxTxD = _embed(params, input_ids_BxT, compute_dtype)
    x_out_BxTxD, (k_LyxBxTxHkxHd, v_LyxBxTxHkxHd) = _layers(
        config, params, x_BxTxD, jnp.arange(input_ids_BxT.shape[1]), attention_mask_BxT, emit="kv", remat=remat,
        attention_impl=attention_impl)
    return rms_norm(x_out_BxTxD, params["ln_f"], config.rms_norm_eps), k_LyxBxTxHkxHd, v_LyxBxTxHkxHd


def forward_window_at(config: LLaDAConfig, params: Params, window_ids_BxN: jax.Array, window_start,
                      cache_k_LyxBxTxHkxHd: jax.Array, cache_v_LyxBxTxHkxHd: jax.Array,
                      window_positions_BxN: jax.Array, cache_mask_BxT: jax.Array | None = None,
                      window_mask_BxN: jax.Array | None = None, *, compute_dtype=None,
                      attention_impl: str | None = None, remat: str = "none") -> jax.Array:
    """Logits at `window_positions_BxN` (indices into the window; any count) of a window of tokens only.

    The window's tokens sit at absolute positions window_start + 0..N-1 (RoPE uses those; window_start may be
    traced). In every layer the window's queries attend to the cached keys/values of T positions (already
    rotated for their own positions; `cache_mask_BxT` 1 = visible, for key padding and to hide cached entries
    the window replaces) and to the window's own keys/values (`window_mask_BxN`). When the cache holds, for
    every position outside the window, the K/V that `hidden_states_and_kv` gives for the full sequence, this
    equals `forward_at` on that sequence (up to float summation order); a cache from an older sequence makes it
    an approximation.
    """
    b, n = window_ids_BxN.shape
    t = cache_k_LyxBxTxHkxHd.shape[2]
    key_mask_BxS = None  # S = T cached keys, then the window's N
    if cache_mask_BxT is not None or window_mask_BxN is not None:
        cache_m = jnp.ones((b, t), bool) if cache_mask_BxT is None else cache_mask_BxT.astype(bool)
        window_m = jnp.ones((b, n), bool) if window_mask_BxN is None else window_mask_BxN.astype(bool)
        key_mask_BxS = jnp.concatenate([jnp.broadcast_to(cache_m, (b, t)), jnp.broadcast_to(window_m, (b, n))], 1)
    x_out_BxNxD, _ = _layers(config, params, _embed(params, window_ids_BxN, compute_dtype),
                             window_start + jnp.arange(n), key_mask_BxS, (cache_k_LyxBxTxHkxHd, cache_v_LyxBxTxHkxHd),
                             remat=remat, attention_impl=attention_impl)
    return _logits_at(params, rms_norm(x_out_BxNxD, params["ln_f"], config.rms_norm_eps), window_positions_BxN)
