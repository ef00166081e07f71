"""The one bidirectional decoder every family runs, as pure functions over a params pytree.

The families differ only by the switches of `config.DecoderConfig` (q/k/v biases, per-head q/k norm, dense or MoE
FFN per layer, tied head, logit shift, padding-skipping positions, head_dim, rope theta, norm eps, token ids); the
code below reads them the way MaxText's decoder reads its block options. Every layer is pre-norm: RMSNorm →
attention (GQA, rotate-half RoPE in float32, no causal mask, padded keys hidden) → residual → RMSNorm → SwiGLU or
MoE FFN → residual; then a final RMSNorm and the LM head.

Params (letters of docs/shapes.md; E experts, Fe / Fs expert / shared-expert widths):
  embed   [V, D]          layers/attn_norm [Ly, D]         layers/q_proj  [Ly, D, H*Hd]   (+ q_bias [Ly, H*Hd])
  ln_f    [D]             layers/ff_norm   [Ly, D]         layers/k_proj  [Ly, D, Hk*Hd]  (v_proj likewise, + biases)
  lm_head [D, V]          layers/attn_out  [Ly, H*Hd, D]   layers/q_norm  [Ly, Hd]        (k_norm; with qk_norm)
  (absent when tied)      dense FFN: layers/ff_proj [Ly, D, F] (gate; up_proj likewise), layers/ff_out [Ly, F, D]
                          MoE FFN: layers/router [Ly, D, E], layers/expert_ff_proj [Ly, E, D, Fe] (expert_up_proj
                          likewise), layers/expert_ff_out [Ly, E, Fe, D], layers/shared_ff_proj [Ly, D, Fs] ...

Layers are stacked on a leading Ly axis and run by `lax.scan` (one compiled layer, optional remat). Mixed dense and
MoE layers (HF `moe_layer_freq`) cannot share one stacked tree, since their FFN leaves differ. When every layer has
the same FFN kind (LLaDA, Dream, A2D-Qwen3, and LLaDA-MoE when every layer is MoE) all leaves stay in
`layers`, so LLaDA's tree is unchanged. Otherwise the leaves every layer has (attention, norms) stay in `layers`
[Ly, ...], the FFN leaves move to `dense_ffn` [Ld, ...] and `moe_ffn` [Lm, ...], and the layers run as one scan
per maximal run of consecutive same-kind layers over static slices of those stacks. That is MaxText's choice for
DeepSeek (a scan over the first dense layers, then one over the MoE layers). It keeps each parameter stored once
and its gradient a plain scan gradient, and it compiles one layer body per run. A `lax.cond` on the layer kind
inside one scan would compile one body, but it gathers the FFN from a closed-over stack and accumulates that
stack's whole gradient in the scan carry at every layer. A strictly alternating pattern would give one run per
layer (unrolled); it would want a scan over groups of one period (MaxText's Llama4 scannable block) instead.

Outputs are *aligned*: `logits[:, i]` scores the token at position i. For a family with `logit_shift` (Dream), the
raw logits at i score token i + 1, so the aligned logits at i are the raw ones at i - 1, and at 0 the raw ones at
0, as Dream's sampler does. `hidden_states` returns the model's own (unshifted) states. `logits_at` and
`forward_at` apply the shift when they gather.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dllm_rl.models import moe as moe_lib
from dllm_rl.models.config import DecoderConfig
from dllm_rl.models.layers import apply_rope, attention, rms_norm, rope_tables, swiglu

Params = dict[str, Any]

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


# ----------------------------------------------------------------------------------------------------------------
# Params layout


def layer_kinds(config: DecoderConfig) -> tuple[str, ...]:
    """"dense" or "moe" for every layer."""
    if config.moe is None:
        return ("dense",) * config.n_layers
    return tuple("moe" if is_moe else "dense" for is_moe in config.moe.layers)


def _mixed(config: DecoderConfig) -> bool:
    return len(set(layer_kinds(config))) > 1


def _layer_shapes(config: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """Per-layer shapes of the leaves every layer has."""
    d, hd = config.d_model, config.head_dim
    q, kv = config.n_heads * hd, config.n_kv_heads * hd
    shapes = {"attn_norm": (d,), "q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "attn_out": (q, d),
              "ff_norm": (d,)}
    if config.qkv_bias:
        shapes.update(q_bias=(q,), k_bias=(kv,), v_bias=(kv,))
    if config.qk_norm:
        shapes.update(q_norm=(hd,), k_norm=(hd,))
    return shapes


def _ffn_shapes(config: DecoderConfig, kind: str) -> dict[str, tuple[int, ...]]:
    if kind == "moe":
        return moe_lib.param_shapes(config.moe, config.d_model)
    d, f = config.d_model, config.mlp_hidden_size
    return {"ff_proj": (d, f), "up_proj": (d, f), "ff_out": (f, d)}


_LAYER_AXES = {"attn_norm": ("norm",), "q_proj": ("embed", "heads"), "k_proj": ("embed", "kv_heads"),
               "v_proj": ("embed", "kv_heads"), "attn_out": ("heads", "embed"), "ff_norm": ("norm",),
               "q_bias": ("heads",), "k_bias": ("kv_heads",), "v_bias": ("kv_heads",), "q_norm": ("norm",),
               "k_norm": ("norm",), "ff_proj": ("embed", "mlp"), "up_proj": ("embed", "mlp"),
               "ff_out": ("mlp", "embed")}


def _tree(config: DecoderConfig, leaf, stack) -> Params:
    """Builds the params tree of `config`: `leaf(name, kind)` gives one per-layer value (a shape or axes) of a
    layer leaf (kind None for the leaves every layer has), `stack(value, n)` stacks it on n layers."""
    kinds = layer_kinds(config)
    shared = {name: stack(leaf(name, None), config.n_layers) for name in _layer_shapes(config)}
    if not _mixed(config):
        layers = {**shared, **{name: stack(leaf(name, kinds[0]), config.n_layers)
                               for name in _ffn_shapes(config, kinds[0])}}
        tree = {"layers": layers}
    else:
        tree = {"layers": shared}
        for kind in ("dense", "moe"):
            tree[f"{kind}_ffn"] = {name: stack(leaf(name, kind), kinds.count(kind))
                                   for name in _ffn_shapes(config, kind)}
    return tree


def param_shapes(config: DecoderConfig) -> dict[str, Any]:
    """Shapes of every parameter (same tree structure as the params)."""
    d, v = config.d_model, config.embedding_size
    attn = _layer_shapes(config)

    def leaf(name, kind):
        return attn[name] if kind is None else _ffn_shapes(config, kind)[name]

    tree = {"embed": (v, d), **_tree(config, leaf, lambda shape, n: (n,) + shape), "ln_f": (d,)}
    if not config.tie_embeddings:
        tree["lm_head"] = (d, v)
    return tree


def param_logical_axes(config: DecoderConfig | None = None) -> dict[str, Any]:
    """Logical axis names per parameter (same tree as the params), mapped to mesh axes by `parallel.mesh`.

    None: the plain dense layout with LLaDA's switches (no biases, no q/k norm, untied head)."""
    if config is None:
        config = DecoderConfig(d_model=2, n_layers=1, n_heads=1, n_kv_heads=1, mlp_hidden_size=1, vocab_size=1,
                               embedding_size=1)

    def leaf(name, kind):
        return moe_lib.param_logical_axes(config.moe)[name] if kind == "moe" else _LAYER_AXES[name]

    tree = {"embed": ("vocab", "embed"), **_tree(config, leaf, lambda axes, n: ("layers",) + axes),
            "ln_f": ("norm",)}
    if not config.tie_embeddings:
        tree["lm_head"] = ("embed", "vocab")
    return tree


