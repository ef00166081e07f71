"""Float64 NumPy reference of LLaDA's generate() (record=False semantics) in the exact and the fast mode.

Fast mode as generate.py's docstring specifies it (Fast-dLLM's DualCache): at each block start one full forward
stores every layer's keys/values of every position; each step of the block then runs only the block's tokens,
whose queries attend to the stored K/V of the positions outside the block and to the block's own fresh K/V. A
step with open positions left of the block (infill prompts, committed mask ids) is the exact full-sequence
step. Written from that description and LLaDA's generate(); works on HF-named tensors as llada_numpy.py does,
and shares no code with the JAX model or sampler.
"""
import numpy as np

from tests.helpers.llada_numpy import rms_norm


def rope_at(x_BxHxNxHd, positions_N, theta):
    """Rotate-half RoPE for absolute `positions_N`."""
    hd = x_BxHxNxHd.shape[-1]
    freqs_NxHd2 = positions_N[:, None] * (1.0 / theta ** (np.arange(0, hd, 2) / hd))[None, :]
    emb_NxHd = np.concatenate([freqs_NxHd2, freqs_NxHd2], -1)
    rot_BxHxNxHd = np.concatenate([-x_BxHxNxHd[..., hd // 2:], x_BxHxNxHd[..., : hd // 2]], -1)
    return x_BxHxNxHd * np.cos(emb_NxHd) + rot_BxHxNxHd * np.sin(emb_NxHd)


def forward(cfg, w, ids_BxN, positions_N, key_mask_BxN=None, cache=None):
    """(logits [B, N, V], per-layer keys and values [B, Hk, N, Hd]) of the tokens `ids_BxN` at `positions_N`.

    `cache` = (keys, values, visible_BxT): in every layer the queries also attend to the cached keys of the T
    positions where `visible_BxT`."""
    d, h = cfg["d_model"], cfg["n_heads"]
    kv = cfg.get("n_kv_heads") or h
    hd, eps = d // h, cfg["rms_norm_eps"]
    x_BxNxD = w["model.transformer.wte.weight"][ids_BxN]
    b, n, _ = x_BxNxD.shape
    visible_BxS = np.ones((b, n), bool) if key_mask_BxN is None else np.asarray(key_mask_BxN, bool)
    if cache is not None:  # S = T cached keys, then the N fresh ones
        visible_BxS = np.concatenate([np.broadcast_to(cache[2], (b, cache[2].shape[1])), visible_BxS], 1)
    keys, values = [], []
    for i in range(cfg["n_layers"]):
        p = lambda name: w[f"model.transformer.blocks.{i}.{name}.weight"]  # noqa: E731
        hn_BxNxD = rms_norm(x_BxNxD, p("attn_norm"), eps)
        q = (hn_BxNxD @ p("q_proj").T).reshape(b, n, h, hd).transpose(0, 2, 1, 3)
        k = (hn_BxNxD @ p("k_proj").T).reshape(b, n, kv, hd).transpose(0, 2, 1, 3)
        v = (hn_BxNxD @ p("v_proj").T).reshape(b, n, kv, hd).transpose(0, 2, 1, 3)
        q, k = rope_at(q, positions_N, cfg["rope_theta"]), rope_at(k, positions_N, cfg["rope_theta"])
        keys.append(k)
        values.append(v)
        if cache is not None:
            k, v = np.concatenate([cache[0][i], k], 2), np.concatenate([cache[1][i], v], 2)
        k, v = np.repeat(k, h // kv, axis=1), np.repeat(v, h // kv, axis=1)
        s_BxHxNxS = np.where(visible_BxS[:, None, None, :], q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd), -np.inf)
        e_BxHxNxS = np.exp(s_BxHxNxS - s_BxHxNxS.max(-1, keepdims=True))
        a_BxHxNxHd = (e_BxHxNxS / e_BxHxNxS.sum(-1, keepdims=True)) @ v
        x_BxNxD = x_BxNxD + a_BxHxNxHd.transpose(0, 2, 1, 3).reshape(b, n, d) @ p("attn_out").T
        hn_BxNxD = rms_norm(x_BxNxD, p("ff_norm"), eps)
        g_BxNxF, u_BxNxF = hn_BxNxD @ p("ff_proj").T, hn_BxNxD @ p("up_proj").T
        x_BxNxD = x_BxNxD + (g_BxNxF / (1 + np.exp(-g_BxNxF)) * u_BxNxF) @ p("ff_out").T
    final_BxNxD = rms_norm(x_BxNxD, w["model.transformer.ln_f.weight"], eps)
    return final_BxNxD @ w["model.transformer.ff_out.weight"].T, keys, values


def generate(cfg, tensors, prompt_BxP, *, steps, gen_length, block_length, fast, temperature=0.0,
             remasking="low_confidence", cfg_scale=0.0, gumbel_u=None, score_u=None, attention_mask=None):
    """The sequence [B, P + gen] after LLaDA's generate(); draws are uniforms indexed [step, row, position(, V)]
    (Gumbel noise −log(−log u)); exact ties in the commit order go to the lower position."""
    w = {name: np.asarray(t, np.float64) for name, t in tensors.items()}
    mask_id = cfg["mask_token_id"]
    b, p = prompt_BxP.shape
    t = p + gen_length
    x_BxT = np.concatenate([prompt_BxP, np.full((b, gen_length), mask_id)], 1)
    prompt_index_BxT = x_BxT != mask_id
    key_mask_BxT = None
    if attention_mask is not None:
        key_mask_BxT = np.concatenate([attention_mask, np.ones((b, gen_length))], 1)
        if cfg_scale > 0:  # the unconditional copies (prompt fully masked) run below the sequences
            key_mask_BxT = np.concatenate([key_mask_BxT, key_mask_BxT])
    spb = steps // (gen_length // block_length)

    def model_ids():
        if cfg_scale > 0:
            return np.concatenate([x_BxT, np.where(prompt_index_BxT, mask_id, x_BxT)])
        return x_BxT

    def guided(logits_BxNxV):
        if cfg_scale > 0:
            return logits_BxNxV[b:] + (cfg_scale + 1) * (logits_BxNxV[:b] - logits_BxNxV[b:])
        return logits_BxNxV

    for blk in range(gen_length // block_length):
        start, end = p + blk * block_length, p + (blk + 1) * block_length
        _, cache_k, cache_v = forward(cfg, w, model_ids(), np.arange(t), key_mask_BxT)
        outside_T = (np.arange(t) < start) | (np.arange(t) >= end)
        visible_BxT = outside_T[None] if key_mask_BxT is None else (key_mask_BxT != 0) & outside_T[None]
        open_at_start_B = (x_BxT[:, start:end] == mask_id).sum(1)
        counts_BxS = open_at_start_B[:, None] // spb + (np.arange(spb)[None] < open_at_start_B[:, None] % spb)
        for i in range(spb):
            step = blk * spb + i
            open_BxT = x_BxT == mask_id
            if fast and not open_BxT[:, :start].any():  # the block's tokens against the block-start cache
                lo = start
                logits_BxNxV = forward(cfg, w, model_ids()[:, start:end], np.arange(start, end),
                                       cache=(cache_k, cache_v, visible_BxT))[0]
            else:  # LLaDA's step: logits of the full sequence
                lo = 0
                logits_BxNxV = forward(cfg, w, model_ids(), np.arange(t), key_mask_BxT)[0]
            logits_BxNxV = guided(logits_BxNxV)
            hi = lo + logits_BxNxV.shape[1]
            if temperature > 0:  # argmax of exp(l) / (−log u)^T, in logs
                x0_BxN = (logits_BxNxV - temperature * np.log(-np.log(gumbel_u[step][:, lo:hi]))).argmax(-1)
            else:
                x0_BxN = logits_BxNxV.argmax(-1)
            if remasking == "low_confidence":
                e_BxNxV = np.exp(logits_BxNxV - logits_BxNxV.max(-1, keepdims=True))
                probs_BxNxV = e_BxNxV / e_BxNxV.sum(-1, keepdims=True)
                score_BxN = np.take_along_axis(probs_BxNxV, x0_BxN[..., None], -1)[..., 0]
            else:
                score_BxN = np.asarray(score_u[step][:, lo:hi], np.float64)
            candidate_BxN = open_BxT[:, lo:hi] & (np.arange(lo, hi) < end)[None]
            for r in range(b):
                best = [j for j in np.argsort(-score_BxN[r], kind="stable") if candidate_BxN[r, j]]
                for j in best[:counts_BxS[r, i]]:
                    x_BxT[r, lo + j] = x0_BxN[r, j]
    return x_BxT
