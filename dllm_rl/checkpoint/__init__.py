"""HF safetensors ⇄ params, and Orbax save/restore."""
from dllm_rl.checkpoint.hf import CheckpointError, iter_params, load_hf, to_hf_tensors
from dllm_rl.checkpoint.orbax import load_orbax, restore_params, save_orbax, save_params

__all__ = ["CheckpointError", "iter_params", "load_hf", "to_hf_tensors", "load_orbax", "restore_params",
           "save_orbax", "save_params"]
