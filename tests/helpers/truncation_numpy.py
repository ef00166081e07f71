"""NumPy transcription of the AGRPO top-k/top-p truncation and float64 statistics of the truncated softmax."""
import numpy as np


def softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def agrpo_keep(scaled_NxV: np.ndarray, top_k, top_p) -> np.ndarray:
    """NumPy transcription of the AGRPO gumbel_sample truncation on float32 scaled logits (stable sort)."""
    keep = np.ones(scaled_NxV.shape, bool)
    x = scaled_NxV.astype(np.float32).copy()
    if top_k and top_k < x.shape[-1]:  # torch's topk rejects k > V; the port keeps everything then
        kth = -np.sort(-x, axis=-1)[..., top_k - 1:top_k]
        remove = x < kth
        x[remove] = -np.inf
        keep &= ~remove
    if top_p < 1.0:
        order = np.argsort(-x, axis=-1, kind="stable")
        sorted_x = np.take_along_axis(x, order, -1)
        cum = np.cumsum(softmax(sorted_x).astype(np.float32), axis=-1, dtype=np.float32)
        remove_sorted = cum > np.float32(top_p)
        remove_sorted[..., 0] = False
        remove = np.zeros_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, -1)
        keep &= ~remove
    return keep


def truncated_stats(scaled: np.ndarray, keep: np.ndarray, tokens: np.ndarray):
    """float64 (log-prob of tokens, entropy) of softmax(scaled) restricted to keep."""
    x = np.where(keep, scaled.astype(np.float64), -np.inf)
    m = x.max(-1, keepdims=True)
    logp = x - (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))
    ent = -np.where(keep, np.exp(logp) * np.where(keep, logp, 0.0), 0.0).sum(-1)
    return np.take_along_axis(logp, tokens[..., None], -1)[..., 0], ent
