"""The run's configuration: model source, training knobs and the whole experiment, with their validation.

Frozen dataclasses, bound by gin only in `experiments/run.py` (as `dllm_rl.TrainConfig`, `dllm_rl.ModelSource`, ...).
`ExperimentConfig.validate` runs every cross-field check before any model is loaded or compiled.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from dllm_rl import paths
from dllm_rl.checkpoint import load_model
from dllm_rl.models import llada, lora as lora_lib
from dllm_rl.parallel import mesh as mesh_lib
from dllm_rl.rl import agrpo, diffu_grpo, dipo, dmpo, espo, evaluate as eval_lib, spg, tracerl, wd1
from dllm_rl.sampling import SamplerConfig
from dllm_rl.tasks import get_task

# TrainConfig.algorithm → (the ExperimentConfig field holding its loss config, that config's class). Every
# algorithm but AGRPO trains through `rl.steps.MASKED_OBJECTIVES` (rollouts prepared once, then their updates).
ALGORITHMS = {"agrpo": ("agrpo", agrpo.AGRPOConfig), "diffu_grpo": ("diffu_grpo", diffu_grpo.DiffuGRPOConfig),
              "wd1": ("wd1", wd1.WD1Config), "dmpo": ("dmpo", dmpo.DMPOConfig),
              "tracerl": ("tracerl", tracerl.TraceRLConfig), "dipo": ("dipo", dipo.DiPOConfig),
              "espo": ("espo", espo.ESPOConfig), "spg": ("spg", spg.SPGConfig)}
LossConfig = (agrpo.AGRPOConfig | diffu_grpo.DiffuGRPOConfig | wd1.WD1Config | dmpo.DMPOConfig
              | tracerl.TraceRLConfig | dipo.DiPOConfig | espo.ESPOConfig | spg.SPGConfig)

# The algorithms whose rows follow the rollout's step record: (its config's class name, its rows' name).
TRACE_ALGORITHMS = {"tracerl": ("TraceRLConfig", "TraceRL"), "dipo": ("DiPOConfig", "DiPO")}


class TrainError(ValueError):
    """A training setup that cannot run; raised before anything is compiled."""


def resolve_path(path: str) -> str:
    """A path as given, or, when it does not exist relative to the working directory, relative to the folder
    holding the `dllm_rl` package (so configs naming `dllm_rl/assets/...` work from any directory). Remote URLs
    (gs://...) are returned as they are."""
    if paths.is_remote(path) or os.path.isabs(path) or os.path.exists(path):
        return path
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    candidate = os.path.join(package_parent, path)
    return candidate if os.path.exists(candidate) else path


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where the initial policy comes from: exactly one of an Orbax folder (`dllm_rl.convert`), an HF folder,
    or a config.json to initialise randomly (tests and the demo). The tokenizer folder defaults to the model's
    (the config's folder for `init_config`)."""

    ckpt_dir: str | None = None
    hf_dir: str | None = None
    init_config: str | None = None
    tokenizer_dir: str | None = None
    dtype: str = "bfloat16"

    def _given(self) -> list[str]:
        return [n for n in ("ckpt_dir", "hf_dir", "init_config") if getattr(self, n)]

    def validate(self) -> None:
        given = self._given()
        if len(given) != 1:
            raise TrainError(f"ModelSource needs exactly one of ckpt_dir, hf_dir, init_config; got {given or 'none'}")
        path = self.path(given[0])
        if not paths.absolute(path).exists():
            raise TrainError(f"ModelSource.{given[0]}={getattr(self, given[0])!r} does not exist; convert the model "
                             "first (python -m dllm_rl.convert) or fix the path")
        if not (paths.absolute(self.tokenizer_path) / "tokenizer.json").exists():
            raise TrainError(f"no tokenizer.json in {self.tokenizer_path!r}; set ModelSource.tokenizer_dir")

    def path(self, field: str) -> str | None:
        value = getattr(self, field)
        return resolve_path(value) if value else None

    def load(self, shardings_fn=None) -> tuple[llada.LLaDAConfig, Any]:
        """(config, params) of the source, placed on `shardings_fn(config)` when given."""
        field = self._given()[0]
        return load_model(**{field: self.path(field)}, dtype=self.dtype, shardings_fn=shardings_fn)

    @property
    def tokenizer_path(self) -> str:
        if self.tokenizer_dir:
            return self.path("tokenizer_dir")
        if self.init_config:
            return os.path.dirname(self.path("init_config"))
        return self.path(self._given()[0])


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The run: task, batching, optimizer, evaluation, checkpointing, optional SFT warm start.

    Every `eval_every` steps (0: never) the policy is evaluated on `eval_examples` examples of `eval_split`
    (default: the task's evaluation split), drawn with `eval_sample_seed` (None: the whole split), in generate
    calls of `eval_rows_per_device` rows per batch device with each prompt padded to its length bucket
    (`eval_batching='invariant'`: every example's result is independent of the others and of the device count) or,
    with `eval_batching='per_batch'`, of `eval_batch_size` examples padded to their longest prompt (the reference
    scripts' way; `rl.evaluate.Batching`).

    Advantages (`rl.advantages.group_advantages`): each reward minus its group's mean (minus the mean of the
    group's other rewards where the loss config says so: `ExperimentConfig.leave_one_out_advantages`), divided by
    the group std (+1e-4) with `scale_rewards_by_std`.

    With `sft_cache_dir`, the SFT warm start (`sft_steps` > 0) is saved there under a key of every setting it
    depends on (`Trainer.sft_cache_key`) and loaded, not trained again, by a later run with the same key: a method
    sweep then trains each seed's warm start once. The key names settings, not code: empty the folder after
    changing a task's demonstrations or the SFT step.

    Defaults follow the released GSM8K train.yaml (lr 5e-6 cosine, warmup 1 %, AdamW β=(0.9, 0.99), weight
    decay 0.01, clip 1.0, 2 micro-batches of one prompt group each per step, seed 333).
    """

    task: str = "gsm8k"
    train_split: str = "train"
    eval_split: str | None = None
    prompt_style: str = "agrpo"
    reward_style: str = "agrpo"
    algorithm: str = "agrpo"
    seed: int = 333
    num_steps: int = 100
    prompts_per_micro_batch: int = 1
    grad_accum: int = 2
    max_prompt_length: int = 384
    learning_rate: float = 5e-6
    lr_schedule: str = "cosine"
    warmup_ratio: float = 0.01
    weight_decay: float = 0.01
    adam_b1: float = 0.9
    adam_b2: float = 0.99
    max_grad_norm: float = 1.0
    eval_every: int = 0
    eval_examples: int | None = 64
    eval_sample_seed: int = 0
    eval_batching: str = "invariant"
    eval_rows_per_device: int = 8
    eval_batch_size: int = 8
    checkpoint_every: int = 15
    keep_checkpoints: int = 2
    export_final_model: bool = True
    sft_steps: int = 0
    sft_batch_size: int = 32
    sft_learning_rate: float = 1e-3
    sft_cache_dir: str | None = None
    scale_rewards_by_std: bool = False

    def validate(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise TrainError(f"TrainConfig.algorithm={self.algorithm!r}; choose one of {tuple(ALGORITHMS)}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise TrainError(f"TrainConfig.lr_schedule={self.lr_schedule!r}; choose 'cosine' or 'constant'")
        if self.eval_batching not in ("invariant", "per_batch"):
            raise TrainError(f"TrainConfig.eval_batching={self.eval_batching!r}; choose 'invariant' or 'per_batch'")
        for name in ("num_steps", "prompts_per_micro_batch", "grad_accum", "max_prompt_length", "eval_batch_size",
                     "eval_rows_per_device"):
            if getattr(self, name) < 1:
                raise TrainError(f"TrainConfig.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.eval_examples is not None and self.eval_examples < 1:
            raise TrainError(f"TrainConfig.eval_examples must be ≥ 1 (None: the whole split), got {self.eval_examples}")
        for name in ("eval_every", "checkpoint_every", "sft_steps"):
            if getattr(self, name) < 0:
                raise TrainError(f"TrainConfig.{name} must be ≥ 0, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run needs; built once from gin by `experiments/run.py`."""

    train: TrainConfig
    model: ModelSource
    rollout: SamplerConfig
    eval_sampler: SamplerConfig | None = None
    agrpo: agrpo.AGRPOConfig | None = None
    diffu_grpo: diffu_grpo.DiffuGRPOConfig | None = None
    wd1: wd1.WD1Config | None = None
    dmpo: dmpo.DMPOConfig | None = None
    tracerl: tracerl.TraceRLConfig | None = None
    dipo: dipo.DiPOConfig | None = None
    espo: espo.ESPOConfig | None = None
    spg: spg.SPGConfig | None = None
    lora: lora_lib.LoRAConfig | None = None
    mesh: mesh_lib.MeshConfig = mesh_lib.MeshConfig()

    @property
    def algorithm_config(self) -> LossConfig | None:
        """The loss config of `train.algorithm` (the others, if also bound, are unused)."""
        return getattr(self, ALGORITHMS[self.train.algorithm][0])

    @property
    def eval_batching(self) -> eval_lib.Batching:
        """The in-run evaluation's `rl.evaluate.Batching`."""
        tc = self.train
        return eval_lib.Batching(mode=tc.eval_batching, rows_per_device=tc.eval_rows_per_device, batch_size=tc.eval_batch_size)

    @property
    def leave_one_out_advantages(self) -> bool:
        """Whether the advantages subtract the mean of the group's other rewards: the loss config's `leave_one_out`
        (ESPO's baseline, its default), else False (the group mean)."""
        return bool(getattr(self.algorithm_config, "leave_one_out", False))

    @property
    def num_generations(self) -> int:
        return self.algorithm_config.num_generations

    def check_batches(self, mesh) -> None:
        """A TrainError, before anything is compiled, when a batch the run uses does not split evenly over the
        batch axes of `mesh` (laid out by `self.mesh.rules`)."""
        tc = self.train
        sizes = {"rollout batch (prompts_per_micro_batch x num_generations)":
                 tc.prompts_per_micro_batch * self.num_generations}
        if tc.eval_batching == "per_batch":
            sizes["eval batch (eval_batch_size)"] = tc.eval_batch_size
        if tc.sft_steps:
            sizes["SFT batch (sft_batch_size)"] = tc.sft_batch_size
        if tc.algorithm in TRACE_ALGORITHMS:
            cls, name = TRACE_ALGORITHMS[tc.algorithm]
            sizes[f"{name} row batch ({cls}.row_batch_size)"] = self.algorithm_config.row_batch_size
        sharding = mesh_lib.batch_sharding(mesh, 1, self.mesh.rules)
        for what, rows in sizes.items():
            try:
                mesh_lib.check_divisible((rows,), sharding, what)
            except ValueError as e:
                raise TrainError(str(e)) from None

    def _check_lora_fits_the_model(self) -> None:
        """The LoRA targets exist in the model's family (from its config.json; no weights are read)."""
        from dllm_rl.models import config_from_hf

        model_config = config_from_hf(self.model.path(self.model._given()[0]))
        try:
            lora_lib.check_targets(self.lora, model_config)
        except ValueError as e:
            raise TrainError(f"{e} (the model is {model_config.family})") from None

    def validate(self, check_model: bool = True) -> None:
        """All cross-field checks, before any model is loaded or compiled (`check_model`: also that the model and
        tokenizer folders exist)."""
        self.train.validate()
        if check_model:
            self.model.validate()
            if self.lora is not None:
                self._check_lora_fits_the_model()
        try:
            get_task(self.train.task)
        except KeyError as e:
            raise TrainError(str(e.args[0])) from None
        if self.algorithm_config is None:
            field, config_class = ALGORITHMS[self.train.algorithm]
            raise TrainError(f"TrainConfig.algorithm={self.train.algorithm!r} needs its config "
                             f"({config_class.__name__}: bind experiment.{field})")
        if self.train.algorithm == "agrpo" and not self.rollout.record:
            raise TrainError("AGRPO rollouts must record (SamplerConfig.record=True): the loss re-scores each step")
        if self.train.algorithm in TRACE_ALGORITHMS:
            cls, name = TRACE_ALGORITHMS[self.train.algorithm]
            if not self.rollout.record:
                raise TrainError(f"{name} rollouts must record (SamplerConfig.record=True): its rows follow the trace")
            if self.algorithm_config.sampling_steps != self.rollout.steps:
                raise TrainError(f"{cls}.sampling_steps {self.algorithm_config.sampling_steps} must equal the "
                                 f"rollout's steps {self.rollout.steps} (it bounds the trace's distinct steps)")
        if self.train.algorithm == "dmpo" and self.train.scale_rewards_by_std:
            raise TrainError("DMPO weighs rewards / alpha: set TrainConfig.scale_rewards_by_std = False")
        if self.train.algorithm == "spg":
            length, block, num_t = self.rollout.gen_length, self.spg.block_length, self.spg.num_t
            if length % block or num_t > length // block:
                raise TrainError(f"SPGConfig.block_length={block} must divide the rollout's gen_length {length} into "
                                 f"at least num_t={num_t} blocks")
        if self.train.algorithm == "agrpo" and self.lora is not None and self.lora.dropout > 0:
            raise TrainError(f"LoRAConfig.dropout={self.lora.dropout} is only applied by diffu-GRPO, wd1, DMPO, "
                             "TraceRL, DiPO, ESPO and SPG; AGRPO's loss re-scores the sampling policy exactly, so set "
                             "LoRAConfig.dropout = 0 for AGRPO runs")
        self.rollout.validate()
        if self.rollout.temperature <= 0:
            raise TrainError("rollouts need temperature > 0: greedy completions give every group zero variance")
        if self.agrpo is not None and self.train.algorithm == "agrpo":
            a, r = self.agrpo, self.rollout
            if (a.gen_length, a.sampling_steps) != (r.gen_length, r.steps):
                raise TrainError(f"AGRPOConfig gen_length/sampling_steps ({a.gen_length}, {a.sampling_steps}) must "
                                 f"equal the rollout's gen_length/steps ({r.gen_length}, {r.steps})")
            if a.temperature != r.temperature:
                raise TrainError(f"AGRPOConfig.temperature {a.temperature} must equal the rollout temperature "
                                 f"{r.temperature} (the loss re-scores the sampling distribution)")
        if self.eval_sampler is not None:
            self.eval_sampler.validate()
