"""Semi-autoregressive masked-diffusion sampling as one compiled program.

`generate` reproduces LLaDA's generate() and, with `record=True`, the official AGRPO rollout sampler
(docs/algorithm.md). The whole denoising loop is a single `lax.while_loop` inside one `jax.jit`
(no host round-trip per step); each step computes logits only at the current block's positions
(`llada.forward_at`). Randomness comes from `rng` (one `fold_in` per step; with `row_keys=True` one key per row,
so a row's completion does not depend on its batch), or, for replaying a reference run in tests, from stored
uniforms passed as `draws` (draws.py).

Modules: block_logits.py (model calls), proposal.py + candidates.py (token draw over the kept set), scoring.py
(which positions commit), loop.py (state, step, block starts, loop bodies), draws.py (randomness).

Differences between the two semantics (selected by `record`):
  * low_confidence score: LLaDA uses softmax(logits)[x0] of the un-tempered, untruncated logits; AGRPO uses the
    log-prob of x0 under the temperature-scaled, truncated distribution.
  * a committed token equal to the mask id: LLaDA keeps that position open (it competes again in later steps,
    even after its block ended: such steps then score every position left of the block's end); AGRPO tracks
    positions by their unmask step, so the commit is final.
  * random remasking: LLaDA draws a score per sequence position, AGRPO per block position; only candidates
    matter, so both are the same draws restricted to the candidates.
Early stop (default on with record): at a block start, a row whose previous block is all EOS gets EOS in every
remaining position (unmask step = the current step), takes no further commits, and the loop ends once every row
is done. Block 0 has no previous block (the AGRPO reference inspects an empty or prompt slice there; not copied).
Dream's own sampler (`schedule="dream"`, remasking maskgit_plus / topk_margin / entropy / origin, `alg_temp`) is a
set of options of the same loop (SamplerConfig; docs/algorithm.md).
Ties among position scores are broken towards the lower position (the references leave the order unspecified).
Exact ties at the top-p cut are ordered by token id (candidates.py).

Fast mode (`fast=True`, off by default; approximate, so it CHANGES OUTPUTS): at each block start one full forward
of the current sequence stores every layer's keys/values of every position (`llada.hidden_states_and_kv`); each
step of the block then runs only the block's bl tokens (`llada.forward_window_at`), attending to the cached K/V of
everything left of the block (the prefix cache) and right of it (the masked suffix), plus its own fresh K/V.
This is Fast-dLLM's DualCache. Why a full forward and not a prefix-only pass: with bidirectional attention the
prefix's K/V depend on the tokens right of it, so only the full forward makes the block's first step exact (the
tests check it is). Why block-only windows rather than block + suffix: the window keeps the static shape bl in a
single while_loop (a block + suffix window would change length per block, or be padded to gen_length and save
little), a step costs bl instead of P + gen tokens, and the suffix is still seen, through its block-start K/V (its
tokens are mask tokens throughout the block; only their deeper-layer K/V go stale). Steps with open positions
left of the block (infill prompts, committed mask ids) run the exact full-sequence step instead.
`parallel_threshold` (fast mode, low_confidence) is Fast-dLLM's threshold decoding: each step commits every open
block position whose confidence exceeds it, and at least the best one; a block ends when it has no open position
(or after bl steps), so the step count is dynamic and `steps` does not set it. Model calls = steps_run window
(or straggler) passes + one full pass per block. Not allowed with record=True: the RL loss needs the exact
likelihoods of the policy that sampled.
Measured on the golden fixtures (2 rows x 16 generated tokens, blocks of 8, 8 steps), generated tokens that
differ from the exact (reference) output: t0_lowconf 3/32 (GQA model: 4/32), t0_lowconf_cfg1 4/32, t08_lowconf
(Gumbel draws replayed) 12/32, t0_random (random remasking, draws replayed) 19/32; the state after step 0 is
identical in all five. These tiny random models are a hard case (confidences rarely above 0.5, so small logit shifts
change choices, and early changes propagate); tests/test_sampling_fast.py checks the fast mode token for token
against an independent float64 NumPy version of it (tests/helpers/ref_fast_llada.py).
"""
from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dllm_rl.models import llada
from dllm_rl.parallel import mesh as mesh_lib
from dllm_rl.sampling import truncation as trunc
from dllm_rl.sampling.block_logits import Model
from dllm_rl.sampling.draws import check_row_keys, prepare_draws
from dllm_rl.sampling.loop import Run, State, run_loop
from dllm_rl.sampling.schedule import SamplerConfig, SamplerInputError, sampler_config, validate_inputs


