"""LLaDA masked-diffusion transformer as pure functions over a params pytree.

Architecture of GSAI-ML/LLaDA-8B-Instruct (spec/LLADA.md §1): bidirectional attention, RoPE (rotate-half,
float32), RMSNorm (fp32 statistics, weight multiply after the cast back), SiLU-gated MLP, untied LM head,
grouped-query attention. Layers are stacked on a leading axis and run with `lax.scan` (one compiled layer,
optional remat), as MaxText does.

Params layout (shapes for n_layers N, d_model D, heads H, kv heads K, head_dim hd, mlp F, vocab V):
  embed   [V, D]          layers/attn_norm [N, D]        layers/q_proj  [N, D, H*hd]
  ln_f    [D]             layers/ff_norm   [N, D]        layers/k_proj  [N, D, K*hd]  (v_proj likewise)
  lm_head [D, V]          layers/attn_out  [N, H*hd, D]  layers/ff_proj [N, D, F] (gate; up_proj likewise)
                          layers/ff_out    [N, F, D]
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

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
    rope_theta: float = 500000.0
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
            path = os.fspath(path_or_dict)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            where = path
            try:
                with open(path, encoding="utf-8") as f:
                    raw = json.load(f)
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
    n, d, f, v = config.n_layers, config.d_model, config.mlp_hidden_size, config.embedding_size
    q, kv = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    return {
        "embed": (v, d),
        "layers": {
            "attn_norm": (n, d), "q_proj": (n, d, q), "k_proj": (n, d, kv), "v_proj": (n, d, kv),
            "attn_out": (n, q, d), "ff_norm": (n, d), "ff_proj": (n, d, f), "up_proj": (n, d, f),
            "ff_out": (n, f, d),
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
    return weight_D.astype(x_BxTxD.dtype) * y.astype(x_BxTxD.dtype)


def rope_tables(positions_T: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """float32 (sin, cos) tables [T, hd] for rotate-half RoPE."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs_TxF = positions_T.astype(jnp.float32)[:, None] * inv_freq[None, :]
    emb_TxHd = jnp.concatenate([freqs_TxF, freqs_TxF], axis=-1)
    return jnp.sin(emb_TxHd), jnp.cos(emb_TxHd)


def apply_rope(x_BxTxNxHd: jax.Array, sin_TxHd: jax.Array, cos_TxHd: jax.Array) -> jax.Array:
    """Rotate-half RoPE computed in float32, cast back to the input dtype."""
    x = x_BxTxNxHd.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x * cos_TxHd[None, :, None, :] + rotated * sin_TxHd[None, :, None, :]
    return out.astype(x_BxTxNxHd.dtype)


def _attention(q_BxTxHxHd, k_BxTxKxHd, v_BxTxKxHd, key_mask_BxT, implementation):
    """Bidirectional softmax attention; GQA kv head j serves query heads j*g .. j*g+g-1."""
    h, kv = q_BxTxHxHd.shape[2], k_BxTxKxHd.shape[2]
    if implementation is not None:
        bias = None if key_mask_BxT is None else _key_bias(key_mask_BxT, q_BxTxHxHd.dtype)[:, None, None, :]
        return jax.nn.dot_product_attention(q_BxTxHxHd, k_BxTxKxHd, v_BxTxKxHd, bias=bias,
                                            implementation=implementation)
    b, t, _, hd = q_BxTxHxHd.shape
    q_BxTxKxGxHd = q_BxTxHxHd.reshape(b, t, kv, h // kv, hd)
    scores_BxKxGxTxS = jnp.einsum("btkgd,bskd->bkgts", q_BxTxKxGxHd, k_BxTxKxHd,
                                  preferred_element_type=jnp.float32) / np.sqrt(hd)
    if key_mask_BxT is not None:
        scores_BxKxGxTxS = scores_BxKxGxTxS + _key_bias(key_mask_BxT, jnp.float32)[:, None, None, None, :]
    probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS, axis=-1).astype(v_BxTxKxHd.dtype)
    out_BxTxKxGxHd = jnp.einsum("bkgts,bskd->btkgd", probs_BxKxGxTxS, v_BxTxKxHd)
    return out_BxTxKxGxHd.reshape(b, t, h, hd)


def _key_bias(key_mask_BxT: jax.Array, dtype) -> jax.Array:
    """Additive key-padding bias: 0 where attended, the dtype's most negative value on padded keys."""
    return jnp.where(key_mask_BxT.astype(bool), 0.0, jnp.finfo(dtype).min).astype(dtype)


