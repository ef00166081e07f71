"""dllm_rl: reinforcement learning for masked diffusion language models, in JAX."""