@flax.struct.dataclass
class Rollout:
    """Result of `generate`.

    tokens [B, P+gen] int32 (prompt included); unmask_step [B, gen] int32, the step (0-based, global) at which
    each generated position was last committed (-1: never); steps_run, scalar int32 (< steps after an early stop;
    with parallel_threshold, the dynamic number of steps).
    With record=True also logp / entropy [B, gen] float32 of the committed token under the temperature-scaled,
    truncated distribution of its step, and `truncation` (see truncation.py); otherwise these are None.
    """

    tokens: jax.Array
    unmask_step: jax.Array
    steps_run: jax.Array
    logp: jax.Array | None = None
    entropy: jax.Array | None = None
    truncation: trunc.TruncationRecord | None = None


def generate(config: llada.LLaDAConfig, params, prompt_ids, sampler: SamplerConfig | None = None, *,
             attention_mask=None, rng: jax.Array | None = None, mesh: jax.sharding.Mesh | None = None,
             compute_dtype=None, attention_impl: str | None = None, draws: dict | None = None,
             **sampler_kwargs) -> Rollout:
    """Samples `sampler.gen_length` tokens after `prompt_ids` [B, P] (SamplerConfig documents the settings).

    The settings come as a `SamplerConfig` or, as a convenience, as its fields in keyword arguments
    (`generate(config, params, ids, steps=..., gen_length=..., block_length=..., ...)`, with generate's
    defaults: `early_stop` None follows `record`, top_k 0 means off; `schedule.sampler_config`).
    temperature 0 is greedy (top-k/top-p then do nothing, as in AGRPO); otherwise tokens are drawn by Gumbel-max
    from softmax(logits / T) truncated by top_k / top_p. `record=True` runs the AGRPO rollout and fills logp /
    entropy / truncation. Mask tokens in the prompt raise unless `infill=True`. With `mesh`, the batch is split
    over its data axes (`parallel.mesh.batch_sharding`); params already on the mesh keep their shardings, others
    are replicated. `fast=True` runs the approximate cached mode (module docstring; it changes outputs).
    `row_keys=True` takes `rng` as one key per row ([B] typed keys, e.g. `draws.row_keys`, or [B, 2] raw ones), split
    over the mesh with the rows: each row's draws come from its own key alone.

    `draws` is a testing/replay hook, not for normal use: {"gumbel": u [steps, B, P+gen, V],
    "score": u [steps, B, P+gen]} uniforms in [0, 1) (float64 allowed) consumed instead of `rng`: the Gumbel
    noise of step s at position t is -log(-log u[s, :, t]) and the random-remasking score is u[s, :, t].
    """
    if sampler is None:
        sampler = sampler_config(**sampler_kwargs)
    elif sampler_kwargs:
        raise SamplerInputError(f"pass the settings as a SamplerConfig or as keywords, not both: {sorted(sampler_kwargs)}")
    else:
        sampler = sampler_config(**dataclasses.asdict(sampler))
    validate_inputs(config, sampler, prompt_ids, attention_mask)
    if draws is not None and sampler.parallel_threshold is not None:
        raise SamplerInputError("draws are indexed by a fixed step count; they cannot drive parallel_threshold, "
                                "whose step count is dynamic (pass rng instead)")
    needs_random = sampler.temperature > 0 or sampler.samples_positions
    if sampler.row_keys and draws is not None:
        raise SamplerInputError("row_keys=True draws each row's randomness from its own key; replayed draws "
                                "replace the keys (pass rng, or row_keys=False to replay)")
    if sampler.row_keys and needs_random and rng is not None:
        check_row_keys(rng, np.shape(prompt_ids)[0])
    if draws is not None:
        draws = prepare_draws(sampler, draws, np.shape(prompt_ids))
    elif needs_random and rng is None:
        raise SamplerInputError("rng (a jax.random key) is required when temperature > 0 or remasking='random'")
    rng = typed_key(rng) if needs_random else None
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    if attention_mask is not None:
        attention_mask = jnp.asarray(attention_mask, jnp.int32)
    if mesh is not None:
        prompt_ids, attention_mask, params = _place_on_mesh(mesh, prompt_ids, attention_mask, params)
        if sampler.row_keys and rng is not None:
            rng = jax.device_put(rng, mesh_lib.batch_sharding(mesh, 1))
    return _generate(config, sampler, compute_dtype, attention_impl, params, prompt_ids, attention_mask, rng,
                     draws)


