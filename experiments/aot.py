"""Compile one training step's programs for a TPU topology without a TPU, and say whether each fits in HBM.

  python -m experiments.aot --topology v5p:2x2x2 --gin experiments/configs/gsm8k_agrpo.gin \
      [--gin_binding ...] [--mesh data=1,fsdp=8,tensor=1] [--model_config PATH] [--programs rollout,loss]

libtpu's compiler runs here on a topology description (`jax.experimental.topologies`); the rest of the process
keeps JAX_PLATFORMS=cpu. Every input is an abstract `jax.ShapeDtypeStruct` with its sharding on the config's mesh
(`MeshConfig` from gin, or `--mesh`), so the 8B weights are never allocated. The programs are those a training
step runs, at the config's shapes: the recorded rollout (`sampling.generate`), the loss gradients of one
micro-batch (`rl.steps.agrpo_grads` or `rl.steps.masked_grads`), the optimizer update (`rl.steps.apply_update`)
and the eval sampler. One JSON line per program: per-chip bytes = arguments + temporaries + outputs - aliased
(`compiled.memory_analysis()`, exact for the compiled program); it fits when that plus the training state
that stays resident meanwhile (`resident_bytes`) is within the device's HBM; a program the compiler refuses for
lack of HBM is a row with `fits` false and the compiler's `error`. Exit status 1 when a program does not fit.
The model is the checkpoint's config.json when the gin points at one that exists here, else `--model_config`
(default: LLaDA-8B-Instruct's; real-shape configs of the other families are in experiments/configs/model_shapes).
`flops` is the compiler's cost analysis, which counts a loop body once (the layer scan: one layer; the
sampler's step loop: one step), so it is exact only for loop-free programs such as `moe_layer`.

A device is what JAX lists on a TPU VM of that topology: on v4 a megacore chip (4 devices of 32 GiB on a v4-8;
`--chip_config default` compiles for libtpu's own default instead, each TensorCore a 16 GiB device). The HBM
compared against is the chip's nominal HBM (`CHIP_HBM_GIB`); the compiler itself refuses a program over a little
less (15.75 GiB on v5e, 31.25 on v6e, 30.75 on a v4 megacore, 95.74 on v5p). (About 360 lines: the abstract
inputs of four programs and their resident state belong together.)
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dllm_rl.assets import LLADA_8B_META_DIR
from dllm_rl import models
from dllm_rl.models import llada
from dllm_rl.models import lora as lora_lib
from dllm_rl.parallel import mesh as mesh_lib
from dllm_rl.cli import make_parser, mesh_flag, run_main

GIB = 2**30
# HBM per chip by device_kind (the topology's devices report no memory stats).
CHIP_HBM_GIB = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5": 95, "TPU v5p": 95, "TPU v6 lite": 32, "TPU v6e": 32}
# libtpu chip configuration to compile for, by TPU generation, where its default is not what a TPU VM runs. libtpu
# lists each of a v4 chip's two TensorCores as a device of its own (core_on_chip 0 and 1, 16 GiB each) unless
# told `chip_config_name="megacore"`; a v4 TPU VM runs its chips as megacores: one device per chip (both
# TensorCores, 32 GiB), 4 devices on a v4-8. (v5p's default is already one device per chip.)
DEFAULT_CHIP_CONFIG = {"v4": "megacore"}
PROGRAMS = ("rollout", "loss", "update", "eval")
EXTRA_PROGRAMS = ("moe_layer",)  # asked for by name only


def topology_options(name: str, chip_config: str | None = None) -> dict:
    """Options of `get_topology_desc` for a topology such as 'v4:2x2x1': the chip configuration (`chip_config`,
    else `DEFAULT_CHIP_CONFIG` of the generation; 'default' for libtpu's own) and, for a slice smaller than
    libtpu's default host (2x2x1 chips, e.g. 'v6e:1x1', one chip), the slice itself as the host's chips."""
    generation, _, dims = name.partition(":")
    options = {}
    chip_config = chip_config or DEFAULT_CHIP_CONFIG.get(generation)
    if chip_config and chip_config != "default":
        options["chip_config_name"] = chip_config
    bounds = [int(n) for n in dims.split("x")] + [1] * (3 - len(dims.split("x"))) if dims else []
    if bounds and (bounds[0] % 2 or bounds[1] % 2):
        options["chips_per_host_bounds"] = bounds
    return options


def topology_devices(name: str, chip_config: str | None = None) -> list:
    """The devices of a TPU topology such as 'v5e:2x4' (compile targets only; nothing runs on them), in the
    chip configuration of `topology_options`."""
    from jax.experimental import topologies

    # Compiling needs no exclusive TPU access; without this a second process using libtpu fails on its lockfile.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    return list(topologies.get_topology_desc(platform="tpu", topology_name=name,
                                             **topology_options(name, chip_config)).devices)


def device_hbm_bytes(devices: list) -> int:
    """HBM of one device: the chip's HBM split over the devices on a chip (two on a v4 chip compiled per
    TensorCore, one otherwise); the chips are the devices' distinct coordinates."""
    chips = len({tuple(d.coords) for d in devices})
    return CHIP_HBM_GIB[devices[0].device_kind] * GIB * chips // len(devices)