def _qkv(config: LLaDAConfig, x_BxTxD, layer, sin_TxHd, cos_TxHd):
    """Pre-norm q/k/v projections of one layer; q and k rotated for the positions of sin/cos."""
    b, t, _ = x_BxTxD.shape
    hd, h, kv = config.head_dim, config.n_heads, config.n_kv_heads
    dt = x_BxTxD.dtype
    h_BxTxD = rms_norm(x_BxTxD, layer["attn_norm"], config.rms_norm_eps)
    q_BxTxHxHd = (h_BxTxD @ layer["q_proj"].astype(dt)).reshape(b, t, h, hd)
    k_BxTxKxHd = (h_BxTxD @ layer["k_proj"].astype(dt)).reshape(b, t, kv, hd)
    v_BxTxKxHd = (h_BxTxD @ layer["v_proj"].astype(dt)).reshape(b, t, kv, hd)
    return apply_rope(q_BxTxHxHd, sin_TxHd, cos_TxHd), apply_rope(k_BxTxKxHd, sin_TxHd, cos_TxHd), v_BxTxKxHd


def _attn_out_mlp(config: LLaDAConfig, x_BxTxD, a_BxTxHxHd, layer):
    """The rest of a layer after attention: output projection, residual, SiLU-gated MLP, residual."""
    b, t, _ = x_BxTxD.shape
    dt = x_BxTxD.dtype
    x_BxTxD = x_BxTxD + a_BxTxHxHd.reshape(b, t, config.n_heads * config.head_dim) @ layer["attn_out"].astype(dt)
    h_BxTxD = rms_norm(x_BxTxD, layer["ff_norm"], config.rms_norm_eps)
    gate_BxTxF = h_BxTxD @ layer["ff_proj"].astype(dt)
    up_BxTxF = h_BxTxD @ layer["up_proj"].astype(dt)
    return x_BxTxD + (jax.nn.silu(gate_BxTxF) * up_BxTxF) @ layer["ff_out"].astype(dt)


