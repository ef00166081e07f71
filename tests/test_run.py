"""The gin entry point: every shipped config parses and validates, gin's own errors surface."""
import dataclasses
import glob
import os

import pytest

from dllm_rl.rl.config import ModelSource
from experiments import run
from experiments.run import parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "experiments/configs/demo.gin")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "experiments/configs/*.gin"))),
                         ids=os.path.basename)
def test_every_shipped_gin_parses_and_validates(path):
    cfg = parse_config([path], [])
    # The 8B configs name a checkpoint folder that only exists after `dllm_rl.convert`: validate the rest of the
    # config against the shipped demo model instead.
    demo_model = ModelSource(init_config="dllm_rl/assets/demo_model/config.json", dtype="float32")
    dataclasses.replace(cfg, model=demo_model).validate()
    assert cfg.train.task in ("gsm8k", "math", "countdown", "sudoku", "reverse", "increment", "add_const")


def test_gin_typo_fails_with_gins_message():
    with pytest.raises(ValueError, match="lerning_rate"):
        parse_config([DEMO], ["dllm_rl.TrainConfig.lerning_rate = 1.0"])


def test_mc_samples_larger_than_steps_is_rejected_by_gin_parse():
    with pytest.raises(ValueError, match="mc_samples K=9 exceeds sampling_steps"):
        parse_config([DEMO], ["dllm_rl.AGRPOConfig.mc_samples = 9"])


class _Started(Exception):
    pass


def test_multi_host_flags_reach_jax_distributed_initialize(monkeypatch):
    import jax

    calls = []

    def initialize(*args):
        calls.append(args)
        raise _Started

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    monkeypatch.setattr(run.multihost, "on_cloud_tpu_vm", lambda: False)
    with pytest.raises(_Started):
        run.main(["--gin", DEMO, "--workdir", "unused", "--coordinator_address", "10.0.0.1:1234",
                  "--num_processes", "2", "--process_id", "1"])
    with pytest.raises(_Started):
        run.main(["--gin", DEMO, "--workdir", "unused", "--distributed"])  # auto-detected arguments
    assert calls == [("10.0.0.1:1234", 2, 1), (None, None, None)]
    with pytest.raises(SystemExit):
        run.main(["--gin", DEMO, "--workdir", "unused", "--coordinator_address", "10.0.0.1:1234"])


def test_a_cloud_tpu_vm_always_starts_the_distributed_runtime(monkeypatch):
    """Single- or multi-host, a Cloud TPU VM starts JAX's distributed runtime with no flag (Orbax's checkpoints and
    the cross-host gathers need it); elsewhere nothing starts without a flag."""
    import jax

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args: calls.append(args))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(run.multihost, "on_cloud_tpu_vm", lambda: False)
    assert not run.multihost.start() and calls == []
    monkeypatch.setattr(run.multihost, "on_cloud_tpu_vm", lambda: True)
    assert run.multihost.start() and calls == [(None, None, None)]


def test_on_cloud_tpu_vm_is_jaxs_own_test(monkeypatch):
    from jax._src import cloud_tpu_init

    monkeypatch.setattr(cloud_tpu_init, "running_in_cloud_tpu_vm", True)
    assert run.multihost.on_cloud_tpu_vm()
    monkeypatch.setattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False)
    assert not run.multihost.on_cloud_tpu_vm()


def test_help_lists_the_shipped_configs(capsys):
    with pytest.raises(SystemExit):
        run.main(["--help"])
    text = capsys.readouterr().out
    shipped = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "experiments/configs/*.gin")))
    assert all(f"experiments/configs/{name}" in text for name in shipped)
    assert "--dry_run" in text and "--profile_steps" in text and "--allow_config_change" in text


def test_dry_run_prints_the_config_and_each_programs_memory_without_loading_weights(capsys, monkeypatch, tmp_path):
    from dllm_rl.checkpoint import load as load_lib

    def no_weights(*args, **kwargs):
        raise AssertionError("a dry run loaded weights")

    monkeypatch.setattr(load_lib, "load_model", no_weights)
    assert run.main(["--gin", DEMO, "--workdir", str(tmp_path / "w"), "--dry_run",
                     "--gin_binding", "dllm_rl.TrainConfig.eval_batch_size = 8"]) == 0
    out = capsys.readouterr().out
    assert "TrainConfig.eval_batch_size = 8" in out
    lines = {line.split()[0]: line for line in out.splitlines() if " GiB per device " in line}
    assert set(lines) == {"rollout", "loss", "update", "eval"}
    assert all(float(line.split()[1]) > 0 for line in lines.values())
    assert not (tmp_path / "w").exists()


