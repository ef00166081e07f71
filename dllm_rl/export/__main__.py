"""CLI: export a trained policy as its family's HF folder (LoRA merged) or its adapters as a PEFT folder.

    python -m dllm_rl.export --ckpt_dir BASE_MODEL_DIR --lora_dir W --lora_alpha 64 --out_dir OUT --format peft
    python -m dllm_rl.export --ckpt_dir BASE_MODEL_DIR --lora_dir W --out_dir OUT --format hf [--dtype bfloat16]
    python -m dllm_rl.export --ckpt_dir W/final_model --out_dir OUT --format hf

--ckpt_dir is an Orbax model folder (`python -m dllm_rl.convert` output, or the trainer's W/final_model, which
already has the LoRA merged). --lora_dir is a trainer workdir W (or W/checkpoints, or one step folder) or a PEFT
folder. Trainer checkpoints hold the adapters but not LoRAConfig.alpha: it is read from W/lora_config.json
when present, else give --lora_alpha. After an SFT warm start the checkpoint also holds the warm-started base,
which then replaces --ckpt_dir's params (only --format hf can carry it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from dllm_rl.checkpoint.hf import CheckpointError, get_path, resolve_dtype
from dllm_rl.cli import use_cpu
from dllm_rl.export import check_writable, export_hf, export_peft
from dllm_rl.export.peft import ADAPTER_CONFIG, load_peft
from dllm_rl.export.safetensors_io import DEFAULT_SHARD_SIZE, parse_size
from dllm_rl.export.sources import TrainerCheckpoint, read_model_dir, trainer_state_dir
from dllm_rl.models import ConfigError, DecoderConfig, param_shapes
from dllm_rl.models.lora import CONFIG_FILE as LORA_CONFIG_FILE, TARGETS, LoRAConfig

DEFAULT_DTYPES = {"hf": "bfloat16", "peft": "float32"}


def lora_config_of(adapters: dict, alpha: float, config: DecoderConfig, where: str) -> LoRAConfig:
    """The LoRAConfig of trainer adapters: rank and targets from the tree, checked against the model's shapes."""
    pairs = [((group, t), pair) for group, kernels in adapters.items() if group != "lm_head"
             for t, pair in kernels.items()] + ([(("lm_head",), adapters["lm_head"])] if "lm_head" in adapters else [])
    rank = pairs[0][1]["b"].shape[-2]
    lora_config = LoRAConfig(rank=rank, alpha=alpha, targets=tuple(t for t in TARGETS if any(p[-1] == t and len(p) == 2
                                                                                             for p, _ in pairs)),
                             lm_head="lm_head" in adapters)
    shapes = param_shapes(config)
    for path, pair in pairs:
        try:
            kernel = get_path(shapes, path)
        except KeyError:
            raise CheckpointError(f"{where}: adapter {'.'.join(path)} has no kernel in --ckpt_dir's "
                                  f"{config.family} model; pass the base model the run trained on") from None
        if pair["a"].shape != (*kernel[:-1], rank) or pair["b"].shape != (*kernel[:-2], rank, kernel[-1]):
            raise CheckpointError(f"{where}: adapter {'.'.join(path)} has shapes {pair['a'].shape}, {pair['b'].shape} "
                                  f"but --ckpt_dir's kernel is {kernel}; pass the base model the run trained on")
    return lora_config


