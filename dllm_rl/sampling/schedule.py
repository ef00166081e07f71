"""Sampler settings, input validation and block/step arithmetic (docs/algorithm.md).

Everything here runs in Python before anything is traced, so bad input fails with a clear message and never
reaches the compiler.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

REMASKING = ("low_confidence", "random", "entropy")

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

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    @property
    def truncates(self) -> bool:
        """Whether sampling restricts the vocabulary (top-k/top-p act only when temperature > 0, as in AGRPO)."""
        return self.temperature > 0 and (self.top_k is not None or self.top_p < 1.0)

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
        if self.parallel_threshold is not None:
            if not self.fast:
                raise SamplerInputError("parallel_threshold is part of fast mode; pass fast=True as well")
            if self.remasking != "low_confidence":
                raise SamplerInputError(f"parallel_threshold thresholds a probability: it needs "
                                        f"remasking='low_confidence', got {self.remasking!r}")
            if not 0.0 <= self.parallel_threshold <= 1.0:
                raise SamplerInputError(f"parallel_threshold must be in [0, 1], got {self.parallel_threshold}")


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
                   parallel_threshold: float | None = None, row_keys: bool = False) -> SamplerConfig:
    """A normalised SamplerConfig from generate()'s keyword arguments: early_stop None follows record, top_k 0
    means off, numbers get their canonical types (so equal settings share one compiled program)."""
    return SamplerConfig(
        steps=steps, gen_length=gen_length, block_length=block_length, temperature=float(temperature),
        remasking=remasking, top_k=None if top_k in (None, 0) else int(top_k), top_p=float(top_p),
        cfg_scale=float(cfg_scale), logits_eos_inf=logits_eos_inf, confidence_eos_eot_inf=confidence_eos_eot_inf,
        eos_logit_id=int(eos_logit_id), eot_logit_id=int(eot_logit_id), record=record,
        early_stop=record if early_stop is None else bool(early_stop), infill=infill, fast=bool(fast),
        parallel_threshold=None if parallel_threshold is None else float(parallel_threshold), row_keys=bool(row_keys))
