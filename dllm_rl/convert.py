"""Convert an HF LLaDA folder (safetensors) to an Orbax checkpoint folder.

    python -m dllm_rl.convert --hf_dir /path/to/LLaDA-8B-Instruct --out_dir /path/to/llada8b --dtype bfloat16

Tensors stream one at a time from the memory-mapped safetensors shards into per-layer stacked host arrays.
Everything is written into a temporary sibling directory that is renamed to `out_dir` only when complete, so an
interrupted or failed run leaves no half checkpoint. Config, generation-config and tokenizer files are copied.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from dllm_rl.atomic import atomic_directory
from dllm_rl.cli import use_cpu
from dllm_rl.checkpoint.hf import CheckpointError, iter_params, resolve_dtype
from dllm_rl.checkpoint.orbax import copy_side_files, write_model_dir
from dllm_rl.models import ConfigError, DecoderConfig, config_from_hf


def convert(hf_dir: str, out_dir: str, dtype: str = "bfloat16", overwrite: bool = False,
            progress: bool = True) -> DecoderConfig:
    """Converts and returns the model config; raises CheckpointError/ConfigError before writing anything."""
    resolve_dtype(dtype)
    if os.path.exists(out_dir) and not overwrite:
        raise CheckpointError(f"{out_dir}: already exists; pass --overwrite or choose another --out_dir")
    config = config_from_hf(hf_dir)
    with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
        raw_config = json.load(f)
    with atomic_directory(out_dir) as tmp_dir:
        write_model_dir(tmp_dir, raw_config,
                        ((".".join(path), arr) for path, arr in iter_params(hf_dir, config, dtype, progress=progress)))
        copy_side_files(hf_dir, tmp_dir)
    return config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf_dir", required=True, help="HF model folder (config.json + *.safetensors)")
    parser.add_argument("--out_dir", required=True, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--dtype", default="bfloat16", help="float32 | bfloat16 | float16 (default bfloat16)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out_dir")
    args = parser.parse_args(argv)
    use_cpu()
    try:
        config = convert(args.hf_dir, args.out_dir, args.dtype, args.overwrite)
    except (CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out_dir}: {config.num_params:,} params in {args.dtype}")
    return 0


if __name__ == "__main__":
    from dllm_rl.cli import run_main  # one-line user errors, quiet third-party logging

    run_main(main)