def init_params(config: DecoderConfig, rng: jax.Array, dtype=jnp.float32) -> Params:
    """Random params (norm weights 1, biases 0, linear N(0, 1/fan_in), embeddings N(0, 1)): for tests and
    benchmarks."""
    shapes = param_shapes(config)
    is_shape = lambda s: isinstance(s, tuple)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=is_shape)
    keys = jax.random.split(rng, len(flat))
    out = []
    for (path, shape), key in zip(flat, keys):
        name = jax.tree_util.keystr(path)
        if "norm" in name or name == "['ln_f']":
            out.append(jnp.ones(shape, dtype))
        elif "_bias" in name:
            out.append(jnp.zeros(shape, dtype))
        elif name == "['embed']":
            out.append(jax.random.normal(key, shape, dtype))
        else:
            fan_in = shape[-2]
            out.append((jax.random.normal(key, shape, jnp.float32) / np.sqrt(fan_in)).astype(dtype))
    return jax.tree.unflatten(treedef, out)


# ----------------------------------------------------------------------------------------------------------------
# Layers


def rope_positions(config: DecoderConfig, attention_mask_BxT: jax.Array | None, seq_len: int) -> jax.Array:
    """RoPE positions of a full sequence: 0..T-1 [T], or with `positions_skip_padding` and a mask Dream's
    cumsum(mask) - 1 per row [B, T] (padding at position 1, as Dream's sampler sets it; padded rows are never read).
    """
    if not config.positions_skip_padding or attention_mask_BxT is None:
        return jnp.arange(seq_len)
    mask_BxT = attention_mask_BxT.astype(bool)
    return jnp.where(mask_BxT, jnp.cumsum(mask_BxT.astype(jnp.int32), axis=1) - 1, 1)


