"""The decoder's building blocks, shared by every family: RMSNorm, rotate-half RoPE, SwiGLU, attention.

Precision follows the HF reference code: norm statistics and RoPE in float32, attention scores in float32 on the
einsum path. Letters of docs/shapes.md.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dllm_rl.models import tpu_attention


def rms_norm(x_BxTxD: jax.Array, weight_D: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last axis as the reference: statistics in float32, cast back, then times the weight.

    Any leading axes (per-head q/k norms pass [B, T, H, Hd] with a [Hd] weight)."""
    x32 = x_BxTxD.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    weight_1xD = weight_D.astype(x_BxTxD.dtype).reshape((1,) * (x_BxTxD.ndim - 1) + weight_D.shape)
    return weight_1xD * y.astype(x_BxTxD.dtype)


def rope_tables(positions_T: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """float32 (sin, cos) tables [..., T, Hd] for rotate-half RoPE: angle t / theta^(2i/Hd), i = 0..Hd/2-1, twice.

    `positions_T` is [T] (shared by every row) or [B, T] (per row, e.g. Dream's padding-skipping positions)."""
    exponent_Hd = (2 * (jnp.arange(head_dim, dtype=jnp.int32) % (head_dim // 2))).astype(jnp.float32) / head_dim
    inv_freq_Hd = 1.0 / (theta ** exponent_Hd)
    angles_TxHd = positions_T.astype(jnp.float32)[..., None] * inv_freq_Hd.reshape((1,) * positions_T.ndim + (-1,))
    return jnp.sin(angles_TxHd), jnp.cos(angles_TxHd)


def apply_rope(x_BxTxHxHd: jax.Array, sin_TxHd: jax.Array, cos_TxHd: jax.Array) -> jax.Array:
    """Rotate-half RoPE computed in float32, cast back to the input dtype (H query or Hk key heads).

    Tables [T, Hd] are shared by the rows; [B, T, Hd] are per row."""
    x = x_BxTxHxHd.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    sin_BxTx1xHd = (sin_TxHd if sin_TxHd.ndim == 3 else sin_TxHd[None])[:, :, None, :]
    cos_BxTx1xHd = (cos_TxHd if cos_TxHd.ndim == 3 else cos_TxHd[None])[:, :, None, :]
    out = x * cos_BxTx1xHd + rotated * sin_BxTx1xHd
    return out.astype(x_BxTxHxHd.dtype)


def swiglu(h_BxTxD: jax.Array, gate_DxF: jax.Array, up_DxF: jax.Array, down_FxD: jax.Array) -> jax.Array:
    """SiLU-gated MLP, (silu(h @ gate) * (h @ up)) @ down, in the input dtype."""
    dt = h_BxTxD.dtype
    gate_BxTxF = h_BxTxD @ gate_DxF.astype(dt)
    up_BxTxF = h_BxTxD @ up_DxF.astype(dt)
    return (jax.nn.silu(gate_BxTxF) * up_BxTxF) @ down_FxD.astype(dt)


def attention(q_BxTxHxHd, k_BxSxHkxHd, v_BxSxHkxHd, key_mask_BxS, implementation):
    """Bidirectional softmax attention, scale 1/sqrt(Hd); GQA kv head j serves query heads j*Hg .. j*Hg+Hg-1.

    `key_mask_BxS` (1 = visible) hides padded keys. None is the einsum path with float32 scores; other values go
    to `jax.nn.dot_product_attention` (e.g. "cudnn"), or "splash" / "splash_interpret" (`models.tpu_attention`).
    """
    h, hk = q_BxTxHxHd.shape[2], k_BxSxHkxHd.shape[2]
    if implementation in tpu_attention.IMPLEMENTATIONS:
        return tpu_attention.splash_attention(q_BxTxHxHd, k_BxSxHkxHd, v_BxSxHkxHd, key_mask_BxS, implementation)
    if implementation is not None:
        bias = None if key_mask_BxS is None else key_bias(key_mask_BxS, q_BxTxHxHd.dtype)[:, None, None, :]
        return jax.nn.dot_product_attention(q_BxTxHxHd, k_BxSxHkxHd, v_BxSxHkxHd, bias=bias,
                                            implementation=implementation)
    b, t, _, hd = q_BxTxHxHd.shape
    q_BxTxHkxHgxHd = q_BxTxHxHd.reshape(b, t, hk, h // hk, hd)
    scores_BxHkxHgxTxS = jnp.einsum("btkgd,bskd->bkgts", q_BxTxHkxHgxHd, k_BxSxHkxHd,
                                    preferred_element_type=jnp.float32) / np.sqrt(hd)
    if key_mask_BxS is not None:
        scores_BxHkxHgxTxS = scores_BxHkxHgxTxS + key_bias(key_mask_BxS, jnp.float32)[:, None, None, None, :]
    probs_BxHkxHgxTxS = jax.nn.softmax(scores_BxHkxHgxTxS, axis=-1).astype(v_BxSxHkxHd.dtype)
    out_BxTxHkxHgxHd = jnp.einsum("bkgts,bskd->btkgd", probs_BxHkxHgxTxS, v_BxSxHkxHd)
    return out_BxTxHkxHgxHd.reshape(b, t, h, hd)


def key_bias(key_mask_BxS: jax.Array, dtype) -> jax.Array:
    """Additive key-padding bias: 0 where attended, the dtype's most negative value on padded keys."""
    return jnp.where(key_mask_BxS.astype(bool), 0.0, jnp.finfo(dtype).min).astype(dtype)
