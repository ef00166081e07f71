"""Evaluate a LLaDA checkpoint on a task at several generation lengths (the d1 / AGRPO protocol).

    python -m experiments.eval --task gsm8k --lengths 128,256,512 --hf_dir /path/LLaDA-8B-Instruct --out_dir runs/eval

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

Writes, under --out_dir: `{task}_{split}_len{L}.jsonl` (one line per example: index, prompt, completion,
reference, extracted, correct, extracted_strict, correct_strict), `summary.json` (accuracy in % per task
and length) and `summary.md` (the same as a table). `--trajectories N` also writes, per task and length, the
denoising trajectories of the first N examples (`{task}_{split}_len{L}_trajectory{i}.png`, drawn by
`dllm_rl.plots.trajectory_figure`; those examples are generated once more, in a batch of their own).
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import pathlib
import time

from dllm_rl.sampling import SamplerInputError
from dllm_rl.tasks import get_task, list_tasks, warm_up_math_verify
from experiments.cli import make_parser, mesh_flag, run_main


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--task", required=True, help=f"comma-separated task names: {','.join(list_tasks())}")
    p.add_argument("--split", default=None, help="split to evaluate (default: each task's test split)")
    p.add_argument("--lengths", default="128,256,512", help="comma-separated generation lengths")
    p.add_argument("--block_length", type=int, default=32)
    p.add_argument("--steps_per_token", type=float, default=0.5, help="steps = length × this (0.5: d1/AGRPO)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples")
    p.add_argument("--prompt_style", choices=("agrpo", "d1"), default="agrpo")
    p.add_argument("--max_prompt_tokens", type=int, default=None,
                   help="keep only the last N prompt tokens (for small test models; never for reported numbers)")
    p.add_argument("--hf_dir", default=None, help="HF LLaDA folder (config.json + safetensors)")
    p.add_argument("--ckpt_dir", default=None, help="Orbax checkpoint written by dllm_rl.convert")
    p.add_argument("--tokenizer_dir", default=None, help="tokenizer.json folder (default: the model folder)")
    p.add_argument("--dtype", default="bfloat16",
                   help="parameter dtype for --hf_dir (float32, bfloat16); --ckpt_dir loads as saved")
    p.add_argument("--mesh", type=mesh_flag, default=None,
                   help="lay the model and batches out over this host's devices: data=1,fsdp=-1 shards the weights "
                        "(the 8B on 16 GiB TPU chips), data=-1 replicates them and splits each batch; default: "
                        "one device")
    p.add_argument("--trajectories", type=int, default=0,
                   help="also draw the denoising trajectories of the first N examples as PNGs in --out_dir")
    p.add_argument("--out_dir", required=True)
    args = p.parse_args(argv)
    if (args.hf_dir is None) == (args.ckpt_dir is None):
        p.error("give exactly one of --hf_dir and --ckpt_dir")
    return args


def make_mesh(args):
    """The --mesh over this host's devices (None without the flag), checked against --batch_size."""
    if args.mesh is None:
        return None
    from dllm_rl.parallel import mesh as mesh_lib

    try:
        mesh = mesh_lib.make_mesh(args.mesh)
        mesh_lib.check_divisible((args.batch_size,), mesh_lib.batch_sharding(mesh, 1), "--batch_size")
    except ValueError as e:
        raise SamplerInputError(f"--mesh: {e}") from None
    return mesh


def load_model(args, mesh=None):
    """(config, params): --hf_dir in --dtype, or --ckpt_dir in the dtype it was saved in; on `mesh`, laid out by
    the default sharding rules (weights over 'fsdp' and 'tensor')."""
    from dllm_rl.checkpoint import load_model as load
    from dllm_rl.parallel import mesh as mesh_lib

    shardings_fn = None if mesh is None else (lambda config: mesh_lib.param_shardings(mesh))
    return load(hf_dir=args.hf_dir, ckpt_dir=args.ckpt_dir, dtype=args.dtype if args.hf_dir else None,
                shardings_fn=shardings_fn)


def steps_for(length: int, steps_per_token: float, block_length: int) -> int:
    """steps = length × steps_per_token, checked against the block structure the sampler needs."""
    steps = int(round(length * steps_per_token))
    blocks = length // block_length
    if length % block_length or steps <= 0 or steps % blocks:
        raise SamplerInputError(f"length {length}: needs length % block_length == 0 and steps ({steps}) divisible "
                                f"by the {blocks} blocks; change --lengths, --block_length or --steps_per_token")
    return steps