def _heads(config: DecoderConfig, h_BxTxD, layer, name: str, n_heads: int):
    """One of the q/k/v projections (+ bias with `qkv_bias`) split into heads: [B, T, H or Hk, Hd]."""
    b, t, _ = h_BxTxD.shape
    shape = (n_heads, config.head_dim)
    out_BxTxHxHd = (h_BxTxD @ layer[f"{name}_proj"].astype(h_BxTxD.dtype)).reshape((b, t) + shape)
    if config.qkv_bias:
        out_BxTxHxHd = out_BxTxHxHd + layer[f"{name}_bias"].astype(h_BxTxD.dtype).reshape((1, 1) + shape)
    return out_BxTxHxHd


def _qkv(config: DecoderConfig, x_BxTxD, layer, sin_TxHd, cos_TxHd):
    """Pre-norm q/k/v projections of one layer (+ biases, + per-head q/k norm); q and k rotated for sin/cos."""
    h_BxTxD = rms_norm(x_BxTxD, layer["attn_norm"], config.rms_norm_eps)
    q_BxTxHxHd = _heads(config, h_BxTxD, layer, "q", config.n_heads)
    k_BxTxHkxHd = _heads(config, h_BxTxD, layer, "k", config.n_kv_heads)
    v_BxTxHkxHd = _heads(config, h_BxTxD, layer, "v", config.n_kv_heads)
    if config.qk_norm:
        q_BxTxHxHd = rms_norm(q_BxTxHxHd, layer["q_norm"], config.rms_norm_eps)
        k_BxTxHkxHd = rms_norm(k_BxTxHkxHd, layer["k_norm"], config.rms_norm_eps)
    return apply_rope(q_BxTxHxHd, sin_TxHd, cos_TxHd), apply_rope(k_BxTxHkxHd, sin_TxHd, cos_TxHd), v_BxTxHkxHd


def _attn_out_ffn(config: DecoderConfig, kind: str, x_BxTxD, a_BxTxHxHd, layer):
    """The rest of a layer after attention: output projection, residual, dense or MoE FFN, residual."""
    b, t, _ = x_BxTxD.shape
    dt = x_BxTxD.dtype
    x_BxTxD = x_BxTxD + a_BxTxHxHd.reshape(b, t, config.n_heads * config.head_dim) @ layer["attn_out"].astype(dt)
    h_BxTxD = rms_norm(x_BxTxD, layer["ff_norm"], config.rms_norm_eps)
    if kind == "moe":
        return x_BxTxD + moe_lib.moe_ffn(config.moe, h_BxTxD, layer)
    return x_BxTxD + swiglu(h_BxTxD, layer["ff_proj"], layer["up_proj"], layer["ff_out"])


