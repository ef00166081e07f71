"""Every family against an independent float64 NumPy reference, from the forward to what the RL losses read.

Per family (LLaDA: tests/fixtures/llada_tiny; Dream, A2D-Qwen3, LLaDA-MoE: tests/fixtures/families), under left
padding, the reference runs its own NumPy forward (tests/helpers/llada_numpy.py, families_numpy.py: Dream's shift
and padding-skipping positions re-derived there) and checks downstream of the logits:
  * the AGRPO rollout sampler (record=True, replayed Gumbel draws, top-p): every step's proposal, the
    confidence ranking that picks the commits, the committed tokens and unmask steps, and the recorded log-prob
    and entropy of each committed token;
  * AGRPO's per-token log-probs at every step of that trajectory and its per-timestep loss;
  * d1's (diffu-GRPO) one-step log-probs under a recorded prompt mask and its loss.
Under left padding Dream's padding-skipping positions equal 0..T-1 shifted by a constant, which RoPE cannot see
(padded keys are hidden), so here they matter only through the padding mask; test_dream.py checks a hole in the
middle. Dropping the shift (in the library or in the reference) or the padding mask fails every test here.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from dllm_rl.checkpoint import load_hf
from dllm_rl.rl import agrpo, diffu_grpo
from dllm_rl.sampling.generate import generate
from dllm_rl.sampling import truncation as trunc
from tests.helpers import families_numpy, llada_numpy, objective_numpy, truncation_numpy
from tests.helpers.family_goldens import FAMILIES_DIR

FAMILIES = ("llada", "dream", "a2d_qwen3", "llada_moe")
STEPS, GEN, BLOCK, TEMP, TOP_K, TOP_P = 4, 8, 4, 0.8, None, 0.9
PAD = 2  # left padding of row 0
RTOL = 1e-5  # float32 library vs float64 reference, relative to the log-prob's size (atol 1e-5 for values near 0)


class Family:
    """A family's library model and its NumPy reference (float64 aligned logits of ids under a key mask)."""

    def __init__(self, name, tiny_dir):
        self.name = name
        folder = tiny_dir if name == "llada" else FAMILIES_DIR / name
        self.config, self.params = load_hf(folder, dtype="float32")
        if name == "llada":
            cfg, tensors = llada_numpy.tiny_config(), load_file(str(folder / "model.safetensors"))
            self.reference = lambda ids, mask: llada_numpy.forward(cfg, tensors, ids, mask)[0]
        else:
            raw, w = families_numpy.load(folder)
            self.reference = lambda ids, mask: families_numpy.aligned_logits(name, raw, w, ids, mask)

    def prompt(self, rng):
        """ids [2, 6] of ordinary tokens, row 0 left-padded by PAD pad tokens; its 0/1 mask."""
        c = self.config
        special = {c.mask_token_id, c.pad_token_id, c.eos_token_id}
        ordinary = np.array([t for t in range(c.vocab_size) if t not in special])
        ids = rng.choice(ordinary, size=(2, 6))
        mask = np.ones((2, 6), np.int32)
        ids[0, :PAD], mask[0, :PAD] = c.pad_token_id, 0
        return ids.astype(np.int32), mask


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tiny_dir):
    return Family(request.param, tiny_dir)


@pytest.fixture(scope="module")
def rollout(family):
    """The library's AGRPO rollout with replayed uniforms, and the inputs."""
    rng = np.random.default_rng(7)
    ids, mask = family.prompt(rng)
    u = rng.uniform(size=(STEPS, 2, ids.shape[1] + GEN, family.config.embedding_size))
    out = generate(family.config, family.params, ids, attention_mask=mask, steps=STEPS, gen_length=GEN,
                            block_length=BLOCK, temperature=TEMP, top_k=TOP_K, top_p=TOP_P, record=True,
                            early_stop=False, draws={"gumbel": u})
    return ids, mask, u, jax.tree.map(np.asarray, out)


