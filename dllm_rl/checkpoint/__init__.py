"""HF safetensors ⇄ params, Orbax save/restore, and the one model loader (`load_model`)."""
from dllm_rl.checkpoint.hf import CheckpointError, iter_params, load_hf, to_hf_tensors
from dllm_rl.checkpoint.load import load_model
from dllm_rl.checkpoint.orbax import copy_side_files, load_orbax, restore_params, save_orbax, save_params

__all__ = ["CheckpointError", "iter_params", "load_hf", "load_model", "to_hf_tensors", "copy_side_files",
           "load_orbax", "restore_params", "save_orbax", "save_params"]
