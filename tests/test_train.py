"""The training loop: bad input fails early, exact resume after SIGKILL, SIGTERM saves and exits, diffu-GRPO and
LoRA paths run, LoRA on every family (sampling and loss log-probs agree, adapters exported), the mesh rules lay out
the run's state, gradient accumulation's memory does not grow with grad_accum, the demo and its Dream-style twin
(shifted logits) raise held-out accuracy by the documented bar."""
import dataclasses
import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from dllm_rl.metrics import read_metrics
from dllm_rl.rl import steps
from dllm_rl.rl.config import TrainError
from dllm_rl.rl.train import TIMING_KEYS, Trainer
from experiments.run import parse_config
from tests.helpers.xla_env import fake_devices_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "experiments/configs/demo.gin")
DEMO_DREAM = os.path.join(ROOT, "experiments/configs/demo_dream.gin")
# A few seconds per step on CPU: short rollouts, two micro-batches, evaluation and checkpoints every 2 steps.
SMALL = ["dllm_rl.TrainConfig.num_steps = 6", "dllm_rl.TrainConfig.sft_steps = 3", "dllm_rl.TrainConfig.sft_batch_size = 8",
         "dllm_rl.TrainConfig.prompts_per_micro_batch = 2", "dllm_rl.TrainConfig.grad_accum = 2",
         "dllm_rl.TrainConfig.eval_every = 2", "dllm_rl.TrainConfig.eval_examples = 8",
         "dllm_rl.TrainConfig.eval_batch_size = 8", "dllm_rl.TrainConfig.checkpoint_every = 2",
         "dllm_rl.AGRPOConfig.num_generations = 4", "dllm_rl.AGRPOConfig.mc_samples = 2"]


@pytest.mark.parametrize("binding,message", [
    ("dllm_rl.TrainConfig.task = 'gsm9k'", "unknown task 'gsm9k'"),
    ("dllm_rl.ModelSource.init_config = '/nowhere/config.json'", "does not exist"),
    ("dllm_rl.AGRPOConfig.gen_length = 16", "must equal the rollout"),
    ("dllm_rl.TrainConfig.algorithm = 'ppo'", "algorithm='ppo'"),
    ("rollout/dllm_rl.SamplerConfig.record = False", "must record"),
    ("experiment.lora = @dllm_rl.LoRAConfig()\ndllm_rl.LoRAConfig.dropout = 0.05", "only applied by diffu-GRPO"),
    ("experiment.tracerl = @dllm_rl.TraceRLConfig()\ndllm_rl.TrainConfig.algorithm = 'tracerl'\n"
     "dllm_rl.TraceRLConfig.sampling_steps = 8\nrollout/dllm_rl.SamplerConfig.record = False",
     "TraceRL rollouts must record"),
    ("experiment.tracerl = @dllm_rl.TraceRLConfig()\ndllm_rl.TrainConfig.algorithm = 'tracerl'",
     "must equal the rollout's"),
    ("experiment.dipo = @dllm_rl.DiPOConfig()\ndllm_rl.TrainConfig.algorithm = 'dipo'",
     "DiPOConfig.sampling_steps 512 must equal the rollout's"),
    ("experiment.dmpo = @dllm_rl.DMPOConfig()\ndllm_rl.TrainConfig.algorithm = 'dmpo'\n"
     "dllm_rl.TrainConfig.scale_rewards_by_std = True", "scale_rewards_by_std = False"),
    ("experiment.spg = @dllm_rl.SPGConfig()\ndllm_rl.TrainConfig.algorithm = 'spg'", "must divide the rollout's"),
])
def test_bad_setups_fail_before_compiling(binding, message, tmp_path):
    cfg = parse_config([DEMO], [binding])
    with pytest.raises(TrainError, match=message):
        Trainer(cfg, tmp_path)


LAYOUT = textwrap.dedent("""
    import jax
    from jax.sharding import PartitionSpec as P
    from dllm_rl.rl.config import TrainError
    from dllm_rl.rl.train import Trainer
    from experiments.run import parse_config
    base = ["experiment.mesh = @dllm_rl.MeshConfig()", "experiment.lora = @dllm_rl.LoRAConfig()",
            "dllm_rl.LoRAConfig.rank = 4", "dllm_rl.MeshConfig.shape = {'data': 2, 'fsdp': 2, 'tensor': 2}"]
    # Tensor parallelism over 'fsdp', nothing over 'tensor', batches over 'data' only.
    rules = ("dllm_rl.MeshConfig.rules = (('batch', 'data'), ('layers', None), ('embed', None), "
             "('heads', 'fsdp'), ('kv_heads', 'fsdp'), ('mlp', 'fsdp'), ('vocab', None), ('norm', None), "
             "('lora_rank', None))")
    for extra, q_proj, lora_b, batch in ((rules, P(None, None, "fsdp"), P(None, None, "fsdp"), P("data", None)),
                                         (None, P(None, "fsdp", "tensor"), P(None, "fsdp", "tensor"),
                                          P(("data", "fsdp"), None))):
        trainer = Trainer(parse_config([DEMO], base + ([extra] if extra else [])), WORKDIR)
        assert trainer.base_params["layers"]["q_proj"].sharding.spec == q_proj
        trainable, frozen, opt_state = trainer.init_state(trainer.base_params)
        assert trainable["layers"]["q_proj"]["b"].sharding.spec == lora_b
        moments = [x for path, x in jax.tree_util.tree_leaves_with_path(opt_state)
                   if jax.tree_util.keystr(path).endswith("['layers']['q_proj']['b']")]
        assert moments and all(m.sharding.spec == lora_b for m in moments)
        assert trainer.place_batch(jax.numpy.zeros((8, 40))).sharding.spec == batch
    try:
        Trainer(parse_config([DEMO], base + ["dllm_rl.MeshConfig.shape = {'data': 8, 'fsdp': 1, 'tensor': 1}",
                                             "dllm_rl.TrainConfig.prompts_per_micro_batch = 1",
                                             "dllm_rl.AGRPOConfig.num_generations = 4"]), WORKDIR)
        raise AssertionError("an indivisible rollout batch was accepted")
    except TrainError as e:
        assert "rollout batch" in str(e), e
    print("LAYOUT_OK")
""")


