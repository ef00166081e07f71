"""Train one or more configs over several seeds, evaluate each trained policy once on the test split, and report
mean ± 95 % interval: the one command behind every demo number in README, BENCHMARKS and the notebooks.

    python -m experiments.sweep --gin experiments/configs/demo.gin --gin experiments/configs/demo_d1.gin \
        --seeds 0,1,2,3,4 --out_dir runs/demo_sweep

With `--methods agrpo,diffu_grpo,wd1` (names of `TrainConfig.algorithm`, i.e. of `rl.config.ALGORITHMS`) one
config is trained once per method instead: the rows are methods, each run `OUT/<method>/seed_<s>`. Each method
runs the config's model, warm start, task, rollouts (prompts per step, sampler) and optimizer; `method_bindings`
selects its algorithm and loss config and sets the settings that mean the same thing in every method to the
config's own: the group size, the loss passes per rollout batch (AGRPO's K timesteps = the masked objectives'
μ iterations, as demo_d1.gin), the model-call fields (remat, compute dtype, attention) and, where a loss config
has them, the rollout's length, steps and temperature. Every other loss setting is the method's own (its
config's defaults: the authors' values, or the config's bindings); `--gin_binding` overrides any of it. Every
method's configuration is built and checked before anything trains.

Per config (named by its file) and seed, `OUT/<config>/seed_<s>` is a normal run folder (`experiments.run`,
`TrainConfig.seed = s`, every checkpoint kept). A finished run is not trained again and an interrupted one resumes,
so re-running the command completes the grid. The runs evaluate on their own `TrainConfig.eval_split` while they
train (the demo: the validation split, for tuning); afterwards `experiments.eval --lora_dir` scores the policy
before RL (the step-0 checkpoint: after any SFT warm start) and the final policy on `--test_split`, all of it,
greedy, once. Writes `OUT/summary.json`, `OUT/summary.md` (per config: test accuracy before and after RL and the
gain, mean ± 95 % t-interval over seeds, and every seed's values) and `OUT/eval_accuracy.png` (the in-run held-out
accuracy over steps, mean and range over seeds). Each run and evaluation is a subprocess: one config's gin and
compiled programs never leak into the next.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np

from dllm_rl import cli, metrics as metrics_lib, paths
from dllm_rl.rl.config import ALGORITHMS
from dllm_rl.rl.objective import ForwardConfig

KEEP_EVERY_CHECKPOINT = "dllm_rl.TrainConfig.keep_checkpoints = 1000000"


def parse_args(argv=None):
    p = cli.make_parser(__doc__)
    p.add_argument("--gin", action="append", required=True, help="a config to sweep (repeatable: one row each)")
    p.add_argument("--gin_binding", action="append", default=[], help="binding applied to every config")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated methods to run the one --gin config with (rows), of {', '.join(ALGORITHMS)}")
    p.add_argument("--seeds", required=True, help="comma-separated TrainConfig.seed values, e.g. 0,1,2,3,4")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--test_split", default="test", help="the split each final policy is scored on once")
    p.add_argument("--test_examples", type=int, default=None,
                   help="score this many test examples, drawn with seed 0, instead of the whole split (smoke runs)")
    p.add_argument("--eval_batch_size", type=int, default=None,
                   help="experiments.eval --batch_size with per_batch batching (default: the config's "
                        "TrainConfig.eval_batch_size); the batching and rows per device are the config's")
    args = p.parse_args(argv)
    if args.methods is not None:
        try:
            args.methods = parse_methods(args.methods)
        except ValueError as e:
            p.error(str(e))
        if len(args.gin) != 1:
            p.error(f"--methods runs one config on every method; got {len(args.gin)} --gin files")
    return args


def config_name(gin_file: str) -> str:
    return os.path.splitext(os.path.basename(gin_file))[0]


def run_settings(gin_file: str, bindings: list[str]) -> dict:
    """What the test evaluation needs from a config: task, prompt style, steps, lengths and the eval batch size
    (after checking the whole config, model folders aside, so a bad row fails before any row trains)."""
    from experiments.run import parse_config

    cfg = parse_config([gin_file], bindings)
    cfg.validate(check_model=False)
    r = cfg.rollout
    return {"task": cfg.train.task, "prompt_style": cfg.train.prompt_style, "num_steps": cfg.train.num_steps,
            "gen_length": r.gen_length, "block_length": r.block_length, "steps": r.steps,
            "eval_batch_size": cfg.train.eval_batch_size, "eval_batching": cfg.train.eval_batching,
            "eval_rows_per_device": cfg.train.eval_rows_per_device}


# Loss-config fields meaning "loss passes per rollout batch" (AGRPO's K timesteps; the masked objectives' μ).
LOSS_PASS_FIELDS = ("mc_samples", "num_iterations")
# Loss-config fields that must equal the rollout's (the field of SamplerConfig each one copies).
ROLLOUT_FIELDS = {"gen_length": "gen_length", "sampling_steps": "steps", "temperature": "temperature"}


def parse_methods(methods: str) -> list[str]:
    """The comma-separated method names, each checked against `rl.config.ALGORITHMS`."""
    names = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in ALGORITHMS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"--methods={methods!r}: {'unknown ' + ', '.join(unknown) if unknown else 'give each once'}; "
                         f"choose from {', '.join(ALGORITHMS)}")
    return names


def method_bindings(method: str, gin_file: str, bindings: list[str]) -> list[str]:
    """The gin bindings that run `method` on `gin_file`'s setup (see the module docstring), to be applied before
    `bindings` (so the user's win)."""
    from experiments.run import parse_config

    base = parse_config([gin_file], bindings)
    loss = base.algorithm_config
    passes = next((getattr(loss, f) for f in LOSS_PASS_FIELDS if hasattr(loss, f)), None)
    field, config_class = ALGORITHMS[method]
    name = f"dllm_rl.{config_class.__name__}"
    own = {f.name for f in dataclasses.fields(config_class)}
    values = {"num_generations": loss.num_generations,
              **{f: passes for f in LOSS_PASS_FIELDS if f in own and passes is not None},
              **{f.name: getattr(loss, f.name) for f in dataclasses.fields(ForwardConfig)},
              **{f: getattr(base.rollout, r) for f, r in ROLLOUT_FIELDS.items() if f in own}}
    return [f"experiment.{field} = @{name}()", f"dllm_rl.TrainConfig.algorithm = {method!r}",
            *(f"{name}.{f} = {v!r}" for f, v in values.items())]


def finished(workdir: str, num_steps: int) -> bool:
    rows = metrics_lib.read_metrics(workdir)
    return bool(rows) and rows[-1]["step"] == num_steps and (paths.absolute(workdir) / "final_model").exists()


def _python(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True)


def train(gin_file: str, bindings: list[str], seed: int, workdir: str, num_steps: int) -> None:
    if finished(workdir, num_steps):
        return
    extra = [*bindings, f"dllm_rl.TrainConfig.seed = {seed}", KEEP_EVERY_CHECKPOINT]
    _python(["experiments.run", "--gin", gin_file, "--workdir", workdir, "--no_progress",
             *[a for b in extra for a in ("--gin_binding", b)]])


def test_accuracy(workdir: str, settings: dict, split: str, step: int | None, batch_size: int,
                  examples: int | None = None) -> float:
    """Greedy accuracy (%) of the run's policy at `step` (None: the latest) on the whole `split` (or `examples` of
    it drawn with seed 0)."""
    out = os.path.join(workdir, f"test_{split}_step{'final' if step is None else step}")
    summary_path = os.path.join(out, "summary.json")
    if not os.path.exists(summary_path):
        length = settings["gen_length"]
        _python(["experiments.eval", "--lora_dir", workdir, "--task", settings["task"], "--split", split,
                 "--lengths", str(length), "--block_length", str(settings["block_length"]),
                 "--steps_per_token", repr(settings["steps"] / length), "--batch_size", str(batch_size),
                 "--batching", settings["eval_batching"], "--rows_per_device", str(settings["eval_rows_per_device"]),
                 "--prompt_style", settings["prompt_style"], "--out_dir", out,
                 *(["--step", str(step)] if step is not None else []),
                 *(["--sample", str(examples)] if examples else [])])
    with open(summary_path, encoding="utf-8") as f:
        return json.load(f)[settings["task"]][str(settings["gen_length"])]["accuracy"]


def interval(values: list[float]) -> dict:
    """Mean, sample standard deviation and the 95 % Student-t interval half-width over seeds."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    sd = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    half = float(stats.t.ppf(0.975, len(x) - 1) * sd / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return {"mean": float(x.mean()), "sd": sd, "ci95": half, "min": float(x.min()), "max": float(x.max()),
            "values": [float(v) for v in x]}


def methods_markdown(summary: dict, split: str) -> str:
    """The --methods table: per method the test accuracy after RL (mean ± 95 % interval and every seed's), the
    warm start's before RL, and the gain."""
    cell = lambda s: f"{s['mean']:.1f} ± {s['ci95']:.1f}"  # noqa: E731
    lines = [f"| method | seeds | {split} accuracy after RL % | per seed | before RL % | gain (points) |",
             "|---|---|---|---|---|---|"]
    for name, r in summary.items():
        per_seed = ", ".join(f"{v:.1f}" for v in r["after"]["values"])
        lines.append(f"| {name} | {len(r['seeds'])} | {cell(r['after'])} | {per_seed} | {cell(r['before'])} "
                     f"| {cell(r['gain'])} |")
    return "\n".join(lines) + "\n\n(mean ± half-width of the 95 % Student-t interval over seeds)\n"


def markdown(summary: dict, split: str) -> str:
    lines = [f"| config | seeds | {split} accuracy before RL % | after RL % | gain (points) | per-seed gain |",
             "|---|---|---|---|---|---|"]
    for name, r in summary.items():
        cell = lambda s: f"{s['mean']:.1f} ± {s['ci95']:.1f}"  # noqa: E731
        lines.append(f"| {name} | {len(r['seeds'])} | {cell(r['before'])} | {cell(r['after'])} | {cell(r['gain'])} "
                     f"| {', '.join(f'{v:+.1f}' for v in r['gain']['values'])} |")
    return "\n".join(lines) + "\n\n(mean ± half-width of the 95 % Student-t interval over seeds)\n"


def plot(curves: dict, out_path: str) -> None:
    """Mean in-run held-out accuracy over steps per config, shaded between the seeds' min and max."""
    from matplotlib.figure import Figure

    from dllm_rl.plots import save_figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, by_seed in curves.items():
        steps = sorted(set.intersection(*(set(c) for c in by_seed)))
        acc = np.array([[100 * c[s] for s in steps] for c in by_seed])
        ax.plot(steps, acc.mean(0), marker="o", label=f"{name} ({len(by_seed)} seeds)")
        ax.fill_between(steps, acc.min(0), acc.max(0), alpha=0.2)
    ax.set_xlabel("RL step")
    ax.set_ylabel("in-run held-out accuracy %")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out_path)


def rows(args) -> list[tuple[str, str, list[str]]]:
    """(row name, gin file, bindings) per row of the table: one per config, or with --methods one per method."""
    if args.methods is None:
        return [(config_name(g), g, args.gin_binding) for g in args.gin]
    gin_file = args.gin[0]
    return [(m, gin_file, [*method_bindings(m, gin_file, args.gin_binding), *args.gin_binding]) for m in args.methods]


def main(argv=None) -> dict:
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    grid = [(name, gin_file, bindings, run_settings(gin_file, bindings)) for name, gin_file, bindings in rows(args)]
    summary, curves = {}, {}
    for name, gin_file, bindings, settings in grid:
        batch = args.eval_batch_size or settings["eval_batch_size"]
        before, after, curves[name] = [], [], []
        for seed in seeds:
            workdir = os.path.join(args.out_dir, name, f"seed_{seed}")
            train(gin_file, bindings, seed, workdir, settings["num_steps"])
            before.append(test_accuracy(workdir, settings, args.test_split, 0, batch, args.test_examples))
            after.append(test_accuracy(workdir, settings, args.test_split, None, batch, args.test_examples))
            curves[name].append({r["step"]: r["eval_accuracy"] for r in metrics_lib.read_metrics(workdir)
                                 if "eval_accuracy" in r})
        summary[name] = {"seeds": seeds, "before": interval(before), "after": interval(after),
                         "gain": interval([a - b for a, b in zip(after, before)]), "settings": settings}
        if args.methods is not None:
            summary[name]["bindings"] = bindings
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    table = (markdown if args.methods is None else methods_markdown)(summary, args.test_split)
    with open(os.path.join(args.out_dir, "summary.md"), "w", encoding="utf-8") as f:
        f.write(table)
    plot(curves, os.path.join(args.out_dir, "eval_accuracy.png"))
    print(table, flush=True)
    return summary


if __name__ == "__main__":
    cli.run_main(main)
