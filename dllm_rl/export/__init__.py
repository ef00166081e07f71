"""Trained weights users can take anywhere: the family's own HF folder (LoRA merged), or the adapters as PEFT's.

    python -m dllm_rl.export --ckpt_dir MODEL_DIR [--lora_dir W] --out_dir OUT --format hf|peft

Modules: `safetensors_io` (streaming sharded writer), `sources` (Orbax model folders and trainer checkpoints, read
leaf by leaf), `hf_export` (float32 merge, HF names), `peft` (PEFT names and target matching), `__main__` (the CLI).
Folders are written with `dllm_rl.atomic.atomic_directory` (a temporary sibling, renamed when complete).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from dllm_rl.atomic import atomic_directory
from dllm_rl.checkpoint.hf import CheckpointError
from dllm_rl.checkpoint.orbax import copy_side_files
from dllm_rl.export.hf_export import merged_tensors, write_hf
from dllm_rl.export.peft import load_peft, peft_adapted, peft_target_modules, write_peft
from dllm_rl.export.safetensors_io import DEFAULT_SHARD_SIZE
from dllm_rl.export.sources import LeafReader, read_model_dir, tree_reader
from dllm_rl.models import DecoderConfig
from dllm_rl.models.lora import LoRAConfig


def check_writable(out_dir: str, overwrite: bool) -> None:
    """An existing `out_dir` is replaced only when asked to."""
    if os.path.exists(out_dir) and not overwrite:
        raise CheckpointError(f"{out_dir}: already exists; pass --overwrite or choose another --out_dir")


@contextlib.contextmanager
def _staging_dir(out_dir: str, overwrite: bool) -> Iterator[str]:
    check_writable(out_dir, overwrite)
    with atomic_directory(out_dir) as tmp:
        yield tmp


def export_hf(out_dir: str, config: DecoderConfig, params: dict | LeafReader, dtype: Any = "bfloat16",
              adapters: dict | None = None, lora_config: LoRAConfig | None = None, raw_config: dict | None = None,
              side_files_dir: str | None = None, max_shard_size: int | str = DEFAULT_SHARD_SIZE,
              overwrite: bool = False) -> None:
    """Writes `out_dir` as the HF folder of `config`'s family (its tensor names): base `params` (a tree or a leaf
    reader) with the adapters merged in float32, config.json (`raw_config`, default `config.to_hf_dict()`) and the
    tokenizer files of `side_files_dir`."""
    read = params if callable(params) else tree_reader(params)
    with _staging_dir(out_dir, overwrite) as tmp:
        write_hf(tmp, config, raw_config or config.to_hf_dict(), read, dtype, adapters, lora_config, max_shard_size)
        if side_files_dir:
            copy_side_files(side_files_dir, tmp)


def export_peft(out_dir: str, config: DecoderConfig, adapters: dict, lora_config: LoRAConfig, dtype: Any = "float32",
                base_model: str = "", overwrite: bool = False) -> None:
    """Writes `out_dir` as a PEFT LoRA folder loadable by `PeftModel.from_pretrained(model, out_dir)` on the
    family's own PyTorch model."""
    with _staging_dir(out_dir, overwrite) as tmp:
        write_peft(tmp, adapters, lora_config, config, dtype, base_model)


__all__ = ["check_writable", "export_hf", "export_peft", "load_peft", "merged_tensors", "peft_adapted", "peft_target_modules",
           "read_model_dir", "tree_reader"]