def test_mesh_rules_lay_out_params_adapters_optimizer_state_and_batches(tmp_path):
    """`MeshConfig.rules` is the one place a strategy is chosen: on 8 fake devices a non-default table changes the
    shardings of params, LoRA adapters, their Adam moments and batches; an indivisible batch fails early."""
    env = fake_devices_env(8)
    code = f"DEMO, WORKDIR = {DEMO!r}, {str(tmp_path)!r}\n" + LAYOUT
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                            cwd=ROOT)
    assert "LAYOUT_OK" in result.stdout, result.stderr[-3000:]


SPLASH = textwrap.dedent("""
    import tempfile
    from dllm_rl.models import tpu_attention
    from dllm_rl.rl.train import Trainer
    from experiments.run import parse_config
    local_rows = []
    kernel = tpu_attention._local_attention
    def recording(q, *args, **kw):
        local_rows.append(q.shape[0])
        return kernel(q, *args, **kw)
    tpu_attention._local_attention = recording
    # 8 rows over fsdp 4 x tensor 2; prompts padded to 120 so that prompt + completion is 128 (the kernel's tile).
    base = ["experiment.mesh = @dllm_rl.MeshConfig()", "dllm_rl.MeshConfig.shape = {'data': 1, 'fsdp': 4, 'tensor': 2}",
            "dllm_rl.TrainConfig.num_steps = 1", "dllm_rl.TrainConfig.sft_steps = 0", "dllm_rl.TrainConfig.eval_every = 0",
            "dllm_rl.TrainConfig.max_prompt_length = 120", "dllm_rl.TrainConfig.prompts_per_micro_batch = 2",
            "dllm_rl.TrainConfig.grad_accum = 1", "dllm_rl.AGRPOConfig.num_generations = 4",
            "dllm_rl.AGRPOConfig.mc_samples = 2", "dllm_rl.TrainConfig.export_final_model = False",
            "dllm_rl.AGRPOConfig.attention_impl = 'splash_interpret'"]
    row = Trainer(parse_config([DEMO], base), tempfile.mkdtemp()).train(progress=False)[-1]
    assert local_rows and set(local_rows) == {2}, local_rows  # traced per device: the shard_map saw the mesh
    # The sampler attends with einsum: the loss's splash log-probs of the sampled tokens equal the rollout's.
    assert row["logp_mismatch_max"] < 2e-5 and abs(row["ratio_mean"] - 1) < 1e-5, row
    print("SPLASH_OK")
""")


def test_trainer_runs_the_splash_loss_per_device_under_its_mesh():
    """With attention_impl='splash_interpret' the trainer's loss runs the Pallas kernel inside a shard_map over
    the run's mesh (2 rows per device of 8), and its log-probs equal the (einsum) sampler's."""
    env = fake_devices_env(8)
    result = subprocess.run([sys.executable, "-c", f"DEMO = {DEMO!r}\n" + SPLASH], env=env, capture_output=True,
                            text=True, timeout=600, cwd=ROOT)
    assert "SPLASH_OK" in result.stdout, result.stderr[-3000:]


def _run(workdir, extra=(), **popen):
    # The session's compilation cache (tests/conftest.py): the runs below compile the same programs.
    cmd = [sys.executable, "-m", "experiments.run", "--gin", DEMO, "--workdir", str(workdir), "--no_progress",
           "--compilation_cache", os.environ["JAX_COMPILATION_CACHE_DIR"]]
    for b in SMALL + list(extra):
        cmd += ["--gin_binding", b]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"), **popen)


