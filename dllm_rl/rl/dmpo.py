"""DMPO (github.com/yuchen-zhu-zyc/DMPO @96af1a4, `DMPO/dmpo_trainer.py`): weighted denoising cross-entropy (WDCE)
toward the reward-tilted distribution p* ∝ p_ref·e^{r/α}.

What the official `DMPOTrainer` computes, and this module with it:
- **Weights** (`_generate_and_score_completions`, alpha > 0): w_i = softmax over the group of
  coeff·(log p_ref(x_i) − log p_old(x_i) + r_i/α), the self-normalised importance weights of p* against the
  rollout policy; the negative weights w⁻ use −r_i/α; α = 0: softmax(coeff·r) and softmax(−coeff·r). The
  sequence log-likelihoods are ELBOs (`compute_log_prob_elbo`): per completion token, the mean over R' replicate
  masks of (L/m)·log p(x_j | masked x) at the masked positions (m = masked count, clamped ≥ 1), summed over the
  completion; p_old and p_ref share each replicate's mask.
- **Masks** (both `compute_loss` and `compute_log_prob_elbo`): per replicate row a rate λ ~ U[0, 1) (0.1 + 0.9λ
  with `mask_prob_clamp`), each completion token masked iff u < λ; `antithetic`: the second half of the replicates
  are the complements of the first half (replicate r + R/2 masks what replicate r keeps). The prompt is never
  masked; positions after the first EOS are masked like the others (`mask_non_eos` excepts them in the loss).
- **Loss** (`compute_loss`, loss="wdce"): Σ_{r,i} ã_i·Σ_{j masked} −log p_θ(x_ij | masked x) / m_ri / R, with
  ã = w − strength·w⁻ (`centering="negative"`, the default), w − strength·mean(w) ("mean"), or w ("none"). A sum
  over the micro-batch's rows, not a mean (the official normalisation); the L of L/m is dropped, as officially.

With the official draws passed as `draws`, the ELBOs, weights, loss and gradients match the official code on the
tiny model (tests/fixtures/dmpo_loss). Deliberate differences:
- masks are drawn with JAX's generator; the prompt padding mask can be passed to the model as an attention mask
  (the official passes none; the golden runs with `prompt_mask=None`); the replicates go through the model
  `copies_per_call` at a time (None: all in one call, as officially; the values are the same);
- `mask_non_eos` masks only the tokens up to the first EOS, as documented; the official indexes with the
  trainer's int completion mask (`masked_index[~completion_mask] = False` selects rows −1 and −2 and un-masks them
  whole), which this module does not reproduce (default off in the official config and run script);
- not provided: `ada_coeff` (an ESS-targeting scipy search for coeff), α = −1 (rewards as weights; the official
  code then fails on an undefined `coeffs`), `advantage_centering_unbias`, the `ddo` loss, `log_rnd_omit_eos`
  (official default off).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dllm_rl.models import llada
from dllm_rl.models.lora import LoRAConfig, policy_params
from dllm_rl.rl.advantages import check_group_size
from dllm_rl.rl.objective import ForwardConfig, completion_positions, in_chunks, model_inputs, token_log_probs

Params = dict[str, Any]
CENTERINGS = ("negative", "mean", "none")


@dataclasses.dataclass(frozen=True)
class DMPOConfig(ForwardConfig):
    """DMPO settings (defaults: the official dmpo_train_config.yaml and run_dmpo.sh); the model-call fields come
    from `ForwardConfig`.

    alpha α: the reward temperature of p* ∝ p_ref·e^{r/α} (0: weights softmax(coeff·r)); coeff: the proximal
    step (1: an infinite step). num_replicates R: masks per completion in the loss; elbo_replicates: masks per
    completion in each ELBO (`compute_ref_log_prob_elbo_size`). antithetic / mask_prob_clamp / mask_non_eos: the
    official `loss_antithetic` / `loss_mask_prob_clamp` / `loss_mask_non_eos` (the first two also apply to the
    ELBO). centering: "negative" (`advantage_centering_neg`), "mean", or "none" (`advantage_centering` off).
    prompt_keep_last (trainer): keep each prompt's last N tokens (the official `max_prompt_length` left truncation).
    copies_per_call: replicate masks per model call, in the loss and the ELBO (None: all); fewer hold fewer logits
    at once, at one extra forward per call for the backward, and give the same values.
    """

    alpha: float = 0.04
    coeff: float = 1.0
    num_generations: int = 16
    num_iterations: int = 8
    num_replicates: int = 4
    elbo_replicates: int = 4
    antithetic: bool = True
    mask_prob_clamp: bool = True
    mask_non_eos: bool = False
    centering: str = "negative"
    centering_strength: float = 1.0
    prompt_keep_last: int | None = None
    copies_per_call: int | None = None

    def __post_init__(self):
        if self.alpha < 0:
            raise ValueError(f"DMPOConfig.alpha must be ≥ 0, got {self.alpha} (the official α = −1, rewards as "
                             "weights, is not supported)")
        if not 0.0 <= self.coeff <= 1.0:
            raise ValueError(f"DMPOConfig.coeff must be in [0, 1], got {self.coeff}")
        if self.prompt_keep_last is not None and self.prompt_keep_last < 1:
            raise ValueError(f"DMPOConfig.prompt_keep_last must be None or ≥ 1, got {self.prompt_keep_last}")
        if self.centering not in CENTERINGS:
            raise ValueError(f"DMPOConfig.centering={self.centering!r}; choose one of {CENTERINGS}")
        for name in ("num_generations", "num_iterations", "num_replicates", "elbo_replicates"):
            if getattr(self, name) < 1:
                raise ValueError(f"DMPOConfig.{name} must be ≥ 1, got {getattr(self, name)}")
            if name.endswith("replicates") and self.antithetic and getattr(self, name) % 2:
                raise ValueError(f"DMPOConfig.{name} must be even with antithetic masks, got {getattr(self, name)}")
        per_call = self.copies_per_call
        if per_call is not None and (per_call < 1 or self.num_replicates % per_call or self.elbo_replicates % per_call):
            raise ValueError(f"DMPOConfig.copies_per_call={per_call} must divide num_replicates {self.num_replicates} "
                             f"and elbo_replicates {self.elbo_replicates} (or be None: all in one call)")
        super().__post_init__()


class DMPOBatch(NamedTuple):
    """prompt_ids [B, P], prompt_mask [B, P] or None, completion_ids [B, L], completion_mask bool [B, L] (up to and
    including the first EOS; used by `mask_non_eos`), weights and negative_weights [B] (`dmpo_weights`)."""

    prompt_ids: jax.Array
    prompt_mask: jax.Array | None
    completion_ids: jax.Array
    completion_mask: jax.Array
    weights: jax.Array
    negative_weights: jax.Array


class MaskDraws(NamedTuple):
    """The uniforms behind R replicate masks: rates t [R', B] and token draws u [R', B, L]; R' = R/2 when
    antithetic (the rest are complements), else R. The official draws, row r·B + b of its torch.rand calls, fit
    after a reshape."""

    t: jax.Array
    u: jax.Array


def draw_masks(rng: jax.Array, batch_size: int, gen_length: int, replicates: int, antithetic: bool) -> MaskDraws:
    """Fresh `MaskDraws` for `replicates` masks of every row."""
    rows = replicates // 2 if antithetic else replicates
    t_key, u_key = jax.random.split(rng)
    return MaskDraws(jax.random.uniform(t_key, (rows, batch_size), jnp.float32),
                     jax.random.uniform(u_key, (rows, batch_size, gen_length), jnp.float32))


def replicate_masks(draws: MaskDraws, antithetic: bool, mask_prob_clamp: bool) -> jax.Array:
    """bool [R, B, L]: token j of replicate r of row b is masked iff u < λ, λ = t (0.1 + 0.9t when clamped, in
    float32 as the official); antithetic appends the complements."""
    t = draws.t.astype(jnp.float32)
    lam = jnp.float32(0.1) + jnp.float32(0.9) * t if mask_prob_clamp else t
    masked_RxBxL = draws.u.astype(jnp.float32) < lam[..., None]
    return jnp.concatenate([masked_RxBxL, ~masked_RxBxL]) if antithetic else masked_RxBxL


def masked_logps(model_config: llada.LLaDAConfig, params: Params, batch: DMPOBatch, masked_RxBxL: jax.Array,
                 config: DMPOConfig) -> jax.Array:
    """log p(x_j | x with replicate r's completion positions masked) [R, B, L], float32, every position (one
    forward over the R·B rows, or `config.copies_per_call` replicates at a time; the prompt is never masked)."""
    ids_BxT, att_BxT = model_inputs(batch.prompt_ids, batch.prompt_mask, batch.completion_ids)
    p = batch.prompt_ids.shape[1]
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  [C, B, ...] → [C·B, ...] replicate-major

    def replicates_logps(masked_CxBxL):
        c = masked_CxBxL.shape[0]
        noisy_CxBxT = jnp.where(jnp.pad(masked_CxBxL, ((0, 0), (0, 0), (p, 0))), model_config.mask_token_id, ids_BxT)
        att = None if att_BxT is None else flat(jnp.broadcast_to(att_BxT, (c, *att_BxT.shape)))
        completion_CBxL = flat(jnp.broadcast_to(batch.completion_ids, masked_CxBxL.shape))
        logits = llada.forward_at(model_config, params, flat(noisy_CxBxT), completion_positions(p, completion_CBxL),
                                  att, **config.forward_kwargs())
        return token_log_probs(logits, completion_CBxL).reshape(masked_CxBxL.shape)

    return in_chunks(replicates_logps, masked_RxBxL, config.copies_per_call, "DMPOConfig.copies_per_call")


def token_elbo(model_config: llada.LLaDAConfig, params: Params, batch: DMPOBatch, rng: jax.Array | None,
               config: DMPOConfig, draws: MaskDraws | None = None) -> jax.Array:
    """Per-token ELBO [B, L] of the completion (`compute_log_prob_elbo`): mean over `elbo_replicates` masks of
    (L/m)·log p at the masked positions; its row sum is the sequence log-likelihood estimate. Masks from `rng`, or
    replayed from `draws`; the same key (draws) for two param sets gives them the same masks, as officially."""
    b, length = batch.completion_ids.shape
    draws = draw_masks(rng, b, length, config.elbo_replicates, config.antithetic) if draws is None else draws
    masked_RxBxL = replicate_masks(draws, config.antithetic, config.mask_prob_clamp)
    logp_RxBxL = masked_logps(model_config, params, batch, masked_RxBxL, config)
    m_RxBx1 = jnp.maximum(masked_RxBxL.sum(-1, keepdims=True), 1).astype(jnp.float32)
    return jnp.mean(jnp.where(masked_RxBxL, logp_RxBxL, 0.0) * (length / m_RxBx1), axis=0)


def dmpo_weights(rewards_B: jax.Array, log_prob_ref_B: jax.Array, log_prob_old_B: jax.Array, config: DMPOConfig
                 ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(weights w [B], negative weights w⁻ [B], metrics) from rewards and the sequence ELBOs of the reference and
    the rollout-time policy: per group of `num_generations` rows, softmax(coeff·(log_rnd ± r/α)) (α > 0) or
    softmax(±coeff·r) (α = 0), log_rnd = log p_ref − log p_old. `ess`: the official 1/(B·Σ_b w_b²) over the B rows
    passed (officially one process's rows; with one group per call it is the group's normalised ESS)."""
    check_group_size(rewards_B.shape[0], config.num_generations)
    r_QxG = rewards_B.astype(jnp.float32).reshape(-1, config.num_generations)
    log_rnd_QxG = (log_prob_ref_B - log_prob_old_B).astype(jnp.float32).reshape(r_QxG.shape)
    if config.alpha > 0:
        plus, minus = log_rnd_QxG + r_QxG / config.alpha, log_rnd_QxG - r_QxG / config.alpha
    else:
        plus, minus = r_QxG, -r_QxG
    w_QxG = jax.nn.softmax(config.coeff * plus, axis=-1)
    neg_QxG = jax.nn.softmax(config.coeff * minus, axis=-1)
    ess = 1.0 / jnp.sum(w_QxG ** 2) / rewards_B.shape[0]
    return w_QxG.reshape(-1), neg_QxG.reshape(-1), {"ess": ess, "log_rnd": log_rnd_QxG.mean()}


