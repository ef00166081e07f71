"""Sampler settings, input validation and block/step arithmetic (docs/algorithm.md).

Everything here runs in Python before anything is traced, so bad input fails with a clear message and never
reaches the compiler.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

REMASKING = ("low_confidence", "random", "entropy", "maskgit_plus", "topk_margin", "origin")
SCHEDULES = ("llada", "dream")
TRUNCATIONS = ("agrpo", "dream")

# Token ids the reference generate() hard-codes for logits_eos_inf / confidence_eos_eot_inf (LLaDA-8B vocabulary).
REFERENCE_EOS_ID = 126081
REFERENCE_EOT_ID = 126348


class SamplerInputError(ValueError):
    """Sampler arguments that cannot work; raised before compiling."""


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Static sampler settings (hashable: one compiled program per distinct value).

    `record=True` selects the AGRPO rollout semantics (docs/algorithm.md): scores of low_confidence/entropy
    remasking are taken from the temperature-scaled truncated distribution, a committed token is final even if
    it equals the mask id, and per-position unmask step, log-prob, entropy and truncation set are recorded.
    `record=False` follows LLaDA's generate(): low_confidence confidence is the softmax probability of the
    un-tempered logits and a position stays open while it holds the mask id.
    `fast=True` is the approximate cached mode (generate.py): each step runs only the current block, attending to
    keys/values of the rest of the sequence computed at the block start. `parallel_threshold` (fast mode only)
    replaces the per-step schedule by Fast-dLLM's rule: commit every candidate whose confidence exceeds it, and
    at least the most confident one.
    `row_keys=True` makes a row's sampled completion independent of its batch: `generate` then takes one key per
    row (rng [B]) and every random draw of a row comes from its own key (draws.py), so the completion depends only
    on the row's prompt, its key, the model and these settings. Off by default: one key per call, as before.

    Dream's sampler (`generation_utils._sample`, docs/algorithm.md "Dream's sampler"), by Dream's names:
    `schedule="dream"` replaces the per-block count table by Dream's timesteps t = linspace(1, eps, steps + 1): step
    i commits floor(m · (1 - t[i+1] / t[i])) positions of every row (all remaining ones at the last step), m the
    batch's mean number of open positions now; the generation is one block (block_length = gen_length).
    remasking "maskgit_plus" scores the probability of the proposed token under the tempered distribution,
    "topk_margin" its top-1 minus top-2 probability, "entropy" its negative entropy; "origin" (schedule "dream")
    commits each open position independently with probability 1 - t[i+1] / t[i]. `alg_temp` > 0 samples the
    committed positions instead of taking the best: without replacement, from softmax(score / alg_temp).
    `truncation="dream"` is Dream's top-p/top-k (candidates.py): top-p on the whole vocabulary keeping the token
    that crosses p, then top-k, applied at temperature 0 too (it then changes the confidences, not the argmax);
    the default "agrpo" is the AGRPO reference's (top-k, then top-p among those; nothing at temperature 0).
    """

    steps: int
    gen_length: int
    block_length: int
    temperature: float = 0.0
    remasking: str = "low_confidence"
    top_k: int | None = None
    top_p: float = 1.0
    cfg_scale: float = 0.0
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    eos_logit_id: int = REFERENCE_EOS_ID
    eot_logit_id: int = REFERENCE_EOT_ID
    record: bool = False
    early_stop: bool = False
    infill: bool = False
    fast: bool = False
    parallel_threshold: float | None = None
    row_keys: bool = False
    schedule: str = "llada"
    eps: float = 1e-3
    alg_temp: float | None = None
    truncation: str = "agrpo"

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    @property
    def truncates(self) -> bool:
        """Whether sampling restricts the vocabulary (top-k/top-p act only when temperature > 0 in AGRPO, always in
        Dream)."""
        return (self.temperature > 0 or self.truncation == "dream") and (self.top_k is not None or self.top_p < 1.0)

    @property
    def samples_positions(self) -> bool:
        """Whether the committed positions are drawn (random or origin remasking, alg_temp > 0): a uniform per
        position and step."""
        return self.remasking in ("random", "origin") or bool(self.alg_temp)

    def validate(self) -> None:
        """Raises SamplerInputError for settings the sampler cannot run."""
        for name in ("steps", "gen_length", "block_length"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise SamplerInputError(f"{name} must be a positive int, got {value!r}")
        if self.gen_length % self.block_length:
            raise SamplerInputError(
                f"gen_length {self.gen_length} is not a multiple of block_length {self.block_length}")
        if self.steps % self.num_blocks:
            raise SamplerInputError(
                f"steps {self.steps} is not divisible by the number of blocks {self.num_blocks} "
                f"(gen_length {self.gen_length} / block_length {self.block_length})")
        if self.remasking not in REMASKING:
            raise SamplerInputError(f"remasking={self.remasking!r}; choose one of {REMASKING}")
        if not self.temperature >= 0:
            raise SamplerInputError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise SamplerInputError(f"top_k must be None or >= 1, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise SamplerInputError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.cfg_scale >= 0:
            raise SamplerInputError(f"cfg_scale must be >= 0, got {self.cfg_scale}")
        if self.record and self.confidence_eos_eot_inf:
            raise SamplerInputError("confidence_eos_eot_inf is an option of LLaDA's sampler; the AGRPO rollout "
                                    "(record=True) has no such option")
        if self.record and self.infill:
            raise SamplerInputError("infill (mask tokens in the prompt) is not supported with record=True: the "
                                    "AGRPO rollout only unmasks the generated blocks")
        if self.fast and self.record:
            raise SamplerInputError("fast=True cannot be combined with record=True: the RL loss needs the exact "
                                    "likelihoods of the policy that sampled, and the cached logits of fast mode are "
                                    "an approximation of that policy; run the exact sampler for rollouts")
        self.validate_dream()
        if self.parallel_threshold is not None:
            if not self.fast:
                raise SamplerInputError("parallel_threshold is part of fast mode; pass fast=True as well")
            if self.remasking != "low_confidence":
                raise SamplerInputError(f"parallel_threshold thresholds a probability: it needs "
                                        f"remasking='low_confidence', got {self.remasking!r}")
            if not 0.0 <= self.parallel_threshold <= 1.0:
                raise SamplerInputError(f"parallel_threshold must be in [0, 1], got {self.parallel_threshold}")

    def validate_dream(self) -> None:
        """The options of Dream's sampler: what they need and what they cannot be combined with."""
        if self.schedule not in SCHEDULES:
            raise SamplerInputError(f"schedule={self.schedule!r}; choose one of {SCHEDULES}")
        if self.truncation not in TRUNCATIONS:
            raise SamplerInputError(f"truncation={self.truncation!r}; choose one of {TRUNCATIONS}")
        if self.schedule == "dream":
            if self.block_length != self.gen_length:
                raise SamplerInputError(f"schedule='dream' runs the generation as one block (Dream's sampler has "
                                        f"none): set block_length = gen_length = {self.gen_length}")
            if not 0.0 < self.eps < 1.0:
                raise SamplerInputError(f"eps must be in (0, 1) (Dream's last timestep), got {self.eps}")
            if self.fast:
                raise SamplerInputError("fast=True has no Dream schedule; use schedule='llada' or fast=False")
        if self.remasking == "origin" and self.schedule != "dream":
            raise SamplerInputError("remasking='origin' commits with Dream's probability 1 - s/t: it needs "
                                    "schedule='dream'")
        if self.alg_temp is not None:
            if not self.alg_temp >= 0:
                raise SamplerInputError(f"alg_temp must be None or >= 0, got {self.alg_temp}")
            if self.alg_temp and self.remasking in ("random", "origin"):
                raise SamplerInputError(f"alg_temp samples positions by their confidence; remasking="
                                        f"{self.remasking!r} has none (use maskgit_plus, topk_margin, entropy or "
                                        "low_confidence)")
            if self.alg_temp and (self.fast or self.parallel_threshold is not None):
                raise SamplerInputError("alg_temp is not implemented in fast mode; use fast=False")


def dream_timesteps(steps: int, eps: float) -> np.ndarray:
    """float32 [steps + 1]: Dream's torch.linspace(1, eps, steps + 1), bit for bit (torch's CPU kernel: step =
    (eps - 1) / steps in float32, then start + step·i for the first half and eps - step·(steps - i) for the rest,
    each rounded once, as a fused multiply-add)."""
    n = steps + 1
    f32 = np.float32
    step = float(f32((f32(eps) - f32(1.0)) / f32(max(n - 1, 1))))
    i = np.arange(n)
    return np.where(i < n // 2, 1.0 + step * i, float(f32(eps)) - step * (n - 1 - i)).astype(f32)


def dream_keep_fraction(steps: int, eps: float) -> np.ndarray:
    """float32 [steps]: 1 - s/t of each step (t = timesteps[i], s = timesteps[i + 1]) as Dream computes it in
    float32; 1 at the last step (everything left is committed)."""
    t = dream_timesteps(steps, eps)
    frac = (np.float32(1.0) - t[1:] / t[:-1]).astype(np.float32)
    frac[-1] = 1.0
    return frac


def dream_transfer_count(num_open_B: jax.Array, sampler: SamplerConfig, step) -> jax.Array:
    """int32 [B]: Dream's count for `step`, the same for every row: int(mean open · (1 - s/t)) in float32
    (int(mean open) at the last step; a row with fewer open positions commits all of them)."""
    mean = jnp.sum(num_open_B).astype(jnp.float32) / jnp.float32(num_open_B.shape[0])
    frac = jnp.asarray(dream_keep_fraction(sampler.steps, sampler.eps))[step]
    count = jnp.floor(mean * frac).astype(jnp.int32)
    return jnp.broadcast_to(count, num_open_B.shape)


def validate_inputs(config, sampler: SamplerConfig, prompt_ids, attention_mask=None) -> None:
    """Checks the prompt against the model and the sampler settings (shapes, length, mask tokens)."""
    sampler.validate()
    if len(np.shape(prompt_ids)) != 2:
        raise SamplerInputError(f"prompt_ids must be [B, P], got shape {np.shape(prompt_ids)}")
    b, p = np.shape(prompt_ids)
    if b == 0 or p == 0:
        raise SamplerInputError(f"prompt_ids must be non-empty, got shape {(b, p)}")
    total = p + sampler.gen_length
    if total > config.max_sequence_length:
        raise SamplerInputError(
            f"prompt length {p} + gen_length {sampler.gen_length} = {total} exceeds the model's "
            f"max_sequence_length {config.max_sequence_length}")
    if attention_mask is not None and tuple(np.shape(attention_mask)) != (b, p):
        raise SamplerInputError(f"attention_mask shape {np.shape(attention_mask)} != prompt shape {(b, p)}")
    if sampler.fast and (config.logit_shift or config.positions_skip_padding):
        raise SamplerInputError(
            f"fast=True is not implemented for the {config.family} family: with shifted logits the cached window "
            "would have to start one token early and carry padding-skipping RoPE positions; use fast=False")
    if not sampler.infill and not isinstance(prompt_ids, jax.core.Tracer):
        rows = _rows_holding(prompt_ids, config.mask_token_id)
        if rows:
            raise SamplerInputError(
                f"prompt rows {rows} contain the mask token {config.mask_token_id}; pass infill=True to let "
                "those positions be generated (they then compete in every step, as in the reference)")


def _rows_holding(ids_BxP, token: int) -> list[int]:
    """Rows of the prompt holding `token`; of a global multi-host array, the rows this process can read (each
    process checks its own)."""
    if isinstance(ids_BxP, jax.Array) and not ids_BxP.is_fully_addressable:
        rows: set[int] = set()
        for shard in ids_BxP.addressable_shards:
            first = shard.index[0].indices(ids_BxP.shape[0])[0]
            rows.update(first + int(r) for r in np.nonzero(np.asarray(shard.data) == token)[0])
        return sorted(rows)
    return sorted(set(np.nonzero(np.asarray(ids_BxP) == token)[0].tolist()))


def transfer_schedule(num_masked_B: jax.Array, steps: int) -> jax.Array:
    """Tokens to commit per step [B, steps]: m // s everywhere, +1 on the first m % s steps (the reference)."""
    base_B = num_masked_B // steps
    rem_B = num_masked_B % steps
    return base_B[:, None] + (jnp.arange(steps)[None, :] < rem_B[:, None]).astype(num_masked_B.dtype)


def transfer_count(num_masked_B: jax.Array, steps: int, step_in_block) -> jax.Array:
    """Entry `step_in_block` of transfer_schedule without building the whole table."""
    return num_masked_B // steps + (step_in_block < num_masked_B % steps).astype(num_masked_B.dtype)


def sampler_config(*, steps: int, gen_length: int, block_length: int, temperature: float = 0.0,
                   remasking: str = "low_confidence", top_k: int | None = None, top_p: float = 1.0,
                   cfg_scale: float = 0.0, logits_eos_inf: bool = False, confidence_eos_eot_inf: bool = False,
                   eos_logit_id: int = REFERENCE_EOS_ID, eot_logit_id: int = REFERENCE_EOT_ID, record: bool = False,
                   early_stop: bool | None = None, infill: bool = False, fast: bool = False,
                   parallel_threshold: float | None = None, row_keys: bool = False, schedule: str = "llada",
                   eps: float = 1e-3, alg_temp: float | None = None, truncation: str = "agrpo") -> SamplerConfig:
    """A normalised SamplerConfig from generate()'s keyword arguments: early_stop None follows record, top_k 0
    means off, alg_temp 0 means None, numbers get their canonical types (so equal settings share one compiled
    program)."""
    return SamplerConfig(
        steps=steps, gen_length=gen_length, block_length=block_length, temperature=float(temperature),
        remasking=remasking, top_k=None if top_k in (None, 0) else int(top_k), top_p=float(top_p),
        cfg_scale=float(cfg_scale), logits_eos_inf=logits_eos_inf, confidence_eos_eot_inf=confidence_eos_eot_inf,
        eos_logit_id=int(eos_logit_id), eot_logit_id=int(eot_logit_id), record=record,
        early_stop=record if early_stop is None else bool(early_stop), infill=infill, fast=bool(fast),
        parallel_threshold=None if parallel_threshold is None else float(parallel_threshold), row_keys=bool(row_keys),
        schedule=schedule, eps=float(eps), alg_temp=float(alg_temp) if alg_temp else None, truncation=truncation)
