"""experiments.sweep: the grid of configs × seeds, trained and scored once on the test split, summarised as mean ±
95 % interval; a re-run finishes the grid without training a finished run again."""
import json
import math
import os
import shlex
import subprocess
import sys

import pytest

from experiments import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_interval_is_the_student_t_interval_of_the_mean():
    result = sweep.interval([1.0, 2.0, 3.0])
    assert result["mean"] == 2.0 and result["sd"] == 1.0 and (result["min"], result["max"]) == (1.0, 3.0)
    assert result["ci95"] == pytest.approx(4.302652729911275 / math.sqrt(3))  # t(0.975, df=2) · sd / √n
    assert math.isnan(sweep.interval([5.0])["ci95"])


def test_markdown_table_lists_every_config_with_its_per_seed_gains():
    row = {"seeds": [0, 1], "before": sweep.interval([0.0, 1.0]), "after": sweep.interval([60.0, 71.0]),
           "gain": sweep.interval([60.0, 70.0])}
    table = sweep.markdown({"demo": row}, "test")
    assert "| demo | 2 | 0.5 ± 6.4 | 65.5 ± 69.9 | 65.0 ± 63.5 | +60.0, +70.0 |" in table


@pytest.mark.slow
def test_the_documented_sweep_runs_and_resumes_without_retraining(tmp_path):
    """The --help example, shrunk (2 seeds, 1 RL step, 16 test examples), twice: the second call trains nothing."""
    lines = [line.strip() for line in sweep.__doc__.splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.startswith("python -m experiments.sweep"))
    command = lines[start]  # the docstring's backslash-newline already joined the example's two lines
    while command.endswith("\\"):  # (a raw docstring would keep them apart)
        start += 1
        command = command[:-1] + " " + lines[start]
    args = shlex.split(command)[3:]
    tiny = ["--seeds", "0,1", "--out_dir", str(tmp_path), "--test_examples", "16"] + [
        a for b in ("dllm_rl.TrainConfig.num_steps = 1", "dllm_rl.TrainConfig.sft_steps = 2",
                    "dllm_rl.TrainConfig.eval_every = 1", "dllm_rl.TrainConfig.eval_examples = 8",
                    "dllm_rl.TrainConfig.eval_batch_size = 8", "dllm_rl.TrainConfig.prompts_per_micro_batch = 2",
                    "dllm_rl.AGRPOConfig.num_generations = 4", "dllm_rl.DiffuGRPOConfig.num_generations = 4",
                    "dllm_rl.AGRPOConfig.mc_samples = 2") for a in ("--gin_binding", b)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for _ in range(2):
        subprocess.run([sys.executable, "-m", "experiments.sweep", *args, *tiny], check=True, cwd=REPO, env=env,
                       timeout=1200)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"demo", "demo_d1"}
    for name, row in summary.items():
        assert row["seeds"] == [0, 1] and len(row["gain"]["values"]) == 2
        assert row["gain"]["values"] == pytest.approx([a - b for a, b in zip(row["after"]["values"],
                                                                             row["before"]["values"])])
        for seed in (0, 1):
            starts = list((tmp_path / name / f"seed_{seed}" / "operative_configs").iterdir())
            assert len(starts) == 1, starts  # the second sweep found the run finished and did not start it
    assert (tmp_path / "eval_accuracy.png").stat().st_size > 0 and "demo_d1" in (tmp_path / "summary.md").read_text()