def centred_weights(weights_B: jax.Array, negative_weights_B: jax.Array, config: DMPOConfig) -> jax.Array:
    """ã [B]: w − strength·w⁻, w − strength·mean(w) over the micro-batch, or w (`DMPOConfig.centering`)."""
    if config.centering == "negative":
        return weights_B - config.centering_strength * negative_weights_B
    if config.centering == "mean":
        return weights_B - config.centering_strength * weights_B.mean()
    return weights_B


def wdce_loss(logp_RxBxL: jax.Array, masked_RxBxL: jax.Array, weights_B: jax.Array
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Σ_{r,b} ã_b·Σ_{j masked} −logp / m_rb / R (m clamped ≥ 1) and metrics: `dce` (the unweighted per-row
    Σ −logp / m, mean over replicates and rows) and `mask_fraction`."""
    m_RxB = jnp.maximum(masked_RxBxL.sum(-1), 1).astype(jnp.float32)
    dce_RxB = -jnp.sum(jnp.where(masked_RxBxL, logp_RxBxL, 0.0), axis=-1) / m_RxB
    loss = jnp.sum(dce_RxB * weights_B.astype(jnp.float32)[None]) / masked_RxBxL.shape[0]
    return loss, {"dce": dce_RxB.mean(), "mask_fraction": masked_RxBxL.mean()}


def dmpo_loss(trainable: Params, frozen: Params | None, batch: DMPOBatch, rng: jax.Array | None, *,
              model_config: llada.LLaDAConfig, config: DMPOConfig, lora_config: LoRAConfig | None = None,
              dropout_rng: jax.Array | None = None, draws: MaskDraws | None = None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) of one update (`compute_loss`, loss="wdce") with `num_replicates` masks from `rng`, or
    replayed from `draws` (the official draws, see `MaskDraws`). `dropout_rng`: the LoRA dropout key."""
    params = policy_params(trainable, frozen, lora_config, dropout_rng)
    b, length = batch.completion_ids.shape
    draws = draw_masks(rng, b, length, config.num_replicates, config.antithetic) if draws is None else draws
    masked_RxBxL = replicate_masks(draws, config.antithetic, config.mask_prob_clamp)
    if config.mask_non_eos:
        masked_RxBxL = masked_RxBxL & batch.completion_mask.astype(bool)[None]
    logp_RxBxL = masked_logps(model_config, params, batch, masked_RxBxL, config)
    loss, metrics = wdce_loss(logp_RxBxL, masked_RxBxL, centred_weights(batch.weights, batch.negative_weights, config))
    return loss, metrics


def dmpo_grad(trainable: Params, frozen: Params | None, batch: DMPOBatch, rng: jax.Array | None, *,
              model_config: llada.LLaDAConfig, config: DMPOConfig, lora_config: LoRAConfig | None = None,
              dropout_rng: jax.Array | None = None, draws: MaskDraws | None = None
              ) -> tuple[jax.Array, Params, dict[str, jax.Array]]:
    """(loss, gradient w.r.t. `trainable`, metrics) of `dmpo_loss`; pure and jit-able."""
    (loss, metrics), grads = jax.value_and_grad(dmpo_loss, has_aux=True)(
        trainable, frozen, batch, rng, model_config=model_config, config=config, lora_config=lora_config,
        dropout_rng=dropout_rng, draws=draws)
    return loss, grads, metrics