def test_profile_steps_flag():
    assert run.profile_steps_flag("3:5") == (3, 5)
    for bad in ("5:3", "0:2", "x", "3"):
        with pytest.raises(run.argparse.ArgumentTypeError):
            run.profile_steps_flag(bad)


def test_config_changes_name_the_bindings_that_differ():
    old = "# Parameters for TrainConfig:\nTrainConfig.num_steps = 6\nTrainConfig.seed = 0\n"
    new = "# Parameters for TrainConfig:\nTrainConfig.num_steps = 8\nTrainConfig.seed = 0\n"
    assert run.config_changes(old, new) == ["-TrainConfig.num_steps = 6", "+TrainConfig.num_steps = 8"]
    assert run.config_changes(old, old + "\n# a comment\n") == []


def test_resuming_with_another_config_is_refused_with_the_differences(tmp_path):
    """A workdir with checkpoints was started with num_steps = 6: resuming it with 8 names the change and stops
    before anything is loaded; --allow_config_change lets it through and keeps both starts' configs."""
    from dllm_rl.rl.config import TrainError

    import gin

    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "2").mkdir(parents=True)
    parse_config([DEMO], ["dllm_rl.TrainConfig.num_steps = 6"])
    run.record_operative_config(str(workdir), gin.operative_config_str())
    parse_config([DEMO], ["dllm_rl.TrainConfig.num_steps = 8"])
    with pytest.raises(TrainError, match=r"-TrainConfig.num_steps = 6; \+TrainConfig.num_steps = 8.*"
                                         r"--allow_config_change"):
        run.check_config_change(str(workdir), gin.operative_config_str(), allowed=False)
    run.check_config_change(str(workdir), gin.operative_config_str(), allowed=True)
    run.record_operative_config(str(workdir), gin.operative_config_str())
    kept = sorted(p.name for p in (workdir / run.OPERATIVE_CONFIGS_DIR).iterdir())
    assert kept == ["start_0.gin", "start_1.gin"]
    assert "num_steps = 6" in (workdir / run.OPERATIVE_CONFIGS_DIR / "start_0.gin").read_text()
    assert "num_steps = 8" in (workdir / run.OPERATIVE_CONFIG).read_text()
    # The same config resumes; a workdir without checkpoints (a fresh run) never compares.
    run.check_config_change(str(workdir), (workdir / run.OPERATIVE_CONFIG).read_text(), allowed=False)
    run.check_config_change(str(tmp_path / "fresh"), "anything", allowed=False)


FAMILY_CONFIGS = {  # shipped config -> a config.json with the family's switches (the fixtures' tiny ones)
    "llada15_agrpo.gin": "dllm_rl/assets/llada_8b_instruct_meta/config.json",
    "dream_agrpo.gin": "tests/fixtures/families/dream/config.json",
    "a2d_qwen3_agrpo.gin": "tests/fixtures/families/a2d_qwen3/config.json",
    "llada_moe_agrpo.gin": "tests/fixtures/families/llada_moe/config.json",
}


@pytest.mark.parametrize("name", sorted(FAMILY_CONFIGS))
def test_family_configs_build_and_adapt_kernels_their_family_has(name):
    """Each family's config builds its TrainConfig and its LoRA targets exist in that family's params tree (e.g. no
    adapter on A2D-Qwen3's tied head, none on dense FFN kernels an all-MoE model lacks)."""
    import jax

    from dllm_rl import models
    from dllm_rl.models.lora import init_lora

    path = os.path.join(ROOT, "experiments/configs", name)
    header = "".join(open(path).read().splitlines(keepends=True)[:6])
    assert "python -m experiments.run" in header and f"experiments/configs/{name}" in header  # how to run it
    cfg = parse_config([path], [])
    assert cfg.train.task == "gsm8k" and cfg.lora is not None
    config = models.config_from_hf(os.path.join(ROOT, FAMILY_CONFIGS[name]))
    base = jax.eval_shape(lambda: models.init_params(config, jax.random.key(0)))
    adapters = jax.eval_shape(lambda: init_lora(base, cfg.lora, jax.random.key(0)))
    assert adapters["layers"]["q_proj"]["a"].shape[-1] == cfg.lora.rank
