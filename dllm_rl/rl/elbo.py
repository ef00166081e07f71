"""The forward pass the sequence-likelihood objectives (ESPO `espo`, SPG `spg`) share: completion log-probs of
many noised copies of a batch, in one model call.

Both estimate log π(o | q) by bounds on masked inputs: each copy n of row b replaces some positions of
[prompt ‖ completion] by the mask token, and every completion token's log-prob is read off the raw logits (no
temperature). Which positions are masked, and how the log-probs are weighted, is each method's own.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dllm_rl.models import llada
from dllm_rl.rl.objective import ForwardConfig, completion_positions, model_inputs, token_log_probs


def noised_completion_logps(model_config: llada.LLaDAConfig, params, prompt_ids_BxP: jax.Array,
                            prompt_mask_BxP: jax.Array | None, completion_ids_BxL: jax.Array,
                            is_mask_NxBxT: jax.Array, config: ForwardConfig) -> jax.Array:
    """float32 [N, B, L]: log π(o_bj | copy n of row b), where copy n has `mask_token_id` wherever
    `is_mask_NxBxT` (bool, over the T = P + L positions of prompt then completion) is set.

    The prompt's padding mask, when given, is the attention mask of every copy.
    """
    n = is_mask_NxBxT.shape[0]
    b, length = completion_ids_BxL.shape
    ids_BxT, attention_BxT = model_inputs(prompt_ids_BxP, prompt_mask_BxP, completion_ids_BxL)
    noised_NBxT = jnp.where(is_mask_NxBxT, model_config.mask_token_id, ids_BxT[None]).reshape(n * b, -1)
    tile = lambda x: None if x is None else jnp.broadcast_to(x[None], (n, *x.shape)).reshape(n * b, *x.shape[1:])
    logits_NBxLxV = llada.forward_at(model_config, params, noised_NBxT,
                                     completion_positions(prompt_ids_BxP.shape[1], tile(completion_ids_BxL)),
                                     tile(attention_BxT), **config.forward_kwargs())
    return token_log_probs(logits_NBxLxV, tile(completion_ids_BxL)).reshape(n, b, length)
