"""Benchmarks; one subcommand per workload, each printing one JSON line of results.

  python -m experiments.bench sampler --model tiny --batch 2 --prompt_len 16 --gen_length 32 --block_length 8 \
      --steps 16                                                   # CPU smoke run
  python -m experiments.bench sampler --model 8b --dtype bfloat16 --batch 8 --prompt_len 128 --gen_length 384 \
      --block_length 12 --steps 128 --temperature 0.6 --top_k 150 --top_p 0.99 --remasking random --record
      # the AGRPO rollout target: <= 10 s, <= 20 GiB on one H100
  python -m experiments.bench sampler --d_model 512 --n_layers 8 --vocab 126464 --batch 8 --prompt_len 64 \
      --gen_length 96 --block_length 12 --steps 32 --temperature 0.6 --top_k 150 --top_p 0.99 --remasking random \
      --record --no_early_stop --compare_greedy --repeats 2
      # recorded rollout vs greedy generation at the same shape and steps (same forwards): the ratio is the
      # sampling + recording overhead (--compare_row_keys instead: the cost of one key per row, row_keys=True)
  python -m experiments.bench sampler_profile --d_model 512 --n_layers 8 --vocab 126464 --batch 8 \
      --prompt_len 64 --gen_length 96 --block_length 12 --temperature 0.6 --top_k 150 --top_p 0.99
      # one recorded step's pieces timed in isolation
  python -m experiments.bench train_step --model 8b --dtype bfloat16 --batch 8 --prompt_len 128 --gen_length 384 \
      --lora_rank 64 --remat full --attention_impl cudnn
      # one AGRPO timestep forward+backward (target: <= 0.35 s, <= 35 GiB on one H100)
  python -m experiments.bench eval_batching --task gsm8k --examples 32 --d_model 256 --n_layers 4 \
      --tokenizer_dir dllm_rl/assets/demo_model --gen_length 64 --block_length 32 --steps 32
      # evaluation time per example, batch-invariant (length buckets, fixed rows per device) vs the reference's
      # per-batch padding, and how many completions each choice changes

Random weights unless --hf_dir is given. MFU counts the matmul FLOPs a step really does: 2 x (non-embedding,
non-head params) per sequence token, 2 x head params per scored position (logits only for the current block),
and 4 x n_layers x T^2 x d_model of attention, summed over the steps actually run, over --peak_tflops.
To add a workload: write add_<name>_args(parser) and run_<name>(args) -> dict, and register them in COMMANDS.
Longer than 300 lines because every workload's flags and runner live in this one CLI module.
"""
from __future__ import annotations

import argparse
import dataclasses
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
from dllm_rl.cli import make_parser, mesh_flag, run_main

CONFIG_8B = LLADA_8B_META_DIR / "config.json"


def model_config(name: str, d_model: int | None = None, n_layers: int | None = None,
                 vocab: int | None = None) -> llada.LLaDAConfig:
    """'8b': LLaDA-8B-Instruct's config.json; 'tiny': the golden-fixture sizes with room for long sequences.
    d_model / n_layers / vocab resize 'tiny' (64-wide heads, MLP 3 x d_model; with vocab, the mask id is
    vocab - 4 and EOS vocab - 10), e.g. LLaDA's real vocabulary 126464 on a small body."""
    if name == "8b":
        return llada.LLaDAConfig.from_hf_config(CONFIG_8B)
    config = llada.LLaDAConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=128,
                               vocab_size=160, embedding_size=160, max_sequence_length=4096, mask_token_id=156,
                               eos_token_id=150, pad_token_id=150)
    if d_model:
        heads = max(1, d_model // 64)
        config = dataclasses.replace(config, d_model=d_model, n_heads=heads, n_kv_heads=heads,
                                     mlp_hidden_size=3 * d_model)
    if n_layers:
        config = dataclasses.replace(config, n_layers=n_layers)
    if vocab:
        config = dataclasses.replace(config, vocab_size=vocab, embedding_size=vocab, mask_token_id=vocab - 4,
                                     eos_token_id=vocab - 10, pad_token_id=vocab - 10)
    return config


def load_model(args) -> tuple[llada.LLaDAConfig, dict]:
    if getattr(args, "hf_dir", None):
        from dllm_rl.checkpoint import load_hf
        return load_hf(args.hf_dir, dtype=args.dtype)
    config = model_config(args.model, getattr(args, "d_model", None), getattr(args, "n_layers", None),
                          getattr(args, "vocab", None))
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


def add_model_size_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=("tiny", "8b"), default="tiny")
    p.add_argument("--d_model", type=int, default=None, help="resize 'tiny': width (64-wide heads)")
    p.add_argument("--n_layers", type=int, default=None, help="resize 'tiny': layers")
    p.add_argument("--vocab", type=int, default=None, help="resize 'tiny': vocabulary (LLaDA's: 126464)")


