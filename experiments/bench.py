"""Benchmarks; one subcommand per workload, each printing one JSON line of results.

  python -m experiments.bench sampler --model tiny --batch 2 --prompt_len 16 --gen_length 32 --block_length 8 \
      --steps 16                                                   # CPU smoke run
  python -m experiments.bench sampler --model 8b --dtype bfloat16 --batch 8 --prompt_len 128 --gen_length 384 \
      --block_length 12 --steps 128 --temperature 0.6 --top_k 150 --top_p 0.99 --remasking random --record
      # the AGRPO rollout target (DESIGN.md §6): <= 10 s, <= 20 GiB on one H100
  python -m experiments.bench train_step --model 8b --dtype bfloat16 --batch 8 --prompt_len 128 --gen_length 384 \
      --lora_rank 64 --remat full --attention_impl cudnn
      # one AGRPO timestep forward+backward (DESIGN.md §6 target: <= 0.35 s, <= 35 GiB on one H100)

Random weights unless --hf_dir is given. MFU counts the matmul FLOPs a step really does: 2 x (non-embedding,
non-head params) per sequence token, 2 x head params per scored position (logits only for the current block),
and 4 x n_layers x T^2 x d_model of attention, summed over the steps actually run, over --peak_tflops.
To add a workload: write add_<name>_args(parser) and run_<name>(args) -> dict, and register them in COMMANDS.
"""
from __future__ import annotations

import argparse
import functools
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dllm_rl.assets import LLADA_8B_META_DIR
from dllm_rl.models import llada
from experiments.cli import make_parser, run_main

CONFIG_8B = LLADA_8B_META_DIR / "config.json"


def model_config(name: str) -> llada.LLaDAConfig:
    """'8b': LLaDA-8B-Instruct's config.json; 'tiny': the golden-fixture sizes with room for long sequences."""
    if name == "8b":
        return llada.LLaDAConfig.from_hf_config(CONFIG_8B)
    return llada.LLaDAConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=128, vocab_size=160,
                             embedding_size=160, max_sequence_length=4096, mask_token_id=156, eos_token_id=150,
                             pad_token_id=150)


def load_model(args) -> tuple[llada.LLaDAConfig, dict]:
    if args.hf_dir:
        from dllm_rl.checkpoint import load_hf
        return load_hf(args.hf_dir, dtype=args.dtype)
    config = model_config(args.model)
    init = jax.jit(lambda key: llada.init_params(config, key, jnp.dtype(args.dtype)))
    return config, init(jax.random.key(args.seed))


