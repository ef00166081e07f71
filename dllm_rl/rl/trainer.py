"""RL training loop: rollout → reward → advantage → K-timestep loss → update, with exact resume.

The trainer only wires the pure pieces together (DESIGN.md §1): `sampling.generate` (record=True) produces the
AGRPO rollout, `tasks` score it, `rl.advantages` centres rewards per group, `rl.agrpo` (or `rl.diffu_grpo`) gives
gradients, optax updates the trainable leaves (LoRA adapters or all params). Everything random derives from
`TrainConfig.seed` folded with the step number, and the data iterator's state is checkpointed with the params and
optimizer state, so a run killed at any point and restarted from its workdir continues exactly as an
uninterrupted run would (same rollouts, same metrics).

Batching follows the paper (spec/AGRPO.md §1.3): each optimizer step takes `prompts_per_micro_batch ×
grad_accum` prompts; every prompt gets G = num_generations completions in consecutive rows; each micro-batch's
gradient is divided by grad_accum (the HF Trainer's gradient accumulation).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import signal
import time
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from dllm_rl import metrics as metrics_lib
from dllm_rl.checkpoint import load_hf, load_orbax, save_orbax
from dllm_rl.convert import copy_side_files
from dllm_rl.models import llada, lora as lora_lib
from dllm_rl.parallel import mesh as mesh_lib
from dllm_rl.rl import advantages as adv_lib, agrpo, diffu_grpo, sft
from dllm_rl.sampling import SamplerConfig, expand, generate
from dllm_rl.tasks import get_task, make_dataset, render_prompts
from dllm_rl.tokenizer import Tokenizer

ALGORITHMS = ("agrpo", "diffu_grpo")
CHECKPOINT_DIR = "checkpoints"
FINAL_MODEL_DIR = "final_model"  # the trained policy as a model folder, for experiments.eval --ckpt_dir
# Timing metrics differ between otherwise identical runs; everything else in a metrics row is reproducible.
TIMING_KEYS = ("rollout_seconds", "loss_seconds", "step_seconds", "tokens_per_second", "eval_seconds")


class TrainError(ValueError):
    """A training setup that cannot run; raised before anything is compiled."""


def resolve_path(path: str) -> str:
    """A path as given, or, when it does not exist relative to the working directory, relative to the folder
    holding the `dllm_rl` package (so configs naming `dllm_rl/assets/...` work from any directory)."""
    if os.path.isabs(path) or os.path.exists(path):
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
        if not os.path.exists(path):
            raise TrainError(f"ModelSource.{given[0]}={getattr(self, given[0])!r} does not exist; convert the model "
                             "first (python -m dllm_rl.convert) or fix the path")
        if not os.path.exists(os.path.join(self.tokenizer_path, "tokenizer.json")):
            raise TrainError(f"no tokenizer.json in {self.tokenizer_path!r}; set ModelSource.tokenizer_dir")

    def path(self, field: str) -> str | None:
        value = getattr(self, field)
        return resolve_path(value) if value else None

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
    eval_examples: int = 64
    eval_batch_size: int = 8
    checkpoint_every: int = 15
    keep_checkpoints: int = 2
    export_final_model: bool = True
    sft_steps: int = 0
    sft_batch_size: int = 32
    sft_learning_rate: float = 1e-3
    scale_rewards_by_std: bool = False

    def validate(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise TrainError(f"TrainConfig.algorithm={self.algorithm!r}; choose one of {ALGORITHMS}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise TrainError(f"TrainConfig.lr_schedule={self.lr_schedule!r}; choose 'cosine' or 'constant'")
        for name in ("num_steps", "prompts_per_micro_batch", "grad_accum", "max_prompt_length", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise TrainError(f"TrainConfig.{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("eval_every", "eval_examples", "checkpoint_every", "sft_steps"):
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
    lora: lora_lib.LoRAConfig | None = None
    mesh: mesh_lib.MeshConfig = mesh_lib.MeshConfig()

    @property
    def algorithm_config(self) -> agrpo.AGRPOConfig | diffu_grpo.DiffuGRPOConfig | None:
        """The loss config of `train.algorithm` (the other one, if also bound, is unused)."""
        return self.agrpo if self.train.algorithm == "agrpo" else self.diffu_grpo

    @property
    def num_generations(self) -> int:
        return self.algorithm_config.num_generations

    def validate(self) -> None:
        """All cross-field checks, before any model is loaded or compiled."""
        self.train.validate()
        self.model.validate()
        try:
            get_task(self.train.task)
        except KeyError as e:
            raise TrainError(str(e.args[0])) from None
        if self.algorithm_config is None:
            raise TrainError(f"TrainConfig.algorithm={self.train.algorithm!r} needs its config "
                             f"({'AGRPOConfig' if self.train.algorithm == 'agrpo' else 'DiffuGRPOConfig'})")
        if not self.rollout.record:
            raise TrainError("the rollout sampler must record (SamplerConfig.record=True) for RL")
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


# ---------------------------------------------------------------------------------------------------------------
# Model, optimizer, state


def load_policy(source: ModelSource, shardings_fn=None) -> tuple[llada.LLaDAConfig, Any]:
    """(config, params) from the model source, placed on shardings when `shardings_fn(config)` is given."""
    if source.init_config:
        config = llada.LLaDAConfig.from_hf_config(source.path("init_config"))
        params = llada.init_params(config, jax.random.PRNGKey(0), dtype=jnp.dtype(source.dtype))
        if shardings_fn is not None:
            params = jax.device_put(params, shardings_fn(config))
        return config, params
    path = source.path("ckpt_dir" if source.ckpt_dir else "hf_dir")
    config = llada.LLaDAConfig.from_hf_config(path)
    shardings = shardings_fn(config) if shardings_fn else None
    if source.ckpt_dir:
        return load_orbax(path, dtype=source.dtype, shardings=shardings)
    return load_hf(path, dtype=source.dtype, shardings=shardings)


def make_optimizer(train: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(AdamW with global-norm clipping, its learning-rate schedule): linear warmup, then cosine decay to 0 over
    `num_steps` or constant."""
    warmup = int(round(train.warmup_ratio * train.num_steps))
    if train.lr_schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, train.learning_rate, warmup,
                                                      max(train.num_steps, warmup + 1), end_value=0.0)
    elif warmup:
        schedule = optax.join_schedules([optax.linear_schedule(0.0, train.learning_rate, warmup),
                                         optax.constant_schedule(train.learning_rate)], [warmup])
    else:
        schedule = optax.constant_schedule(train.learning_rate)
    tx = optax.chain(optax.clip_by_global_norm(train.max_grad_norm),
                     optax.adamw(schedule, b1=train.adam_b1, b2=train.adam_b2, weight_decay=train.weight_decay))
    return tx, schedule