def add_rollout_args(p: argparse.ArgumentParser, dtype: str, batch: int, prompt_len: int, gen_length: int,
                     block_length: int, temperature: float, top_k: int | None, top_p: float) -> None:
    """Shape and sampling flags shared by the sampler subcommands (with each one's defaults)."""
    p.add_argument("--dtype", default=dtype, help="params / compute dtype, e.g. bfloat16")
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--prompt_len", type=int, default=prompt_len)
    p.add_argument("--gen_length", type=int, default=gen_length)
    p.add_argument("--block_length", type=int, default=block_length)
    p.add_argument("--temperature", type=float, default=temperature)
    p.add_argument("--top_k", type=int, default=top_k)
    p.add_argument("--top_p", type=float, default=top_p)


def add_sampler_args(p: argparse.ArgumentParser) -> None:
    add_model_size_args(p)
    add_rollout_args(p, "float32", 1, 128, 256, 32, 0.0, None, 1.0)
    p.add_argument("--hf_dir", default=None, help="load real weights from an HF folder instead of random ones")
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--remasking", default="low_confidence")
    p.add_argument("--cfg_scale", type=float, default=0.0)
    p.add_argument("--record", action="store_true", help="AGRPO rollout with per-position records")
    p.add_argument("--no_early_stop", action="store_true", help="run every step even if all rows end in EOS")
    p.add_argument("--attention_impl", default=None, help="jax.nn.dot_product_attention implementation, e.g. cudnn")
    p.add_argument("--fast", action="store_true", help="approximate cached mode (block-start K/V cache)")
    p.add_argument("--parallel_threshold", type=float, default=None, help="fast mode: Fast-dLLM threshold decoding")
    p.add_argument("--compare_greedy", action="store_true",
                   help="also time greedy generation at the same shape and steps, alternating runs; report the ratio")
    p.add_argument("--compare_row_keys", action="store_true",
                   help="also time the same call with row_keys=True (one key per row), alternating; report the ratio")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak_tflops", type=float, default=989.0, help="device peak for MFU (H100 dense bf16: 989)")


def greedy_kwargs(kwargs: dict) -> dict:
    """The same generate call made greedy and unrecorded: same shape, steps and forwards."""
    early_stop = kwargs["record"] if kwargs["early_stop"] is None else kwargs["early_stop"]
    return dict(kwargs, temperature=0.0, remasking="low_confidence", top_k=None, top_p=1.0, record=False,
                early_stop=early_stop)


def time_alternating(calls: dict, repeats: int) -> tuple[dict, dict, dict]:
    """(compile + first run seconds, per-run seconds, last result) per named call; runs alternate between calls
    so that a machine shared with other jobs slows them alike. calls[name](i) runs repeat i."""
    first, times, results = {}, {name: [] for name in calls}, {}
    for name, call in calls.items():
        t0 = time.perf_counter()
        results[name] = jax.block_until_ready(call(0))
        first[name] = time.perf_counter() - t0
    for i in range(repeats):
        for name, call in calls.items():
            t0 = time.perf_counter()
            results[name] = jax.block_until_ready(call(i + 1))
            times[name].append(time.perf_counter() - t0)
    return first, times, results