def _wait_for_step(workdir, step, proc, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(r["step"] >= step for r in read_metrics(workdir)):
            return
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        time.sleep(0.2)
    raise AssertionError("training did not reach step %d" % step)


def _comparable(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _wait_for_checkpoint(workdir, step, proc, timeout=600):
    """Returns as soon as the checkpoint of `step` is complete (Orbax renames its folder into place at the end)."""
    folder = os.path.join(workdir, "checkpoints", str(step))
    deadline = time.time() + timeout
    while not os.path.isdir(folder):
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        assert time.time() < deadline, f"no checkpoint {step}"
        time.sleep(0.01)


@pytest.mark.slow
def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    killed = _run(tmp_path / "b")
    _wait_for_checkpoint(tmp_path / "b", 2, killed)
    killed.send_signal(signal.SIGKILL)  # right after the step-2 checkpoint, well before the step-4 one
    killed.wait()
    assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["0", "2"]
    assert read_metrics(tmp_path / "b")[-1]["step"] in (2, 3)
    straight = _run(tmp_path / "a")
    assert straight.wait(900) == 0, straight.stdout.read()
    resumed = _run(tmp_path / "b")
    assert resumed.wait(900) == 0, resumed.stdout.read()
    a, b = _comparable(read_metrics(tmp_path / "a")), _comparable(read_metrics(tmp_path / "b"))
    assert [r["step"] for r in a] == list(range(7))
    assert a == b
    assert os.path.exists(tmp_path / "a" / "plots" / "overview.png")
    # The exported policy is a model folder that evaluation reads, identical for both runs.
    from dllm_rl.checkpoint import load_orbax
    config, params = load_orbax(tmp_path / "a" / "final_model")
    _, params_b = load_orbax(tmp_path / "b" / "final_model")
    assert config.n_layers == 4 and (tmp_path / "a" / "final_model" / "tokenizer.json").exists()
    import jax
    import numpy as np
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(params_b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert "TrainConfig.num_steps = 6" in (tmp_path / "a" / "operative_config.gin").read_text()


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    proc = _run(tmp_path, ["dllm_rl.TrainConfig.checkpoint_every = 0"])
    _wait_for_step(tmp_path, 1, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(600) == 0
    last = read_metrics(tmp_path)[-1]["step"]
    assert last < 6
    assert str(last) in os.listdir(tmp_path / "checkpoints")


def test_diffu_grpo_with_lora_runs(tmp_path, monkeypatch):
    """d1 with LoRA adapters, β > 0: two steps whose gradients are nonzero. The untrained demo model earns no
    reward and the adapters start at the reference (KL exactly 0), so without advantages the gradient is 0 (it
    passed before only through rounding noise that optimised compiles add): the groups get fixed advantages."""
    _fixed_advantages(monkeypatch)
    cfg = parse_config([DEMO], SMALL + [
        "experiment.agrpo = None", "experiment.diffu_grpo = @dllm_rl.DiffuGRPOConfig()",
        "experiment.lora = @dllm_rl.LoRAConfig()", "dllm_rl.LoRAConfig.rank = 4",
        "dllm_rl.TrainConfig.algorithm = 'diffu_grpo'", "dllm_rl.TrainConfig.num_steps = 2",
        "dllm_rl.TrainConfig.eval_every = 0", "dllm_rl.DiffuGRPOConfig.num_generations = 4",
        "dllm_rl.DiffuGRPOConfig.num_iterations = 2", "dllm_rl.DiffuGRPOConfig.beta = 0.04"])
    rows = Trainer(cfg, tmp_path).train(progress=False)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["grad_norm"] > 0 and "kl" in r for r in rows)
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2


def test_wd1_runs_through_the_masked_objective_path_and_moves_the_params(tmp_path, monkeypatch):
    """TrainConfig.algorithm = 'wd1' takes d1's μ-update path (steps.MASKED_OBJECTIVES): finite loss and metrics,
    μ updates per step that move the LoRA adapters, no reference model kept. The untrained demo model earns no
    reward, and wd1's gradient vanishes on a zero-variance group, so the groups get fixed nonzero advantages."""
    from dllm_rl.rl import train as train_lib

    summary = train_lib.rewards.batch_summary

    def fixed_advantages(table, *args, **kwargs):
        advantages, info = summary(table, *args, **kwargs)
        return np.resize(np.float32([1.0, -1.0, 0.5, -0.5]), advantages.shape), info

    monkeypatch.setattr(train_lib.rewards, "batch_summary", fixed_advantages)
    cfg = parse_config([DEMO], SMALL + ["dllm_rl.TrainConfig.sft_steps = 0", "dllm_rl.TrainConfig.grad_accum = 1",
        "experiment.agrpo = None", "experiment.wd1 = @dllm_rl.WD1Config()",
        "experiment.lora = @dllm_rl.LoRAConfig()", "dllm_rl.LoRAConfig.rank = 4",
        "dllm_rl.TrainConfig.algorithm = 'wd1'", "dllm_rl.TrainConfig.num_steps = 1",
        "dllm_rl.TrainConfig.eval_every = 0", "dllm_rl.TrainConfig.export_final_model = False",
        "dllm_rl.WD1Config.num_generations = 4", "dllm_rl.WD1Config.num_iterations = 2"])
    trainer = Trainer(cfg, tmp_path)
    before = jax.tree.map(np.array, trainer.init_state(trainer.base_params)[0])
    (row,) = trainer.train(progress=False)
    keys = ("loss", "seq_logp_mean", "pos_weight_max", "grad_norm")
    assert all(np.isfinite(row[k]) for k in keys) and row["grad_norm"] > 0, {k: row[k] for k in keys}
    assert "kl" not in row and "clip_ratio" not in row
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), trainer.trainable, before)
    assert max(jax.tree.leaves(moved)) > 0


def _fixed_advantages(monkeypatch) -> list[dict]:
    """The untrained demo model earns no reward: give the groups fixed nonzero advantages. Returns the keyword
    arguments of every `batch_summary` call."""
    from dllm_rl.rl import train as train_lib

    summary, calls = train_lib.rewards.batch_summary, []

    def fixed_advantages(table, *args, **kwargs):
        calls.append(kwargs)
        advantages, info = summary(table, *args, **kwargs)
        return np.resize(np.float32([1.0, -1.0, 0.5, -0.5]), advantages.shape), info

    monkeypatch.setattr(train_lib.rewards, "batch_summary", fixed_advantages)
    return calls


def _record_gradient_calls(monkeypatch) -> list[tuple]:
    """Records (mask key, old, ref, metrics) of every `steps.masked_grads` call."""
    calls, masked_grads = [], steps.masked_grads

    def recording(trainable, frozen, batch, rng, old, ref, *args, **kwargs):
        out = masked_grads(trainable, frozen, batch, rng, old, ref, *args, **kwargs)
        calls.append((rng, old, ref, {k: float(v) for k, v in out[2].items()}))
        return out

    monkeypatch.setattr(steps, "masked_grads", recording)
    return calls


ONE_STEP = SMALL + ["dllm_rl.TrainConfig.sft_steps = 0", "dllm_rl.TrainConfig.grad_accum = 1",
                    "experiment.agrpo = None", "experiment.lora = @dllm_rl.LoRAConfig()", "dllm_rl.LoRAConfig.rank = 4",
                    "dllm_rl.TrainConfig.num_steps = 1", "dllm_rl.TrainConfig.eval_every = 0",
                    "dllm_rl.TrainConfig.export_final_model = False"]


def _moved(trainer, before) -> float:
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), trainer.trainable, before)
    return max(jax.tree.leaves(moved))