def write_trajectories(config, params, tokenizer, task, examples, sampler, args, stem: str, mesh=None) -> list[str]:
    """Trajectory PNGs `{stem}_trajectory{i}.png` of `examples`, generated in one batch with the eval's
    sampler and prompt rendering."""
    from dllm_rl.plots import save_figure, trajectory_figure
    from dllm_rl.sampling import generate
    from dllm_rl.tasks import render_prompts

    prompts = render_prompts(tokenizer, task, examples, style=args.prompt_style)
    ids_NxP, mask_NxP = tokenizer.batch_encode(prompts, keep_last=args.max_prompt_tokens)
    rollout = generate(config, params, ids_NxP, attention_mask=mask_NxP, mesh=mesh, **dataclasses.asdict(sampler))
    return [save_figure(trajectory_figure(rollout, tokenizer, i), f"{stem}_trajectory{i}.png")
            for i in range(len(examples))]


def evaluate_task(task_name: str, args, config, params, tokenizer, out_dir: pathlib.Path, mesh=None) -> dict:
    from dllm_rl.rl.evaluate import evaluate
    from dllm_rl.sampling import SamplerConfig

    task = get_task(task_name)
    split = args.split or task.default_eval_split
    examples = task.load(split)[:args.limit]
    results = {}
    for length in [int(x) for x in args.lengths.split(",")]:
        steps = steps_for(length, args.steps_per_token, args.block_length)
        sampler = SamplerConfig(steps=steps, gen_length=length, block_length=args.block_length, temperature=0.0,
                                remasking="low_confidence")
        started = time.perf_counter()
        graded = evaluate(config, params, tokenizer, task, examples, sampler, batch_size=args.batch_size,
                          prompt_style=args.prompt_style, keep_last=args.max_prompt_tokens, strict=True, mesh=mesh)
        seconds = time.perf_counter() - started
        correct = correct_strict = 0.0
        with open(out_dir / f"{task_name}_{split}_len{length}.jsonl", "w", encoding="utf-8") as f:
            for i, (example, g) in enumerate(zip(examples, graded)):
                correct += g.score.correct
                correct_strict += g.strict.correct
                f.write(json.dumps({"index": i, "prompt": g.prompt, "completion": g.completion,
                                    "reference": task.reference_answer(example), "extracted": g.score.extracted,
                                    "correct": g.score.correct, "extracted_strict": g.strict.extracted,
                                    "correct_strict": g.strict.correct}, ensure_ascii=False) + "\n")
        if args.trajectories:
            write_trajectories(config, params, tokenizer, task, examples[:args.trajectories], sampler, args,
                               str(out_dir / f"{task_name}_{split}_len{length}"), mesh)
        results[str(length)] = {"split": split, "n": len(examples), "steps": steps, "block_length": args.block_length,
                                "accuracy": 100 * correct / len(examples),
                                "accuracy_strict": 100 * correct_strict / len(examples),
                                "generate_seconds": round(seconds, 3)}
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
    """A missing model or tokenizer folder is named before anything is loaded."""
    for flag in ("hf_dir", "ckpt_dir", "tokenizer_dir"):
        path = getattr(args, flag)
        if path is not None and not os.path.isdir(path):
            raise FileNotFoundError(errno.ENOENT, f"no such folder; check --{flag}", path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_folders(args)
    task_names = args.task.split(",")
    for name in task_names:
        get_task(name)  # fail fast on a typo or a bad length, before loading a model
    for length in args.lengths.split(","):
        steps_for(int(length), args.steps_per_token, args.block_length)
    mesh = make_mesh(args)
    from dllm_rl.tokenizer import Tokenizer
    tokenizer = Tokenizer.from_dir(args.tokenizer_dir or args.hf_dir or args.ckpt_dir)
    config, params = load_model(args, mesh)
    warm_up_math_verify()
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {name: evaluate_task(name, args, config, params, tokenizer, out_dir, mesh) for name in task_names}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out_dir / "summary.md").write_text(markdown_table(summary), encoding="utf-8")
    return summary


if __name__ == "__main__":
    run_main(main)