def reference_rollout(family, ids, mask, u):
    """float64 AGRPO rollout: tokens, unmask steps, log-probs, entropies, keep sets; and the smallest decision
    margin (Gumbel-max and confidence ranking) so a test can tell a real mismatch from a near tie."""
    b, p = ids.shape
    x = np.concatenate([ids, np.full((b, GEN), family.config.mask_token_id)], axis=1)
    attn = np.concatenate([mask, np.ones((b, GEN), np.int32)], axis=1)
    unmask = np.full((b, GEN), -1)
    logp_rec, ent_rec = np.zeros((b, GEN)), np.zeros((b, GEN))
    keep_rec = np.ones((b, GEN, family.config.embedding_size), bool)
    spb, margin = STEPS // (GEN // BLOCK), np.inf
    for s in range(STEPS):
        start = p + (s // spb) * BLOCK
        scaled = family.reference(x, attn)[:, start:start + BLOCK] / TEMP
        keep = np.stack([truncation_numpy.agrpo_keep(row, TOP_K, TOP_P) for row in scaled])
        noisy = np.where(keep, scaled - np.log(-np.log(u[s, :, start:start + BLOCK])), -np.inf)
        top2 = np.sort(noisy, axis=-1)[..., -2:]
        margin = min(margin, np.min(top2[..., 1] - top2[..., 0]))
        x0 = noisy.argmax(-1)
        logp, ent = truncation_numpy.truncated_stats(scaled, keep, x0)
        if s % spb == 0:  # block start: the schedule's input, open positions of the block per row
            m_B = np.sum(unmask[:, start - p:start - p + BLOCK] < 0, axis=1)
        for r in range(b):
            open_n = unmask[r, start - p:start - p + BLOCK] < 0
            count = m_B[r] // spb + (s % spb < m_B[r] % spb)
            score = np.where(open_n, logp[r], -np.inf)
            order = np.argsort(-score, kind="stable")
            if count < open_n.sum():
                margin = min(margin, score[order[count - 1]] - score[order[count]])
            for j in order[:count]:
                x[r, start + j] = x0[r, j]
                unmask[r, start - p + j] = s
                logp_rec[r, start - p + j], ent_rec[r, start - p + j] = logp[r, j], ent[r, j]
                keep_rec[r, start - p + j] = keep[r, j]
    return x, unmask, logp_rec, ent_rec, keep_rec, margin


def test_sampler_step_choices_and_records(family, rollout):
    ids, mask, u, out = rollout
    x, unmask, logp, ent, keep, margin = reference_rollout(family, ids, mask, u)
    assert margin > 1e-4, f"{family.name}: a decision margin of {margin} is too close to call; change the seed"
    np.testing.assert_array_equal(out.tokens, x)
    np.testing.assert_array_equal(out.unmask_step, unmask)
    np.testing.assert_array_equal(np.asarray(trunc.expand(out.truncation)), keep)
    np.testing.assert_allclose(out.logp, logp, rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(out.entropy, ent, rtol=RTOL, atol=RTOL)


def agrpo_batch(ids, mask, out, advantages):
    """The rollout as an AGRPO batch; old log-probs moved off the rollout's by 0.3 sin(j), so some ratios clip."""
    return agrpo.AGRPOBatch(
        prompt_ids=jnp.asarray(ids), prompt_mask=jnp.asarray(mask),
        completion_ids=jnp.asarray(out.tokens[:, ids.shape[1]:]), unmask_step=jnp.asarray(out.unmask_step),
        old_logp=jnp.asarray(out.logp + 0.3 * np.sin(np.arange(GEN))), entropy=jnp.asarray(out.entropy),
        advantages=jnp.asarray(advantages, jnp.float32), keep=trunc.expand(out.truncation))


def test_agrpo_token_log_probs_and_loss(family, rollout):
    ids, mask, u, out = rollout
    config = agrpo.AGRPOConfig(mc_samples=1, sampling_steps=STEPS, gen_length=GEN, temperature=TEMP,
                               num_generations=2, max_tokens_per_step=2, beta=0.0)
    adv = np.array([1.0, -0.7])
    batch = agrpo_batch(ids, mask, out, adv)
    attn = np.concatenate([mask, np.ones((2, GEN), np.int32)], axis=1)
    completion, keep = out.tokens[:, ids.shape[1]:], np.asarray(batch.keep)
    logps_and_loss = jax.jit(lambda params, step_B: (
        agrpo.token_logps(family.config, params, batch, step_B, config),
        agrpo.timestep_loss(params, None, batch, step_B, jnp.asarray([0.5, 2.0]), model_config=family.config,
                            config=config, mc_samples=1)[0]))
    for s in range(STEPS):
        (logp, positions, valid), loss = logps_and_loss(family.params, jnp.full((2,), s, jnp.int32))
        positions, valid = np.asarray(positions), np.asarray(valid)
        state = np.where(out.unmask_step >= s, family.config.mask_token_id, completion)
        scaled = family.reference(np.concatenate([ids, state], axis=1), attn)[:, ids.shape[1]:] / TEMP
        take = lambda a: np.take_along_axis(a, positions[..., None] if a.ndim == 3 else positions, axis=1)
        ref_logp, _ = truncation_numpy.truncated_stats(take(scaled), take(keep), take(completion))
        assert valid.all(), "every step commits 2 tokens per row"
        np.testing.assert_allclose(np.asarray(logp), ref_logp, rtol=RTOL, atol=RTOL)
        per_token, _, _ = objective_numpy.clipped_token_loss(ref_logp, take(np.asarray(batch.old_logp)), None, adv,
                                                             0.2, 0.2, 0.0, True)
        ref_loss = np.sum(per_token * np.array([0.5, 2.0])[:, None]) / (1 * 2)
        np.testing.assert_allclose(float(loss), ref_loss, rtol=RTOL, atol=RTOL)


def test_d1_log_probs_and_loss(family, rollout):
    ids, mask, _, out = rollout
    c = family.config
    completion = out.tokens[:, ids.shape[1]:]
    config = diffu_grpo.DiffuGRPOConfig(p_mask_prompt=0.3, num_generations=2, beta=0.0)
    adv = np.array([0.4, -1.1])
    batch = diffu_grpo.DiffuGRPOBatch(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(completion),
                                      diffu_grpo.completion_mask(jnp.asarray(completion), c.eos_token_id),
                                      jnp.asarray(adv, jnp.float32))
    u = np.random.default_rng(3).uniform(size=ids.shape).astype(np.float32)
    noisy = np.concatenate([np.where(u < 0.3, c.mask_token_id, ids), np.full_like(completion, c.mask_token_id)], 1)
    attn = np.concatenate([mask, np.ones_like(completion)], axis=1)
    ref_logp = objective_numpy.token_log_probs(family.reference(noisy, attn)[:, ids.shape[1]:], completion)
    old = (ref_logp + 0.8 * np.cos(np.arange(GEN))).astype(np.float32)  # ratios off 1, some clipped
    logp, (loss, _) = jax.jit(lambda params: (
        diffu_grpo.completion_logps(c, params, batch, None, config, draws=jnp.asarray(u)),
        diffu_grpo.diffu_grpo_loss(params, None, batch, None, jnp.asarray(old), None, model_config=c, config=config,
                                   draws=jnp.asarray(u))))(family.params)
    np.testing.assert_allclose(np.asarray(logp), ref_logp, rtol=RTOL, atol=RTOL)
    per_token, _, _ = objective_numpy.clipped_token_loss(ref_logp, old.astype(np.float64), None, adv, 0.5, 0.5, 0.0,
                                                         False)
    scored = np.asarray(batch.completion_mask)
    np.testing.assert_allclose(float(loss), per_token[scored].mean(), rtol=RTOL, atol=RTOL)
