"""Evaluate a model or a trained run on a task at several generation lengths (the d1 / AGRPO protocol).

    python -m experiments.eval --task gsm8k --lengths 128,256,512 --lora_dir runs/gsm8k_agrpo \
        --ckpt_dir /path/llada8b --out_dir runs/gsm8k_agrpo/eval          # the policy a run trained
    python -m experiments.eval --task gsm8k --lengths 128,256,512 --ckpt_dir /path/llada8b --out_dir runs/base_eval

What is evaluated: `--lora_dir W` is the policy a training run trained, exactly as its trainer sampled it (the base
model plus the run's LoRA adapters, unmerged; or the fully fine-tuned params; after an SFT warm start on the
warm-started base saved with them), from W's latest checkpoint (`--step` for another) or from a PEFT folder. The
base comes from --ckpt_dir / --hf_dir, or, when neither is given, from the model source in W/operative_config.gin
(in the run's dtype). Without --lora_dir, the model folder itself is evaluated (`W/final_model` is the bf16-merged
copy, which rounds small LoRA updates away: prefer --lora_dir W).

Protocol (AGRPO `eval.yaml` / d1 `eval.py`): greedy decoding (temperature 0), low-confidence remasking,
block length 32, steps = length × 0.5 (e.g. 128 steps for 256 tokens), one sample per problem, prompts
left-padded with an attention mask. Every knob is a flag. Generation, decoding and grading are
`dllm_rl.rl.evaluate.evaluate`, the function the trainer's periodic eval uses too. Completions are decoded with
special tokens kept (as AGRPO's eval does) and graded with `task.score`:

- default metrics reproduce AGRPO's eval, quirks included: GSM8K keeps only the first integer of the
  extracted answer ("1,200" → 1); Countdown grades the last "lhs = rhs" line anywhere in the answer;
  Sudoku reports cell accuracy (partial credit), not puzzles solved;
- `*_strict` metrics, reported next to them: GSM8K graded on the whole answer with math-verify, Countdown
  only inside `<answer>`, Sudoku 1 only for a complete valid grid (MATH has no quirk: strict = default).

Batching (`dllm_rl.rl.evaluate`): by default every example's completion depends on that example alone, not on the
batch size, the other examples or the number of data/FSDP devices: each prompt is left-padded to its length bucket
(`--prompt_bucket`) and every generate call has `--rows_per_device` rows per device (greedy decoding; tensor
parallelism excluded). `--batching per_batch` is the official scripts' way (batches of `--batch_size` padded to
their longest prompt): use it to reproduce their numbers. summary.json records which one a number used.

Devices: the model is laid out over every device of the job (`--mesh`, default data=1,fsdp=-1: weights split over
all devices, each call's rows split over them too). Several hosts: run the same command on every host (on a Cloud
TPU VM the distributed runtime starts by itself; elsewhere see the multi-host flags); every process samples its
share of each call and process 0 writes.

Writes, under --out_dir (local or gs://): `{task}_{split}_len{L}.jsonl` (one line per example: index, prompt,
completion, reference, extracted, correct, extracted_strict, correct_strict), `summary.json` (accuracy in % per
task and length) and `summary.md` (the same as a table). `--trajectories N` also writes, per task and length, the
denoising trajectories of the first N examples (`{task}_{split}_len{L}_trajectory{i}.png`, drawn by
`dllm_rl.plots.trajectory_figure`; those examples are generated once more, in a batch of their own).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

from dllm_rl import cli, paths
from dllm_rl.sampling import SamplerInputError
from dllm_rl.tasks import get_task, list_tasks, warm_up_math_verify

DEFAULT_MESH = {"data": 1, "fsdp": -1, "tensor": 1}
DEFAULT_MIN_BATCH = 8


def parse_args(argv=None):
    p = cli.make_parser(__doc__)
    p.add_argument("--task", required=True, help=f"comma-separated task names: {','.join(list_tasks())}")
    p.add_argument("--split", default=None, help="split to evaluate (default: each task's test split)")
    p.add_argument("--lengths", default="128,256,512", help="comma-separated generation lengths")
    p.add_argument("--block_length", type=int, default=32)
    p.add_argument("--steps_per_token", type=float, default=0.5, help="steps = length × this (0.5: d1/AGRPO)")
    p.add_argument("--batching", choices=("invariant", "per_batch"), default="invariant",
                   help="invariant (default): each prompt padded to its length bucket, --rows_per_device rows per "
                        "device per call, so every example's result depends on that example alone (not on the batch "
                        "size, the other examples or the device count); per_batch: the official scripts' batches of "
                        "--batch_size padded to their longest prompt (to reproduce their numbers)")
    p.add_argument("--rows_per_device", type=int, default=8, help="invariant batching: rows per device per call")
    p.add_argument("--prompt_bucket", type=int, default=64,
                   help="invariant batching: prompts are left-padded to a multiple of this many tokens")
    p.add_argument("--batch_size", type=int, default=None,
                   help=f"per_batch batching: examples per call (default: the smallest multiple of the batch "
                        f"devices ≥ {DEFAULT_MIN_BATCH})")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples")
    which.add_argument("--sample", type=int, default=None,
                       help="evaluate N examples drawn with --sample_seed (the trainer's in-run evaluation draws "
                            "TrainConfig.eval_examples with TrainConfig.eval_sample_seed the same way)")
    p.add_argument("--sample_seed", type=int, default=0)
    p.add_argument("--prompt_style", choices=("agrpo", "d1"), default="agrpo")
    p.add_argument("--max_prompt_tokens", type=int, default=None,
                   help="keep only the last N prompt tokens (for small test models; never for reported numbers)")
    p.add_argument("--hf_dir", default=None, help="HF LLaDA folder (config.json + safetensors)")
    p.add_argument("--ckpt_dir", default=None, help="Orbax model folder written by dllm_rl.convert")
    p.add_argument("--lora_dir", default=None,
                   help="a training run's workdir W (or W/checkpoints, a step folder, or a PEFT folder): evaluate "
                        "the policy it trained, unmerged, on the base model")
    p.add_argument("--step", type=int, default=None, help="with --lora_dir W: that checkpoint (default: the latest)")
    p.add_argument("--tokenizer_dir", default=None, help="tokenizer.json folder (default: the model folder)")
    p.add_argument("--dtype", default=None,
                   help="parameter dtype: float32, bfloat16 (default: the run's with --lora_dir W, bfloat16 for "
                        "--hf_dir, as saved for --ckpt_dir)")
    p.add_argument("--mesh", type=cli.mesh_flag, default=None,
                   help="lay the model and batches out over the job's devices (default data=1,fsdp=-1: weights "
                        "split over every device, as the 8B needs on 16 GiB TPU chips; data=-1 replicates them)")
    p.add_argument("--trajectories", type=int, default=0,
                   help="also draw the denoising trajectories of the first N examples as PNGs in --out_dir")
    p.add_argument("--out_dir", required=True, help="results folder (local or gs://)")
    cli.add_compilation_cache_flag(p, "default: none")
    cli.add_distributed_flags(p)
    args = p.parse_args(argv)
    if args.lora_dir is None and (args.hf_dir is None) == (args.ckpt_dir is None):
        p.error("give exactly one of --hf_dir and --ckpt_dir (or --lora_dir W)")
    if args.hf_dir is not None and args.ckpt_dir is not None:
        p.error("give at most one of --hf_dir and --ckpt_dir")
    return p, args


@dataclasses.dataclass(frozen=True)
class Source:
    """Where the base model comes from: one of hf_dir / ckpt_dir / init_config, its dtype and tokenizer folder."""

    hf_dir: str | None = None
    ckpt_dir: str | None = None
    init_config: str | None = None
    dtype: str | None = None
    tokenizer_dir: str | None = None


def run_model_source(run_dir: str):
    """The ModelSource of a training run, from W/operative_config.gin (None when the folder has none)."""
    config_path = paths.absolute(run_dir) / "operative_config.gin"
    if not config_path.exists():
        return None
    from experiments.run import parse_config

    return parse_config([], [config_path.read_text()]).model


def model_source(args) -> Source:
    """The base model of the evaluation: --hf_dir / --ckpt_dir, else the model source of the run in --lora_dir."""
    if args.hf_dir or args.ckpt_dir:
        return Source(hf_dir=args.hf_dir, ckpt_dir=args.ckpt_dir,
                      dtype=args.dtype or ("bfloat16" if args.hf_dir else None), tokenizer_dir=args.tokenizer_dir)
    run = run_model_source(args.lora_dir)
    if run is None:
        raise SamplerInputError(f"--lora_dir {args.lora_dir}: no operative_config.gin to take the base model from; "
                                "pass the base model the run trained on with --ckpt_dir or --hf_dir")
    field = run._given()[0]
    path = run.path(field)
    if not paths.absolute(path).exists():
        raise SamplerInputError(f"--lora_dir {args.lora_dir}: the run's base model {field}={path!r} is not here; "
                                "pass it with --ckpt_dir or --hf_dir")
    return Source(**{field: path}, dtype=args.dtype or run.dtype,
                  tokenizer_dir=args.tokenizer_dir or run.tokenizer_path)


def make_mesh(args):
    """The --mesh (default DEFAULT_MESH) over the job's devices and the evaluation's `rl.evaluate.Batching`, checked
    against it (a per-batch --batch_size must split over the batch devices)."""
    from dllm_rl.parallel import mesh as mesh_lib
    from dllm_rl.rl.evaluate import Batching

    try:
        mesh = mesh_lib.make_mesh(args.mesh or DEFAULT_MESH)
        ways = mesh_lib.batch_ways(mesh)
        batch_size = args.batch_size or -(-DEFAULT_MIN_BATCH // ways) * ways
        if args.batching == "per_batch":
            mesh_lib.check_divisible((batch_size,), mesh_lib.batch_sharding(mesh, 1), "--batch_size")
        batching = Batching(mode=args.batching, rows_per_device=args.rows_per_device,
                            prompt_bucket=args.prompt_bucket, batch_size=batch_size)
    except ValueError as e:
        raise SamplerInputError(f"--mesh / batching: {e}") from None
    return mesh, batching


def load_policy(args, source: Source, mesh):
    """(config, sampling params): the base model on `mesh` (default sharding rules), with --lora_dir's policy."""
    from dllm_rl.checkpoint import load_model
    from dllm_rl.parallel import mesh as mesh_lib

    config, params = load_model(hf_dir=source.hf_dir, ckpt_dir=source.ckpt_dir, init_config=source.init_config,
                                dtype=source.dtype, shardings_fn=lambda config: mesh_lib.param_shardings(mesh, config))
    if args.lora_dir:
        from dllm_rl.rl.policy import load_run_policy

        params, _ = load_run_policy(args.lora_dir, config, params, mesh, step=args.step)
    return config, params


