"""Write a random HF LLaDA checkpoint laid out like the real 8B one (291 names, 6 shards, the real index).

    python -m experiments.synthetic_checkpoint --out_dir /tmp/llada_synth [--scale 1.0]

`--scale 1` gives the real 8B shapes (16 GB of bf16); smaller scales shrink d_model / mlp width (the vocabulary
and depth stay real). Used to measure conversion memory and for GPU benchmarks with random weights, since the
real weights cannot be downloaded here. Values are random bf16 bit patterns of N(0, 0.02)-like magnitude.
"""
from __future__ import annotations

import argparse
import json
import os

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from dllm_rl.assets import LLADA_8B_META_DIR
from dllm_rl.checkpoint.hf import hf_names
from dllm_rl.models.llada import LLaDAConfig

META = LLADA_8B_META_DIR


def write(out_dir: str, scale: float, seed: int = 0) -> LLaDAConfig:
    raw = json.loads((META / "config.json").read_text())
    index = json.loads((META / "model.safetensors.index.json").read_text())
    heads = max(1, int(round(raw["n_heads"] * scale)))
    raw.update(d_model=heads * 128, n_heads=heads, n_kv_heads=heads,
               mlp_hidden_size=int(round(raw["mlp_hidden_size"] * scale / 128)) * 128)
    config = LLaDAConfig.from_hf_config(raw)
    shapes = hf_names(config)
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    by_shard: dict[str, list[str]] = {}
    for name, shard in index["weight_map"].items():
        by_shard.setdefault(shard, []).append(name)
    for shard, names in tqdm(sorted(by_shard.items()), desc="shards"):
        tensors = {}
        for name in names:
            shape = shapes[name]
            values = rng.standard_normal(shape, dtype=np.float32) * (1.0 if len(shape) == 1 else 0.02)
            tensors[name] = (values + (1.0 if len(shape) == 1 else 0.0)).astype(ml_dtypes.bfloat16)
        save_file(tensors, os.path.join(out_dir, shard), metadata={"format": "pt"})
        del tensors
    total = sum(int(np.prod(s)) * 2 for s in shapes.values())
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": index["weight_map"]}, f, indent=2)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--scale", type=float, default=1.0, help="width scale (1.0 = real 8B shapes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = write(args.out_dir, args.scale, args.seed)
    print(f"wrote {args.out_dir}: {config.num_params:,} params (bf16, {config.num_params * 2 / 2**30:.1f} GiB)")


if __name__ == "__main__":
    main()
