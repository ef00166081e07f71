"""experiments.aot: a training step's programs compiled by libtpu for a TPU topology, on the tiny demo model."""
import json

import jax
import pytest

from dllm_rl.parallel import mesh as mesh_lib
from experiments import aot
from experiments.run import parse_config

DEMO = "experiments/configs/demo.gin"


def test_vocab_sorts_finds_sorts_over_the_vocabulary_only():
    hlo = "\n".join([
        "%body.1 (p: f32[2,160]) -> f32[2,160] {",
        "  %s = f32[2,160]{1,0} sort(f32[2,160]{1,0} %p), dimensions={1}",
        "  %t = f32[2,150]{1,0} sort(f32[2,150]{1,0} %q), dimensions={1}",
        "}",
        "ENTRY %main (x: f32[4,160]) -> f32[4,160] {",
        "  %u = f32[4,160]{1,0} sort(f32[4,160]{1,0} %x), dimensions={1}",
    ])
    found = aot.vocab_sorts(hlo, 160)
    assert [f.split(":")[0] for f in found] == ["%body.1", "ENTRY"]


class _Device:
    def __init__(self, kind, coords):
        self.device_kind, self.coords = kind, coords


def _chips(kind, n, cores=1):
    return [_Device(kind, (i % 2, i // 2, 0)) for i in range(n) for _ in range(cores)]


def test_device_hbm_splits_a_chip_over_its_devices():
    assert aot.device_hbm_bytes(_chips("TPU v5 lite", 8)) == 16 * aot.GIB
    assert aot.device_hbm_bytes(_chips("TPU v4", 4)) == 32 * aot.GIB  # megacore: a chip is one device
    assert aot.device_hbm_bytes(_chips("TPU v4", 4, cores=2)) == 16 * aot.GIB  # one device per TensorCore


def test_topology_options_compile_v4_as_megacores_and_a_single_chip_as_its_own_host():
    assert aot.topology_options("v4:2x2x1") == {"chip_config_name": "megacore"}
    assert aot.topology_options("v4:2x2x1", "default") == {}
    assert aot.topology_options("v5e:2x4") == aot.topology_options("v5p:2x2x1") == {}
    assert aot.topology_options("v6e:1x1") == {"chips_per_host_bounds": [1, 1, 1]}
    assert aot.topology_options("v5p:1x1x1") == {"chips_per_host_bounds": [1, 1, 1]}


def _need_libtpu():
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        pytest.skip(f"libtpu cannot be imported: {e}")


def test_a_v4_slice_is_compiled_for_one_megacore_device_per_chip():
    _need_libtpu()
    megacore = aot.topology_devices("v4:2x2x1")
    assert len(megacore) == 4 and len({tuple(d.coords) for d in megacore}) == 4
    assert megacore[0].device_kind == "TPU v4" and aot.device_hbm_bytes(megacore) == 32 * aot.GIB
    per_core = aot.topology_devices("v4:2x2x1", "default")  # libtpu's default: each TensorCore a device
    assert len(per_core) == 8 and aot.device_hbm_bytes(per_core) == 16 * aot.GIB
    assert len(aot.topology_devices("v6e:1x1")) == 1


def test_optimizer_state_takes_the_trainable_shardings():
    _need_libtpu()
    from dllm_rl.parallel import mesh as mesh_lib
    from experiments.run import parse_config

    cfg = parse_config(["experiments/configs/demo.gin"], [])
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4, "tensor": 1}, devices=aot.topology_devices("v5e:2x4"))
    setup = aot.make_setup(cfg, aot.model_config_for(cfg, "unused"), mesh)
    _, opt_state = aot.abstract_opt_state(setup)
    adam = opt_state[1][0]
    want = jax.tree.map(lambda x: x.sharding, setup.trainable)
    assert jax.tree.map(lambda x: x.sharding, adam.mu) == want == jax.tree.map(lambda x: x.sharding, adam.nu)
    assert adam.count.sharding == mesh_lib.replicated(mesh)
    # full fine-tuning: while the loss runs, the optimizer state and the running gradient sum of the earlier
    # micro-batches stay resident besides its arguments; during the eval, the optimizer state only
    grad_sum = aot.sharded_bytes(setup.trainable) if cfg.train.grad_accum > 1 else 0
    assert aot.resident_bytes(setup, "loss") == aot.sharded_bytes(opt_state) + grad_sum
    assert aot.resident_bytes(setup, "eval") == aot.sharded_bytes(opt_state) > 0


def test_a_batch_the_mesh_cannot_split_is_a_setup_error():
    _need_libtpu()
    from dllm_rl.rl.config import TrainError

    with pytest.raises(TrainError, match=r"rollout batch .*dimension 4 is not divisible"):
        aot.main(["--topology", "v5e:2x4", "--gin", "experiments/configs/demo.gin", "--mesh", "data=1,fsdp=8,tensor=1",
                  "--gin_binding", "dllm_rl.TrainConfig.prompts_per_micro_batch=1",
                  "--gin_binding", "dllm_rl.AGRPOConfig.num_generations=4"])


def test_demo_config_compiles_for_a_tpu_topology(capsys):
    _need_libtpu()
    rows = aot.main(["--topology", "v5e:2x4", "--gin", "experiments/configs/demo.gin",
                     "--mesh", "data=2,fsdp=4,tensor=1", "--programs", "rollout,loss,update"])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == rows
    assert [r["program"] for r in rows] == ["rollout", "loss", "update"]
    for r in rows:
        assert r["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
        assert r["chip_hbm_bytes"] == 16 * aot.GIB and r["fits"]
        assert (r["devices"], r["device_kind"], r["chip_config"]) == (8, "TPU v5 lite", "default")
        assert 0 < r["per_chip_bytes"] == r["argument_bytes"] + r["temp_bytes"] + r["output_bytes"] - r["alias_bytes"]
        assert r["resident_bytes"] >= 0
    assert rows[0]["vocab_sorts"] == 0
    # the update donates params and optimizer state: their buffers are reused for the outputs
    assert rows[2]["alias_bytes"] > 0


def test_a_program_the_compiler_refuses_is_a_row_that_does_not_fit(monkeypatch):
    _need_libtpu()

    def refuse(setup, name, topology, hbm):
        raise jax.errors.JaxRuntimeError(f"{status}: Ran out of memory on HBM\nmore")

    monkeypatch.setattr(aot, "compile_program", refuse)
    argv = ["--topology", "v5e:2x4", "--gin", "experiments/configs/demo.gin", "--mesh", "data=2,fsdp=4,tensor=1",
            "--programs", "eval"]
    status = "RESOURCE_EXHAUSTED"
    [row] = aot.main(argv)
    assert row["fits"] is False and row["error"] == "RESOURCE_EXHAUSTED: Ran out of memory on HBM"
    assert row["chip_hbm_bytes"] == 16 * aot.GIB and row["devices"] == 8
    assert aot.exit_code(argv) == 1
    status = "INTERNAL"  # any other compiler error is raised
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        aot.main(argv)


@pytest.mark.parametrize("algorithm,bindings", [
    ("dmpo", ["experiment.dmpo = @dllm_rl.DMPOConfig()", "dllm_rl.DMPOConfig.num_generations = 8"]),
    ("tracerl", ["experiment.tracerl = @dllm_rl.TraceRLConfig()", "dllm_rl.TraceRLConfig.sampling_steps = 8",
                 "dllm_rl.TraceRLConfig.kl_reference = 'ref'", "dllm_rl.TraceRLConfig.row_batch_size = 4"]),
    ("dipo", ["experiment.dipo = @dllm_rl.DiPOConfig()", "dllm_rl.DiPOConfig.sampling_steps = 8",
              "dllm_rl.DiPOConfig.row_batch_size = 4"]),
    ("espo", ["experiment.espo = @dllm_rl.ESPOConfig()", "dllm_rl.ESPOConfig.num_generations = 8",
              "dllm_rl.ESPOConfig.num_iterations = 2"]),
    ("spg", ["experiment.spg = @dllm_rl.SPGConfig()", "dllm_rl.SPGConfig.num_generations = 8",
             "dllm_rl.SPGConfig.block_length = 4"]),
])
def test_the_loss_of_a_registered_objective_lowers_from_its_unit_like(algorithm, bindings):
    """`steps.MASKED_OBJECTIVES[...].unit_like` gives the loss program's abstract inputs (TraceRL, DiPO: one row
    batch)."""
    cfg = parse_config([DEMO], ["experiment.agrpo = None", f"dllm_rl.TrainConfig.algorithm = '{algorithm}'", *bindings])
    setup = aot.make_setup(cfg, aot.model_config_for(cfg, "unused"), mesh_lib.make_mesh(cfg.mesh))
    args = aot.lower_loss(setup).args_info[0]
    rows = 4 if algorithm in ("tracerl", "dipo") else cfg.train.prompts_per_micro_batch * 8
    assert args[2].completion_ids.shape == (rows, cfg.rollout.gen_length)
    if algorithm in ("tracerl", "dipo"):  # the rollout policy's and the reference's token log-probs
        assert args[4].shape == args[5].shape == (rows, cfg.rollout.gen_length)
    if algorithm == "espo":  # the rollout policy's and the reference's sequence ELBOs
        assert args[4].shape == args[5].shape == (rows,)


def test_moe_layer_program_reports_memory_and_flops_of_one_moe_ffn():
    """`--programs moe_layer` compiles one MoE FFN (forward and input gradient) at the loss program's activation
    shape; a dense model has no such program. Compiled here for the CPU (no HBM: `fits` None)."""
    from dllm_rl import models
    from tests.helpers.family_goldens import FAMILIES_DIR

    cfg = parse_config([DEMO], [])
    mesh = mesh_lib.make_mesh({"data": -1}, devices=jax.devices()[:1])
    setup = aot.make_setup(cfg, models.config_from_hf(FAMILIES_DIR / "llada_moe"), mesh)
    row, _ = aot.compile_program(setup, "moe_layer", "cpu", None)
    assert row["program"] == "moe_layer" and row["fits"] is None and row["resident_bytes"] == 0
    assert row["flops"] > 0 and row["output_bytes"] > 0
    dense = aot.make_setup(cfg, models.config_from_hf(FAMILIES_DIR / "dream"), mesh)
    with pytest.raises(ValueError, match="needs an MoE model"):
        aot.lower_moe_layer(dense)
