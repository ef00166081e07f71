"""The policy a run trained, exactly as its trainer samples it, read back from the run's checkpoint.

A LoRA run's policy is the base model plus its adapters, unmerged (`rl.steps.sampling_params`): the merged bf16
`W/final_model` rounds small updates away and is not the policy that was trained. A full fine-tuning run's policy is
its trainable params. After an SFT warm start the checkpoint also holds the warm-started base, which replaces the
given base. Every tree is restored straight onto its mesh shardings (each process reads only its shards), so this
works for the 8B on a multi-host slice. The trainer writes `W/lora_config.json` beside its checkpoints; PEFT
folders (`W/final_adapter`, `dllm_rl.export --format peft`) are read too.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from dllm_rl import paths
from dllm_rl.checkpoint.hf import CheckpointError
from dllm_rl.export.peft import ADAPTER_CONFIG, load_peft
from dllm_rl.export.sources import TrainerCheckpoint, trainer_state_dir
from dllm_rl.models import llada, lora as lora_lib
from dllm_rl.parallel import mesh as mesh_lib
from dllm_rl.rl.steps import sampling_params


def is_peft_folder(path: str) -> bool:
    return (paths.absolute(path) / ADAPTER_CONFIG).exists()


def run_lora_config(state_dir: str) -> lora_lib.LoRAConfig:
    """The LoRAConfig the trainer wrote to W/lora_config.json (W/checkpoints/<step>/state → W)."""
    path = paths.absolute(state_dir).parent.parent.parent / lora_lib.CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{path}: missing; the trainer writes it beside the checkpoints of a LoRA run (pass "
                              "the run's workdir, or its final_adapter PEFT folder, as --lora_dir)")
    fields = json.loads(path.read_text())
    return lora_lib.LoRAConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def _restore_onto(state_dir: str, key: str, metadata: Any, shardings: Any) -> Any:
    """The checkpoint's entry `key` restored onto `shardings` (shapes and dtypes as saved)."""
    target = {key: jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(tuple(m.shape), np.dtype(m.dtype), sharding=s),
                                metadata[key], shardings)}
    restore_args = jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding, dtype=t.dtype), target)
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                                                                partial_restore=True))
    return restored[key]


def _place_adapters(adapters: Any, lora_config: lora_lib.LoRAConfig, mesh, rules, model_config) -> Any:
    shapes = jax.tree.map(lambda x: x.shape, adapters)
    return jax.device_put(adapters, mesh_lib.lora_shardings(mesh, lora_config, shapes, rules, model_config))


def load_run_policy(run_dir: str, model_config: llada.LLaDAConfig, base_params: Any, mesh,
                    rules=mesh_lib.DEFAULT_RULES, step: int | None = None) -> tuple[Any, lora_lib.LoRAConfig | None]:
    """(sampling params, LoRAConfig or None) of the policy in `run_dir`: a trainer workdir (its latest or `step`
    checkpoint; also W/checkpoints or one step folder) or a PEFT folder, on top of `base_params` (laid out on
    `mesh` by `rules`)."""
    run_dir = os.fspath(run_dir)
    if is_peft_folder(run_dir):
        lora_config, adapters = load_peft(run_dir, model_config)
        return sampling_params(_place_adapters(adapters, lora_config, mesh, rules, model_config), base_params,
                               lora_config), lora_config
    checkpoint = TrainerCheckpoint(trainer_state_dir(run_dir, step))
    param_shardings = mesh_lib.param_shardings(mesh, model_config, rules=rules)
    if checkpoint.has_base:
        base_params = _restore_onto(checkpoint.state_dir, "base", checkpoint.metadata, param_shardings)
    if not checkpoint.is_lora:
        return _restore_onto(checkpoint.state_dir, "trainable", checkpoint.metadata, param_shardings), None
    lora_config = run_lora_config(checkpoint.state_dir)
    shapes = jax.tree.map(lambda m: tuple(m.shape), checkpoint.metadata["trainable"])
    adapters = _restore_onto(checkpoint.state_dir, "trainable", checkpoint.metadata,
                             mesh_lib.lora_shardings(mesh, lora_config, shapes, rules, model_config))
    return sampling_params(adapters, base_params, lora_config), lora_config