def test_dmpo_trains_with_rollout_time_elbo_weights(tmp_path, monkeypatch):
    """TrainConfig.algorithm = 'dmpo': at rollout time the ELBOs of the reference (a kept copy of the initial
    params: full fine-tuning, so one ELBO program serves both) and the rollout policy give the weights (finite ESS
    and log-RND logged), then μ WDCE updates move the params."""
    _fixed_advantages(monkeypatch)
    cfg = parse_config([DEMO], ONE_STEP + [
        "experiment.lora = None", "experiment.dmpo = @dllm_rl.DMPOConfig()", "dllm_rl.TrainConfig.algorithm = 'dmpo'",
        "dllm_rl.DMPOConfig.num_generations = 4", "dllm_rl.DMPOConfig.num_iterations = 2",
        "dllm_rl.DMPOConfig.num_replicates = 2", "dllm_rl.DMPOConfig.elbo_replicates = 2"])
    trainer = Trainer(cfg, tmp_path)
    before = jax.tree.map(np.array, trainer.init_state(trainer.base_params)[0])
    (row,) = trainer.train(progress=False)
    keys = ("loss", "dce", "mask_fraction", "ess", "log_rnd", "grad_norm")
    assert all(np.isfinite(row[k]) for k in keys) and row["grad_norm"] > 0, {k: row[k] for k in keys}
    assert 0 < row["ess"] <= 1 and trainer.needs_ref
    assert _moved(trainer, before) > 0


def _count_updates(monkeypatch) -> list:
    """A list that gains an entry at every optimizer update (`steps.apply_update`) from now on."""
    updates = []
    apply_update = steps.apply_update
    monkeypatch.setattr(steps, "apply_update", lambda *a, **k: updates.append(1) or apply_update(*a, **k))
    return updates


