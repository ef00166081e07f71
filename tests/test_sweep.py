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


DEMO = os.path.join(REPO, "experiments", "configs", "demo.gin")


def test_a_method_gets_the_configs_group_size_and_loss_passes_and_otherwise_its_own_settings():
    """diffu_grpo selected on demo.gin (AGRPO, G = 8, K = 4) is exactly the shipped demo_d1.gin (G = 8, μ = 4)."""
    from experiments.run import parse_config

    shipped = parse_config([os.path.join(REPO, "experiments", "configs", "demo_d1.gin")], [])
    bindings = sweep.method_bindings("diffu_grpo", DEMO, [])
    selected = parse_config([DEMO], bindings)
    assert selected.train == shipped.train and selected.rollout == shipped.rollout
    assert selected.algorithm_config == shipped.algorithm_config
    assert (selected.num_generations, selected.algorithm_config.num_iterations) == (8, 4)
    user = "dllm_rl.DiffuGRPOConfig.num_iterations = 2"  # a --gin_binding wins over the method's settings
    overridden = parse_config([DEMO], [*sweep.method_bindings("diffu_grpo", DEMO, [user]), user])
    assert overridden.diffu_grpo.num_iterations == 2
    shared = "dllm_rl.AGRPOConfig.num_generations = 4"  # the config's own group size reaches every method
    assert parse_config([DEMO], sweep.method_bindings("wd1", DEMO, [shared])).num_generations == 4


@pytest.mark.parametrize("argv, message", [
    (["--methods", "agrpo,ppo"], f"unknown ppo; choose from {', '.join(sweep.ALGORITHMS)}"),
    (["--methods", "agrpo", "--gin", DEMO], "--methods runs one config"),
])
def test_a_bad_methods_flag_is_one_error_before_anything_runs(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["--gin", DEMO, "--seeds", "0", "--out_dir", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_methods_run_the_grid_of_methods_and_seeds_into_one_table_and_one_plot(tmp_path, monkeypatch):
    """The grid's bookkeeping, with training and scoring stubbed: one run folder per method and seed, each run
    with its method's bindings (then the user's), the table's rows in the given order with every seed's test
    accuracy."""
    trained = []
    monkeypatch.setattr(sweep, "train", lambda gin_file, bindings, seed, workdir, num_steps: trained.append(
        (gin_file, seed, os.path.relpath(workdir, tmp_path), bindings)))
    accuracy = {("wd1", "0"): 40.0, ("wd1", "1"): 50.0, ("agrpo", "0"): 70.0, ("agrpo", "1"): 80.0}
    monkeypatch.setattr(sweep, "test_accuracy", lambda workdir, settings, split, step, batch, examples=None:
                        0.0 if step == 0 else accuracy[(os.path.basename(os.path.dirname(workdir)), workdir[-1])])
    monkeypatch.setattr(sweep.metrics_lib, "read_metrics",
                        lambda workdir: [{"step": 0, "eval_accuracy": 0.0}, {"step": 10, "eval_accuracy": 0.5}])
    user = "dllm_rl.WD1Config.num_iterations = 2"
    summary = sweep.main(["--gin", DEMO, "--methods", "wd1,agrpo", "--seeds", "0,1", "--out_dir", str(tmp_path),
                          "--gin_binding", user])
    assert [(seed, workdir) for _, seed, workdir, _ in trained] == [
        (0, "wd1/seed_0"), (1, "wd1/seed_1"), (0, "agrpo/seed_0"), (1, "agrpo/seed_1")]
    assert all("dllm_rl.TrainConfig.algorithm = 'wd1'" in b for _, _, w, b in trained if w.startswith("wd1"))
    from experiments.run import parse_config
    assert parse_config([DEMO], trained[0][3]).wd1.num_iterations == 2  # the user's binding wins over the method's
    assert list(summary) == ["wd1", "agrpo"] and summary["agrpo"]["after"]["values"] == [70.0, 80.0]
    table = (tmp_path / "summary.md").read_text()
    assert "| wd1 | 2 | 45.0 ± 63.5 | 40.0, 50.0 | 0.0 ± 0.0 | 45.0 ± 63.5 |" in table
    assert (tmp_path / "eval_accuracy.png").stat().st_size > 0


@pytest.mark.slow
def test_the_method_comparison_runs_every_method_and_resumes_without_retraining(tmp_path):
    """demo_add.gin × AGRPO, diffu-GRPO and wd1 × 1 seed, shrunk (1 RL step, 8 test examples), twice: each method's run trains
    its own objective with the config's group size, and the second call trains nothing."""
    tiny = [a for b in ("dllm_rl.TrainConfig.num_steps = 1", "dllm_rl.TrainConfig.sft_steps = 2",
                        "dllm_rl.TrainConfig.eval_every = 1", "dllm_rl.TrainConfig.eval_examples = 8",
                        "dllm_rl.TrainConfig.eval_batch_size = 8", "dllm_rl.TrainConfig.prompts_per_micro_batch = 2",
                        "dllm_rl.AGRPOConfig.num_generations = 4", "dllm_rl.AGRPOConfig.mc_samples = 2")
            for a in ("--gin_binding", b)]
    methods = "agrpo,diffu_grpo,wd1"
    args = ["--gin", "experiments/configs/demo_add.gin", "--methods", methods, "--seeds", "0",
            "--out_dir", str(tmp_path), "--test_examples", "8", *tiny]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for _ in range(2):
        subprocess.run([sys.executable, "-m", "experiments.sweep", *args], check=True, cwd=REPO, env=env, timeout=1200)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary) == methods.split(",")
    for method in summary:
        starts = list((tmp_path / method / "seed_0" / "operative_configs").iterdir())
        assert len(starts) == 1, starts  # the second sweep found the run finished and did not start it
        operative = starts[0].read_text()  # gin writes the bindings without the module: TrainConfig.task
        loss_config = sweep.ALGORITHMS[method][1].__name__
        assert f"TrainConfig.algorithm = '{method}'" in operative and "TrainConfig.task = 'add'" in operative
        assert f"{loss_config}.num_generations = 4" in operative
    assert "| wd1 | 1 |" in (tmp_path / "summary.md").read_text()