def run_sampler(args) -> dict:
    from dllm_rl.sampling import generate
    from dllm_rl.sampling.draws import row_keys

    config, params = load_model(args)
    prompt = np.random.default_rng(args.seed).integers(0, min(config.vocab_size, config.mask_token_id),
                                                       (args.batch, args.prompt_len))
    kwargs = dict(steps=args.steps, gen_length=args.gen_length, block_length=args.block_length,
                  temperature=args.temperature, remasking=args.remasking, top_k=args.top_k, top_p=args.top_p,
                  cfg_scale=args.cfg_scale, record=args.record, early_stop=False if args.no_early_stop else None,
                  attention_impl=args.attention_impl, fast=args.fast, parallel_threshold=args.parallel_threshold)
    variants = {"rollout": kwargs}
    if args.compare_greedy:
        variants["greedy"] = greedy_kwargs(kwargs)
    if args.compare_row_keys:
        variants["row_keys"] = dict(kwargs, row_keys=True)

    def rng(kw, i):
        key = jax.random.key(args.seed + i)
        return row_keys(key, np.arange(args.batch)) if kw.get("row_keys") else key

    calls = {name: functools.partial(lambda kw, i: generate(config, params, prompt, rng=rng(kw, i), **kw), kw)
             for name, kw in variants.items()}
    first, times, results = time_alternating(calls, args.repeats)
    rollout, seconds = results["rollout"], statistics.median(times["rollout"])
    steps_run = int(rollout.steps_run)
    seq_len = args.prompt_len + args.gen_length
    passes = 2 if args.cfg_scale > 0 else 1
    flops = sampler_flops(config, passes * args.batch, seq_len, args.block_length, steps_run,
                          args.gen_length // args.block_length if args.fast else None)
    peak = peak_memory_bytes()
    record_bytes = 0 if rollout.truncation is None else rollout.truncation.nbytes
    result = {
        "bench": "sampler", "model": args.hf_dir or args.model, "dtype": args.dtype,
        "device": str(jax.devices()[0].device_kind), "d_model": config.d_model, "n_layers": config.n_layers,
        "vocab": config.embedding_size, "batch": args.batch, "prompt_len": args.prompt_len,
        "gen_length": args.gen_length, "block_length": args.block_length, "steps": args.steps,
        "steps_run": steps_run, "record": args.record, "top_k": args.top_k, "top_p": args.top_p,
        "temperature": args.temperature, "remasking": args.remasking, "seconds": seconds,
        "seconds_all": times["rollout"], "compile_and_first_s": first["rollout"],
        "tokens_per_s": args.batch * args.gen_length / seconds, "ms_per_step": 1e3 * seconds / max(steps_run, 1),
        "tflops": flops / seconds / 1e12, "mfu": flops / seconds / (args.peak_tflops * 1e12),
        "peak_memory_gib": None if peak is None else peak / 2**30, "truncation_record_mib": record_bytes / 2**20,
    }
    if args.compare_greedy:
        greedy = statistics.median(times["greedy"])
        result.update(greedy_seconds=greedy, greedy_seconds_all=times["greedy"],
                      greedy_steps_run=int(results["greedy"].steps_run), rollout_over_greedy=seconds / greedy)
    if args.compare_row_keys:
        keyed = statistics.median(times["row_keys"])
        result.update(row_keys_seconds=keyed, row_keys_seconds_all=times["row_keys"],
                      row_keys_compile_and_first_s=first["row_keys"], row_keys_over_rollout=keyed / seconds)
    return result


def add_sampler_profile_args(p: argparse.ArgumentParser) -> None:
    add_model_size_args(p)
    add_rollout_args(p, "float32", 8, 64, 96, 12, 0.6, 150, 0.99)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)


