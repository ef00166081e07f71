"""Train with gin: `python -m experiments.run --gin experiments/configs/demo.gin --workdir /tmp/demo`.

gin lives only here (docs/architecture.md): the configs bind the library's frozen dataclasses, `experiment()` builds one
`ExperimentConfig`, gin is finalized, and the operative config is saved to `WORKDIR/operative_config.gin` (every
start's copy is kept in `WORKDIR/operative_configs/`). Re-running with the same workdir resumes from its latest
checkpoint; a resume whose config differs from the run's is refused (one line naming the differences) unless
`--allow_config_change`.

    python -m experiments.run --gin experiments/configs/demo.gin --workdir /tmp/demo --dry_run   # config + memory
    python -m experiments.run --gin experiments/configs/gsm8k_agrpo.gin --workdir W --profile_steps 3:4

Multi-host (one process per host, the same command on every host; JAX SPMD over all hosts' devices): on a Cloud
TPU VM the distributed runtime always starts and finds its peers from the VM's metadata; elsewhere pass
`--coordinator_address HOST:PORT --num_processes N --process_id I`, or `--distributed` where JAX detects the
cluster (Slurm, Open MPI, GKE). Without progress bars (`--no_progress`) every step prints one line.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys

import gin

from dllm_rl import cli, metrics as metrics_lib, paths
from dllm_rl.models.lora import LoRAConfig
from dllm_rl.parallel import multihost
from dllm_rl.parallel.mesh import MeshConfig
from dllm_rl.rl import train_state
from dllm_rl.rl.agrpo import AGRPOConfig
from dllm_rl.rl.diffu_grpo import DiffuGRPOConfig
from dllm_rl.rl.dipo import DiPOConfig
from dllm_rl.rl.dmpo import DMPOConfig
from dllm_rl.rl.espo import ESPOConfig
from dllm_rl.rl.spg import SPGConfig
from dllm_rl.rl.wd1 import WD1Config
from dllm_rl.rl.config import ExperimentConfig, ModelSource, TrainConfig, TrainError
from dllm_rl.rl.tracerl import TraceRLConfig
from dllm_rl.rl.train import Trainer
from dllm_rl.sampling import SamplerConfig

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
OPERATIVE_CONFIG = "operative_config.gin"
OPERATIVE_CONFIGS_DIR = "operative_configs"  # start_<k>.gin: the operative config of the run's k-th start
COMPILATION_CACHE_DIR = "compilation_cache"
for _cls in (TrainConfig, ModelSource, SamplerConfig, AGRPOConfig, DiffuGRPOConfig, WD1Config, DMPOConfig,
             TraceRLConfig, DiPOConfig, ESPOConfig, SPGConfig, LoRAConfig, MeshConfig):
    gin.external_configurable(_cls, module="dllm_rl")


@gin.configurable
def experiment(train=gin.REQUIRED, model=gin.REQUIRED, rollout=gin.REQUIRED, eval_sampler=None, agrpo=None,
               diffu_grpo=None, wd1=None, dmpo=None, tracerl=None, dipo=None, espo=None, spg=None, lora=None,
               mesh=None) -> ExperimentConfig:
    """The run's full configuration (bound in the .gin files)."""
    return ExperimentConfig(train=train, model=model, rollout=rollout, eval_sampler=eval_sampler, agrpo=agrpo,
                            diffu_grpo=diffu_grpo, wd1=wd1, dmpo=dmpo, tracerl=tracerl, dipo=dipo, espo=espo,
                            spg=spg, lora=lora, mesh=mesh or MeshConfig())