def test_tracerl_trains_on_the_recorded_trace_rows_in_order(tmp_path, monkeypatch):
    """TrainConfig.algorithm = 'tracerl': the recorded rollout's trace rows (those scoring nothing dropped) in row
    batches of `row_batch_size`, `row_batches_per_update` of them per optimizer update; finite PPO metrics, the
    adapters move, no reference kept (the KL is against the old policy)."""
    _fixed_advantages(monkeypatch)
    updates = _count_updates(monkeypatch)
    cfg = parse_config([DEMO], ONE_STEP + [
        "experiment.tracerl = @dllm_rl.TraceRLConfig()", "dllm_rl.TrainConfig.algorithm = 'tracerl'",
        "dllm_rl.TraceRLConfig.num_generations = 4", "dllm_rl.TraceRLConfig.sampling_steps = 8",
        "dllm_rl.TraceRLConfig.shrink = 2", "dllm_rl.TraceRLConfig.post_num = None",
        "dllm_rl.TraceRLConfig.row_batch_size = 4", "dllm_rl.TraceRLConfig.row_batches_per_update = 3"])
    trainer = Trainer(cfg, tmp_path)
    before = jax.tree.map(np.array, trainer.init_state(trainer.base_params)[0])
    (row,) = trainer.train(progress=False)
    keys = ("loss", "policy_loss", "ratio_mean", "clip_fraction", "kl", "grad_norm")
    assert all(np.isfinite(row[k]) for k in keys) and row["grad_norm"] > 0, {k: row[k] for k in keys}
    assert row["trace_rows"] == 8 * 4  # 2 prompts × G=4, 8 steps merged by 2: every row scores a token
    assert len(updates) == -(-(-(-row["trace_rows"] // 4)) // 3)
    assert not trainer.needs_ref and _moved(trainer, before) > 0


def test_dipo_trains_on_every_steps_row_with_a_kl_to_the_reference(tmp_path, monkeypatch):
    """TrainConfig.algorithm = 'dipo': the recorded rollout's rows, one per decoding step (no merging), in row
    batches of `row_batch_size`, `row_batches_per_update` per optimizer update, with the rollout policy's and the
    reference's (β > 0: the base, LoRA off) log-probs; the first call is on-policy at the reference (ρ = 1, KL 0);
    the adapters move."""
    _fixed_advantages(monkeypatch)
    calls = _record_gradient_calls(monkeypatch)
    updates = _count_updates(monkeypatch)
    cfg = parse_config([DEMO], ONE_STEP + [
        "experiment.dipo = @dllm_rl.DiPOConfig()", "dllm_rl.TrainConfig.algorithm = 'dipo'",
        "dllm_rl.DiPOConfig.num_generations = 4", "dllm_rl.DiPOConfig.sampling_steps = 8",
        "dllm_rl.DiPOConfig.row_batch_size = 8", "dllm_rl.DiPOConfig.row_batches_per_update = 3",
        "dllm_rl.DiPOConfig.beta = 0.1"])
    trainer = Trainer(cfg, tmp_path)
    before = jax.tree.map(np.array, trainer.init_state(trainer.base_params)[0])
    (row,) = trainer.train(progress=False)
    keys = ("loss", "ratio_mean", "clip_fraction", "kl", "grad_norm")
    assert all(np.isfinite(row[k]) for k in keys) and row["grad_norm"] > 0, {k: row[k] for k in keys}
    assert row["trace_rows"] == 8 * 8  # 2 prompts × G=4, one row per each of the 8 steps: every row scores a token
    assert len(calls) == 8 and len(updates) == 3  # 64 rows in batches of 8, 3 batches per update
    _, old, ref, first = calls[0]
    assert old.shape == ref.shape == (8, 8) and trainer.needs_ref
    assert abs(first["ratio_mean"] - 1) < 1e-5 and abs(first["kl"]) < 1e-6, first
    assert _moved(trainer, before) > 0


def test_espo_trains_with_leave_one_out_advantages_and_old_ref_elbos_under_its_mask_keys(tmp_path, monkeypatch):
    """TrainConfig.algorithm = 'espo': the trainer asks for leave-one-out advantages (ESPOConfig.leave_one_out's
    default); update i of a micro-batch uses
    its own mask key i, under which the rollout policy's and the reference's ELBOs were computed on the same rows,
    so the first update (policy = rollout policy = reference: LoRA B = 0) has ρ = 1 and KL 0; the adapters move."""
    summaries = _fixed_advantages(monkeypatch)
    calls = _record_gradient_calls(monkeypatch)
    cfg = parse_config([DEMO], ONE_STEP + [
        "experiment.espo = @dllm_rl.ESPOConfig()", "dllm_rl.TrainConfig.algorithm = 'espo'",
        "dllm_rl.ESPOConfig.num_generations = 4", "dllm_rl.ESPOConfig.num_iterations = 2",
        "dllm_rl.ESPOConfig.num_mc = 1", "dllm_rl.ESPOConfig.beta = 0.1"])
    trainer = Trainer(cfg, tmp_path)
    before = jax.tree.map(np.array, trainer.init_state(trainer.base_params)[0])
    (row,) = trainer.train(progress=False)
    keys = ("loss", "ratio_mean", "clip_ratio", "kl", "grad_norm")
    assert all(np.isfinite(row[k]) for k in keys) and row["grad_norm"] > 0, {k: row[k] for k in keys}
    assert [c.get("leave_one_out") for c in summaries] == [True] and trainer.needs_ref
    (key0, old0, ref0, first), (key1, old1, ref1, _) = calls
    assert old0.shape == ref0.shape == (8,) and not np.array_equal(key0, key1)  # draw (m, i): each key once
    assert abs(first["ratio_mean"] - 1) < 1e-5 and first["kl"] < 1e-8, first
    assert _moved(trainer, before) > 0


def test_spg_trains_with_d1s_mask_order_and_no_old_or_ref_quantities(tmp_path, monkeypatch):
    """TrainConfig.algorithm = 'spg': μ sandwich updates on the rollouts, no old or reference quantities (nor a
    reference model); with d1_accumulation_steps = 2 and μ = 2 the one micro-batch uses the same mask key in both
    updates (d1's order, `diffu_grpo.mask_index`); finite ELBO/EUBO metrics; the adapters move."""
    summaries = _fixed_advantages(monkeypatch)
    calls = _record_gradient_calls(monkeypatch)
    cfg = parse_config([DEMO], ONE_STEP + [
        "experiment.spg = @dllm_rl.SPGConfig()", "dllm_rl.TrainConfig.algorithm = 'spg'",
        "dllm_rl.SPGConfig.num_generations = 4", "dllm_rl.SPGConfig.num_iterations = 2",
        "dllm_rl.SPGConfig.block_length = 4", "dllm_rl.SPGConfig.d1_accumulation_steps = 2"])
    trainer = Trainer(cfg, tmp_path)
    before = jax.tree.map(np.array, trainer.init_state(trainer.base_params)[0])
    (row,) = trainer.train(progress=False)
    keys = ("loss", "elbo", "eubo", "seq_logp", "grad_norm")
    assert all(np.isfinite(row[k]) for k in keys) and row["grad_norm"] > 0, {k: row[k] for k in keys}
    assert [c.get("leave_one_out") for c in summaries] == [False] and not trainer.needs_ref
    (key0, old0, ref0, _), (key1, old1, ref1, _) = calls
    assert old0 is old1 is ref0 is ref1 is None and np.array_equal(key0, key1)
    assert _moved(trainer, before) > 0


def test_lora_run_samples_the_trained_policy_and_exports_its_adapters(tmp_path):
    """A finished LoRA run leaves W/lora_config.json and the adapters as a PEFT folder next to W/final_model; with
    trained (B ≠ 0) adapters a step's rollout log-probs equal the loss's (logp_mismatch ~ float32 noise)."""
    from dllm_rl.export import load_peft
    cfg = parse_config([DEMO], SMALL + ["experiment.lora = @dllm_rl.LoRAConfig()", "dllm_rl.LoRAConfig.rank = 4",
                                        "dllm_rl.LoRAConfig.lm_head = True", "dllm_rl.TrainConfig.num_steps = 1"])
    trainer = Trainer(cfg, tmp_path)
    rows = trainer.train(progress=False)
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[1]["reward/timeouts"] == 0.0 and rows[1]["eval_timeouts"] == 0.0
    assert 0 <= rows[1]["logp_mismatch_mean"] <= rows[1]["logp_mismatch_max"] < 1e-4
    assert json.loads((tmp_path / "lora_config.json").read_text()) == json.loads(
        json.dumps(dataclasses.asdict(cfg.lora)))
    lora_config, adapters = load_peft(str(tmp_path / "final_adapter"), trainer.model_config)
    assert lora_config == cfg.lora
    for x, y in zip(jax.tree.leaves(adapters), jax.tree.leaves(trainer.trainable)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert (tmp_path / "final_model" / "config.json").exists()
    keys = iter(jax.random.split(jax.random.key(7), len(jax.tree.leaves(trainer.trainable))))
    trained = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), trainer.trainable)
    _, _, row = trainer._step(2, trained, trainer.frozen, trainer.tx.init(trained), trainer._dataset(0))
    assert 0 <= row["logp_mismatch_mean"] <= row["logp_mismatch_max"] < 1e-4, row


def _live_bytes_of_a_step(tmp_path, grad_accum, monkeypatch) -> int:
    """Peak bytes of live device arrays, over one AGRPO step's micro-batches, above those alive before it."""
    cfg = parse_config([DEMO], ["dllm_rl.TrainConfig.prompts_per_micro_batch = 2", "dllm_rl.TrainConfig.sft_steps = 0",
                                f"dllm_rl.TrainConfig.grad_accum = {grad_accum}", "dllm_rl.TrainConfig.eval_every = 0",
                                "dllm_rl.AGRPOConfig.num_generations = 4", "dllm_rl.AGRPOConfig.mc_samples = 2"])
    trainer = Trainer(cfg, tmp_path / str(grad_accum))
    trainable, frozen, opt_state = trainer.init_state(trainer.base_params)
    data = trainer._dataset(0)
    real, peaks = steps.agrpo_grads, []

    def live_bytes():
        gc.collect()
        return sum(x.nbytes for x in jax.live_arrays())

    def recording(*args, **kwargs):
        out = jax.block_until_ready(real(*args, **kwargs))
        peaks.append(live_bytes())
        return out

    monkeypatch.setattr(steps, "agrpo_grads", recording)
    before = live_bytes()
    trainer._step(1, trainable, frozen, opt_state, data)
    assert len(peaks) == grad_accum
    return max(peaks) - before, sum(x.nbytes for x in jax.tree.leaves(trainable))


def test_gradient_accumulation_memory_does_not_grow_with_grad_accum(tmp_path, monkeypatch):
    """One running gradient sum (donated into `steps.accumulate`): the live bytes at every micro-batch are the
    same for 2 and 6 micro-batches (keeping each micro-batch's tree would add 4 gradient trees)."""
    two, grad_bytes = _live_bytes_of_a_step(tmp_path, 2, monkeypatch)
    six, _ = _live_bytes_of_a_step(tmp_path, 6, monkeypatch)
    assert abs(six - two) < grad_bytes // 2, (two, six, grad_bytes)


@pytest.mark.slow
def test_demo_raises_held_out_accuracy_by_the_documented_bar(tmp_path):
    """The demo config (seed 0, the whole validation split): AGRPO after the SFT warm start raises greedy held-out
    exact-match accuracy by at least 20 points, the bar BENCHMARKS.md's 5-seed test-split measurement is held to."""
    cfg = parse_config([DEMO], ["dllm_rl.TrainConfig.eval_every = 40", "dllm_rl.TrainConfig.checkpoint_every = 0"])
    rows = Trainer(cfg, tmp_path).train(progress=False)
    evals = [r for r in rows if "eval_reward_mean" in r]
    assert [r["step"] for r in evals] == [0, 40]
    before, after = evals
    assert after["eval_accuracy"] >= before["eval_accuracy"] + 0.20, (before, after)
    assert after["eval_reward_mean"] > before["eval_reward_mean"] + 0.5, (before, after)


@pytest.mark.slow
def test_dream_demo_raises_held_out_accuracy_by_the_documented_bar(tmp_path):
    """demo_dream.gin (the demo with a tiny Dream-style model, logits shifted by one) under the same bar as the
    LLaDA demo: SFT, rollouts' recorded log-probs and the AGRPO loss must all read token i at raw position i - 1.
    Shortened for CI to 20 RL steps and 256 validation strings (the documented seed-0 run was at 67 % by step 20)."""
    cfg = parse_config([DEMO_DREAM], ["dllm_rl.TrainConfig.num_steps = 20", "dllm_rl.TrainConfig.eval_every = 20",
                                      "dllm_rl.TrainConfig.eval_examples = 256",
                                      "dllm_rl.TrainConfig.checkpoint_every = 0"])
    trainer = Trainer(cfg, tmp_path)
    assert trainer.model_config.family == "dream" and trainer.model_config.logit_shift
    rows = trainer.train(progress=False)
    evals = [r for r in rows if "eval_reward_mean" in r]
    assert [r["step"] for r in evals] == [0, 20]
    before, after = evals
    assert after["eval_accuracy"] >= before["eval_accuracy"] + 0.20, (before, after)
    assert after["eval_reward_mean"] > before["eval_reward_mean"] + 0.5, (before, after)


def test_dream_demo_runs_sft_and_rl_reading_token_i_at_raw_position_i_minus_1(tmp_path):
    """demo_dream.gin, shrunk to 2 SFT steps and 1 RL step: the rollouts' recorded log-probs equal the loss's, and
    the SFT loss of the trained model is the one computed by hand from the model's own (unshifted) logits read one
    position early (reading them at i instead gives another loss)."""
    from dllm_rl import models
    from dllm_rl.rl import sft
    from dllm_rl.rl.objective import model_inputs

    cfg = parse_config([DEMO_DREAM], SMALL + ["dllm_rl.TrainConfig.num_steps = 1", "dllm_rl.TrainConfig.sft_steps = 2",
                                              "dllm_rl.TrainConfig.eval_every = 0",
                                              "dllm_rl.TrainConfig.checkpoint_every = 0",
                                              "dllm_rl.TrainConfig.export_final_model = False"])
    trainer = Trainer(cfg, tmp_path)
    config = trainer.model_config
    assert config.family == "dream" and config.logit_shift and config.positions_skip_padding
    assert (config.n_heads, config.n_kv_heads, config.vocab_size) == (4, 2, trainer.tokenizer.vocab_size)
    rows = trainer.train(progress=False)
    assert rows[-1]["step"] == 1 and rows[-1]["logp_mismatch_max"] < 1e-4, rows[-1]

    examples = trainer.task.load("train")[:4]
    prompt_ids, prompt_mask = trainer._encode(examples)
    eos = trainer.tokenizer.eos_token_id
    answers = np.full((4, 8), eos, np.int32)
    for row, ex in enumerate(examples):
        ids = trainer.tokenizer.encode(trainer.task.reference_answer(ex))
        answers[row, :len(ids)] = ids
    params, rng = trainer.trainable, jax.random.key(3)
    loss = float(sft.sft_loss(config, params, prompt_ids, answers, rng, prompt_mask))
    noisy, masked, p = (np.asarray(x) for x in sft.mask_answer(rng, answers, config.mask_token_id))
    ids, mask = model_inputs(prompt_ids, prompt_mask, noisy)
    raw = np.asarray(models.lm_head(config, params, models.hidden_states(config, params, ids, mask)))

    def by_hand(offset):
        logits = raw[:, prompt_ids.shape[1] - offset:][:, :8]
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        nll = -np.take_along_axis(logp, answers[..., None], axis=-1)[..., 0]
        return float(np.mean(np.where(masked, nll, 0).sum(1) / p / 8))

    assert loss == pytest.approx(by_hand(1), rel=1e-5)
    assert abs(by_hand(0) - loss) > 1e-2 * loss


def test_sft_and_rl_never_see_an_evaluation_example(tmp_path, monkeypatch):
    """Every prompt the warm start and the RL steps encode comes from the training split: none is one of the
    strings the run evaluates on (string-level disjointness of the splits, checked where the trainer reads them)."""
    cfg = parse_config([DEMO], SMALL + ["dllm_rl.TrainConfig.num_steps = 2", "dllm_rl.TrainConfig.eval_every = 0",
                                        "dllm_rl.TrainConfig.eval_examples = None"])
    trainer = Trainer(cfg, tmp_path)
    seen, encode = [], trainer._encode
    monkeypatch.setattr(trainer, "_encode", lambda examples, *a: (seen.extend(e["digits"] for e in examples),
                                                                   encode(examples, *a))[1])
    trainer.train(progress=False)
    evaluated = {e["digits"] for e in trainer.eval_set[1]}
    assert len(seen) == 3 * 8 + 2 * 2 * 2 and len(evaluated) == len(trainer.task.load("validation"))
    assert not set(seen) & evaluated
    assert set(seen) <= {e["digits"] for e in trainer.task.load("train")}


def test_profile_steps_write_a_trace(tmp_path):
    cfg = parse_config([DEMO], SMALL + ["dllm_rl.TrainConfig.num_steps = 2", "dllm_rl.TrainConfig.sft_steps = 0",
                                        "dllm_rl.TrainConfig.eval_every = 0",
                                        "dllm_rl.TrainConfig.export_final_model = False"])
    Trainer(cfg, tmp_path).train(progress=False, profile_steps=(2, 2))
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0


@pytest.mark.parametrize("family", ["dream", "a2d_qwen3", "llada_moe_mixed"])
def test_lora_run_on_another_family(family, tmp_path):
    """The trainer runs LoRA on each family (Dream's shifted logits and padding-skipping positions, A2D-Qwen3's tied
    head, LLaDA-MoE's mixed dense / MoE layers with shared-expert adapters): a step's rollout log-probs equal the
    loss's with trained adapters, and the adapters export as a PEFT folder of that family."""
    from dllm_rl.export import load_peft
    from tests.helpers import family_goldens as fg

    source = "llada_moe" if family == "llada_moe_mixed" else family
    raw = json.loads((fg.FAMILIES_DIR / source / "config.json").read_text())
    raw.update(vocab_size=160, mask_token_id=156, eos_token_id=150, pad_token_id=150)  # the demo tokenizer's ids
    if family == "llada_moe_mixed":
        raw.update(moe_layer_freq=[0, 1])
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(raw))
    targets = {"dream": "('q_proj', 'v_proj', 'ff_out')", "a2d_qwen3": "('q_proj', 'attn_out', 'up_proj')",
               "llada_moe_mixed": "('k_proj', 'ff_proj', 'shared_ff_out')"}[family]
    cfg = parse_config([DEMO], SMALL + [
        f"dllm_rl.ModelSource.init_config = '{tmp_path / 'model' / 'config.json'}'",
        f"dllm_rl.ModelSource.tokenizer_dir = '{ROOT}/dllm_rl/assets/demo_model'",
        "experiment.lora = @dllm_rl.LoRAConfig()", "dllm_rl.LoRAConfig.rank = 4",
        f"dllm_rl.LoRAConfig.targets = {targets}", "dllm_rl.TrainConfig.num_steps = 1",
        "dllm_rl.TrainConfig.sft_steps = 0", "dllm_rl.TrainConfig.eval_every = 0"])
    trainer = Trainer(cfg, tmp_path / "w")
    assert trainer.model_config.family == source
    rows = trainer.train(progress=False)
    assert rows[-1]["step"] == 1  # (an untrained random model earns no reward: zero advantages, zero gradient)
    lora_config, adapters = load_peft(str(tmp_path / "w" / "final_adapter"), trainer.model_config)
    assert lora_config == cfg.lora
    for x, y in zip(jax.tree.leaves(adapters), jax.tree.leaves(trainer.trainable)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    keys = iter(jax.random.split(jax.random.key(7), len(jax.tree.leaves(trainer.trainable))))
    trained = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), trainer.trainable)
    _, _, row = trainer._step(2, trained, trainer.frozen, trainer.tx.init(trained), trainer._dataset(0))
    assert 0 <= row["logp_mismatch_mean"] <= row["logp_mismatch_max"] < 1e-4, row