def steps_for(length: int, steps_per_token: float, block_length: int) -> int:
    """steps = length × steps_per_token, checked against the block structure the sampler needs."""
    steps = int(round(length * steps_per_token))
    blocks = length // block_length
    if length % block_length or steps <= 0 or steps % blocks:
        raise SamplerInputError(f"length {length}: needs length % block_length == 0 and steps ({steps}) divisible "
                                f"by the {blocks} blocks; change --lengths, --block_length or --steps_per_token")
    return steps


def write_trajectories(config, params, tokenizer, task, examples, sampler, args, stem, mesh) -> None:
    """Trajectory PNGs `{stem}_trajectory{i}.png` of `examples`, generated in one batch (padded to whole rows per
    device) with the eval's sampler and prompt rendering; process 0 draws and writes them."""
    from dllm_rl.parallel import multihost
    from dllm_rl.plots import save_figure, trajectory_figure
    from dllm_rl.sampling import generate
    from dllm_rl.tasks import render_prompts

    prompts = render_prompts(tokenizer, task, examples, style=args.prompt_style)
    ids_NxP, mask_NxP = tokenizer.batch_encode(prompts, keep_last=args.max_prompt_tokens)
    from dllm_rl.parallel import mesh as mesh_lib

    ways = mesh_lib.batch_ways(mesh)
    rows = -(-len(examples) // ways) * ways  # whole rows per device
    pad = [min(i, len(examples) - 1) for i in range(rows)]
    rollout = generate(config, params, ids_NxP[pad], sampler, attention_mask=mask_NxP[pad], mesh=mesh)
    gathered = Trajectories(multihost.all_rows(rollout.tokens), multihost.all_rows(rollout.unmask_step))
    if multihost.is_primary():
        for i in range(len(examples)):
            save_figure(trajectory_figure(gathered, tokenizer, i), f"{stem}_trajectory{i}.png")


@dataclasses.dataclass(frozen=True)
class Trajectories:
    """What `trajectory_figure` reads of a rollout, as host arrays with every row."""

    tokens: object
    unmask_step: object


def examples_of(task, split: str, args) -> tuple[list[int], list[dict]]:
    """(indices in the split, examples): all, the first --limit, or --sample drawn with --sample_seed."""
    from dllm_rl.rl.evaluate import select

    examples = task.load(split)
    if args.limit is not None:
        indices = list(range(min(args.limit, len(examples))))
    else:
        indices = select(len(examples), args.sample, args.sample_seed)
    return indices, [examples[i] for i in indices]


def evaluate_task(task_name: str, args, config, params, tokenizer, out_dir: str, mesh, batching) -> dict:
    from dllm_rl.parallel import multihost
    from dllm_rl.rl.evaluate import evaluate, records, write_records
    from dllm_rl.sampling import SamplerConfig

    task = get_task(task_name)
    split = args.split or task.default_eval_split
    indices, examples = examples_of(task, split, args)
    results = {}
    for length in [int(x) for x in args.lengths.split(",")]:
        steps = steps_for(length, args.steps_per_token, args.block_length)
        sampler = SamplerConfig(steps=steps, gen_length=length, block_length=args.block_length, temperature=0.0,
                                remasking="low_confidence")
        started = time.perf_counter()
        graded = evaluate(config, params, tokenizer, task, examples, sampler, batching=batching,
                          prompt_style=args.prompt_style, keep_last=args.max_prompt_tokens, strict=True, mesh=mesh)
        seconds = time.perf_counter() - started
        stem = os.path.join(out_dir, f"{task_name}_{split}_len{length}")
        if multihost.is_primary():
            write_records(f"{stem}.jsonl", records(task, examples, indices, graded))
        if args.trajectories:
            write_trajectories(config, params, tokenizer, task, examples[:args.trajectories], sampler, args, stem,
                               mesh)
        n = len(examples)
        results[str(length)] = {"split": split, "n": n, "steps": steps, "block_length": args.block_length,
                                "batching": dataclasses.asdict(batching),
                                "accuracy": 100 * sum(g.score.correct for g in graded) / n,
                                "accuracy_strict": 100 * sum(g.strict.correct for g in graded) / n,
                                "generate_seconds": round(seconds, 3)}
        if multihost.is_primary():
            print(f"{task_name}/{split} length {length}: {results[str(length)]['accuracy']:.2f}% "
                  f"(strict {results[str(length)]['accuracy_strict']:.2f}%), {seconds:.1f}s", flush=True)
    return results


def markdown_table(summary: dict) -> str:
    lines = ["| task | split | length | steps | n | accuracy % | strict % |", "|---|---|---|---|---|---|---|"]
    for task_name, by_length in summary.items():
        for length, r in by_length.items():
            lines.append(f"| {task_name} | {r['split']} | {length} | {r['steps']} | {r['n']} | "
                         f"{r['accuracy']:.2f} | {r['accuracy_strict']:.2f} |")
    return "\n".join(lines) + "\n"


def check_folders(args) -> None:
    """A missing model, run or tokenizer folder is named before anything is loaded (local or gs://)."""
    import errno

    for flag in ("hf_dir", "ckpt_dir", "lora_dir", "tokenizer_dir"):
        path = getattr(args, flag)
        if path is not None and not paths.absolute(path).is_dir():
            raise FileNotFoundError(errno.ENOENT, f"no such folder; check --{flag}", path)


def main(argv=None) -> dict:
    parser, args = parse_args(argv)
    cli.start_distributed(args, parser)
    cli.use_compilation_cache(args.compilation_cache)
    check_folders(args)
    task_names = args.task.split(",")
    for name in task_names:
        get_task(name)  # fail fast on a typo or a bad length, before loading a model
    for length in args.lengths.split(","):
        steps_for(int(length), args.steps_per_token, args.block_length)
    source = model_source(args)
    mesh, batching = make_mesh(args)
    from dllm_rl.parallel import multihost
    from dllm_rl.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(source.tokenizer_dir or source.hf_dir or source.ckpt_dir)
    config, params = load_policy(args, source, mesh)
    warm_up_math_verify()
    out_dir = os.fspath(paths.absolute(args.out_dir))
    summary = {name: evaluate_task(name, args, config, params, tokenizer, out_dir, mesh, batching)
               for name in task_names}
    if multihost.is_primary():
        paths.replace_bytes(paths.absolute(out_dir) / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        paths.replace_bytes(paths.absolute(out_dir) / "summary.md", markdown_table(summary).encode())
    return summary


if __name__ == "__main__":
    cli.run_main(main)
