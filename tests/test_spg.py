"""SPG: the block-wise masks, the sandwich loss gradient against a hand-derived float64 NumPy one, and SPG's own
code (tests/fixtures/spg_loss: ELBO, EUBO, losses and gradients with SPG's masks replayed)."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl.checkpoint.hf import load_hf, to_hf_tensors
from dllm_rl.rl import spg
from tests.helpers.hf_params import load_prefixed

MASK = 156
LENGTHS = np.array([6, 12, 10, 3, 1, 7])  # |o| of each row (up to and including the first EOS)


def completion_mask(length=12):
    return jnp.asarray(np.arange(length)[None] < LENGTHS[:, None])


draw_masks = jax.jit(spg.mask_draws, static_argnums=(1, 3))
CONFIG_CLEAN_BLOCKS = spg.SPGConfig(block_length=4, num_t=3, p_mask_prompt=1.0)
CONFIG_ONLY_PROMPT = dataclasses.replace(CONFIG_CLEAN_BLOCKS, mask_clean_blocks=False)


def test_mask_draws_follow_spgs_block_random_rule():
    """In each draw the completion has 1..ℓ of a block k's first ℓ = min(bl, |o| − k·bl) tokens masked and is masked
    from there on (and after the EOS); every completion block of a row is drawn. Before the block, p_mask_prompt
    (here 1) masks the prompt, and with `mask_clean_blocks` (SPG's quirk) the earlier completion blocks too."""
    cm, bl, p = completion_mask(), 4, 3
    prompt_only = np.asarray(draw_masks(jax.random.key(0), p, cm, CONFIG_ONLY_PROMPT))  # [num_t, B, T]
    assert prompt_only.shape == (3, len(LENGTHS), p + 12) and prompt_only[..., :p].all()
    m = prompt_only[..., p:]
    start = np.argmax(m, -1) // bl * bl  # [num_t, B]: the drawn block's first position
    for draw, starts in zip(m, start):
        for row, c, s in zip(draw, LENGTHS, starts):
            ell = min(bl, c - s)
            assert not row[:s].any() and row[s + ell:].all() and 1 <= row[s:s + ell].sum() <= ell
    for b, c in enumerate(LENGTHS):  # num_t = 3 = every block: each of the row's completion blocks is drawn
        assert set(start[:, b] // bl) == set(range((c - 1) // bl + 1))
    with_blocks = np.asarray(draw_masks(jax.random.key(0), p, cm, CONFIG_CLEAN_BLOCKS))
    np.testing.assert_array_equal(with_blocks[..., p:], m | (np.arange(12)[None, None] < start[..., None]))
    np.testing.assert_array_equal(with_blocks[..., :p], prompt_only[..., :p])


def test_sandwich_gradient_is_the_papers_on_a_context_free_toy():
    """Logits-only toy: ∂loss/∂lp_nbj = −A_b|o_b|/Σ|o| · ∂ℓ_b/∂lp_nbj with ∂ELBO_b/∂lp_nbj = m_nbj/(N·|M_nb|) and
    ∂EUBO_b/∂lp_nbj = w_nbj/|∪_n M_nb|, w_nbj = π_nbj^β·m_nbj/t_nb / Σ_n π_nbj^β·m_nbj/t_nb (the 1/β cancels);
    ℓ = ELBO for A > 0, w·EUBO + (1 − w)·ELBO otherwise."""
    r = np.random.default_rng(0)
    cm, n_t, v, beta, w = np.asarray(completion_mask()), 3, 5, 1.5, 0.3
    b, length = cm.shape
    theta = r.normal(size=(n_t, b, length, v))
    ids = r.integers(0, v, (b, length))
    masked = np.asarray(draw_masks(jax.random.key(5), 3, jnp.asarray(cm), CONFIG_ONLY_PROMPT))[..., 3:]
    adv = np.array([1.0, -0.5, 0.7, -1.2, 0.4, -0.1])

    def loss_fn(th):
        lp = jnp.take_along_axis(jax.nn.log_softmax(th, -1), jnp.asarray(ids)[None, ..., None], -1)[..., 0]
        elbo, eubo = spg.estimators(lp, jnp.asarray(masked), jnp.asarray(cm), beta)
        return spg.sandwich_loss(elbo, eubo, jnp.asarray(adv, jnp.float32), jnp.asarray(cm), "mix", w)[0]

    grad = np.asarray(jax.jit(jax.grad(loss_fn))(jnp.asarray(theta, jnp.float32)), np.float64)
    th = theta - theta.max(-1, keepdims=True)
    p = np.exp(th) / np.exp(th).sum(-1, keepdims=True)
    pi = np.take_along_axis(p, ids[None, ..., None], -1)[..., 0]
    m = masked & cm[None]
    d_elbo = m / (n_t * m.sum(-1, keepdims=True))
    t = m.sum(-1, keepdims=True) / cm.sum(-1)[None, :, None]
    q = pi ** beta * m / t
    d_eubo = np.where(m, q / np.where(m, q.sum(0, keepdims=True), 1), 0) / m.any(0).sum(-1)[None, :, None]
    d_ell = np.where((adv > 0)[None, :, None], d_elbo, w * d_eubo + (1 - w) * d_elbo)
    c = cm.sum(-1)
    dlp = -(adv * c / c.sum())[None, :, None] * d_ell
    expected = dlp[..., None] * (np.eye(v)[ids][None] - p)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="logp_estimation"):
        spg.SPGConfig(logp_estimation="upper")
    with pytest.raises(ValueError, match="min_t"):
        spg.SPGConfig(min_t=0.8, max_t=0.5)
    with pytest.raises(ValueError, match="block_length"):
        spg.mask_draws(jax.random.key(0), 2, completion_mask(12), spg.SPGConfig(block_length=5))
    with pytest.raises(ValueError, match="old_quantity=None"):
        spg.spg_loss({}, None, None, None, jnp.zeros(2), model_config=None, config=spg.SPGConfig())


# ---------------------------------------------------------------------------------------------------------------
# Conformance with SPG's own code (tests/fixtures/spg_loss), SPG's masks replayed through `draws`

CASES = ("mix_mu2_t2_beta15_w05", "eubo_mu1_t3_beta2")


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    return dict(np.load(fixtures_dir / "spg_loss" / "golden.npz"))


@pytest.fixture(scope="module")
def policy(fixtures_dir, tiny_dir, tmp_path_factory):
    """(config, params): the tiny model with the d1 fixture's perturbed policy params."""
    d1 = dict(np.load(fixtures_dir / "d1_loss" / "golden.npz"))
    return load_prefixed(d1, "policy/", tiny_dir, tmp_path_factory.mktemp("policy"))


def case_config(g, case):
    return spg.SPGConfig(num_iterations=int(g[f"{case}/num_iterations"]), num_t=int(g[f"{case}/num_t"]),
                         block_length=int(g["block_length"]), min_t=float(g["min_t"]), max_t=float(g["max_t"]),
                         p_mask_prompt=float(g["p_mask_prompt"]), logp_estimation=str(g[f"{case}/logp_estimation"]),
                         eubo_beta=float(g[f"{case}/eubo_beta"]), mix_weight=float(g[f"{case}/mix_weight"]))


def golden_batch(g):
    """The fixture's batch, without an attention mask (LLaDA's modelling code ignores the one SPG passes)."""
    return spg.SPGBatch(prompt_ids=jnp.asarray(g["prompt_ids"]), prompt_mask=None,
                        completion_ids=jnp.asarray(g["completion_ids"]),
                        completion_mask=jnp.asarray(g["completion_mask"].astype(bool)),
                        advantages=jnp.asarray(g["advantages"]))


@functools.lru_cache(maxsize=None)
def bounds_and_grad(model_config, config):
    """One program per case: ((ELBO, EUBO), (loss, grads, metrics)) under the replayed draws."""
    return jax.jit(lambda params, batch, draws: (
        spg.sequence_logps(model_config, params, batch, None, config, draws),
        spg.spg_grad(params, None, batch, None, model_config=model_config, config=config, draws=draws)))


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def test_fixture_batch_and_masks(golden):
    """Our completion mask is SPG's; the recorded masks give SPG's model inputs and mask after the EOS."""
    from dllm_rl.rl.diffu_grpo import completion_mask as eos_mask
    g = golden
    np.testing.assert_array_equal(eos_mask(jnp.asarray(g["completion_ids"]), int(g["eos_token_id"])),
                                  g["completion_mask"].astype(bool))
    ids = np.concatenate([g["prompt_ids"], g["completion_ids"]], 1)
    p = g["prompt_ids"].shape[1]
    for case in CASES:
        is_mask = g[f"{case}/is_mask"]
        np.testing.assert_array_equal(np.where(is_mask, MASK, ids), g[f"{case}/noisy_ids"])
        assert is_mask[..., p:][..., ~g["completion_mask"].astype(bool)].all()


@pytest.mark.parametrize("case", CASES)
def test_golden_bounds_losses_and_gradients(case, golden, policy):
    """Per iteration: the ELBO, the EUBO and the sandwiched ℓ of every row within 1e-5 relative, the loss, and every
    parameter's gradient within 1e-4 of its norm (full fine-tuning, float32, no attention mask)."""
    g, (model_config, params) = golden, policy
    config, batch = case_config(g, case), golden_batch(g)
    for i in range(config.num_iterations):
        (elbo, eubo), (loss, grads, metrics) = bounds_and_grad(model_config, config)(
            params, batch, jnp.asarray(g[f"{case}/is_mask"][i]))
        assert rel(elbo, g[f"{case}/elbo"][i]) < 1e-5
        assert rel(eubo, g[f"{case}/eubo"][i]) < 1e-5
        np.testing.assert_allclose(float(loss), g[f"{case}/loss"][i], rtol=1e-5)
        np.testing.assert_allclose(float(metrics["seq_logp"]), g[f"{case}/per_seq_logps"][i].mean(), rtol=1e-5)
        prefix = f"{case}/grad/{i}/"
        hf = to_hf_tensors(model_config, grads)
        assert sorted(hf) == sorted(k[len(prefix):] for k in g if k.startswith(prefix))
        errors = {name: np.linalg.norm(np.asarray(x, np.float64) - g[prefix + name]) / np.linalg.norm(g[prefix + name])
                  for name, x in hf.items()}
        worst = max(errors, key=errors.get)
        assert errors[worst] < 1e-4, (i, worst, errors[worst])
