"""RL training loop: rollout → reward → advantage → K-timestep loss → update, with exact resume.

The trainer only wires the pure pieces together (docs/architecture.md): `sampling.generate` (record=True)
produces the AGRPO rollout, `rl.rewards` scores it with the task and centres rewards per group (or leave-one-out),
`rl.steps` gives gradients (AGRPO, or a masked objective: diffu-GRPO, wd1, DMPO, TraceRL, DiPO, ESPO, SPG) and
updates the trainable leaves (LoRA adapters or all params). Everything random derives from `TrainConfig.seed`
folded with the step number, and the data iterator's state is checkpointed with the params and optimizer state
(`rl.train_state`), so a run killed at any point and restarted from its workdir continues exactly as an
uninterrupted run would (same rollouts, same metrics).

Batching follows the AGRPO paper: each optimizer step takes `prompts_per_micro_batch × grad_accum` prompts;
every prompt gets G = num_generations completions in consecutive rows; the micro-batch gradients are summed into
one running buffer and divided by grad_accum (the HF Trainer's gradient accumulation). Rollouts sample the same
params the loss differentiates (LoRA unmerged, `steps.sampling_params`). Params, LoRA adapters, optimizer state
and batches are laid out on the mesh by `MeshConfig.rules`. (Over 300 lines: warm start, rollout, micro-batching
and the loop all read the one run's state held by `Trainer`; the pure pieces live in `rl.steps`, `rl.evaluate`,
`rl.train_state`.)
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from dllm_rl import metrics as metrics_lib, paths, plots, progress as progress_lib
from dllm_rl.atomic import atomic_directory
from dllm_rl.checkpoint import copy_side_files, load_orbax, save_orbax
from dllm_rl.export import export_peft
from dllm_rl.models import llada, lora as lora_lib
from dllm_rl.parallel import mesh as mesh_lib, multihost
from dllm_rl.rl import advantages as adv_lib, agrpo, evaluate as eval_lib, rewards, steps, train_state
from dllm_rl.rl.config import ExperimentConfig, TrainError
from dllm_rl.rl.optimizer import make_optimizer, make_sft_optimizer
from dllm_rl.rl.stopping import StopRequest
from dllm_rl.sampling import generate
from dllm_rl.sampling.draws import row_keys
from dllm_rl.tasks import get_task, make_dataset, render_prompts
from dllm_rl.tokenizer import Tokenizer

FINAL_MODEL_DIR = "final_model"  # the trained policy as a model folder, for experiments.eval --ckpt_dir
FINAL_ADAPTER_DIR = "final_adapter"  # LoRA runs: the adapters as a PEFT folder (exact; the merged bf16 model is not)
# The AGRPO loss metrics logged per step; logp_mismatch_* is |rollout log-prob − loss log-prob| of the scored
# tokens before the update (float noise when the sampler runs the trained policy).
LOSS_METRICS = ("clip_fraction", "ratio_mean", "kl", "importance_weight_mean", "dropped_tokens", "logp_mismatch_mean",
                "logp_mismatch_max")
# Timing metrics differ between otherwise identical runs; everything else in a metrics row is reproducible.
TIMING_KEYS = ("rollout_seconds", "loss_seconds", "step_seconds", "tokens_per_second", "eval_seconds")
PROFILE_DIR = "profile"  # W/profile: the profiler trace of `train(profile_steps=...)`
EVAL_DIR = "eval"  # W/eval/step_<k>.jsonl: every in-run evaluation's per-example completions and scores


class Trainer:
    """Holds the loaded model, tokenizer, task, optimizer and mesh for one run in `workdir`."""

    def __init__(self, cfg: ExperimentConfig, workdir: str | os.PathLike,
                 wandb: metrics_lib.WandbOptions | None = None):
        cfg.validate()
        self.cfg = cfg
        self.train_cfg = cfg.train
        self.workdir = os.fspath(workdir)  # local or gs://
        paths.absolute(self.workdir).mkdir(parents=True, exist_ok=True)
        self.task = get_task(cfg.train.task)
        self.tokenizer = Tokenizer.from_dir(cfg.model.tokenizer_path)
        self.mesh = mesh_lib.make_mesh(cfg.mesh)
        self.rules = cfg.mesh.rules
        self.group = cfg.num_generations
        cfg.check_batches(self.mesh)
        self.model_config, params = cfg.model.load(self.param_shardings)
        self._check_tokenizer()
        adv_lib.check_group_size(cfg.train.prompts_per_micro_batch * self.group, self.group)
        key = jax.random.PRNGKey(cfg.train.seed)
        # split(key, 5)[:4] == split(key, 4): the fifth stream (row-keyed rollouts) leaves the others as they were.
        self._rl_key, self._sft_key, self._lora_key, self._eval_key, self._row_key = jax.random.split(key, 5)
        self.base_params = params
        self.tx, self.schedule = make_optimizer(cfg.train)
        self.stop = StopRequest()
        self.metrics_options = {"wandb": wandb, "config": _flat_config(cfg) if wandb else None}

    # ---- layout on the mesh (MeshConfig.rules) ---------------------------------------------------------------

    def param_shardings(self, model_config: llada.LLaDAConfig):
        """Shardings of the model params, checked against their shapes."""
        shardings = mesh_lib.param_shardings(self.mesh, model_config, rules=self.rules)
        _as_train_error(mesh_lib.check_divisible, llada.param_shapes(model_config), shardings)
        return shardings

    def place_lora(self, adapters):
        """LoRA adapters on their shardings (the optimizer state, created from them, follows)."""
        shapes = jax.tree.map(lambda x: x.shape, adapters)
        shardings = mesh_lib.lora_shardings(self.mesh, self.cfg.lora, shapes, self.rules, self.model_config)
        _as_train_error(mesh_lib.check_divisible, shapes, shardings, "LoRA adapter")
        return jax.device_put(adapters, shardings)

    def place_batch(self, x):
        """A [B, ...] host array (the same on every process) split over the batch axes of the rules; each process
        contributes only the rows its devices hold."""
        sharding = mesh_lib.batch_sharding(self.mesh, np.ndim(x), self.rules)
        rows = np.asarray(x)[multihost.local_rows(sharding, len(x))]
        return multihost.place_rows(rows, sharding, len(x))

    def _check_tokenizer(self) -> None:
        tok, cfg = self.tokenizer, self.model_config
        if tok.mask_token_id is not None and tok.mask_token_id != cfg.mask_token_id:
            raise TrainError(f"tokenizer mask id {tok.mask_token_id} != model config mask_token_id "
                             f"{cfg.mask_token_id}; tokenizer and model belong to different checkpoints")
        if tok.eos_token_id != cfg.eos_token_id:
            raise TrainError(f"tokenizer EOS id {tok.eos_token_id} != model config eos_token_id {cfg.eos_token_id}")
        if tok.vocab_size > cfg.embedding_size:
            raise TrainError(f"tokenizer has {tok.vocab_size} tokens, the model only {cfg.embedding_size}")

    def _encode(self, examples: Sequence[dict], keep_last: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        texts = render_prompts(self.tokenizer, self.task, examples, style=self.train_cfg.prompt_style)
        return self.tokenizer.batch_encode(texts, max_length=self.train_cfg.max_prompt_length, keep_last=keep_last)

    def _dataset(self, seed: int) -> Iterator[dict]:
        """The global example stream, identical on every process: each process then encodes the step's prompts
        (one padded length for all hosts) and generates and scores only its own rows. One stream keeps the
        checkpointed iterator state valid for any process count (Orbax writes it from process 0 only)."""
        return iter(make_dataset(self.task, self.train_cfg.train_split, seed=seed))

    # ---- warm start and evaluation ---------------------------------------------------------------------------

    def sft_cache_key(self) -> str:
        """The `sft_cache_dir` entry of this run's warm start: its seed and a hash of every setting the warm start
        reads (task, split, prompt style and length, rollout length, SFT steps, batch and rate, model source, mesh)."""
        tc, cfg = self.train_cfg, self.cfg
        settings = {name: getattr(tc, name) for name in ("seed", "task", "train_split", "prompt_style",
                                                          "max_prompt_length", "sft_steps", "sft_batch_size",
                                                          "sft_learning_rate")}
        settings.update(gen_length=cfg.rollout.gen_length, model=dataclasses.asdict(cfg.model),
                        mesh=dataclasses.asdict(cfg.mesh))
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return f"seed_{tc.seed}_{digest}"

    def warm_start(self, params, progress: bool = True):
        """The SFT warm start: loaded from `sft_cache_dir` when it holds this run's (`sft_cache_key`), else
        trained (`train_warm_start`) and saved there."""
        if not self.train_cfg.sft_cache_dir:
            return self.train_warm_start(params, progress)
        cached = os.path.join(self.train_cfg.sft_cache_dir, self.sft_cache_key())
        if paths.absolute(cached).is_dir():
            progress_lib.say(f"SFT warm start: loaded from {cached}")
            return load_orbax(cached, dtype=self.cfg.model.dtype, shardings=self.param_shardings(self.model_config))[1]
        params = self.train_warm_start(params, progress)
        self.export(params, cached)
        return params

    def train_warm_start(self, params, progress: bool = True):
        """Masked-diffusion SFT on the training split's reference answers (EOS-padded to the rollout length)."""
        tc, length = self.train_cfg, self.cfg.rollout.gen_length
        tx = make_sft_optimizer(tc)
        opt_state = mesh_lib.replicate_off_mesh(tx.init(params), self.mesh)
        data = self._dataset(tc.seed + 1)
        eos = self.tokenizer.eos_token_id
        if not progress:
            progress_lib.say(f"SFT warm start: {tc.sft_steps} steps")
        for i in tqdm(range(tc.sft_steps), desc="SFT warm start", disable=not progress):
            if self.stop.agreed():
                raise _Stopped(f"stopped during the SFT warm start (step {i} of {tc.sft_steps}); nothing was saved")
            examples = [next(data) for _ in range(tc.sft_batch_size)]
            prompt_ids, prompt_mask = self._encode(examples)
            answers = np.full((len(examples), length), eos, np.int32)
            for row, ex in enumerate(examples):
                ids = self.tokenizer.encode(self.task.reference_answer(ex))[:length]
                answers[row, : len(ids)] = ids
            params, opt_state, _ = steps.sft_update(params, opt_state, self.place_batch(prompt_ids),
                                                    self.place_batch(prompt_mask), self.place_batch(answers),
                                                    jax.random.fold_in(self._sft_key, i),
                                                    model_config=self.model_config, tx=tx)
        return params

    @functools.cached_property
    def eval_set(self) -> tuple[list[int], list[dict]]:
        """(indices in the eval split, examples) that every in-run evaluation scores: `eval_examples` of
        `eval_split` drawn with `eval_sample_seed` (`rl.evaluate.select`; None: the whole split)."""
        tc = self.train_cfg
        split = self.task.load(tc.eval_split or self.task.default_eval_split)
        indices = eval_lib.select(len(split), tc.eval_examples, tc.eval_sample_seed)
        return indices, [split[i] for i in indices]

    def grade(self, sampling_params) -> list[eval_lib.Graded]:
        """Per-example held-out evaluation (`rl.evaluate`) of the examples of `eval_set`.

        Greedy by default (the papers' protocol); an `eval_sampler` with temperature > 0 samples with the same
        key at every evaluation, so evaluations differ only through the policy (with `row_keys=True`, each example
        with its own key from that key and its index in the eval split, whatever else is evaluated with it).
        Batched as `experiments.eval` batches with the same settings (`rl.evaluate.Batching`), so both give the
        same completions.
        """
        tc = self.train_cfg
        return eval_lib.evaluate(self.model_config, sampling_params, self.tokenizer, self.task, self.eval_set[1],
                                 self.cfg.eval_sampler or eval_lib.greedy(self.cfg.rollout),
                                 batching=self.cfg.eval_batching, prompt_style=tc.prompt_style,
                                 reward_style=tc.reward_style, rng=self._eval_key, mesh=self.mesh,
                                 indices=self.eval_set[0])

    def evaluate(self, sampling_params, step: int | None = None) -> dict[str, float]:
        """Held-out mean training reward, task accuracy and the count of grading timeouts (`grade`); with `step`,
        process 0 also writes each example's completion and score to W/eval/step_<step>.jsonl."""
        start = time.perf_counter()
        graded = self.grade(sampling_params)
        if step is not None and multihost.is_primary():
            eval_lib.write_records(os.path.join(self.workdir, EVAL_DIR, f"step_{step}.jsonl"),
                                   eval_lib.records(self.task, self.eval_set[1], self.eval_set[0], graded))
        return {"eval_reward_mean": float(np.mean([g.reward for g in graded])),
                "eval_accuracy": float(np.mean([g.score.correct for g in graded])),
                "eval_timeouts": float(sum(g.score.timed_out for g in graded)),
                "eval_seconds": time.perf_counter() - start}

    # ---- one RL step -----------------------------------------------------------------------------------------

    def _rollout(self, trainable, frozen, examples, key, first: int, sampler=None, keep_last: int | None = None):
        """Placed prompt ids and mask (G rows per prompt), the device rollout, advantages and metrics.

        `key` is the call's key, or, for a sampler with `row_keys`, the step's row key: row g of the prompt at
        position `first + i` among the step's prompts then samples with `draws.row_keys(key, [first + i], G)`.
        A prompt is identified by its position in the step's prompt stream (the stream's examples carry no index
        in their split, and the position is unique even when a step spans two epochs), so with the step and the
        seed it fixes the row's key whatever the micro-batching, batch layout or device count.
        `sampler` replaces the configured rollout sampler (d1's LLaDA semantics); keep_last left-truncates prompts."""
        sampler = sampler or self.cfg.rollout
        if sampler.row_keys:
            key = row_keys(key, np.arange(first, first + len(examples)), self.group)
        host_ids, host_mask = (np.repeat(x, self.group, axis=0) for x in self._encode(examples, keep_last))
        ids, mask = self.place_batch(host_ids), self.place_batch(host_mask)
        params = steps.sampling_params(trainable, frozen, self.cfg.lora)
        start = time.perf_counter()
        # The sampler checks prompts on the host and places them on the mesh itself: give it the host arrays.
        rollout = generate(self.model_config, params, host_ids, sampler, attention_mask=host_mask, rng=key,
                           mesh=self.mesh)
        sharding = ids.sharding
        rows = multihost.local_rows(sharding, ids.shape[0])
        completion = multihost.host_rows(rollout.tokens, sharding)[:, ids.shape[1]:]
        seconds = time.perf_counter() - start
        texts = self.tokenizer.batch_decode(completion)  # this process's rows only
        breakdowns = rewards.score_rows(self.task, texts, examples, rows.start, self.group,
                                        self.train_cfg.reward_style)
        entropy = None if rollout.entropy is None else multihost.host_rows(rollout.entropy, sharding)
        names = list(breakdowns[0].components)
        table = multihost.gather_rows(rewards.reward_table(breakdowns, names, completion, entropy,
                                                           self.model_config.eos_token_id), rows, ids.shape[0])
        advantages, info = rewards.batch_summary(table, names, self.group, self.train_cfg.scale_rewards_by_std,
                                                 has_entropy=entropy is not None,
                                                 leave_one_out=self.cfg.leave_one_out_advantages)
        info["rollout_seconds"] = seconds
        info["generated_tokens"] = float(ids.shape[0] * completion.shape[1])
        return ids, mask, rollout, self.place_batch(advantages), info

    def _agrpo_micro(self, trainable, frozen, examples, key, step_row_key, first: int):
        roll_key, loss_key = jax.random.split(key)
        ids, mask, rollout, advantages, info = self._rollout(
            trainable, frozen, examples, step_row_key if self.cfg.rollout.row_keys else roll_key, first)
        p = ids.shape[1]
        record = rollout.truncation
        batch = agrpo.AGRPOBatch(
            prompt_ids=ids, prompt_mask=mask, completion_ids=rollout.tokens[:, p:],
            unmask_step=rollout.unmask_step, old_logp=rollout.logp, entropy=rollout.entropy,
            advantages=advantages, keep=record if record is not None and record.bits is not None else None)
        start = time.perf_counter()
        ref = self.base_params if self.cfg.agrpo.beta else None  # LoRA off / initial policy
        loss, grads, m = steps.agrpo_grads(trainable, frozen, ref, batch, loss_key, model_config=self.model_config,
                                           config=self.cfg.agrpo, lora_config=self.cfg.lora)
        jax.block_until_ready(grads)
        info["loss_seconds"] = time.perf_counter() - start
        info["loss"] = float(loss)
        info.update({k: float(v) for k, v in m.items() if k in LOSS_METRICS})
        return grads, info

    def _masked_micro_batches(self, trainable, frozen, examples_per_micro, key, step_row_key):
        """Rollouts of every micro-batch, each prepared by its objective (`steps.MASKED_OBJECTIVES`: d1's
        diffu-GRPO, wd1, DMPO, TraceRL, DiPO, ESPO, SPG): [(the arguments of its gradient calls, its metrics)].

        Rollouts use LLaDA's sampler semantics (record=False: low confidence from the untempered softmax, no
        truncation record, no early stop), as d1 samples, unless the objective `records` (TraceRL, DiPO: the configured
        sampler, record=True). `prepare` computes the rollout-time quantities (old / reference policy) right after
        each rollout, with the params that sampled it.
        """
        algorithm, cfg, out = self.train_cfg.algorithm, self.cfg.algorithm_config, []
        objective = steps.MASKED_OBJECTIVES[algorithm]
        sampler = self.cfg.rollout
        if not objective.records:
            sampler = dataclasses.replace(sampler, record=False, early_stop=False)
        for i, examples in enumerate(examples_per_micro):
            self._check_stop()
            roll_key, mask_key = jax.random.split(jax.random.fold_in(key, i))
            ids, mask, rollout, advantages, info = self._rollout(
                trainable, frozen, examples, step_row_key if sampler.row_keys else roll_key,
                i * len(examples_per_micro[0]), sampler, keep_last=getattr(cfg, "prompt_keep_last", None))
            samples = steps.Samples(ids, mask, rollout.tokens[:, ids.shape[1]:], rollout.unmask_step, advantages)
            units, metrics = objective.prepare(trainable, frozen, self.base_params, samples, i, mask_key,
                                               model_config=self.model_config, config=cfg, lora_config=self.cfg.lora)
            info.update({k: float(v) for k, v in metrics.items()})
            out.append((units, info))
        return out

    def _agrpo_update(self, trainable, frozen, opt_state, micro_examples, key, step_row_key):
        """One optimizer update from the averaged gradients of every micro-batch."""
        grad_sum, infos = None, []
        for i, ex in enumerate(micro_examples):
            self._check_stop()
            grads, info = self._agrpo_micro(trainable, frozen, ex, jax.random.fold_in(key, i), step_row_key,
                                            i * len(micro_examples[0]))
            grad_sum = _add(grad_sum, grads)
            del grads  # summed: free it before the next micro-batch's backward pass
            infos.append(info)
        grads = steps.divide(grad_sum, len(micro_examples))
        trainable, opt_state, grad_norm = steps.apply_update(trainable, opt_state, grads, tx=self.tx)
        return trainable, opt_state, infos, [grad_norm]

    def _masked_updates(self, trainable, frozen, opt_state, micro_examples, key, step_row_key):
        """The objective's updates on the step's rollouts (`schedule`: d1's μ = num_iterations updates, each over
        every micro-batch; TraceRL's row batches in order). The loss metrics (the objective's `logged`, e.g. d1's
        `clip_ratio` beside ours) of a micro-batch are means over its gradient calls, as d1's logger averages the
        calls between two logs."""
        prep_key, dropout_key = jax.random.split(key)
        prepared = self._masked_micro_batches(trainable, frozen, micro_examples, prep_key, step_row_key)
        algorithm, cfg = self.train_cfg.algorithm, self.cfg.algorithm_config
        objective = steps.MASKED_OBJECTIVES[algorithm]
        infos, grad_norms, calls = [info for _, info in prepared], [], 0
        logged = [[] for _ in prepared]
        t0 = time.perf_counter()
        for update in objective.schedule([units for units, _ in prepared], cfg):
            grad_sum = None
            for m, (batch, rng, old, ref) in update:
                loss, grads, metrics = steps.masked_grads(
                    trainable, frozen, batch, rng, old, ref, jax.random.fold_in(dropout_key, calls),
                    algorithm=algorithm, model_config=self.model_config, config=cfg, lora_config=self.cfg.lora)
                calls += 1
                grad_sum = _add(grad_sum, grads)
                del grads
                logged[m].append(dict(loss=loss, **{k: v for k, v in metrics.items() if k in objective.logged}))
            grads = steps.divide(grad_sum, len(update))
            trainable, opt_state, grad_norm = steps.apply_update(trainable, opt_state, grads, tx=self.tx)
            grad_norms.append(grad_norm)
        for info, rows in zip(infos, logged):
            if rows:
                info.update({k: float(np.mean([float(r[k]) for r in rows])) for k in rows[0]})
        infos[0]["loss_seconds"] = time.perf_counter() - t0
        return trainable, opt_state, infos, grad_norms

    def _step(self, step, trainable, frozen, opt_state, data: Iterator):
        tc = self.train_cfg
        start = time.perf_counter()
        key = jax.random.fold_in(self._rl_key, step)
        micro_examples = [[next(data) for _ in range(tc.prompts_per_micro_batch)] for _ in range(tc.grad_accum)]
        update = self._agrpo_update if tc.algorithm == "agrpo" else self._masked_updates
        trainable, opt_state, infos, grad_norms = update(trainable, frozen, opt_state, micro_examples, key,
                                                         jax.random.fold_in(self._row_key, step))
        summed = ("rollout_seconds", "loss_seconds", "generated_tokens", "reward/timeouts")
        row = {k: float(np.mean([i[k] for i in infos if k in i])) for k in infos[0] if k not in summed}
        for k in summed:
            row[k] = float(sum(i.get(k, 0.0) for i in infos))
        if "logp_mismatch_max" in row:
            row["logp_mismatch_max"] = max(i["logp_mismatch_max"] for i in infos)
        row["tokens_per_second"] = row.pop("generated_tokens") / max(row["rollout_seconds"], 1e-9)
        row["grad_norm"] = float(np.mean([float(g) for g in grad_norms]))
        row["learning_rate"] = float(self.schedule(step - 1))  # the rate this step's update used
        row["step_seconds"] = time.perf_counter() - start
        return trainable, opt_state, row

    # ---- the loop --------------------------------------------------------------------------------------------

    @property
    def needs_ref(self) -> bool:
        """Whether the loss uses the reference policy (the initial, or SFT-warm-started, params)."""
        cfg = self.cfg.algorithm_config
        if self.train_cfg.algorithm == "agrpo":
            return bool(cfg.beta)
        return steps.MASKED_OBJECTIVES[self.train_cfg.algorithm].needs_ref(cfg)

    def init_state(self, base):
        """(trainable, frozen, opt_state) of a fresh run from the (possibly warm-started) base params."""
        lora = self.cfg.lora
        trainable, frozen = lora_lib.split_params(base, lora, self._lora_key)
        if lora is None and self.needs_ref:
            trainable = jax.tree.map(jnp.copy, trainable)  # updates donate the trainable buffers; keep the ref
        if lora is not None:
            trainable = self.place_lora(trainable)
        return trainable, frozen, mesh_lib.replicate_off_mesh(self.tx.init(trainable), self.mesh)

    def train(self, progress: bool = True, profile_steps: tuple[int, int] | None = None) -> list[dict]:
        """Runs (or resumes) the training loop; returns the metric rows written by this call.

        Without progress bars each step prints one flushed line (`progress.StepLog`). SIGTERM to any process stops
        every process at the same point (`rl.stopping`): before a step's next micro-batch (the unfinished step is
        dropped and redone on resume) or at a step end; the last finished step is then checkpointed and the call
        returns with `self.stopped` set. `profile_steps=(a, b)` records a JAX profiler trace of steps a..b into
        W/profile (TensorBoard's profile tab or Perfetto read it). Everything is traced under `MeshConfig.rules`
        (`parallel.mesh.use_rules`), so layers that lay out their own activations (the MoE dispatch's expert axis)
        follow the run's table, not the default one.
        """
        with self.stop, mesh_lib.use_rules(self.rules):
            try:
                return self._train(progress, profile_steps)
            except _Stopped as stopped:
                progress_lib.say(str(stopped))
                return []

    @property
    def stopped(self) -> bool:
        return self.stop.agreed()

    def _check_stop(self) -> None:
        if self.stop.agreed():
            raise _StepAbandoned

    def _train(self, progress: bool, profile_steps: tuple[int, int] | None) -> list[dict]:
        tc, lora, needs_ref = self.train_cfg, self.cfg.lora, self.needs_ref
        manager = train_state.checkpoint_manager(os.path.join(self.workdir, train_state.CHECKPOINT_DIR),
                                                 tc.keep_checkpoints)
        restored_step = manager.latest_step()
        base = self.base_params
        if restored_step is None and tc.sft_steps:
            base = self.warm_start(base, progress)
        trainable, frozen, opt_state = self.init_state(base)
        if lora is not None:
            self.write_lora_config()
        # The SFT-warm-started base is part of the run's state whenever it is still used (LoRA base or KL ref).
        keep_base = bool(tc.sft_steps) and (lora is not None or needs_ref)
        data = self._dataset(tc.seed)
        if restored_step is not None:
            trainable, opt_state, data_state, saved_base = train_state.restore(
                manager, restored_step, trainable, opt_state, base if keep_base else None)
            data.set_state(data_state)
            if saved_base is not None:
                base = saved_base
                frozen = base if lora is not None else None
        self.base_params = base if (lora is not None or needs_ref) else None
        checkpointed_base = self.base_params if keep_base else None

        def save(step, data_state):
            train_state.save(manager, step, trainable, opt_state, data_state, checkpointed_base)

        rows, start_step = [], restored_step or 0
        log = progress_lib.StepLog(start_step, tc.num_steps)
        if not progress:
            progress_lib.say(f"RL: steps {start_step + 1}..{tc.num_steps}" +
                             (f" (resumed from the step-{restored_step} checkpoint)" if restored_step else ""))
        profiler = _Profiler(os.path.join(self.workdir, PROFILE_DIR), profile_steps)
        with metrics_lib.MetricsWriter(self.workdir, resume_step=restored_step, active=multihost.is_primary(),
                                       **self.metrics_options) as writer:
            if restored_step is None:
                save(0, data.get_state())
                if tc.eval_every:
                    rows.append(writer.write(0, self.evaluate(steps.sampling_params(trainable, frozen, lora), 0)))
            bar = tqdm(range(start_step + 1, tc.num_steps + 1), desc="RL", disable=not progress,
                       initial=start_step, total=tc.num_steps)
            for step in bar:
                data_state = data.get_state()  # before this step's examples: an abandoned step is redone from here
                profiler.before(step)
                try:
                    new_trainable, opt_state, info = self._step(step, trainable, frozen, opt_state, data)
                except _StepAbandoned:
                    if manager.latest_step() != step - 1:
                        save(step - 1, data_state)
                    progress_lib.say(f"stopped before finishing step {step}: step {step - 1} is checkpointed; "
                                     "run the same command again to resume")
                    break
                finally:
                    profiler.after(step)
                trainable = new_trainable
                if tc.eval_every and (step % tc.eval_every == 0 or step == tc.num_steps):
                    info.update(self.evaluate(steps.sampling_params(trainable, frozen, lora), step))
                rows.append(writer.write(step, info))
                bar.set_postfix(reward=f"{info['reward_mean']:.3f}")
                if not progress:
                    log.emit(step, info)
                stopping = self.stop.agreed()
                if stopping or step == tc.num_steps or (tc.checkpoint_every and step % tc.checkpoint_every == 0):
                    save(step, data.get_state())
                if stopping:
                    progress_lib.say(f"stopped after step {step}, checkpointed; run the same command again to resume")
                    break
        profiler.close()
        manager.close()
        if multihost.is_primary():
            plots.plot_run(self.workdir)
        if tc.export_final_model and not self.stopped:
            self.export_final(trainable, frozen)
        self.trainable, self.frozen = trainable, frozen
        return rows

    def write_lora_config(self) -> None:
        """W/lora_config.json: the LoRAConfig fields (process 0 writes; replaced atomically)."""
        if multihost.is_primary():
            paths.replace_bytes(paths.absolute(self.workdir) / lora_lib.CONFIG_FILE,
                                json.dumps(dataclasses.asdict(self.cfg.lora), indent=2).encode())

    def export_final(self, trainable, frozen) -> None:
        """W/final_model (LoRA merged) and, for LoRA runs, W/final_adapter (the adapters as a PEFT folder).

        The merged kernels are stored in the base dtype on purpose: a bf16 merge rounds away LoRA updates below
        half a bf16 step of W, so the exact policy of a bf16 LoRA run is base + final_adapter, unmerged.
        """
        lora = self.cfg.lora
        if lora is None:
            params = trainable
        else:
            kernel_dtype = frozen["layers"][lora.targets[0]].dtype if lora.targets else frozen["lm_head"].dtype
            params = lora_lib.merge_lora(frozen, trainable, lora, dtype=kernel_dtype)
            adapters = multihost_utils.process_allgather(trainable, tiled=True)
            if multihost.is_primary():
                export_peft(os.path.join(self.workdir, FINAL_ADAPTER_DIR), self.model_config, adapters, lora,
                            overwrite=True)
        self.export(params, os.path.join(self.workdir, FINAL_MODEL_DIR))

    def export(self, params, out_dir: str) -> None:
        """Writes the policy (LoRA merged) as a model folder that `load_model(ckpt_dir=...)` and
        `experiments.eval --ckpt_dir` read: config.json, params/ and the tokenizer files, atomically."""
        if jax.process_count() > 1 or paths.is_remote(out_dir):  # each process writes its own shards
            with multihost.shared_directory(out_dir) as tmp_dir:
                save_orbax(tmp_dir, self.model_config, params)
                if multihost.is_primary():
                    copy_side_files(self.cfg.model.tokenizer_path, tmp_dir)
            return
        with atomic_directory(out_dir) as tmp_dir:
            save_orbax(tmp_dir, self.model_config, params)
            copy_side_files(self.cfg.model.tokenizer_path, tmp_dir)


