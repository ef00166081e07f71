"""The pieces every loss of the package shares: model inputs, token log-probs, masked means, PPO clip, the KL
estimators (k3, k1), and running a model call over noised copies in chunks (`in_chunks`).

The AGRPO (`agrpo`), diffu-GRPO (`diffu_grpo`) and SFT (`sft`) losses differ in which positions they score and
how they weight them (docs/algorithm.md); what they have in common is written once here. `ForwardConfig` holds the
model-call settings (remat, compute dtype, attention implementation) their configs share.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from dllm_rl.models import llada
from dllm_rl.models.logits import gather_tokens, token_log_probs  # noqa: F401  (part of the kit)


@dataclasses.dataclass(frozen=True)
class ForwardConfig:
    """How a loss runs the model: `remat` (a key of `llada.REMAT_POLICIES`: each layer checkpointed for the
    backward), `compute_dtype` (None: the params' embedding dtype) and `attention_impl` (passed to
    `jax.nn.dot_product_attention`, e.g. "cudnn"; None: the einsum path with float32 scores)."""

    remat: str = "none"
    compute_dtype: str | None = None
    attention_impl: str | None = None

    def __post_init__(self):
        if self.remat not in llada.REMAT_POLICIES:
            raise ValueError(f"{type(self).__name__}.remat={self.remat!r}; choose one of "
                             f"{sorted(llada.REMAT_POLICIES)}")

    def forward_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `llada.forward_at` / `llada.hidden_states` these settings stand for."""
        return dict(compute_dtype=self.compute_dtype, remat=self.remat, attention_impl=self.attention_impl)


def in_chunks(fn, x_NxR: jax.Array, per_call: int | None, what: str) -> jax.Array:
    """fn(x) [N, ...] computed `per_call` rows of x's leading axis at a time (None or ≥ N: one call), the results
    concatenated: the same values, but only one chunk's activations (the logits over the vocabulary) live at a
    time. The chunks run in a `lax.scan` whose body is rematerialised, so the backward recomputes each chunk's
    forward instead of keeping every chunk's logits (one extra forward). `what` names the knob in the error."""
    n = x_NxR.shape[0]
    if per_call is None or per_call >= n:
        return fn(x_NxR)
    if per_call < 1 or n % per_call:
        raise ValueError(f"{what}={per_call} must divide the {n} noised copies of a call (or be None: all at once)")
    chunked = x_NxR.reshape(n // per_call, per_call, *x_NxR.shape[1:])
    _, y = jax.lax.scan(lambda carry, x: (carry, jax.checkpoint(fn)(x)), None, chunked)
    return y.reshape(n, *y.shape[2:])


def model_inputs(prompt_ids_BxP: jax.Array, prompt_mask_BxP: jax.Array | None, completion_ids_BxL: jax.Array
                 ) -> tuple[jax.Array, jax.Array | None]:
    """(input ids [B, T], attention mask [B, T] bool or None): prompt then completion, in the prompt's int dtype.

    The mask hides the prompt's padding (prompt_mask 0) and shows every completion position; None when the
    prompt has no mask.
    """
    ids_BxT = jnp.concatenate([prompt_ids_BxP, completion_ids_BxL.astype(prompt_ids_BxP.dtype)], axis=1)
    if prompt_mask_BxP is None:
        return ids_BxT, None
    mask_BxT = jnp.concatenate([prompt_mask_BxP.astype(bool), jnp.ones(completion_ids_BxL.shape, bool)], axis=1)
    return ids_BxT, mask_BxT


def completion_positions(prompt_len: int, completion_ids_BxL: jax.Array) -> jax.Array:
    """int [B, L]: the input positions P + 0..L-1 of every completion token (for `llada.forward_at`)."""
    return jnp.broadcast_to(prompt_len + jnp.arange(completion_ids_BxL.shape[1]), completion_ids_BxL.shape)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """float32 mean of x over the True entries of the bool `mask` (0 when there are none)."""
    return jnp.sum(jnp.where(mask, x, 0).astype(jnp.float32)) / jnp.maximum(mask.sum(), 1)


def k3(ref_logp: jax.Array, logp: jax.Array) -> jax.Array:
    """Schulman's k3 estimator of KL(π_θ ‖ π_ref) per token: e^δ − δ − 1 with δ = log π_ref − log π_θ (≥ 0)."""
    delta = ref_logp - logp
    return jnp.exp(delta) - delta - 1.0


KL_ESTIMATORS = ("k3", "k1")


def check_kl_estimator(owner: str, estimator: str) -> None:
    """A ValueError naming `owner`'s field unless `estimator` is one of `KL_ESTIMATORS`."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"{owner}.kl_estimator={estimator!r}; choose one of {KL_ESTIMATORS}")


def token_kl(logp: jax.Array, against_logp: jax.Array, estimator: str, clamp: float | None = None) -> jax.Array:
    """Per-token estimate of KL(π_θ ‖ π_against): "k3" (`k3`; with `clamp`, its exponent δ = against − logp clipped
    to ±clamp first, as DiPO's official code does) or "k1" (logp − against)."""
    if estimator == "k1":
        return logp - against_logp
    if clamp is None:
        return k3(against_logp, logp)
    delta = against_logp - logp
    return jnp.exp(jnp.clip(delta, -clamp, clamp)) - delta - 1.0


def clipped_token_loss(logp_BxN: jax.Array, old_logp_BxN: jax.Array, ref_logp_BxN: jax.Array | None,
                       advantages_B: jax.Array, epsilon_low: float, epsilon_high: float, beta: float,
                       kl_times_ratio: bool) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """(per-token loss [B, N], ratio ρ [B, N], KL term [B, N] or None when β = 0) of the PPO-clipped objective.

    loss = −min(ρA, clip(ρ, 1 − ε_low, 1 + ε_high)A) + β·kl with ρ = exp(logp − old_logp) and kl = k3(ref, logp),
    times ρ when `kl_times_ratio` (AGRPO's off-policy correction of the KL; d1 uses plain k3). The caller
    checks that `ref_logp_BxN` is given when β > 0, with an error naming its own input.
    """
    ratio_BxN = jnp.exp(logp_BxN - old_logp_BxN)
    adv_Bx1 = advantages_B.astype(logp_BxN.dtype)[:, None]
    clipped_BxN = jnp.clip(ratio_BxN, 1.0 - epsilon_low, 1.0 + epsilon_high)
    loss_BxN = -jnp.minimum(ratio_BxN * adv_Bx1, clipped_BxN * adv_Bx1)
    if not beta:
        return loss_BxN, ratio_BxN, None
    kl_BxN = k3(ref_logp_BxN, logp_BxN)
    if kl_times_ratio:
        kl_BxN = kl_BxN * ratio_BxN
    return loss_BxN + beta * kl_BxN, ratio_BxN, kl_BxN