# ---------------------------------------------------------------------------------------------------------------
# Jitted steps


@functools.partial(jax.jit, static_argnames=("model_config", "config", "lora_config"))
def _agrpo_step_grads(trainable, frozen, ref_params, batch, rng, *, model_config, config, lora_config):
    u_BxK = agrpo.draw_uniforms(rng, batch.completion_ids.shape[0], config.mc_samples, config.low_discrepancy)
    steps_BxK, weights_BxK = agrpo.timesteps(u_BxK, batch, config, model_config.eos_token_id)
    return agrpo.agrpo_grad(trainable, frozen, ref_params, batch, steps_BxK, weights_BxK,
                            model_config=model_config, config=config, lora_config=lora_config, keep_fn=expand)


@functools.partial(jax.jit, static_argnames=("model_config", "config", "lora_config"))
def _diffu_logps(trainable, frozen, batch, rng, *, model_config, config, lora_config):
    params = lora_lib.policy_params(trainable, frozen, lora_config)
    return diffu_grpo.completion_logps(model_config, params, batch, rng, config)


@functools.partial(jax.jit, static_argnames=("model_config", "config", "lora_config"))
def _diffu_grads(trainable, frozen, batch, rng, old_logp, ref_logp, *, model_config, config, lora_config):
    return diffu_grpo.diffu_grpo_grad(trainable, frozen, batch, rng, old_logp, ref_logp,
                                      model_config=model_config, config=config, lora_config=lora_config)


@functools.partial(jax.jit, static_argnames=("tx",), donate_argnums=(0, 1))
def _apply_update(trainable, opt_state, grads, *, tx):
    updates, opt_state = tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, optax.tree.norm(grads)


@functools.partial(jax.jit, static_argnames=("model_config", "tx"), donate_argnums=(0, 1))
def _sft_update(params, opt_state, prompt_ids, prompt_mask, answer_ids, rng, *, model_config, tx):
    loss, grads = jax.value_and_grad(sft.sft_loss, argnums=1)(model_config, params, prompt_ids, answer_ids, rng,
                                                              prompt_mask)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


