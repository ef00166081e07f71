"""Train with gin: `python -m experiments.run --gin experiments/configs/demo.gin --workdir /tmp/demo`.

gin lives only here (docs/architecture.md): the configs bind the library's frozen dataclasses, `experiment()` builds one
`ExperimentConfig`, gin is finalized, and the operative config is saved to `WORKDIR/operative_config.gin`.
Re-running with the same workdir resumes from its latest checkpoint.

Multi-host (one process per host, the same command on every host; JAX SPMD over all hosts' devices):
`--coordinator_address HOST:PORT --num_processes N --process_id I` are passed to `jax.distributed.initialize`.
With none of them, `jax.distributed.initialize()` is called without arguments (auto-detection) on a multi-host
Cloud TPU VM (`TPU_WORKER_HOSTNAMES` lists several workers) or with `--distributed` (Slurm, Open MPI, GKE); else
the run is single-process. gloo CPU collectives are turned on, so fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`) of several processes form one mesh.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import gin

from dllm_rl import metrics as metrics_lib, paths
from dllm_rl.models.lora import LoRAConfig
from dllm_rl.parallel import multihost
from dllm_rl.parallel.mesh import MeshConfig
from dllm_rl.rl.agrpo import AGRPOConfig
from dllm_rl.rl.diffu_grpo import DiffuGRPOConfig
from dllm_rl.rl.config import ExperimentConfig, ModelSource, TrainConfig, TrainError
from dllm_rl.rl.train import Trainer
from dllm_rl.sampling import SamplerConfig

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
for _cls in (TrainConfig, ModelSource, SamplerConfig, AGRPOConfig, DiffuGRPOConfig, LoRAConfig, MeshConfig):
    gin.external_configurable(_cls, module="dllm_rl")


@gin.configurable
def experiment(train=gin.REQUIRED, model=gin.REQUIRED, rollout=gin.REQUIRED, eval_sampler=None, agrpo=None,
               diffu_grpo=None, lora=None, mesh=None) -> ExperimentConfig:
    """The run's full configuration (bound in the .gin files)."""
    return ExperimentConfig(train=train, model=model, rollout=rollout, eval_sampler=eval_sampler, agrpo=agrpo,
                            diffu_grpo=diffu_grpo, lora=lora, mesh=mesh or MeshConfig())


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gin", action="append", required=True, help="gin config file (repeatable)")
    parser.add_argument("--gin_binding", action="append", default=[], help="extra binding, e.g. 'TrainConfig.seed=1'")
    parser.add_argument("--workdir", required=True, help="output folder; re-use it to resume")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("--coordinator_address", help="multi-host: HOST:PORT of process 0's coordinator")
    parser.add_argument("--num_processes", type=int, help="multi-host: number of processes (one per host)")
    parser.add_argument("--process_id", type=int, help="multi-host: this process's index in [0, num_processes)")
    parser.add_argument("--distributed", action="store_true",
                        help="multi-host with auto-detected arguments (implied on a multi-host TPU VM)")
    args = parser.parse_args(argv)
    explicit = (args.coordinator_address, args.num_processes, args.process_id)
    if any(v is not None for v in explicit) and any(v is None for v in explicit):
        parser.error("--coordinator_address, --num_processes and --process_id go together")
    if multihost.wants_distributed(args.coordinator_address, args.distributed):
        multihost.initialize(*explicit)
    config = parse_config(args.gin, args.gin_binding)
    try:
        trainer = Trainer(config, args.workdir)
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if multihost.is_primary():
        (paths.absolute(args.workdir) / "operative_config.gin").write_text(gin.operative_config_str())
    trainer.train(progress=not args.no_progress)
    if multihost.is_primary():
        print("\n".join(summary_lines(args.workdir)))
    return 0


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
    from experiments.cli import run_main

    run_main(main)