def abstract_tree(shapes, dtypes, shardings):
    """ShapeDtypeStructs from matching trees of shape tuples, dtypes (or one dtype) and shardings."""
    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(n, int) for n in x)  # noqa: E731
    if not isinstance(dtypes, dict):
        dtypes = jax.tree.map(lambda _: dtypes, shapes, is_leaf=is_shape)
    return jax.tree.map(lambda s, d, sh: jax.ShapeDtypeStruct(s, d, sharding=sh), shapes, dtypes, shardings,
                        is_leaf=is_shape)


def abstract_params(config: llada.LLaDAConfig, mesh, dtype, rules=mesh_lib.DEFAULT_RULES):
    """The model params as ShapeDtypeStructs on their mesh shardings (checked for divisibility)."""
    shapes, shardings = llada.param_shapes(config), mesh_lib.param_shardings(mesh, config, rules=rules)
    mesh_lib.check_divisible(shapes, shardings)
    return abstract_tree(shapes, jnp.dtype(dtype), shardings)


def batch_array(mesh, rules, shape: tuple[int, ...], dtype) -> jax.ShapeDtypeStruct:
    """An abstract [B, ...] array split over the batch axes of the rules."""
    return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=mesh_lib.batch_sharding(mesh, len(shape), rules))


def abstract_key(mesh) -> jax.ShapeDtypeStruct:
    key = jax.eval_shape(lambda: jax.random.key(0))  # nothing runs: the TPU mesh may be the context mesh
    return jax.ShapeDtypeStruct((), key.dtype, sharding=mesh_lib.replicated(mesh))


def vocab_sorts(hlo: str, vocab: int) -> list[str]:
    """'computation: instruction' for every sort in compiled HLO text whose operands span the vocabulary."""
    out, computation = [], ""
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and "{" in line:
            computation = line.split(" ")[0] if not line.startswith("ENTRY") else "ENTRY"
        if " sort(" in line and f",{vocab}]" in line:
            out.append(f"{computation}: {line.strip()[:120]}")
    return out


def per_chip_bytes(compiled) -> dict[str, int]:
    """Per-device bytes of a compiled program: its parts and total (arguments + temporaries + outputs -
    aliased, since a donated argument's buffer holds the output)."""
    mem = compiled.memory_analysis()
    parts = {"argument_bytes": mem.argument_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes,
             "output_bytes": mem.output_size_in_bytes, "alias_bytes": mem.alias_size_in_bytes}
    parts["per_chip_bytes"] = (parts["argument_bytes"] + parts["temp_bytes"] + parts["output_bytes"]
                               - parts["alias_bytes"])
    return parts


def sharded_bytes(tree) -> int:
    """Bytes one device holds of a tree of abstract arrays (the shard shape of device 0)."""
    return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in jax.tree.leaves(tree))


@dataclasses.dataclass
class Setup:
    """What the step programs are built from: the experiment config, model config, mesh and abstract state."""

    cfg: object  # rl.config.ExperimentConfig
    model_config: llada.LLaDAConfig
    mesh: jax.sharding.Mesh
    base: dict
    trainable: dict
    frozen: dict | None

    @property
    def rules(self):
        return self.cfg.mesh.rules


def make_setup(cfg, model_config: llada.LLaDAConfig, mesh) -> Setup:
    """Abstract base params (the checkpoint dtype) and the (trainable, frozen) split of the config: LoRA adapters
    float32 on their logical-axis shardings, or the base params themselves for full fine-tuning."""
    cfg.check_batches(mesh)
    base = abstract_params(model_config, mesh, cfg.model.dtype, cfg.mesh.rules)
    if cfg.lora is None:
        return Setup(cfg, model_config, mesh, base, base, None)
    abstract = jax.eval_shape(lambda p: lora_lib.init_lora(p, cfg.lora, jax.random.key(0)), base)
    shapes = jax.tree.map(lambda x: x.shape, abstract)
    shardings = mesh_lib.lora_shardings(mesh, cfg.lora, shapes, cfg.mesh.rules)
    mesh_lib.check_divisible(shapes, shardings, "LoRA adapter")
    adapters = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    return Setup(cfg, model_config, mesh, base, adapters, base)