def _add(grad_sum, grads):
    """Running micro-batch gradient sum: the first micro-batch's tree is the buffer, later ones are added into it
    (`steps.accumulate` donates it), so peak memory does not grow with grad_accum."""
    return grads if grad_sum is None else steps.accumulate(grad_sum, grads)


def _as_train_error(check, *args) -> None:
    """Runs a layout check; its ValueError becomes a TrainError (a setup that cannot run, reported by the CLI)."""
    try:
        check(*args)
    except ValueError as e:
        raise TrainError(str(e)) from None


def _flat_config(cfg: ExperimentConfig) -> dict:
    """The experiment's fields as one flat dict ('train.learning_rate': 5e-06, ...), for W&B's run config."""
    flat = {}
    for part in dataclasses.fields(cfg):
        value = getattr(cfg, part.name)
        if dataclasses.is_dataclass(value):
            flat.update({f"{part.name}.{k}": v for k, v in dataclasses.asdict(value).items()})
    return flat


class _Stopped(Exception):
    """Every process agreed to stop where no checkpoint can be written (the SFT warm start)."""


class _StepAbandoned(Exception):
    """Every process agreed to stop before the current step's update: the step is dropped and redone on resume."""


class _Profiler:
    """A JAX profiler trace from before step `a` to after step `b` of `steps=(a, b)` (nothing when None)."""

    def __init__(self, directory: str, steps: tuple[int, int] | None):
        self.directory, self.steps, self.active = directory, steps, False

    def before(self, step: int) -> None:
        if self.steps and step == self.steps[0]:
            jax.profiler.start_trace(self.directory)
            self.active = True

    def after(self, step: int) -> None:
        if self.active and step >= self.steps[1]:
            self.close()

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
