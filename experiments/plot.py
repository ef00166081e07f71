"""Plot a training run's metrics into PNGs.

    python -m experiments.plot --workdir /tmp/dllm_demo

Reads WORKDIR/metrics.jsonl and writes WORKDIR/plots/{reward,eval,kl,clip_fraction,logp_mismatch,
completion_length,throughput}.png (each only when the run logged its keys) and overview.png with all of them
(`dllm_rl.plots.plot_run`).
"""
from __future__ import annotations

import os

from dllm_rl.cli import make_parser, run_main


def main(argv=None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--workdir", required=True, help="a run's workdir (holds metrics.jsonl)")
    parser.add_argument("--out_dir", default=None, help="where the PNGs go (default: WORKDIR/plots)")
    args = parser.parse_args(argv)
    from dllm_rl.metrics import METRICS_FILE
    from dllm_rl.plots import plot_run

    metrics = os.path.join(args.workdir, METRICS_FILE)
    if not os.path.exists(metrics):
        raise FileNotFoundError(2, "No such file or directory (pass the workdir of a training run)", metrics)
    paths = plot_run(args.workdir, args.out_dir)
    if not paths:
        raise FileNotFoundError(2, "No plottable metrics in this file yet (has the run logged a step?)", metrics)
    print("\n".join(paths))
    return 0


if __name__ == "__main__":
    run_main(main)