class _DropGinProbeErrors(logging.Filter):
    """gin logs "Path not found" for every search path it probes before the one holding an include; noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Path not found")


def parse_config(gin_files, bindings) -> ExperimentConfig:
    """Parses gin files and bindings (a typo fails with gin's own message) and builds the config."""
    probe_filter = _DropGinProbeErrors()
    logging.getLogger().addFilter(probe_filter)
    try:
        with gin.unlock_config():
            gin.clear_config()
            gin.add_config_file_search_path(CONFIGS_DIR)  # `include 'agrpo_llada8b.gin'` from any directory
            gin.parse_config_files_and_bindings(gin_files, bindings, finalize_config=False)
            config = experiment()
            gin.finalize()
    finally:
        logging.getLogger().removeFilter(probe_filter)
    return config


def shipped_configs() -> str:
    """One line per shipped config: its path and the first line of its header comment."""
    lines = []
    for name in sorted(os.listdir(CONFIGS_DIR)):
        if name.endswith(".gin"):
            with open(os.path.join(CONFIGS_DIR, name), encoding="utf-8") as f:
                first = f.readline().lstrip("# ").strip()
            lines.append(f"  experiments/configs/{name:<22} {first}")
    return "shipped configs:\n" + "\n".join(lines)


def parse_args(argv=None):
    parser = cli.make_parser(__doc__ + "\n" + shipped_configs())
    parser.add_argument("--gin", action="append", required=True, help="gin config file (repeatable)")
    parser.add_argument("--gin_binding", action="append", default=[], help="extra binding, e.g. 'TrainConfig.seed=1'")
    parser.add_argument("--workdir", required=True, help="output folder (local or gs://); re-use it to resume")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars: one line per step instead")
    parser.add_argument("--dry_run", action="store_true",
                        help="print the operative config and each program's per-device memory on this host's "
                             "devices (compiled, nothing runs, no weights load), then exit")
    parser.add_argument("--profile_steps", type=profile_steps_flag, default=None, metavar="A:B",
                        help="record a JAX profiler trace of steps A..B into WORKDIR/profile (TensorBoard, Perfetto)")
    parser.add_argument("--allow_config_change", action="store_true",
                        help="resume even though the config differs from the one the run was started with")
    cli.add_compilation_cache_flag(parser, f"default WORKDIR/{COMPILATION_CACHE_DIR}; '' turns it off")
    parser.add_argument("--wandb_project", help="also log metrics to this Weights & Biases project (the wandb "
                                                "extra; WANDB_MODE=offline works without an account)")
    parser.add_argument("--wandb_name", help="W&B run name (default: W&B's)")
    parser.add_argument("--wandb_entity", help="W&B entity (team or user)")
    cli.add_distributed_flags(parser)
    return parser, parser.parse_args(argv)


def profile_steps_flag(text: str) -> tuple[int, int]:
    """'3:5' -> (3, 5): the first and last step of a profiler trace."""
    try:
        first, last = (int(x) for x in text.split(":"))
    except ValueError:
        first = last = 0
    if not 1 <= first <= last:
        raise argparse.ArgumentTypeError(f"{text!r}: give the first and last step as A:B with 1 <= A <= B")
    return first, last


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    cli.start_distributed(args, parser)
    config = parse_config(args.gin, args.gin_binding)
    operative = gin.operative_config_str()
    if args.dry_run:
        return dry_run(config, operative)
    check_config_change(args.workdir, operative, args.allow_config_change)
    cache = args.compilation_cache if args.compilation_cache is not None else os.path.join(
        args.workdir, COMPILATION_CACHE_DIR)
    cli.use_compilation_cache(cache)
    wandb = metrics_lib.WandbOptions(args.wandb_project, args.wandb_name, args.wandb_entity) \
        if args.wandb_project else None
    try:
        trainer = Trainer(config, args.workdir, wandb=wandb)
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if multihost.is_primary():
        record_operative_config(args.workdir, operative)
    trainer.train(progress=not args.no_progress, profile_steps=args.profile_steps)
    if multihost.is_primary():
        print("\n".join(summary_lines(args.workdir)), flush=True)
    return 0


def _bindings(text: str) -> list[str]:
    """The binding lines of an operative config (comments and blank lines dropped)."""
    return [line.rstrip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def config_changes(old: str, new: str) -> list[str]:
    """'-line' / '+line' for each binding line that differs between two operative configs."""
    return [d for d in difflib.unified_diff(_bindings(old), _bindings(new), lineterm="", n=0)
            if d[:1] in "+-" and not d.startswith(("+++", "---"))]


def check_config_change(workdir: str, operative: str, allowed: bool) -> None:
    """A TrainError naming the differences when WORKDIR holds a checkpointed run started with another config."""
    previous = paths.absolute(workdir) / OPERATIVE_CONFIG
    checkpoints = paths.absolute(workdir) / train_state.CHECKPOINT_DIR
    if allowed or not previous.exists() or not checkpoints.exists() or not any(
            p.name.isdigit() for p in checkpoints.iterdir()):
        return
    changes = config_changes(previous.read_text(), operative)
    if changes:
        raise TrainError(f"{previous}: the run in this workdir was started with another config ("
                         f"{'; '.join(changes)}); resume with the same --gin and --gin_binding, use another "
                         "--workdir, or pass --allow_config_change")


def record_operative_config(workdir: str, operative: str) -> None:
    """WORKDIR/operative_config.gin (this start's) and a kept copy per start in WORKDIR/operative_configs/."""
    root = paths.absolute(workdir)
    kept = root / OPERATIVE_CONFIGS_DIR
    kept.mkdir(parents=True, exist_ok=True)
    starts = [p.name for p in kept.iterdir() if p.name.startswith("start_") and p.name.endswith(".gin")]
    paths.replace_bytes(kept / f"start_{len(starts)}.gin", operative.encode())
    paths.replace_bytes(root / OPERATIVE_CONFIG, operative.encode())


def dry_run(config: ExperimentConfig, operative: str) -> int:
    """Prints the operative config and, per program of a training step, its per-device bytes on this host's
    devices (compiled ahead of time from abstract inputs: no weights are read) and whether it fits."""
    from experiments import aot
    from dllm_rl.assets import LLADA_8B_META_DIR
    from dllm_rl.parallel import mesh as mesh_lib

    print(operative, flush=True)
    config.validate(check_model=False)  # the model folder may live elsewhere (e.g. staged on the workers)
    try:
        setup = aot.make_setup(config, aot.model_config_for(config, str(LLADA_8B_META_DIR / "config.json")),
                               mesh_lib.make_mesh(config.mesh))
    except ValueError as e:
        raise TrainError(str(e)) from None
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    hbm = stats.get("bytes_limit")
    where = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    fits = []
    for name in aot.PROGRAMS:
        row, _ = aot.compile_program(setup, name, where, hbm)
        fits.append(row["fits"])
        total = row["per_chip_bytes"] + row["resident_bytes"]
        print(f"{name:8s} {total / aot.GIB:8.3f} GiB per device (program {row['per_chip_bytes'] / aot.GIB:.3f} + "
              f"resident state {row['resident_bytes'] / aot.GIB:.3f}) on {where}: "
              + ("fits" if row["fits"] else "DOES NOT FIT" if row["fits"] is False else "device memory unknown"),
              flush=True)
    return 1 if False in fits else 0


def summary_lines(workdir: str) -> list[str]:
    """The run's closing lines: held-out accuracy and reward before → after (over the whole run, resumes included)
    and where the metrics and plots are."""
    evals = [r for r in metrics_lib.read_metrics(workdir) if "eval_accuracy" in r]
    lines = []
    if evals:
        first, last = evals[0], evals[-1]
        lines.append(f"held-out accuracy {first['eval_accuracy']:.1%} (step {first['step']}) -> "
                     f"{last['eval_accuracy']:.1%} (step {last['step']})")
        lines.append(f"held-out reward {first['eval_reward_mean']:.3f} -> {last['eval_reward_mean']:.3f}")
    lines.append(f"metrics: {os.path.join(workdir, metrics_lib.METRICS_FILE)}")
    lines.append(f"plots: {os.path.join(workdir, 'plots')} (overview.png)")
    return lines


if __name__ == "__main__":
    cli.run_main(main)
