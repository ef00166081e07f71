"""float64 NumPy references of the loss pieces (`dllm_rl.rl.objective`): token log-probs and the PPO clip + k3."""
import numpy as np


def token_log_probs(logits_BxNxV, ids_BxN) -> np.ndarray:
    """float64 log softmax(logits)[ids]; -inf logits (outside a truncation set) get probability zero."""
    x = np.asarray(logits_BxNxV, np.float64)
    x = x - x.max(-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    return np.take_along_axis(logp, np.asarray(ids_BxN)[..., None], -1)[..., 0]


def clipped_token_loss(logp, old, ref, adv_B, eps_low, eps_high, beta, kl_times_ratio):
    """(per-token loss, ratio, kl or None): −min(ρA, clip(ρ, 1 − ε_low, 1 + ε_high)A) + β·k3(ref, logp)[·ρ]."""
    ratio = np.exp(logp - old)
    a = np.asarray(adv_B, np.float64)[:, None]
    loss = -np.minimum(ratio * a, np.clip(ratio, 1 - eps_low, 1 + eps_high) * a)
    if not beta:
        return loss, ratio, None
    d = ref - logp
    kl = (np.exp(d) - d - 1) * (ratio if kl_times_ratio else 1.0)
    return loss + beta * kl, ratio, kl