def test_row_keyed_rollouts_key_each_row_by_its_prompt_and_generation(tmp_path, monkeypatch):
    """With `row_keys`, the rows of a step's rollouts are keyed by (seed, step, the prompt's position among the
    step's prompts, generation) whatever the micro-batching: 2 micro-batches of 2 prompts and 1 of 4 sample the
    same four prompts with the same keys, as `draws.row_keys` documents, and the same completions."""
    from dllm_rl.rl import train as train_lib
    from dllm_rl.sampling.draws import row_keys

    def rollouts(ppmb, grad_accum):
        cfg = parse_config([DEMO], ["dllm_rl.TrainConfig.sft_steps = 0", "dllm_rl.TrainConfig.eval_every = 0",
                                    f"dllm_rl.TrainConfig.prompts_per_micro_batch = {ppmb}",
                                    f"dllm_rl.TrainConfig.grad_accum = {grad_accum}",
                                    "dllm_rl.AGRPOConfig.num_generations = 2", "dllm_rl.AGRPOConfig.mc_samples = 1",
                                    "rollout/dllm_rl.SamplerConfig.row_keys = True"])
        trainer = Trainer(cfg, tmp_path / f"{ppmb}x{grad_accum}")
        calls, real = [], train_lib.generate

        def recording(*args, rng, **kwargs):
            out = real(*args, rng=rng, **kwargs)
            calls.append((np.asarray(jax.random.key_data(rng)), np.asarray(out.tokens)))
            return out

        monkeypatch.setattr(train_lib, "generate", recording)
        trainer._step(3, *trainer.init_state(trainer.base_params), trainer._dataset(0))
        keys, tokens = (np.concatenate([c[i] for c in calls]) for i in (0, 1))
        return keys, tokens, trainer

    keys, tokens, trainer = rollouts(2, 2)
    keys_one, tokens_one, _ = rollouts(4, 1)
    want = row_keys(jax.random.fold_in(trainer._row_key, 3), np.arange(4), 2)
    np.testing.assert_array_equal(keys, jax.random.key_data(want))
    np.testing.assert_array_equal(keys_one, keys)
    np.testing.assert_array_equal(tokens_one, tokens)