def _runs(config: DecoderConfig) -> list[tuple[int, int, str]]:
    """Maximal runs (start, stop, kind) of consecutive layers with the same FFN kind."""
    kinds, runs, start = layer_kinds(config), [], 0
    for i in range(1, config.n_layers + 1):
        if i == config.n_layers or kinds[i] != kinds[start]:
            runs.append((start, i, kinds[start]))
            start = i
    return runs


def _run_params(config: DecoderConfig, params: Params, start: int, stop: int, kind: str) -> Params:
    """The stacked per-layer params of layers start..stop-1 (all `params["layers"]` when not mixed)."""
    if not _mixed(config):
        return params["layers"]
    offset = layer_kinds(config)[:start].count(kind)
    shared = jax.tree.map(lambda a: a[start:stop], params["layers"])
    ffn = jax.tree.map(lambda a: a[offset:offset + stop - start], params[f"{kind}_ffn"])
    return {**shared, **ffn}


def _layers(config: DecoderConfig, params: Params, x_BxTxD: jax.Array, positions: jax.Array,
            key_mask_BxS: jax.Array | None, cache_kv=None, *, emit: str | None = None, remat: str = "none",
            attention_impl: str | None = None):
    """Every layer under `lax.scan` (one scan per run of same-kind layers): (x_out, per-layer output).

    The T input tokens sit at RoPE `positions` ([T], or [B, T] per row). With `cache_kv` = (k, v) [Ly, B, S', Hk,
    Hd] each (keys already rotated), every layer's queries also attend to that layer's cached keys/values, placed
    before the input's own: `key_mask_BxS` then covers S = S' + T keys. `emit` picks the per-layer output stacked on
    a leading Ly axis: None (nothing), "hidden" (each layer's output) or "kv" (each layer's own (k, v), rotated).
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r}; choose one of {sorted(REMAT_POLICIES)}")
    sin_TxHd, cos_TxHd = rope_tables(positions, config.head_dim, config.rope_theta)

    def make_layer_fn(kind: str):
        def layer_fn(x_BxTxD, layer_and_cache):
            layer, cache = layer_and_cache
            q_BxTxHxHd, k_BxTxHkxHd, v_BxTxHkxHd = _qkv(config, x_BxTxD, layer, sin_TxHd, cos_TxHd)
            k_BxSxHkxHd, v_BxSxHkxHd = k_BxTxHkxHd, v_BxTxHkxHd
            if cache is not None:
                k_BxSxHkxHd = jnp.concatenate([cache[0].astype(x_BxTxD.dtype), k_BxTxHkxHd], axis=1)
                v_BxSxHkxHd = jnp.concatenate([cache[1].astype(x_BxTxD.dtype), v_BxTxHkxHd], axis=1)
            a_BxTxHxHd = attention(q_BxTxHxHd, k_BxSxHkxHd, v_BxSxHkxHd, key_mask_BxS, attention_impl)
            y_BxTxD = _attn_out_ffn(config, kind, x_BxTxD, a_BxTxHxHd, layer)
            return y_BxTxD, {None: None, "hidden": y_BxTxD, "kv": (k_BxTxHkxHd, v_BxTxHkxHd)}[emit]

        if remat != "none":
            return jax.checkpoint(layer_fn, policy=REMAT_POLICIES[remat], prevent_cse=False)
        return layer_fn

    runs = _runs(config)
    if len(runs) == 1:
        return jax.lax.scan(make_layer_fn(runs[0][2]), x_BxTxD, (params["layers"], cache_kv))
    outputs = []
    for start, stop, kind in runs:
        cache = None if cache_kv is None else jax.tree.map(lambda a: a[start:stop], cache_kv)
        x_BxTxD, out = jax.lax.scan(make_layer_fn(kind), x_BxTxD,
                                    (_run_params(config, params, start, stop, kind), cache))
        outputs.append(out)
    return x_BxTxD, jax.tree.map(lambda *parts: jnp.concatenate(parts, axis=0), *outputs)


# ----------------------------------------------------------------------------------------------------------------
# Entry points


def _embed(params: Params, input_ids_BxT: jax.Array, compute_dtype) -> jax.Array:
    """Token embeddings [B, T, D] in the compute dtype (default: the embedding dtype)."""
    return jnp.take(params["embed"], input_ids_BxT, axis=0).astype(compute_dtype or params["embed"].dtype)


def hidden_states(config: DecoderConfig, params: Params, input_ids_BxT: jax.Array,
                  attention_mask_BxT: jax.Array | None = None, *, compute_dtype=None,
                  remat: str = "none", attention_impl: str | None = None,
                  return_all: bool = False):
    """Final hidden states ln_f(x) [B, T, D] (the model's own, unshifted); with return_all also the HF
    `output_hidden_states` tuple.

    compute_dtype defaults to the embedding dtype. `remat` names a policy in REMAT_POLICIES (checkpointing
    each layer for training). `attention_impl` is passed to `jax.nn.dot_product_attention` ("cudnn" on GPU),
    or is "splash" for the Pallas TPU kernel (`models.tpu_attention`; "splash_interpret" on CPU);
    None uses the plain einsum path (float32 scores).
    """
    x_BxTxD = _embed(params, input_ids_BxT, compute_dtype)
    positions = rope_positions(config, attention_mask_BxT, input_ids_BxT.shape[1])
    x_out_BxTxD, y_LyxBxTxD = _layers(config, params, x_BxTxD, positions, attention_mask_BxT,
                                      emit="hidden" if return_all else None, remat=remat,
                                      attention_impl=attention_impl)
    final_BxTxD = rms_norm(x_out_BxTxD, params["ln_f"], config.rms_norm_eps)
    if not return_all:
        return final_BxTxD
    # HF tuple: [embeddings, block 0 .. block Ly-2 outputs, ln_f(last block)].
    all_states = jnp.concatenate([x_BxTxD[None], y_LyxBxTxD[:-1], final_BxTxD[None]], axis=0)
    return final_BxTxD, all_states


def lm_head(config: DecoderConfig, params: Params, h_BxTxD: jax.Array) -> jax.Array:
    """The model's own logits (unshifted) of hidden states, in the compute dtype; tied heads use the embedding."""
    if config.tie_embeddings:
        return h_BxTxD @ params["embed"].astype(h_BxTxD.dtype).T
    return h_BxTxD @ params["lm_head"].astype(h_BxTxD.dtype)


def source_positions(config: DecoderConfig, positions_BxN: jax.Array) -> jax.Array:
    """Where the aligned logits at `positions_BxN` are read in the model's own output: i - 1 (0 at 0) with
    `logit_shift`, else i."""
    positions_BxN = positions_BxN.astype(jnp.int32)
    return jnp.maximum(positions_BxN - 1, 0) if config.logit_shift else positions_BxN


def logits_at(config: DecoderConfig, params: Params, h_BxTxD: jax.Array, positions_BxN: jax.Array) -> jax.Array:
    """Aligned logits [B, N, V] at `positions_BxN` of `hidden_states`' output: states gathered before the head."""
    h_BxNxD = jnp.take_along_axis(h_BxTxD, source_positions(config, positions_BxN)[..., None], axis=1)
    return lm_head(config, params, h_BxNxD)


def align(config: DecoderConfig, raw_logits_BxTxV: jax.Array) -> jax.Array:
    """Aligned logits from the model's own: shifted right by one with `logit_shift` (position 0 keeps its own)."""
    if not config.logit_shift:
        return raw_logits_BxTxV
    return jnp.concatenate([raw_logits_BxTxV[:, :1], raw_logits_BxTxV[:, :-1]], axis=1)


def forward(config: DecoderConfig, params: Params, input_ids: jax.Array, attention_mask: jax.Array | None = None,
            **kwargs) -> jax.Array:
    """Aligned logits [B, T, V] of `input_ids` [B, T]: `logits[:, i]` scores the token at position i.

    `attention_mask` [B, T] (1 = token, 0 = padding) hides padded keys; it never makes attention causal. Keyword
    arguments go to `hidden_states`."""
    return align(config, lm_head(config, params, hidden_states(config, params, input_ids, attention_mask,
                                                                **kwargs)))


def forward_at(config: DecoderConfig, params: Params, input_ids: jax.Array, positions_BxN: jax.Array,
               attention_mask: jax.Array | None = None, **kwargs) -> jax.Array:
    """Aligned logits [B, N, V] only at `positions_BxN` of `input_ids` [B, T]: hidden states are gathered before
    the LM head."""
    return logits_at(config, params, hidden_states(config, params, input_ids, attention_mask, **kwargs),
                     positions_BxN)


def hidden_states_and_kv(config: DecoderConfig, params: Params, input_ids_BxT: jax.Array,
                         attention_mask_BxT: jax.Array | None = None, *, compute_dtype=None,
                         attention_impl: str | None = None, remat: str = "none"
                         ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """ln_f hidden states [B, T, D] and every layer's keys (after RoPE) and values, [Ly, B, T, Hk, Hd] each.

    Slices [:, :, :P] of the K/V are the prefix cache `forward_window_at` attends to. Computed from the whole
    sequence they are exact for that sequence (bidirectional attention: a prefix position's K/V at layers > 0
    depend on the tokens right of it); computed from the prefix alone they are not.
    """
    x_BxTxD = _embed(params, input_ids_BxT, compute_dtype)
    positions = rope_positions(config, attention_mask_BxT, input_ids_BxT.shape[1])
    x_out_BxTxD, (k_LyxBxTxHkxHd, v_LyxBxTxHkxHd) = _layers(
        config, params, x_BxTxD, positions, attention_mask_BxT, emit="kv", remat=remat, attention_impl=attention_impl)
    return rms_norm(x_out_BxTxD, params["ln_f"], config.rms_norm_eps), k_LyxBxTxHkxHd, v_LyxBxTxHkxHd


def forward_window_at(config: DecoderConfig, params: Params, window_ids_BxN: jax.Array, window_start,
                      cache_k_LyxBxTxHkxHd: jax.Array, cache_v_LyxBxTxHkxHd: jax.Array,
                      window_positions_BxN: jax.Array, cache_mask_BxT: jax.Array | None = None,
                      window_mask_BxN: jax.Array | None = None, *, token_positions_BxN: jax.Array | None = None,
                      compute_dtype=None, attention_impl: str | None = None, remat: str = "none") -> jax.Array:
    """Aligned logits at `window_positions_BxN` (indices into the window; any count) of a window of tokens only.

    The window's tokens sit at RoPE positions window_start + 0..N-1 (window_start may be traced), or at
    `token_positions_BxN` when given (a family with `positions_skip_padding` under left padding: the slice of
    `rope_positions` of the full sequence). In every layer the window's queries attend to the cached keys/values
    of T positions (already rotated for their own positions; `cache_mask_BxT` 1 = visible, for key padding and to
    hide cached entries the window replaces) and to the window's own keys/values (`window_mask_BxN`). When the
    cache holds, for every position outside the window, the K/V that `hidden_states_and_kv` gives for the full
    sequence, this equals `forward_at` on that sequence (up to float summation order); a cache from an older
    sequence makes it an approximation. With `logit_shift` the aligned logits at window index p are read from the
    window's state at p - 1 (0 at 0), so p - 1 must lie in the window: start the window one token early.
    """
    b, n = window_ids_BxN.shape
    t = cache_k_LyxBxTxHkxHd.shape[2]
    key_mask_BxS = None  # S = T cached keys, then the window's N
    if cache_mask_BxT is not None or window_mask_BxN is not None:
        cache_m = jnp.ones((b, t), bool) if cache_mask_BxT is None else cache_mask_BxT.astype(bool)
        window_m = jnp.ones((b, n), bool) if window_mask_BxN is None else window_mask_BxN.astype(bool)
        key_mask_BxS = jnp.concatenate([jnp.broadcast_to(cache_m, (b, t)), jnp.broadcast_to(window_m, (b, n))], 1)
    positions = window_start + jnp.arange(n) if token_positions_BxN is None else token_positions_BxN
    x_out_BxNxD, _ = _layers(config, params, _embed(params, window_ids_BxN, compute_dtype), positions, key_mask_BxS,
                             (cache_k_LyxBxTxHkxHd, cache_v_LyxBxTxHkxHd), remat=remat, attention_impl=attention_impl)
    return logits_at(config, params, rms_norm(x_out_BxNxD, params["ln_f"], config.rms_norm_eps), window_positions_BxN)