def _block(config: LLaDAConfig, x_BxTxD, layer, sin_TxHd, cos_TxHd, key_mask_BxT, attention_impl):
    q_BxTxHxHd, k_BxTxKxHd, v_BxTxKxHd = _qkv(config, x_BxTxD, layer, sin_TxHd, cos_TxHd)
    a_BxTxHxHd = _attention(q_BxTxHxHd, k_BxTxKxHd, v_BxTxKxHd, key_mask_BxT, attention_impl)
    return _attn_out_mlp(config, x_BxTxD, a_BxTxHxHd, layer)


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def hidden_states(config: LLaDAConfig, params: Params, input_ids_BxT: jax.Array,
                  attention_mask_BxT: jax.Array | None = None, *, compute_dtype=None,
                  remat: str = "none", attention_impl: str | None = None,
                  return_all: bool = False):
    """Final hidden states ln_f(x) [B, T, D]; with return_all also the HF `output_hidden_states` tuple.

    compute_dtype defaults to the embedding dtype. `remat` names a policy in REMAT_POLICIES (checkpointing
    each layer for training). `attention_impl` is passed to `jax.nn.dot_product_attention` ("cudnn" on GPU);
    None uses the plain einsum path (float32 scores).
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r}; choose one of {sorted(REMAT_POLICIES)}")
    dtype = compute_dtype or params["embed"].dtype
    t = input_ids_BxT.shape[1]
    x_BxTxD = jnp.take(params["embed"], input_ids_BxT, axis=0).astype(dtype)
    sin_TxHd, cos_TxHd = rope_tables(jnp.arange(t), config.head_dim, config.rope_theta)
    key_mask_BxT = attention_mask_BxT

    def layer_fn(x, layer):
        y = _block(config, x, layer, sin_TxHd, cos_TxHd, key_mask_BxT, attention_impl)
        return y, (y if return_all else None)

    if remat != "none":
        layer_fn = jax.checkpoint(layer_fn, policy=REMAT_POLICIES[remat], prevent_cse=False)
    x_out_BxTxD, per_layer = jax.lax.scan(layer_fn, x_BxTxD, params["layers"])
    final_BxTxD = rms_norm(x_out_BxTxD, params["ln_f"], config.rms_norm_eps)
    if not return_all:
        return final_BxTxD
    # HF tuple: [embeddings, block 0 .. block N-2 outputs, ln_f(last block)].
    all_states = jnp.concatenate([x_BxTxD[None], per_layer[:-1], final_BxTxD[None]], axis=0)
    return final_BxTxD, all_states


def lm_head(params: Params, h_BxTxD: jax.Array) -> jax.Array:
    """Untied LM head; logits in the compute dtype."""
    return h_BxTxD @ params["lm_head"].astype(h_BxTxD.dtype)


def forward(config: LLaDAConfig, params: Params, input_ids: jax.Array, attention_mask: jax.Array | None = None,
            **kwargs) -> jax.Array:
    """Logits [B, T, V] of the LLaDA model; `attention_mask` (1 = token, 0 = padding) masks padded keys only."""
    return lm_head(params, hidden_states(config, params, input_ids, attention_mask, **kwargs))


def forward_at(config: LLaDAConfig, params: Params, input_ids: jax.Array, positions_BxN: jax.Array,
               attention_mask: jax.Array | None = None, **kwargs) -> jax.Array:
    """Logits [B, N, V] only at `positions_BxN`: hidden states are gathered before the LM head."""
    h_BxTxD = hidden_states(config, params, input_ids, attention_mask, **kwargs)
    h_BxNxD = jnp.take_along_axis(h_BxTxD, positions_BxN[..., None].astype(jnp.int32), axis=1)
    return lm_head(params, h_BxNxD)


def hidden_states_and_kv(config: LLaDAConfig, params: Params, input_ids_BxT: jax.Array,
                         attention_mask_BxT: jax.Array | None = None, *, compute_dtype=None,
                         attention_impl: str | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """ln_f hidden states [B, T, D] and every layer's keys (after RoPE) and values, [N, B, T, K, hd] each.

    Slices [:, :, :P] of the K/V are the prefix cache `forward_window_at` attends to. Computed from the whole
    sequence they are exact for that sequence (bidirectional attention: a prefix position's K/V at layers > 0
    depend on the tokens right of it); computed from the prefix alone they are not.
    """
    dtype = compute_dtype or params["embed"].dtype
    x_BxTxD = jnp.take(params["embed"], input_ids_BxT, axis=0).astype(dtype)
    sin_TxHd, cos_TxHd = rope_tables(jnp.arange(input_ids_BxT.shape[1]), config.head_dim, config.rope_theta)

    def layer_fn(x, layer):
        q, k, v = _qkv(config, x, layer, sin_TxHd, cos_TxHd)
        return _attn_out_mlp(config, x, _attention(q, k, v, attention_mask_BxT, attention_impl), layer), (k, v)

    x_out_BxTxD, (k_NxBxTxKxHd, v_NxBxTxKxHd) = jax.lax.scan(layer_fn, x_BxTxD, params["layers"])
    return rms_norm(x_out_BxTxD, params["ln_f"], config.rms_norm_eps), k_NxBxTxKxHd, v_NxBxTxKxHd


def forward_window_at(config: LLaDAConfig, params: Params, window_ids_BxW: jax.Array, window_start,
                      cache_k_NxBxSxKxHd: jax.Array, cache_v_NxBxSxKxHd: jax.Array, window_positions_BxN: jax.Array,
                      cache_mask_BxS: jax.Array | None = None, window_mask_BxW: jax.Array | None = None, *,
                      compute_dtype=None, attention_impl: str | None = None) -> jax.Array:
    """Logits [B, N, V] at `window_positions_BxN` (indices into the window) of a window of tokens only.

    The window's tokens sit at absolute positions window_start + 0..W-1 (RoPE uses those; window_start may be
    traced). In every layer the window's queries attend to the cached keys/values (already rotated for their own
    positions; `cache_mask_BxS` 1 = visible, for key padding and to hide cached entries the window replaces) and
    to the window's own keys/values (`window_mask_BxW`). When the cache holds, for every position outside the
    window, the K/V that `hidden_states_and_kv` gives for the full sequence, this equals `forward_at` on that
    sequence (up to float summation order); a cache from an older sequence makes it an approximation.
    """
    dtype = compute_dtype or params["embed"].dtype
    b, w = window_ids_BxW.shape
    s = cache_k_NxBxSxKxHd.shape[2]
    x_BxWxD = jnp.take(params["embed"], window_ids_BxW, axis=0).astype(dtype)
    sin_WxHd, cos_WxHd = rope_tables(window_start + jnp.arange(w), config.head_dim, config.rope_theta)
    key_mask_BxSW = None
    if cache_mask_BxS is not None or window_mask_BxW is not None:
        cache_m = jnp.ones((b, s), bool) if cache_mask_BxS is None else cache_mask_BxS.astype(bool)
        window_m = jnp.ones((b, w), bool) if window_mask_BxW is None else window_mask_BxW.astype(bool)
        key_mask_BxSW = jnp.concatenate([jnp.broadcast_to(cache_m, (b, s)), jnp.broadcast_to(window_m, (b, w))], 1)

    def layer_fn(x, layer_and_cache):
        layer, ck_BxSxKxHd, cv_BxSxKxHd = layer_and_cache
        q, k, v = _qkv(config, x, layer, sin_WxHd, cos_WxHd)
        k_all = jnp.concatenate([ck_BxSxKxHd.astype(dtype), k], axis=1)
        v_all = jnp.concatenate([cv_BxSxKxHd.astype(dtype), v], axis=1)
        return _attn_out_mlp(config, x, _attention(q, k_all, v_all, key_mask_BxSW, attention_impl), layer), None

    x_out_BxWxD, _ = jax.lax.scan(layer_fn, x_BxWxD, (params["layers"], cache_k_NxBxSxKxHd, cache_v_NxBxSxKxHd))
    h_BxWxD = rms_norm(x_out_BxWxD, params["ln_f"], config.rms_norm_eps)
    h_BxNxD = jnp.take_along_axis(h_BxWxD, window_positions_BxN[..., None].astype(jnp.int32), axis=1)
    return lm_head(params, h_BxNxD)