def run_alpha(state_dir: str) -> float | None:
    """LoRAConfig.alpha from the run's lora_config.json (W/checkpoints/<step>/state → W), written by the trainer."""
    path = os.path.join(state_dir, os.pardir, os.pardir, os.pardir, LORA_CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return float(json.load(f)["alpha"])


def _trainer_inputs(args, config: DecoderConfig, read):
    """(leaf reader, adapters, lora config) from a trainer checkpoint."""
    ckpt = TrainerCheckpoint(trainer_state_dir(args.lora_dir, args.step))
    if not ckpt.is_lora:
        if args.format == "peft":
            raise CheckpointError(f"{ckpt.state_dir}: a full fine-tuning checkpoint has no adapters; use --format hf")
        return ckpt.reader("trainable"), None, None
    if ckpt.has_base and args.format == "peft":
        raise CheckpointError(f"{ckpt.state_dir}: the adapters sit on an SFT-warm-started base saved with them, which "
                              "a PEFT folder cannot carry; use --format hf (merged) instead")
    alpha = args.lora_alpha if args.lora_alpha is not None else run_alpha(ckpt.state_dir)
    if alpha is None:
        raise CheckpointError(f"{ckpt.state_dir}: trainer checkpoints do not store LoRAConfig.alpha and no "
                              f"{LORA_CONFIG_FILE} is beside them; pass --lora_alpha (the run's LoRAConfig.alpha)")
    adapters = ckpt.adapters()
    lora_config = lora_config_of(adapters, alpha, config, ckpt.state_dir)
    return (ckpt.reader("base") if ckpt.has_base else read), adapters, lora_config


def run(args) -> str:
    """Validates everything, then writes; returns a one-line summary."""
    dtype = args.dtype or DEFAULT_DTYPES[args.format]
    resolve_dtype(dtype)
    parse_size(args.shard_size)
    check_writable(args.out_dir, args.overwrite)
    config, raw_config, read = read_model_dir(args.ckpt_dir)
    adapters = lora_config = None
    if args.lora_dir and os.path.exists(os.path.join(args.lora_dir, ADAPTER_CONFIG)):
        lora_config, adapters = load_peft(args.lora_dir, config)
        if args.lora_alpha is not None and args.lora_alpha != lora_config.alpha:
            raise CheckpointError(f"{args.lora_dir}/{ADAPTER_CONFIG}: lora_alpha={lora_config.alpha} but "
                                  f"--lora_alpha {args.lora_alpha}; drop --lora_alpha for a PEFT folder")
    elif args.lora_dir:
        read, adapters, lora_config = _trainer_inputs(args, config, read)
    if args.format == "peft":
        if adapters is None:
            raise CheckpointError("--format peft needs LoRA adapters: pass --lora_dir (trainer workdir of a LoRA run)")
        export_peft(args.out_dir, config, adapters, lora_config, dtype, args.base_model, args.overwrite)
        return f"wrote {args.out_dir}: PEFT LoRA r={lora_config.rank} alpha={lora_config.alpha} in {dtype}"
    export_hf(args.out_dir, config, read, dtype, adapters, lora_config, raw_config, args.ckpt_dir, args.shard_size,
              args.overwrite)
    merged = f" + LoRA r={lora_config.rank} merged" if adapters is not None else ""
    return f"wrote {args.out_dir}: HF {config.family}{merged}, {config.num_params:,} params in {dtype}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_dir", required=True, help="Orbax model folder: the base the run started from "
                        "(with --lora_dir), or W/final_model (already merged; then no --lora_dir)")
    parser.add_argument("--lora_dir", help="trainer workdir W, W/checkpoints, one step folder, or a PEFT folder")
    parser.add_argument("--step", type=int, help="trainer checkpoint step (default: the latest)")
    parser.add_argument("--lora_alpha", type=float, help="LoRAConfig.alpha of the run (default: from W's gin file)")
    parser.add_argument("--out_dir", required=True, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--format", required=True, choices=sorted(DEFAULT_DTYPES), help="hf (merged) or peft")
    parser.add_argument("--dtype", help="float32 | bfloat16 | float16 (default: bfloat16 for hf, float32 for peft)")
    parser.add_argument("--shard_size", default=DEFAULT_SHARD_SIZE, help="max bytes per HF shard (default 5GB)")
    parser.add_argument("--base_model", default="", help="base_model_name_or_path written into adapter_config.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out_dir")
    args = parser.parse_args(argv)
    use_cpu()
    try:
        print(run(args))
    except (CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from dllm_rl.cli import run_main  # one-line user errors, quiet third-party logging

    run_main(main)