_merge_lora = jax.jit(lora_lib.merge_lora, static_argnames=("config",))


def _sampling_params(trainable, frozen, lora_config):
    """Plain params for the sampler: LoRA merged into the base once per rollout (no per-step adapter matmuls);
    for full fine-tuning the trainable params themselves (no copy)."""
    if lora_config is None:
        return trainable
    return _merge_lora(frozen, trainable, lora_config)


# ---------------------------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """Holds the loaded model, tokenizer, task, optimizer and mesh for one run in `workdir`."""

    def __init__(self, cfg: ExperimentConfig, workdir: str | os.PathLike):
        cfg.validate()
        self.cfg = cfg
        self.train_cfg = cfg.train
        self.workdir = os.fspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.task = get_task(cfg.train.task)
        self.tokenizer = Tokenizer.from_dir(cfg.model.tokenizer_path)
        self.mesh = mesh_lib.make_mesh(cfg.mesh)
        self.model_config, params = load_policy(cfg.model, lambda c: mesh_lib.param_shardings(self.mesh, c))
        self._check_tokenizer()
        self.group = cfg.num_generations
        adv_lib.check_group_size(cfg.train.prompts_per_micro_batch * self.group, self.group)
        key = jax.random.PRNGKey(cfg.train.seed)
        self._rl_key, self._sft_key, self._lora_key, self._eval_key = jax.random.split(key, 4)
        self.base_params = params
        self.tx, self.schedule = make_optimizer(cfg.train)
        self.stop_requested = False

    def _needs_reference(self) -> bool:
        """Whether a KL term needs the reference (initial / LoRA-off) policy."""
        return bool(self.cfg.algorithm_config.beta)

    def _check_tokenizer(self) -> None:
        tok, cfg = self.tokenizer, self.model_config
        if tok.mask_token_id is not None and tok.mask_token_id != cfg.mask_token_id:
            raise TrainError(f"tokenizer mask id {tok.mask_token_id} != model config mask_token_id "
                             f"{cfg.mask_token_id}; tokenizer and model belong to different checkpoints")
        if tok.eos_token_id != cfg.eos_token_id:
            raise TrainError(f"tokenizer EOS id {tok.eos_token_id} != model config eos_token_id {cfg.eos_token_id}")
        if tok.vocab_size > cfg.embedding_size:
            raise TrainError(f"tokenizer has {tok.vocab_size} tokens, the model only {cfg.embedding_size}")

    # ---- data ------------------------------------------------------------------------------------------------

    def _encode(self, examples: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
        texts = render_prompts(self.tokenizer, self.task, examples, style=self.train_cfg.prompt_style)
        return self.tokenizer.batch_encode(texts, max_length=self.train_cfg.max_prompt_length)

    def _eval_examples(self) -> list[dict]:
        split = self.train_cfg.eval_split or self.task.default_eval_split
        return list(self.task.load(split)[: self.train_cfg.eval_examples])

    # ---- warm start ------------------------------------------------------------------------------------------

    def warm_start(self, params, progress: bool = True):
        """Masked-diffusion SFT on the training split's reference answers (EOS-padded to the rollout length)."""
        tc, length = self.train_cfg, self.cfg.rollout.gen_length
        tx = optax.adamw(tc.sft_learning_rate, weight_decay=0.0)
        opt_state = tx.init(params)
        data = iter(make_dataset(self.task, tc.train_split, seed=tc.seed + 1, shard_index=jax.process_index(),
                                 shard_count=jax.process_count()))
        eos = self.tokenizer.eos_token_id
        for i in tqdm(range(tc.sft_steps), desc="SFT warm start", disable=not progress):
            examples = [next(data) for _ in range(tc.sft_batch_size)]
            prompt_ids, prompt_mask = self._encode(examples)
            answers = np.full((len(examples), length), eos, np.int32)
            for row, ex in enumerate(examples):
                ids = self.tokenizer.encode(self.task.reference_answer(ex))[:length]
                answers[row, : len(ids)] = ids
            params, opt_state, _ = _sft_update(params, opt_state, jnp.asarray(prompt_ids), jnp.asarray(prompt_mask),
                                               jnp.asarray(answers), jax.random.fold_in(self._sft_key, i),
                                               model_config=self.model_config, tx=tx)
        return params

    # ---- evaluation ------------------------------------------------------------------------------------------

    def evaluate(self, sampling_params) -> dict[str, float]:
        """Held-out evaluation over `eval_examples`: mean training reward and task accuracy.

        Greedy by default (the papers' protocol); an `eval_sampler` with temperature > 0 samples with the same
        key at every evaluation, so evaluations differ only through the policy.
        """
        examples = self._eval_examples()
        sampler = self.cfg.eval_sampler or dataclasses.replace(self.cfg.rollout, temperature=0.0,
                                                               remasking="low_confidence", record=False,
                                                               early_stop=False)
        start = time.perf_counter()
        rewards, correct = [], []
        bs = self.train_cfg.eval_batch_size
        for lo in range(0, len(examples), bs):
            chunk = examples[lo: lo + bs]
            padded = chunk + [chunk[-1]] * (bs - len(chunk))  # one static shape: one compiled program
            ids, mask = self._encode(padded)
            out = generate(self.model_config, sampling_params, ids, attention_mask=mask, mesh=self.mesh,
                           rng=jax.random.fold_in(self._eval_key, lo), **dataclasses.asdict(sampler))
            texts = self.tokenizer.batch_decode(np.asarray(out.tokens)[: len(chunk), ids.shape[1]:])
            for text, ex in zip(texts, chunk):
                rewards.append(self.task.reward(text, ex, style=self.train_cfg.reward_style).total)
                correct.append(self.task.score(text, ex).correct)
        return {"eval_reward_mean": float(np.mean(rewards)), "eval_accuracy": float(np.mean(correct)),
                "eval_seconds": time.perf_counter() - start}

    # ---- one RL step -----------------------------------------------------------------------------------------

    def _rollout(self, trainable, frozen, examples, key):
        """G completions per prompt, their rewards and advantages, as host arrays plus the device rollout."""
        ids, mask = self._encode(examples)
        ids, mask = np.repeat(ids, self.group, axis=0), np.repeat(mask, self.group, axis=0)
        params = _sampling_params(trainable, frozen, self.cfg.lora)
        start = time.perf_counter()
        rollout = generate(self.model_config, params, ids, attention_mask=mask, rng=key, mesh=self.mesh,
                           **dataclasses.asdict(self.cfg.rollout))
        completion = np.asarray(rollout.tokens)[:, ids.shape[1]:]
        seconds = time.perf_counter() - start
        texts = self.tokenizer.batch_decode(completion)
        breakdowns = [self.task.reward(t, ex, style=self.train_cfg.reward_style)
                      for t, ex in zip(texts, [ex for ex in examples for _ in range(self.group)])]
        rewards = np.asarray([b.total for b in breakdowns], np.float32)
        advantages, stats = adv_lib.group_advantages(jnp.asarray(rewards), self.group,
                                                     self.train_cfg.scale_rewards_by_std)
        non_eos = completion != self.model_config.eos_token_id
        info = {k: float(v) for k, v in stats.items()}
        for name in breakdowns[0].components:
            info[f"reward/{name}"] = float(np.mean([b.components[name] for b in breakdowns]))
        info["completion_length"] = float(non_eos.sum(1).mean())
        if rollout.entropy is not None:
            ent = np.asarray(rollout.entropy)
            info["entropy"] = float((ent * non_eos).sum() / max(non_eos.sum(), 1))
        info["rollout_seconds"] = seconds
        info["generated_tokens"] = float(completion.size)
        return ids, mask, rollout, advantages, info

    def _agrpo_micro(self, trainable, frozen, examples, key):
        roll_key, loss_key = jax.random.split(key)
        ids, mask, rollout, advantages, info = self._rollout(trainable, frozen, examples, roll_key)
        p = ids.shape[1]
        record = rollout.truncation
        batch = agrpo.AGRPOBatch(
            prompt_ids=jnp.asarray(ids), prompt_mask=jnp.asarray(mask), completion_ids=rollout.tokens[:, p:],
            unmask_step=rollout.unmask_step, old_logp=rollout.logp, entropy=rollout.entropy,
            advantages=advantages, keep=record if record is not None and record.bits is not None else None)
        start = time.perf_counter()
        ref = self.base_params if self.cfg.agrpo.beta else None  # LoRA off / initial policy
        loss, grads, m = _agrpo_step_grads(trainable, frozen, ref, batch, loss_key, model_config=self.model_config,
                                           config=self.cfg.agrpo, lora_config=self.cfg.lora)
        jax.block_until_ready(grads)
        info["loss_seconds"] = time.perf_counter() - start
        info["loss"] = float(loss)
        info.update({k: float(v) for k, v in m.items() if k in ("clip_fraction", "ratio_mean", "kl",
                                                                 "importance_weight_mean", "dropped_tokens")})
        return grads, info

    def _diffu_micro_batches(self, trainable, frozen, examples_per_micro, key):
        """Rollouts of every micro-batch and their old/ref log-probs per inner iteration (d1's μ updates)."""
        cfg, out = self.cfg.diffu_grpo, []
        for i, examples in enumerate(examples_per_micro):
            roll_key, mask_key = jax.random.split(jax.random.fold_in(key, i))
            ids, mask, rollout, advantages, info = self._rollout(trainable, frozen, examples, roll_key)
            completion = rollout.tokens[:, ids.shape[1]:]
            batch = diffu_grpo.DiffuGRPOBatch(jnp.asarray(ids), jnp.asarray(mask), completion,
                                              diffu_grpo.completion_mask(completion, self.model_config.eos_token_id),
                                              advantages)
            keys = diffu_grpo.iteration_keys(mask_key, cfg.num_iterations)
            kw = dict(model_config=self.model_config, config=cfg, lora_config=self.cfg.lora)
            old = [_diffu_logps(trainable, frozen, batch, k, **kw) for k in keys] if cfg.num_iterations > 1 else None
            ref = None
            if cfg.beta:
                ref = [_diffu_logps(self.base_params, None, batch, k, model_config=self.model_config, config=cfg,
                                    lora_config=None) for k in keys]
            out.append((batch, keys, old, ref, info))
        return out

    def train(self, progress: bool = True) -> list[dict]:
        """Runs (or resumes) the training loop; returns the metric rows written by this call."""
        tc = self.train_cfg
        manager = _checkpoint_manager(os.path.join(self.workdir, CHECKPOINT_DIR), tc.keep_checkpoints)
        restored_step = manager.latest_step()
        base = self.base_params
        if restored_step is None and tc.sft_steps:
            base = self.warm_start(base, progress)
        lora, needs_ref = self.cfg.lora, self._needs_reference()
        trainable, frozen = lora_lib.split_params(base, lora, self._lora_key)
        if lora is None and needs_ref:
            trainable = jax.tree.map(jnp.copy, trainable)  # updates donate the trainable buffers; keep the ref
        if lora is not None:
            lora_axes = lora_lib.lora_logical_axes(lora, llada.param_logical_axes())
            trainable = jax.device_put(trainable, mesh_lib.tree_shardings(self.mesh, lora_axes))
        opt_state = self.tx.init(trainable)
        # The SFT-warm-started base is part of the run's state whenever it is still used (LoRA base or KL ref).
        keep_base = bool(tc.sft_steps) and (lora is not None or needs_ref)
        data = iter(make_dataset(self.task, tc.train_split, seed=tc.seed, shard_index=jax.process_index(),
                                 shard_count=jax.process_count()))
        if restored_step is not None:
            trainable, opt_state, data_state, saved_base = _restore(manager, restored_step, trainable, opt_state,
                                                                    base if keep_base else None)
            data.set_state(data_state)
            if saved_base is not None:
                base = saved_base
                frozen = base if lora is not None else None
        self.base_params = base if (lora is not None or needs_ref) else None
        checkpointed_base = self.base_params if keep_base else None
        start_step = restored_step or 0
        rows = []
        with metrics_lib.MetricsWriter(self.workdir, resume_step=restored_step) as writer, _sigterm_flag(self):
            if restored_step is None:
                _save(manager, 0, trainable, opt_state, data.get_state(), checkpointed_base)
                if tc.eval_every:
                    rows.append(writer.write(0, self.evaluate(_sampling_params(trainable, frozen, self.cfg.lora))))
            bar = tqdm(range(start_step + 1, tc.num_steps + 1), desc="RL", disable=not progress,
                       initial=start_step, total=tc.num_steps)
            for step in bar:
                trainable, opt_state, info = self._step(step, trainable, frozen, opt_state, data)
                if tc.eval_every and (step % tc.eval_every == 0 or step == tc.num_steps):
                    info.update(self.evaluate(_sampling_params(trainable, frozen, self.cfg.lora)))
                rows.append(writer.write(step, info))
                bar.set_postfix(reward=f"{info['reward_mean']:.3f}")
                last = step == tc.num_steps
                if self.stop_requested or last or (tc.checkpoint_every and step % tc.checkpoint_every == 0):
                    _save(manager, step, trainable, opt_state, data.get_state(), checkpointed_base)
                if self.stop_requested:
                    break
        manager.close()
        metrics_lib.plot_metrics(self.workdir)
        if tc.export_final_model and not self.stop_requested:
            self.export(_sampling_params(trainable, frozen, self.cfg.lora), os.path.join(self.workdir, FINAL_MODEL_DIR))
        self.trainable, self.frozen = trainable, frozen
        return rows

    def export(self, params, out_dir: str) -> None:
        """Writes the policy (LoRA merged) as a model folder that `load_orbax` / `experiments.eval --ckpt_dir`
        read: config.json, params/ and the tokenizer files; written to a temporary name, then renamed."""
        tmp = out_dir + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_orbax(tmp, self.model_config, params)
        copy_side_files(self.cfg.model.tokenizer_path, tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)

    def _step(self, step, trainable, frozen, opt_state, data: Iterator):
        tc = self.train_cfg
        start = time.perf_counter()
        key = jax.random.fold_in(self._rl_key, step)
        micro_examples = [[next(data) for _ in range(tc.prompts_per_micro_batch)] for _ in range(tc.grad_accum)]
        grad_norms = []
        if tc.algorithm == "agrpo":
            micro = [self._agrpo_micro(trainable, frozen, ex, jax.random.fold_in(key, i))
                     for i, ex in enumerate(micro_examples)]
            infos = [info for _, info in micro]
            grads = jax.tree.map(lambda *g: sum(g) / tc.grad_accum, *[g for g, _ in micro])
            trainable, opt_state, grad_norm = _apply_update(trainable, opt_state, grads, tx=self.tx)
            grad_norms.append(grad_norm)
        else:
            prepared = self._diffu_micro_batches(trainable, frozen, micro_examples, key)
            infos = [p[-1] for p in prepared]
            t0 = time.perf_counter()
            for it in range(self.cfg.diffu_grpo.num_iterations):  # μ updates on the same rollouts, as d1
                micro_grads = []
                for batch, keys, old, ref, info in prepared:
                    loss, grads, m = _diffu_grads(trainable, frozen, batch, keys[it], None if old is None else old[it],
                                                  None if ref is None else ref[it], model_config=self.model_config,
                                                  config=self.cfg.diffu_grpo, lora_config=self.cfg.lora)
                    micro_grads.append(grads)
                    info.update(loss=float(loss), **{k: float(v) for k, v in m.items() if k in ("clip_fraction", "kl")})
                grads = jax.tree.map(lambda *g: sum(g) / tc.grad_accum, *micro_grads)
                trainable, opt_state, grad_norm = _apply_update(trainable, opt_state, grads, tx=self.tx)
                grad_norms.append(grad_norm)
            infos[0]["loss_seconds"] = time.perf_counter() - t0
        summed = ("rollout_seconds", "loss_seconds", "generated_tokens")
        row = {k: float(np.mean([i[k] for i in infos if k in i])) for k in infos[0] if k not in summed}
        for k in summed:
            row[k] = float(sum(i.get(k, 0.0) for i in infos))
        row["tokens_per_second"] = row.pop("generated_tokens") / max(row["rollout_seconds"], 1e-9)
        row["grad_norm"] = float(np.mean([float(g) for g in grad_norms]))
        row["learning_rate"] = float(self.schedule(step - 1))  # the rate this step's update used
        row["step_seconds"] = time.perf_counter() - start
        return trainable, opt_state, row


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: params (trainable), optimizer state, step, data-iterator state; the warm-started base with SFT.


def _checkpoint_manager(directory: str, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max(keep, 1), create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                "data": ocp.JsonCheckpointHandler()})


def _save(manager, step, trainable, opt_state, data_state, base) -> None:
    state = {"trainable": trainable, "opt_state": opt_state}
    if base is not None:
        state["base"] = base
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               data=ocp.args.JsonSave(data_state)), force=True)
    manager.wait_until_finished()


def _restore(manager, step, trainable, opt_state, base):
    target = {"trainable": trainable, "opt_state": opt_state}
    if base is not None:
        target["base"] = base
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                             data=ocp.args.JsonRestore()))
    state = restored["state"]
    return state["trainable"], state["opt_state"], restored["data"], state.get("base")


class _sigterm_flag:
    """Context manager: SIGTERM sets `trainer.stop_requested`; the loop then saves a checkpoint and returns."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.previous = None

    def __enter__(self):
        def handler(signum, frame):
            self.trainer.stop_requested = True

        try:
            self.previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread: no signal handling
            self.previous = None
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