def typed_key(rng):
    """A typed key for a raw uint32 key (`jax.random.PRNGKey`) too: the sampler tells keys from replayed noise by
    the key dtype. Same random stream as the raw key."""
    if rng is None or jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng
    return jax.random.wrap_key_data(rng)


def lower(config: llada.LLaDAConfig, sampler: SamplerConfig, params, prompt_ids, attention_mask=None, rng=None, *,
          compute_dtype=None, attention_impl: str | None = None):
    """`generate`'s program lowered for abstract inputs (jax.ShapeDtypeStruct with shardings allowed), e.g. to
    compile it for a device topology without the devices: `lower(...).compile().memory_analysis()`."""
    sampler = sampler_config(**dataclasses.asdict(sampler))
    sampler.validate()
    return _generate.lower(config, sampler, compute_dtype, attention_impl, params, prompt_ids, attention_mask, rng,
                           None)


def _place_on_mesh(mesh, prompt_ids, attention_mask, params):
    """Inputs already on the mesh stay as the caller laid them out (e.g. by `MeshConfig.rules`); otherwise batch
    inputs are split over the mesh's data axes and params replicated onto it."""
    mesh_devices = set(mesh.devices.flat)

    def place(a, sharding):
        return a if set(a.sharding.device_set) == mesh_devices else jax.device_put(a, sharding)

    batch = mesh_lib.batch_sharding(mesh)
    prompt_ids = place(prompt_ids, batch)
    if attention_mask is not None:
        attention_mask = place(attention_mask, batch)
    params = jax.tree.map(lambda a: place(a, mesh_lib.replicated(mesh)), params)
    return prompt_ids, attention_mask, params


def initial_state(sampler: SamplerConfig, mask_id: int, vocab_size: int, prompt_BxP: jax.Array) -> State:
    """The prompt followed by L mask tokens; nothing committed; records zero (truncation sets all-kept)."""
    b, p = prompt_BxP.shape
    g = sampler.gen_length
    records = sampler.record
    return State(
        step=jnp.int32(0), x_BxT=jnp.concatenate([prompt_BxP, jnp.full((b, g), mask_id, jnp.int32)], axis=1),
        unmask_BxT=jnp.full((b, p + g), -1, jnp.int32), masked_B=jnp.zeros((b,), jnp.int32),
        done_B=jnp.zeros((b,), bool),
        logp_BxL=jnp.zeros((b, g), jnp.float32) if records else None,
        ent_BxL=jnp.zeros((b, g), jnp.float32) if records else None,
        bits_BxLxVb=jnp.full((b, g, -(-vocab_size // 8)), 255, jnp.uint8) if records and sampler.truncates else None)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _generate(config, sampler: SamplerConfig, compute_dtype, attention_impl, params, prompt_BxP, prompt_mask_BxP,
              rng, draws) -> Rollout:
    b, p = prompt_BxP.shape
    vocab = config.embedding_size
    state = initial_state(sampler, config.mask_token_id, vocab, prompt_BxP)
    attn_BxT = None
    if prompt_mask_BxP is not None:
        attn_BxT = jnp.concatenate([prompt_mask_BxP, jnp.ones((b, sampler.gen_length), jnp.int32)], axis=1)
    model = Model(config, params, sampler, state.x_BxT != config.mask_token_id, attn_BxT, compute_dtype,
                  attention_impl)
    state = run_loop(Run(model, rng, draws, p), state)
    truncation = trunc.TruncationRecord(bits=state.bits_BxLxVb, vocab_size=vocab) if sampler.record else None
    return Rollout(tokens=state.x_BxT, unmask_step=state.unmask_BxT[:, p:], steps_run=state.step,
                   logp=state.logp_BxL, entropy=state.ent_BxL, truncation=truncation)