def peak_memory_bytes() -> int | None:
    """Peak device memory in use, where the backend reports it (GPU/TPU; None on CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def forward_flops(config: llada.LLaDAConfig, batch: int, tokens: int, keys: int, scored: int) -> float:
    """Matmul FLOPs of a forward over `tokens` positions attending to `keys` positions, LM head on `scored`."""
    head = config.d_model * config.embedding_size
    body = config.num_params - 2 * head - config.d_model  # without embedding, LM head, ln_f
    attention = 4 * config.n_layers * tokens * keys * config.d_model
    return float(batch * (2 * body * tokens + 2 * head * scored + attention))


def sampler_step_flops(config: llada.LLaDAConfig, batch: int, seq_len: int, scored: int) -> float:
    """Matmul FLOPs of one denoising step (one forward of the sequence, LM head on `scored` positions)."""
    return forward_flops(config, batch, seq_len, seq_len, scored)


def sampler_flops(config: llada.LLaDAConfig, batch: int, seq_len: int, block: int, steps_run: int,
                  cached_blocks: int | None) -> float:
    """Matmul FLOPs of a whole generate call. Exact mode: a full-sequence forward per step. Fast mode
    (`cached_blocks` = number of blocks): one full forward per block, then per step only the block's tokens,
    attending over the whole sequence."""
    if cached_blocks is None:
        return steps_run * sampler_step_flops(config, batch, seq_len, block)
    window = forward_flops(config, batch, block, seq_len, block)
    return cached_blocks * sampler_step_flops(config, batch, seq_len, block) + steps_run * window


def add_sampler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=("tiny", "8b"), default="tiny")
    p.add_argument("--hf_dir", default=None, help="load real weights from an HF folder instead of random ones")
    p.add_argument("--dtype", default="float32", help="params / compute dtype, e.g. bfloat16")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt_len", type=int, default=128)
    p.add_argument("--gen_length", type=int, default=256)
    p.add_argument("--block_length", type=int, default=32)
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--remasking", default="low_confidence")
    p.add_argument("--top_k", type=int, default=None)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--cfg_scale", type=float, default=0.0)
    p.add_argument("--record", action="store_true", help="AGRPO rollout with per-position records")
    p.add_argument("--no_early_stop", action="store_true", help="run every step even if all rows end in EOS")
    p.add_argument("--attention_impl", default=None, help="jax.nn.dot_product_attention implementation, e.g. cudnn")
    p.add_argument("--fast", action="store_true", help="approximate cached mode (block-start K/V cache)")
    p.add_argument("--parallel_threshold", type=float, default=None, help="fast mode: Fast-dLLM threshold decoding")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak_tflops", type=float, default=989.0, help="device peak for MFU (H100 dense bf16: 989)")


def run_sampler(args) -> dict:
    from dllm_rl.sampling import generate

    config, params = load_model(args)
    prompt = np.random.default_rng(args.seed).integers(0, min(config.vocab_size, config.mask_token_id),
                                                       (args.batch, args.prompt_len))
    kwargs = dict(steps=args.steps, gen_length=args.gen_length, block_length=args.block_length,
                  temperature=args.temperature, remasking=args.remasking, top_k=args.top_k, top_p=args.top_p,
                  cfg_scale=args.cfg_scale, record=args.record, early_stop=False if args.no_early_stop else None,
                  attention_impl=args.attention_impl, rng=jax.random.key(args.seed), fast=args.fast,
                  parallel_threshold=args.parallel_threshold)

    t0 = time.perf_counter()
    rollout = jax.block_until_ready(generate(config, params, prompt, **kwargs))
    compile_and_first = time.perf_counter() - t0
    times = []
    for i in range(args.repeats):
        kwargs["rng"] = jax.random.key(args.seed + 1 + i)
        t0 = time.perf_counter()
        rollout = jax.block_until_ready(generate(config, params, prompt, **kwargs))
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    steps_run = int(rollout.steps_run)
    seq_len = args.prompt_len + args.gen_length
    passes = 2 if args.cfg_scale > 0 else 1
    flops = sampler_flops(config, passes * args.batch, seq_len, args.block_length, steps_run,
                          args.gen_length // args.block_length if args.fast else None)
    peak = peak_memory_bytes()
    record_bytes = 0 if rollout.truncation is None else rollout.truncation.nbytes
    return {
        "bench": "sampler", "model": args.hf_dir or args.model, "dtype": args.dtype,
        "device": str(jax.devices()[0].device_kind), "batch": args.batch, "prompt_len": args.prompt_len,
        "gen_length": args.gen_length, "block_length": args.block_length, "steps": args.steps,
        "steps_run": steps_run, "record": args.record, "top_k": args.top_k, "top_p": args.top_p,
        "temperature": args.temperature, "seconds": seconds, "seconds_all": times,
        "compile_and_first_s": compile_and_first,
        "tokens_per_s": args.batch * args.gen_length / seconds, "ms_per_step": 1e3 * seconds / max(steps_run, 1),
        "tflops": flops / seconds / 1e12, "mfu": flops / seconds / (args.peak_tflops * 1e12),
        "peak_memory_gib": None if peak is None else peak / 2**30, "truncation_record_mib": record_bytes / 2**20,
    }


def add_train_step_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=("tiny", "8b"), default="tiny")
    p.add_argument("--dtype", default="float32", help="base params / compute dtype, e.g. bfloat16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt_len", type=int, default=128)
    p.add_argument("--gen_length", type=int, default=384)
    p.add_argument("--sampling_steps", type=int, default=128)
    p.add_argument("--lora_rank", type=int, default=64, help="0: full fine-tuning")
    p.add_argument("--remat", default="full", help="none | full | dots")
    p.add_argument("--attention_impl", default=None, help="jax.nn.dot_product_attention implementation, e.g. cudnn")
    p.add_argument("--top_k_bits", type=int, default=150, help="kept tokens per position in the truncation record")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak_tflops", type=float, default=989.0, help="device peak for MFU (H100 dense bf16: 989)")


def run_train_step(args) -> dict:
    """One AGRPO timestep (K=1) forward+backward on a random rollout of the given shape, LoRA or full FT."""
    from dllm_rl.models.lora import LoRAConfig, split_params
    from dllm_rl.rl import agrpo
    from dllm_rl.sampling.truncation import TruncationRecord, expand, pack

    args.hf_dir = None
    config, base = load_model(args)
    lora = LoRAConfig(rank=args.lora_rank, alpha=float(args.lora_rank)) if args.lora_rank else None
    trainable, frozen = split_params(base, lora, jax.random.key(args.seed + 1))
    cfg = agrpo.AGRPOConfig(mc_samples=1, sampling_steps=args.sampling_steps, gen_length=args.gen_length,
                            num_generations=args.batch, remat=args.remat, compute_dtype=args.dtype,
                            attention_impl=args.attention_impl, temperature=0.6)
    rng = np.random.default_rng(args.seed)
    b, length = args.batch, args.gen_length
    per_step = length // args.sampling_steps
    unmask = np.stack([rng.permutation(np.repeat(np.arange(args.sampling_steps), per_step)) for _ in range(b)])
    keep = np.zeros((b, length, config.embedding_size), bool)
    keep[..., : args.top_k_bits] = True
    completion = rng.integers(0, args.top_k_bits, (b, length))
    batch = agrpo.AGRPOBatch(
        prompt_ids=jnp.asarray(rng.integers(0, 100, (b, args.prompt_len)), jnp.int32), prompt_mask=None,
        completion_ids=jnp.asarray(completion, jnp.int32), unmask_step=jnp.asarray(unmask, jnp.int32),
        old_logp=jnp.asarray(-rng.random((b, length)), jnp.float32),
        entropy=jnp.asarray(rng.random((b, length)), jnp.float32),
        advantages=jnp.asarray(rng.standard_normal(b), jnp.float32),
        keep=TruncationRecord(bits=pack(jnp.asarray(keep)), vocab_size=config.embedding_size))
    del keep
    step_fn = jax.jit(functools.partial(agrpo.agrpo_grad, model_config=config, config=cfg, lora_config=lora,
                                        keep_fn=expand))

    def one():
        steps = jnp.asarray(rng.integers(0, args.sampling_steps, (b, 1)), jnp.int32)
        return jax.block_until_ready(step_fn(trainable, frozen, None, batch, steps, jnp.ones((b, 1), jnp.float32)))

    t0 = time.perf_counter()
    one()
    compile_and_first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        one()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    seq_len = args.prompt_len + args.gen_length
    forward = sampler_step_flops(config, b, seq_len, per_step)
    flops = 2 * forward  # forward + activation gradients (LoRA: no base weight gradients); remat recompute excluded
    if lora is None:
        flops = 3 * forward
    peak = peak_memory_bytes()
    return {
        "bench": "train_step", "model": args.model, "dtype": args.dtype, "device": str(jax.devices()[0].device_kind),
        "batch": b, "seq_len": seq_len, "lora_rank": args.lora_rank, "remat": args.remat,
        "attention_impl": args.attention_impl, "seconds": seconds, "seconds_all": times,
        "compile_and_first_s": compile_and_first, "tflops": flops / seconds / 1e12,
        "mfu": flops / seconds / (args.peak_tflops * 1e12),
        "peak_memory_gib": None if peak is None else peak / 2**30,
    }


COMMANDS = {"sampler": (add_sampler_args, run_sampler), "train_step": (add_train_step_args, run_train_step)}


def main(argv=None) -> dict:
    parser = make_parser(__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name))
    args = parser.parse_args(argv)
    result = COMMANDS[args.command][1](args)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    run_main(main)
