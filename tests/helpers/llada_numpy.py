"""Independent float64 NumPy reference of the LLaDA forward pass, written from the reference model's math
(docs/architecture.md).

Works on HF-named torch-layout tensors ([out, in]), so it shares no code or layout with the JAX model.
"""
import numpy as np


def rms_norm(x, w, eps):
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def rope(x, theta):
    """x [B, H, T, hd], rotate-half layout."""
    t, hd = x.shape[2], x.shape[3]
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    freqs = np.arange(t)[:, None] * inv[None, :]
    emb = np.concatenate([freqs, freqs], -1)
    rot = np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], -1)
    return x * np.cos(emb) + rot * np.sin(emb)


def forward(cfg, tensors, input_ids, key_mask=None):
    """Returns (logits [B,T,V], hidden_states list as HF output_hidden_states)."""
    w = {k: np.asarray(v, np.float64) for k, v in tensors.items()}
    d, h, kv = cfg["d_model"], cfg["n_heads"], cfg.get("n_kv_heads") or cfg["n_heads"]
    hd, eps, theta = d // h, cfg["rms_norm_eps"], cfg["rope_theta"]
    x = w["model.transformer.wte.weight"][input_ids]
    b, t, _ = x.shape
    states = [x]
    for i in range(cfg["n_layers"]):
        p = lambda n: w[f"model.transformer.blocks.{i}.{n}.weight"]
        hn = rms_norm(x, p("attn_norm"), eps)
        q = (hn @ p("q_proj").T).reshape(b, t, h, hd).transpose(0, 2, 1, 3)
        k = (hn @ p("k_proj").T).reshape(b, t, kv, hd).transpose(0, 2, 1, 3)
        v = (hn @ p("v_proj").T).reshape(b, t, kv, hd).transpose(0, 2, 1, 3)
        q, k = rope(q, theta), rope(k, theta)
        k, v = np.repeat(k, h // kv, axis=1), np.repeat(v, h // kv, axis=1)
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
        if key_mask is not None:
            s = np.where(np.asarray(key_mask, bool)[:, None, None, :], s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        x = x + a.transpose(0, 2, 1, 3).reshape(b, t, d) @ p("attn_out").T
        hn = rms_norm(x, p("ff_norm"), eps)
        g, u = hn @ p("ff_proj").T, hn @ p("up_proj").T
        x = x + (g / (1 + np.exp(-g)) * u) @ p("ff_out").T
        states.append(x)
    final = rms_norm(x, w["model.transformer.ln_f.weight"], eps)
    states[-1] = final
    return final @ w["model.transformer.ff_out.weight"].T, states


def random_tensors(cfg, rng):
    """Random HF-named float32 tensors for a config dict (norm weights near 1)."""
    d, h = cfg["d_model"], cfg["n_heads"]
    kv, f, v = cfg.get("n_kv_heads") or h, cfg["mlp_hidden_size"], cfg["embedding_size"]
    hd = d // h
    shapes = {"model.transformer.wte.weight": (v, d), "model.transformer.ln_f.weight": (d,),
              "model.transformer.ff_out.weight": (v, d)}
    for i in range(cfg["n_layers"]):
        pre = f"model.transformer.blocks.{i}."
        shapes.update({pre + "attn_norm.weight": (d,), pre + "ff_norm.weight": (d,),
                       pre + "q_proj.weight": (d, d), pre + "k_proj.weight": (kv * hd, d),
                       pre + "v_proj.weight": (kv * hd, d), pre + "attn_out.weight": (d, d),
                       pre + "ff_proj.weight": (f, d), pre + "up_proj.weight": (f, d),
                       pre + "ff_out.weight": (d, f)})
    out = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            out[name] = (1 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        elif name.endswith("wte.weight"):
            out[name] = rng.standard_normal(shape).astype(np.float32)
        else:
            out[name] = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
    return out


def tiny_config(**overrides):
    """The tiny fixture's config.json with overrides (other depths, heads, vocabularies)."""
    import json
    import pathlib

    cfg = json.loads((pathlib.Path(__file__).parents[1] / "fixtures/llada_tiny/config.json").read_text())
    cfg.update(overrides)
    return cfg


def write_hf_dir(path, cfg, tensors, shard_of=None):
    """Writes config.json and safetensors (one file, or shards by `shard_of` {name: filename} + index)."""
    import json
    import os

    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    if shard_of is None:
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        return
    for fname in sorted(set(shard_of.values())):
        save_file({n: t for n, t in tensors.items() if shard_of[n] == fname}, os.path.join(path, fname),
                  metadata={"format": "pt"})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": int(sum(t.nbytes for t in tensors.values()))},
                   "weight_map": shard_of}, f)
