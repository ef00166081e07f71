"""Independent float64 NumPy forwards of the Dream, A2D-Qwen3 and LLaDA-MoE fixtures (tests/fixtures/families),
written from each family's HF modeling code on its own HF-named tensors ([out, in] layout), sharing no code with
the JAX decoder; LLaDA's is tests/helpers/llada_numpy.py.

`aligned_logits` returns what the library's `models.forward` promises: logits[:, i] scores the token at i. For
Dream that means its own sampler's two rules, re-derived here: RoPE positions cumsum(mask) - 1 (padding skipped)
and the raw logits shifted right by one (the distribution of the token at i is read at raw position i - 1).
"""
import json
import pathlib

import numpy as np
from safetensors.numpy import load_file

from tests.helpers.llada_numpy import rms_norm


def load(folder: pathlib.Path) -> tuple[dict, dict]:
    """(config.json dict, float64 HF-named tensors) of a fixture folder."""
    raw = json.loads((folder / "config.json").read_text())
    return raw, {k: np.asarray(v, np.float64) for k, v in load_file(folder / "model.safetensors").items()}


def rope(x_BxHxTxD, positions_BxT, theta):
    """Rotate-half RoPE at explicit positions per row."""
    hd = x_BxHxTxD.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    freqs = np.asarray(positions_BxT, np.float64)[:, None, :, None] * inv
    emb = np.concatenate([freqs, freqs], -1)
    rot = np.concatenate([-x_BxHxTxD[..., hd // 2:], x_BxHxTxD[..., :hd // 2]], -1)
    return x_BxHxTxD * np.cos(emb) + rot * np.sin(emb)


def silu_mlp(x, w, prefix):
    g, u = x @ w[prefix + "gate_proj.weight"].T, x @ w[prefix + "up_proj.weight"].T
    return (g / (1 + np.exp(-g)) * u) @ w[prefix + "down_proj.weight"].T


def moe_ffn(x_BxTxD, w, prefix, raw):
    """LLaDA-MoE's FFN: softmax router over all experts, top-k kept without renormalising, plus the shared expert."""
    probs = x_BxTxD @ w[prefix + "gate.weight"].T
    probs = np.exp(probs - probs.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    k = raw["num_experts_per_tok"]
    top = np.argsort(-probs, axis=-1, kind="stable")[..., :k]
    out = np.zeros_like(x_BxTxD)
    for e in range(raw["num_experts"]):
        weight = np.where((top == e).any(-1), probs[..., e], 0.0)[..., None]
        out += weight * silu_mlp(x_BxTxD, w, f"{prefix}experts.{e}.")
    shared = prefix.replace("mlp.", "shared_expert.")
    if shared + "gate_proj.weight" in w:
        out += silu_mlp(x_BxTxD, w, shared)
    return out


def raw_logits(family: str, raw: dict, w: dict, ids_BxT, mask_BxT=None) -> np.ndarray:
    """The model's own float64 output [B, T, V] under a key-padding mask (1 = token); for Dream with its
    padding-skipping positions (pad positions get 1, as its sampler sets them)."""
    ids_BxT = np.asarray(ids_BxT)
    b, t = ids_BxT.shape
    mask_BxT = np.ones((b, t), bool) if mask_BxT is None else np.asarray(mask_BxT, bool)
    d, h = raw["hidden_size"], raw["num_attention_heads"]
    kv = raw.get("num_key_value_heads") or h
    hd = raw.get("head_dim") or d // h
    eps, theta = raw["rms_norm_eps"], raw["rope_theta"]
    if family == "dream":
        positions_BxT = np.where(mask_BxT, np.cumsum(mask_BxT, axis=1) - 1, 1)
    else:
        positions_BxT = np.broadcast_to(np.arange(t), (b, t))
    x = w["model.embed_tokens.weight"][ids_BxT]
    for i in range(raw["num_hidden_layers"]):
        p = f"model.layers.{i}."
        hn = rms_norm(x, w[p + "input_layernorm.weight"], eps)

        def proj(name, heads):
            y = hn @ w[f"{p}self_attn.{name}_proj.weight"].T
            if f"{p}self_attn.{name}_proj.bias" in w:
                y = y + w[f"{p}self_attn.{name}_proj.bias"]
            y = y.reshape(b, t, heads, hd).transpose(0, 2, 1, 3)
            if f"{p}self_attn.{name}_norm.weight" in w:  # per-head q/k norm before RoPE (Qwen3, LLaDA-MoE)
                y = rms_norm(y, w[f"{p}self_attn.{name}_norm.weight"], eps)
            return y

        q, k, v = proj("q", h), proj("k", kv), proj("v", kv)
        q, k = rope(q, positions_BxT, theta), rope(k, positions_BxT, theta)
        k, v = np.repeat(k, h // kv, axis=1), np.repeat(v, h // kv, axis=1)
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
        s = np.where(mask_BxT[:, None, None, :], s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        x = x + a.transpose(0, 2, 1, 3).reshape(b, t, h * hd) @ w[p + "self_attn.o_proj.weight"].T
        hn = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        moe = family == "llada_moe" and raw["moe_layer_freq"][i]
        x = x + (moe_ffn(hn, w, p + "mlp.", raw) if moe else silu_mlp(hn, w, p + "mlp."))
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])  # tied: the embedding
    return rms_norm(x, w["model.norm.weight"], eps) @ head.T


def aligned_logits(family: str, raw: dict, w: dict, ids_BxT, mask_BxT=None) -> np.ndarray:
    """float64 [B, T, V]: [:, i] scores the token at i (Dream: raw [:, i - 1]; position 0 keeps raw [:, 0])."""
    out = raw_logits(family, raw, w, ids_BxT, mask_BxT)
    if family == "dream":
        out = np.concatenate([out[:, :1], out[:, :-1]], axis=1)
    return out
