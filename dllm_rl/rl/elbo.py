"""The forward pass the sequence-likelihood objectives (ESPO `espo`, SPG `spg`) share: completion log-probs of
many noised copies of a batch, in one model call or in chunks of copies (`objective.in_chunks`).

Both estimate log π(o | q) by bounds on masked inputs: each copy n of row b replaces some positions of
[prompt ‖ completion] by the mask token, and every completion token's log-prob is read off the raw logits (no
temperature). Which positions are masked, and how the log-probs are weighted, is each method's own.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dllm_rl.models import llada
from dllm_rl.rl.objective import ForwardConfig, completion_positions, in_chunks, model_inputs, token_log_probs


def noised_completion_logps(model_config: llada.LLaDAConfig, params, prompt_ids_BxP: jax.Array,
                            prompt_mask_BxP: jax.Array | None, completion_ids_BxL: jax.Array,
                            is_mask_NxBxT: jax.Array, config: ForwardConfig, copies_per_call: int | None = None,
                            what: str = "copies_per_call") -> jax.Array:
    """float32 [N, B, L]: log π(o_bj | copy n of row b), where copy n has `mask_token_id` wherever
    `is_mask_NxBxT` (bool, over the T = P + L positions of prompt then completion) is set.

    The prompt's padding mask, when given, is the attention mask of every copy. `copies_per_call` copies go
    through the model per call (None: all N in one; `objective.in_chunks`, whose error names the knob `what`).
    """
    b, length = completion_ids_BxL.shape
    ids_BxT, attention_BxT = model_inputs(prompt_ids_BxP, prompt_mask_BxP, completion_ids_BxL)

    def copies_logps(is_mask_CxBxT):
        c = is_mask_CxBxT.shape[0]
        noised_CBxT = jnp.where(is_mask_CxBxT, model_config.mask_token_id, ids_BxT[None]).reshape(c * b, -1)
        tile = lambda x: None if x is None else jnp.broadcast_to(x[None], (c, *x.shape)).reshape(c * b, *x.shape[1:])
        logits_CBxLxV = llada.forward_at(model_config, params, noised_CBxT,
                                         completion_positions(prompt_ids_BxP.shape[1], tile(completion_ids_BxL)),
                                         tile(attention_BxT), **config.forward_kwargs())
        return token_log_probs(logits_CBxLxV, tile(completion_ids_BxL)).reshape(c, b, length)

    return in_chunks(copies_logps, is_mask_NxBxT, copies_per_call, what)
