"""Masked-diffusion sampling: LLaDA's semi-autoregressive generate() and the AGRPO rollout (record=True)."""
from dllm_rl.sampling.generate import Rollout, generate
from dllm_rl.sampling.schedule import SamplerConfig, SamplerInputError, sampler_config, transfer_schedule
from dllm_rl.sampling.truncation import (TruncationRecord, expand, keep_mask, logp_and_entropy, scale_logits,
                                         token_log_probs, truncated_log_softmax)

__all__ = ["Rollout", "generate", "SamplerConfig", "SamplerInputError", "sampler_config", "transfer_schedule",
           "TruncationRecord", "expand", "keep_mask", "logp_and_entropy", "scale_logits", "token_log_probs", "truncated_log_softmax"]