def profile_pieces(config, params, args) -> dict:
    """name -> (jitted function, its arguments): one recorded step's pieces at the block, full-vocabulary forms
    (what a step over V costs) next to the candidate-list forms the sampler runs."""
    from dllm_rl.sampling import candidates as cand
    from dllm_rl.sampling import loop, truncation as trunc
    from dllm_rl.sampling.gumbel import gumbel_noise

    b, n, k, v = args.batch, args.block_length, args.top_k, config.embedding_size
    t = args.prompt_len + args.gen_length
    rng = np.random.default_rng(args.seed)
    x_BxT = jnp.asarray(rng.integers(0, config.mask_token_id, (b, t)), jnp.int32)
    pos_BxN = jnp.broadcast_to(args.prompt_len + jnp.arange(n), (b, n))
    logits_BxNxV = jax.jit(lambda: llada.forward_at(config, params, x_BxT, pos_BxN))()
    scaled_BxNxV = logits_BxNxV / args.temperature
    key = jax.random.key(args.seed)
    short, _ = jax.jit(lambda s: cand.top_k_list(s, k, args.top_p))(scaled_BxNxV)
    keep_BxNxV = trunc.keep_mask(scaled_BxNxV, k, args.top_p)
    x0_BxN = jnp.argmax(scaled_BxNxV, axis=-1)
    bits_BxLxVb = jnp.zeros((b, args.gen_length, -(-v // 8)), jnp.uint8)
    sel_BxN = jnp.ones((b, n), bool)
    return {
        "forward_at_block": (lambda x: llada.forward_at(config, params, x, pos_BxN), (x_BxT,)),
        "temper": (lambda l: trunc.scale_logits(l, args.temperature), (logits_BxNxV,)),
        "top_k_kth_value_only": (lambda s: s >= jax.lax.top_k(s, k)[0][..., -1:], (scaled_BxNxV,)),
        "top_k_values_and_ids": (lambda s: jax.lax.top_k(s, k + 1), (scaled_BxNxV,)),
        "top_k_top_p_candidates": (lambda s: cand.top_k_list(s, k, args.top_p), (scaled_BxNxV,)),
        "top_p_full_vocab_sort": (lambda s: cand.sorted_vocabulary(s, k, args.top_p), (scaled_BxNxV,)),
        "gumbel_vocab": (lambda key: gumbel_noise(key, (b, n, v)), (key,)),
        "gumbel_candidates": (lambda key: gumbel_noise(key, (b, n, k)), (key,)),
        "logp_entropy_vocab": (trunc.logp_and_entropy, (scaled_BxNxV, keep_BxNxV, x0_BxN)),
        "logp_entropy_candidates": (trunc.logp_and_entropy, (short.values_BxNxC, short.keep_BxNxC, x0_BxN % k)),
        "packbits_vocab": (trunc.pack, (keep_BxNxV,)),
        "pack_candidates": (lambda ids, keep: cand.packed_keep(cand.Candidates(ids, ids, keep), v),
                            (short.ids_BxNxC, short.keep_BxNxC)),
        "record_carry_update_all_blocks": (  # one update per block in a loop, as in the sampler (in place)
            lambda bits, new: jax.lax.fori_loop(0, args.gen_length // n,
                                                lambda i, acc: loop.update_where(acc, sel_BxN, new, i * n), bits),
            (bits_BxLxVb, trunc.pack(keep_BxNxV))),
    }


def run_sampler_profile(args) -> dict:
    """Median seconds of each piece of one recorded step, each compiled alone (compile excluded)."""
    config, params = load_model(args)
    out = {"bench": "sampler_profile", "device": str(jax.devices()[0].device_kind), "d_model": config.d_model,
           "n_layers": config.n_layers, "vocab": config.embedding_size, "batch": args.batch,
           "block_length": args.block_length, "top_k": args.top_k, "top_p": args.top_p}
    for name, (fn, fn_args) in profile_pieces(config, params, args).items():
        compiled = jax.jit(fn)
        jax.block_until_ready(compiled(*fn_args))
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*fn_args))
            times.append(time.perf_counter() - t0)
        out[name + "_s"] = statistics.median(times)
    return out


def add_sampler_compile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topology", default="v5e:2x4", help="TPU topology name for jax.experimental.topologies")
    p.add_argument("--mesh", type=mesh_flag, default="data=1,fsdp=-1,tensor=1",
                   help="mesh axis sizes over the topology's devices (default: FSDP over all of them)")
    add_rollout_args(p, "bfloat16", 8, 128, 384, 12, 0.6, 150, 0.99)
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--remasking", default="random")
    p.add_argument("--hlo_out", default=None, help="write the compiled HLO text here")


def run_sampler_compile(args) -> dict:
    """Compiles the 8B recorded rollout for a TPU topology without a TPU (libtpu's compiler; the process keeps
    JAX_PLATFORMS=cpu otherwise) and reports the sorts over the vocabulary and the memory analysis."""
    from dllm_rl.parallel import mesh as mesh_lib
    from dllm_rl.sampling import sampler_config
    from dllm_rl.sampling.generate import lower
    from experiments import aot

    mesh = mesh_lib.make_mesh(args.mesh, devices=aot.topology_devices(args.topology))
    config = model_config("8b")
    dtype = jnp.dtype(args.dtype)
    params = aot.abstract_params(config, mesh, dtype)
    prompt = aot.batch_array(mesh, mesh_lib.DEFAULT_RULES, (args.batch, args.prompt_len), jnp.int32)
    key = aot.abstract_key(mesh)
    sampler = sampler_config(steps=args.steps, gen_length=args.gen_length, block_length=args.block_length,
                             temperature=args.temperature, remasking=args.remasking, top_k=args.top_k,
                             top_p=args.top_p, record=True)
    t0 = time.perf_counter()
    compiled = lower(config, sampler, params, prompt, rng=key, compute_dtype=dtype).compile()
    seconds = time.perf_counter() - t0
    hlo = compiled.as_text()
    if args.hlo_out:
        pathlib.Path(args.hlo_out).write_text(hlo)
    mem = compiled.memory_analysis()
    param_bytes = aot.sharded_bytes(params)
    return {"bench": "sampler_compile", "topology": args.topology, "mesh": dict(mesh.shape), "compile_s": seconds,
            "vocab_sorts": aot.vocab_sorts(hlo, config.embedding_size), "temp_bytes_per_chip": mem.temp_size_in_bytes,
            "argument_bytes_per_chip": mem.argument_size_in_bytes, "output_bytes_per_chip": mem.output_size_in_bytes,
            "param_bytes_per_chip": param_bytes}


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


def add_eval_batching_args(p: argparse.ArgumentParser) -> None:
    add_model_size_args(p)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--task", default="gsm8k")
    p.add_argument("--split", default=None, help="default: the task's evaluation split")
    p.add_argument("--examples", type=int, default=64, help="the first N examples of the split")
    p.add_argument("--tokenizer_dir", default="dllm_rl/assets/demo_model",
                   help="tokenizer.json folder (default: the demo's character tokenizer, vocabulary 160, which "
                        "matches --model tiny; GSM8K prompts are then 600-900 tokens)")
    p.add_argument("--ckpt_dir", default=None, help="an Orbax model folder instead of random weights")
    p.add_argument("--gen_length", type=int, default=128)
    p.add_argument("--block_length", type=int, default=32)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--rows_per_device", type=int, default=8)
    p.add_argument("--prompt_bucket", type=int, default=64)
    p.add_argument("--batch_sizes", default="8,3", help="per-batch sizes to compare (the first is timed)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)


def run_eval_batching(args) -> dict:
    """Seconds per example of `rl.evaluate.evaluate` with invariant and per-batch batching (compile excluded:
    each is run once first), the prompt tokens each pads to, and how many completions differ between per-batch
    batch sizes and between the two batchings."""
    from dllm_rl.checkpoint import load_orbax
    from dllm_rl.rl import evaluate as eval_lib
    from dllm_rl.sampling import SamplerConfig
    from dllm_rl.tasks import get_task, render_prompts
    from dllm_rl.tokenizer import Tokenizer

    config, params = load_orbax(args.ckpt_dir, dtype=args.dtype) if args.ckpt_dir else load_model(args)
    tokenizer, task = Tokenizer.from_dir(args.tokenizer_dir), get_task(args.task)
    examples = task.load(args.split or task.default_eval_split)[:args.examples]
    sampler = SamplerConfig(steps=args.steps, gen_length=args.gen_length, block_length=args.block_length)
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    batchings = {"invariant": eval_lib.Batching(rows_per_device=args.rows_per_device, prompt_bucket=args.prompt_bucket),
                 **{f"per_batch_{n}": eval_lib.Batching(mode="per_batch", batch_size=n) for n in sizes}}
    calls = {name: (lambda i, b=b: [g.completion for g in eval_lib.evaluate(config, params, tokenizer, task, examples,
                                                                            sampler, batching=b)])
             for name, b in batchings.items()}
    timed = {k: calls[k] for k in ("invariant", f"per_batch_{sizes[0]}")}
    first, times, results = time_alternating(timed, args.repeats)
    for name in batchings:
        results.setdefault(name, calls[name](0))
    lengths = [len(tokenizer.encode(p)) for p in render_prompts(tokenizer, task, examples)]
    padded = {name: sum(len(members) * width for members, width in eval_lib.calls(lengths, b))
              for name, b in batchings.items()}
    differ = lambda a, b: sum(x != y for x, y in zip(results[a], results[b]))  # noqa: E731
    return {"bench": "eval_batching", "task": args.task, "examples": len(examples), "dtype": args.dtype,
            "prompt_tokens": int(sum(lengths)), "padded_prompt_tokens": padded,
            "seconds_per_example": {k: statistics.median(v) / len(examples) for k, v in times.items()},
            "first_run_seconds": first,
            "differing_completions": {f"per_batch_{sizes[0]}_vs_{n}": differ(f"per_batch_{sizes[0]}", f"per_batch_{n}")
                                      for n in sizes[1:]} | {"invariant_vs_per_batch": differ(
                                          "invariant", f"per_batch_{sizes[0]}")}}


COMMANDS = {"sampler": (add_sampler_args, run_sampler), "sampler_profile": (add_sampler_profile_args, run_sampler_profile),
            "sampler_compile": (add_sampler_compile_args, run_sampler_compile),
            "train_step": (add_train_step_args, run_train_step),
            "eval_batching": (add_eval_batching_args, run_eval_batching)}


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