def test_the_run_traces_under_the_configured_rules(tmp_path, monkeypatch):
    """Layers that lay out their own activations (the MoE dispatch reads `parallel.mesh.current_rules`) see
    `MeshConfig.rules` while the trainer traces them, not the default table: the whole run is inside them."""
    from dllm_rl.parallel import mesh as mesh_lib

    rules = tuple((name, "fsdp" if name == "expert" else axis) for name, axis in mesh_lib.DEFAULT_RULES)
    cfg = parse_config([DEMO], SMALL + ["dllm_rl.TrainConfig.sft_steps = 0"])
    trainer = Trainer(dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, rules=rules)), tmp_path)
    seen = []
    monkeypatch.setattr(trainer, "_train", lambda *args: seen.append(mesh_lib.current_rules()) or [])
    trainer.train(progress=False)
    assert seen == [rules] and mesh_lib.current_rules() == mesh_lib.DEFAULT_RULES


def test_sft_cache_trains_each_warm_start_once_and_later_runs_load_it_exactly(tmp_path, monkeypatch):
    """With `sft_cache_dir` the first run trains and saves its warm start; a run of another method with the same
    seed loads it, bit for bit, without an SFT step; another seed or SFT budget has its own entry."""
    cache = tmp_path / "sft_cache"
    sft = ["dllm_rl.TrainConfig.sft_steps = 2", "dllm_rl.TrainConfig.sft_batch_size = 8",
           f"dllm_rl.TrainConfig.sft_cache_dir = '{cache}'"]
    first = Trainer(parse_config([DEMO], sft), tmp_path / "agrpo")
    trained = jax.tree.map(np.asarray, first.warm_start(first.base_params, progress=False))
    assert os.listdir(cache) == [first.sft_cache_key()]

    def no_sft(*args, **kwargs):
        raise AssertionError("the cached warm start was trained again")

    monkeypatch.setattr(steps, "sft_update", no_sft)
    d1 = Trainer(parse_config([DEMO, os.path.join(ROOT, "experiments/configs/demo_d1.gin")], sft), tmp_path / "d1")
    loaded = d1.warm_start(d1.base_params, progress=False)
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, np.asarray(b)), trained, loaded))
    assert not jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, np.asarray(b)), trained, d1.base_params))
    for other in ("dllm_rl.TrainConfig.seed = 1", "dllm_rl.TrainConfig.sft_steps = 3"):
        assert Trainer(parse_config([DEMO], [*sft, other]), tmp_path / "x").sft_cache_key() != first.sft_cache_key()
