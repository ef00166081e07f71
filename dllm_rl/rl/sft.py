"""Masked-diffusion SFT loss of LLaDA (the reference's SFT objective; docs/algorithm.md), for warm starts before RL.

Per row: t ~ U(0, 1), p = (1 − ε)·t + ε, every answer token masked independently with probability p (the prompt
is never masked); loss = Σ_masked CE / p / answer_len, averaged over rows. `answer_len` counts the EOS padding,
which is part of the target (the model learns to end answers with EOS).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dllm_rl.models import llada
from dllm_rl.rl.objective import completion_positions, model_inputs, token_log_probs

MIN_MASK_PROB = 1e-3


def mask_answer(rng: jax.Array, answer_ids_BxL: jax.Array, mask_token_id: int
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(noisy answer [B, L], is_masked [B, L] bool, mask probability p [B]) for the forward process."""
    t_key, m_key = jax.random.split(rng)
    b, length = answer_ids_BxL.shape
    p_B = (1 - MIN_MASK_PROB) * jax.random.uniform(t_key, (b,)) + MIN_MASK_PROB
    masked_BxL = jax.random.uniform(m_key, (b, length)) < p_B[:, None]
    return jnp.where(masked_BxL, mask_token_id, answer_ids_BxL), masked_BxL, p_B


def sft_loss(config: llada.LLaDAConfig, params, prompt_ids_BxP: jax.Array, answer_ids_BxL: jax.Array,
             rng: jax.Array, prompt_mask_BxP: jax.Array | None = None, **forward_kwargs) -> jax.Array:
    """LLaDA's SFT objective (an upper bound on the answer's negative log-likelihood) for one batch."""
    noisy_BxL, masked_BxL, p_B = mask_answer(rng, answer_ids_BxL, config.mask_token_id)
    ids_BxT, mask_BxT = model_inputs(prompt_ids_BxP, prompt_mask_BxP, noisy_BxL)
    positions_BxL = completion_positions(prompt_ids_BxP.shape[1], answer_ids_BxL)
    logits_BxLxV = llada.forward_at(config, params, ids_BxT, positions_BxL, mask_BxT, **forward_kwargs)
    nll_BxL = -token_log_probs(logits_BxLxV, answer_ids_BxL)
    per_row_B = jnp.sum(jnp.where(masked_BxL, nll_BxL, 0.0), axis=1) / p_B / answer_ids_BxL.shape[1]
    return jnp.mean(per_row_B)