def prompts(setup: Setup, rows: int, width: int | None = None):
    """Abstract left-padded prompt ids and mask [rows, width (default max_prompt_length)]."""
    shape = (rows, width or setup.cfg.train.max_prompt_length)
    return batch_array(setup.mesh, setup.rules, shape, jnp.int32), batch_array(setup.mesh, setup.rules, shape,
                                                                              jnp.int32)


def lower_sampler(setup: Setup, sampler, rows: int, width: int | None = None):
    """The sampler program on the policy params as the trainer samples them (`rl.steps.sampling_params`: the
    base with unmerged LoRA adapters, or the fine-tuned params), for prompts of `width` tokens."""
    from dllm_rl.rl.steps import sampling_params
    from dllm_rl.sampling.generate import lower

    ids, mask = prompts(setup, rows, width)
    params = sampling_params(setup.trainable, setup.frozen, setup.cfg.lora)
    return lower(setup.model_config, sampler, params, ids, mask, abstract_key(setup.mesh))


def rollout_rows(setup: Setup) -> int:
    return setup.cfg.train.prompts_per_micro_batch * setup.cfg.num_generations


def lower_loss(setup: Setup):
    """One micro-batch's gradients at the rollout's shapes (AGRPO: with the truncation record it wrote; TraceRL,
    DiPO: one batch of `row_batch_size` trace rows)."""
    from dllm_rl.rl import agrpo, steps
    from dllm_rl.sampling.truncation import TruncationRecord

    cfg, mc, mesh, rules = setup.cfg, setup.model_config, setup.mesh, setup.rules
    b, length = rollout_rows(setup), cfg.rollout.gen_length
    ids, mask = prompts(setup, b)
    arr = lambda shape, dtype: batch_array(mesh, rules, shape, dtype)  # noqa: E731
    completion, advantages = arr((b, length), jnp.int32), arr((b,), jnp.float32)
    static = dict(model_config=mc, config=cfg.algorithm_config, lora_config=cfg.lora)
    objective = steps.MASKED_OBJECTIVES.get(cfg.train.algorithm)
    if objective is not None:
        samples = steps.Samples(ids, mask, completion, arr((b, length), jnp.int32), advantages)
        batch, old, ref = objective.unit_like(arr, samples, cfg.algorithm_config)
        return steps.masked_grads_program(setup.trainable, algorithm=cfg.train.algorithm, **static).lower(
            setup.trainable, setup.frozen, batch, abstract_key(mesh), old, ref, None)
    keep = None
    if cfg.rollout.top_k or cfg.rollout.top_p < 1.0:
        keep = TruncationRecord(bits=arr((b, length, -(-mc.embedding_size // 8)), jnp.uint8),
                                vocab_size=mc.embedding_size)
    batch = agrpo.AGRPOBatch(prompt_ids=ids, prompt_mask=mask, completion_ids=completion,
                             unmask_step=arr((b, length), jnp.int32), old_logp=arr((b, length), jnp.float32),
                             entropy=arr((b, length), jnp.float32), advantages=advantages, keep=keep)
    ref = setup.base if cfg.agrpo.beta else None
    return steps.agrpo_grads_program(setup.trainable, **static).lower(setup.trainable, setup.frozen, ref, batch,
                                                                     abstract_key(mesh))


def lower_moe_layer(setup: Setup):
    """One MoE FFN (`models.moe.moe_ffn`) forward and input gradient on the loss program's activations
    [rollout rows, prompt + completion, D] in the compute dtype, with the first MoE layer's params: the layer's
    own memory and FLOPs (cost analysis is exact here: no loop)."""
    from dllm_rl.models import moe as moe_lib

    mc, cfg = setup.model_config, setup.cfg
    if mc.moe is None:
        raise ValueError("--programs moe_layer needs an MoE model config (LLaDA-MoE)")
    group = setup.base["layers"] if "router" in setup.base["layers"] else setup.base["moe_ffn"]
    layer = {name: jax.ShapeDtypeStruct(a.shape[1:], a.dtype, sharding=jax.sharding.NamedSharding(
        setup.mesh, jax.sharding.PartitionSpec(*a.sharding.spec[1:]))) for name, a in group.items()}
    dtype = jnp.dtype(cfg.model.dtype)
    h = batch_array(setup.mesh, setup.rules, (rollout_rows(setup), cfg.train.max_prompt_length + cfg.rollout.gen_length,
                                              mc.d_model), dtype)

    def layer_vjp(layer, h_BxTxD, cotangent_BxTxD):
        y_BxTxD, vjp = jax.vjp(lambda x: moe_lib.moe_ffn(mc.moe, x, layer), h_BxTxD)
        return y_BxTxD, vjp(cotangent_BxTxD)[0]

    return jax.jit(layer_vjp).lower(layer, h, h)


def abstract_opt_state(setup: Setup):
    """(optax transformation, abstract optimizer state): every subtree shaped like the trainable params (Adam's
    moments) takes their shardings, as `tx.init` on the placed params gives eagerly; scalars are replicated."""
    from dllm_rl.rl.optimizer import make_optimizer

    tx, _ = make_optimizer(setup.cfg.train)
    treedef = jax.tree.structure(setup.trainable)
    like = lambda node: jax.tree.map(lambda x, t: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=t.sharding),  # noqa: E731
                                     node, setup.trainable)
    state = jax.tree.map(lambda n: like(n) if jax.tree.structure(n) == treedef else n,
                         jax.eval_shape(tx.init, setup.trainable), is_leaf=lambda n: jax.tree.structure(n) == treedef)
    replicate = lambda x: x if x.sharding is not None else jax.ShapeDtypeStruct(  # noqa: E731
        x.shape, x.dtype, sharding=mesh_lib.replicated(setup.mesh))
    return tx, jax.tree.map(replicate, state)


def lower_update(setup: Setup):
    """The optimizer update (gradients shaped and sharded like the trainable params)."""
    from dllm_rl.rl import steps

    tx, opt_state = abstract_opt_state(setup)
    return steps.update_program(tx, setup.trainable, opt_state).lower(setup.trainable, opt_state, setup.trainable)


def resident_bytes(setup: Setup, name: str) -> int:
    """Per-device bytes of the training state that stay in HBM while `name` runs without being its arguments:
    the frozen base during the update; the optimizer state otherwise (the loss and the samplers take the
    trainable and frozen params as arguments), plus, in the rollout and loss of a later micro-batch, the running
    gradient sum (shaped like the trainable params)."""
    if name == "update":
        return 0 if setup.frozen is None else sharded_bytes(setup.frozen)
    if name == "moe_layer":
        return 0  # a part of the loss program, not a program of its own
    grad_sum = sharded_bytes(setup.trainable) if name != "eval" and setup.cfg.train.grad_accum > 1 else 0
    return sharded_bytes(abstract_opt_state(setup)[1]) + grad_sum


def eval_shape(setup: Setup) -> tuple[int, int]:
    """(rows, prompt width) of the largest in-run evaluation call: `eval_rows_per_device` per batch device with
    prompts up to max_prompt_length in their length bucket (invariant batching), or `eval_batch_size` rows
    padded to max_prompt_length (per-batch)."""
    tc, bucket = setup.cfg.train, setup.cfg.eval_batching.prompt_bucket
    if tc.eval_batching == "per_batch":
        return tc.eval_batch_size, tc.max_prompt_length
    return (tc.eval_rows_per_device * mesh_lib.batch_ways(setup.mesh, setup.rules),
            -(-tc.max_prompt_length // bucket) * bucket)


def lower_program(setup: Setup, name: str):
    from dllm_rl.rl.evaluate import greedy

    cfg = setup.cfg
    if name == "rollout":
        return lower_sampler(setup, cfg.rollout, rollout_rows(setup))
    if name == "eval":
        return lower_sampler(setup, cfg.eval_sampler or greedy(cfg.rollout), *eval_shape(setup))
    return {"loss": lower_loss, "update": lower_update, "moe_layer": lower_moe_layer}[name](setup)


def compile_program(setup: Setup, name: str, topology: str, hbm: int | None) -> tuple[dict, str]:
    """(result row, compiled HLO text) of one program; `fits` is None when the device memory is unknown (`hbm`
    None: a CPU)."""
    t0 = time.perf_counter()
    # the mesh context and rules table that layers laying out their own shard_map read (models.tpu_attention,
    # models.moe)
    with jax.set_mesh(setup.mesh), mesh_lib.use_rules(setup.rules):
        compiled = lower_program(setup, name).compile()
    seconds = time.perf_counter() - t0
    mem = per_chip_bytes(compiled)
    hlo = compiled.as_text()
    resident = resident_bytes(setup, name)
    row = {"program": name, "topology": topology, "mesh": dict(setup.mesh.shape),
           "per_chip_bytes": mem["per_chip_bytes"], "chip_hbm_bytes": hbm,
           "fits": None if hbm is None else mem["per_chip_bytes"] + resident <= hbm,
           "compile_seconds": round(seconds, 1),
           **{k: v for k, v in mem.items() if k != "per_chip_bytes"}, "resident_bytes": resident,
           "param_bytes_per_chip": sharded_bytes(setup.base),
           "flops": (compiled.cost_analysis() or {}).get("flops")}
    if name in ("rollout", "eval"):
        row["vocab_sorts"] = len(vocab_sorts(hlo, setup.model_config.embedding_size))
    return row, hlo


def model_config_for(cfg, fallback: str) -> models.DecoderConfig:
    """The checkpoint's config.json (any family) when the gin's model source exists here, else `fallback`'s."""
    for field in ("ckpt_dir", "hf_dir", "init_config"):
        path = cfg.model.path(field) if getattr(cfg.model, field) else None
        if path and os.path.exists(path if field == "init_config" else os.path.join(path, "config.json")):
            return models.config_from_hf(path)
    return models.config_from_hf(fallback)


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--topology", required=True,
                   help="TPU topology, e.g. v5e:2x4, v5p:2x2x1, v4:2x2x1, v6e:2x4, v6e:1x1 (one chip)")
    p.add_argument("--chip_config", default=None,
                   help="libtpu chip configuration: 'megacore' (the default for v4: one 32 GiB device per chip, as a "
                        "v4 TPU VM runs) or 'default' (libtpu's: on v4 each TensorCore a 16 GiB device)")
    p.add_argument("--gin", action="append", required=True, help="gin config file (repeatable)")
    p.add_argument("--gin_binding", action="append", default=[], help="extra binding, e.g. 'experiment.lora=None'")
    p.add_argument("--mesh", type=mesh_flag, default=None,
                   help="override MeshConfig.shape, e.g. data=1,fsdp=8,tensor=1")
    p.add_argument("--model_config", default=str(LLADA_8B_META_DIR / "config.json"),
                   help="model config.json when the gin's checkpoint does not exist here (default: LLaDA-8B)")
    p.add_argument("--programs", default=",".join(PROGRAMS),
                   help=f"comma-separated subset of {PROGRAMS + EXTRA_PROGRAMS} (moe_layer: one MoE FFN, forward and "
                        "input gradient, at the loss program's activation shape)")
    p.add_argument("--hlo_dir", default=None, help="write each program's compiled HLO text here")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    from experiments.run import parse_config

    args = parse_args(argv)
    cfg = parse_config(args.gin, args.gin_binding)
    if args.mesh:
        cfg = dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, shape=args.mesh))
    devices = topology_devices(args.topology, args.chip_config)
    mesh = mesh_lib.make_mesh(cfg.mesh, devices=devices)
    setup = make_setup(cfg, model_config_for(cfg, args.model_config), mesh)
    rows, hbm = [], device_hbm_bytes(devices)
    for name in args.programs.split(","):
        try:
            row, hlo = compile_program(setup, name, args.topology, hbm)
        except jax.errors.JaxRuntimeError as e:  # the compiler refuses a program over the device's usable HBM
            if not str(e).startswith("RESOURCE_EXHAUSTED"):
                raise
            row, hlo = {"program": name, "topology": args.topology, "mesh": dict(mesh.shape), "per_chip_bytes": None,
                        "chip_hbm_bytes": hbm, "fits": False, "error": str(e).splitlines()[0]}, None
        row.update(devices=len(devices), device_kind=devices[0].device_kind,
                   chip_config=topology_options(args.topology, args.chip_config).get("chip_config_name", "default"))
        if args.hlo_dir and hlo is not None:
            os.makedirs(args.hlo_dir, exist_ok=True)
            with open(os.path.join(args.hlo_dir, f"{name}.hlo.txt"), "w", encoding="utf-8") as f:
                f.write(hlo)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def exit_code(argv=None) -> int:
    """0 when every program fits, 1 otherwise."""
    return 0 if all(r["fits"] for r in main(argv)) else 1


if __name__ == "__main__":
    run_main(exit_code)
