"""ESPO: the stratified complementary masks, the loss gradient against a hand-derived float64 NumPy one, and ESPO's
own code (tests/fixtures/espo_loss: ELBOs, losses, metrics and gradients with ESPO's masks replayed)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl.checkpoint.hf import load_hf, to_hf_tensors
from dllm_rl.rl import espo
from tests.helpers.hf_params import load_prefixed

MASK = 156


def test_mask_draws_stratify_the_counts_and_place_them_uniformly():
    b, length = 8, 12
    draw = jax.jit(espo.mask_draws, static_argnums=(1, 2, 3))
    m = np.asarray(draw(jax.random.key(0), 400, b, length))
    x = m.sum(-1)
    k = x[:, 0]  # ESPO: x_b = round(k + b·(L+1)/B) mod (L+1)
    np.testing.assert_array_equal(x, np.round(k[:, None] + np.arange(b) * (length + 1) / b) % (length + 1))
    assert set(k) == set(range(length + 1))
    freq = m.sum((0, 1)) / x.sum()  # each position equally likely
    assert np.abs(freq - 1 / length).max() < 0.01
    assert not np.array_equal(m, np.asarray(draw(jax.random.key(1), 400, b, length)))


def test_loss_gradient_is_the_papers_on_a_context_free_toy():
    """Logits-only toy (log π(o_j) independent of the input): ∂loss/∂lp = Σ_b c_b ∂ELBO_b/∂lp, with
    c_b = −A_b·ρ_b/(B·L) where the clip is inactive (0 where it is) + β·(ELBO_b − ref_b)/(B·L), and
    ∂ELBO_b/∂lp¹_j = m_j/(2t·M), ∂ELBO_b/∂lp²_j = (1 − m_j)/(2(L/(L+1) − t)·M)."""
    r = np.random.default_rng(0)
    num_mc, b, length, v, eps, beta = 2, 4, 6, 5, 0.05, 0.3
    theta = r.normal(size=(2 * num_mc, b, length, v))
    ids = r.integers(0, v, (b, length))
    m = r.random((num_mc, b, length)) < 0.5
    m[0, 0], m[1, 1] = False, True  # x = 0 and x = L: one copy of the pair has no masked token
    adv = np.array([1.0, -0.5, 0.7, -1.2])

    def elbo_of(theta):
        lp = jnp.take_along_axis(jax.nn.log_softmax(theta, -1), jnp.asarray(ids)[None, ..., None], -1)[..., 0]
        return espo.elbo_from_logps(lp, jnp.asarray(m))

    elbo = np.asarray(elbo_of(jnp.asarray(theta, jnp.float32)), np.float64)
    old = elbo - length * np.array([0.1, -0.02, -0.1, 0.01])  # ρ = e^{0.1}: row 0 clipped, row 2 not (A > 0)
    ref = elbo + r.normal(size=b)
    loss_fn = lambda th: espo.sequence_loss(elbo_of(th), jnp.asarray(old, jnp.float32), jnp.asarray(ref, jnp.float32),
                                            jnp.asarray(adv, jnp.float32), length, eps, beta)[0]
    grad = np.asarray(jax.jit(jax.grad(loss_fn))(jnp.asarray(theta, jnp.float32)), np.float64)

    ratio = np.exp((elbo - old) / length)
    active = ~(((ratio > 1 + eps) & (adv > 0)) | ((ratio < 1 - eps) & (adv < 0)))
    np.testing.assert_array_equal(active, [False, True, True, True])
    c = -adv * ratio * active / (b * length) + beta * (elbo - ref) / (b * length)
    t = m.sum(-1, keepdims=True) / (length + 1)
    d1 = np.where(m, 1 / np.where(m, 2 * t * num_mc, 1), 0)
    d2 = np.where(~m, 1 / np.where(~m, 2 * (length / (length + 1) - t) * num_mc, 1), 0)
    dlp = np.concatenate([d1, d2]) * c[None, :, None]
    p = np.exp(theta - theta.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    expected = dlp[..., None] * (np.eye(v)[ids][None] - p)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)


def test_config_errors():
    with pytest.raises(ValueError, match="num_generations"):
        espo.ESPOConfig(num_generations=1)
    with pytest.raises(ValueError, match="epsilon"):
        espo.ESPOConfig(epsilon=1.5)
    with pytest.raises(ValueError, match="ref_elbo"):
        espo.sequence_loss(jnp.zeros(2), jnp.zeros(2), None, jnp.ones(2), 4, 0.2, 0.1)


# ---------------------------------------------------------------------------------------------------------------
# Conformance with ESPO's own code (tests/fixtures/espo_loss), ESPO's masks replayed through `draws`

CASES = ("mu2_mc1_eps003_beta001", "mu1_mc2_eps02_beta001_std")


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    return dict(np.load(fixtures_dir / "espo_loss" / "golden.npz"))


@pytest.fixture(scope="module")
def models(fixtures_dir, tiny_dir, tmp_path_factory):
    """(config, {"ref", "policy", "old"} params): the tiny model and the d1 fixture's perturbed params."""
    d1 = dict(np.load(fixtures_dir / "d1_loss" / "golden.npz"))
    config, ref = load_hf(tiny_dir)
    params = {name: load_prefixed(d1, f"{name}/", tiny_dir, tmp_path_factory.mktemp(name))[1]
              for name in ("policy", "old")}
    return config, {"ref": ref, **params}


def golden_batch(g, advantages):
    """The fixture's batch, without an attention mask: ESPO passes none to the model."""
    completion = jnp.asarray(g["completion_ids"])
    return espo.ESPOBatch(prompt_ids=jnp.asarray(g["prompt_ids"]), prompt_mask=None, completion_ids=completion,
                          completion_mask=jnp.ones(completion.shape, bool), advantages=jnp.asarray(advantages))


@functools.lru_cache(maxsize=None)
def elbos_and_grad(model_config, config):
    """One program per case: the old (μ > 1) and reference ELBOs under the replayed draws, then the policy's ELBO,
    loss, gradients and metrics given them."""
    def run(params, batch, draws):
        elbo = lambda name: espo.sequence_elbo(model_config, params[name], batch, None, config, draws)
        old = elbo("old") if config.num_iterations > 1 else None
        ref = elbo("ref")
        return old, ref, elbo("policy"), espo.espo_grad(params["policy"], None, batch, None, old, ref,
                                                        model_config=model_config, config=config, draws=draws)
    return jax.jit(run)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))


def test_fixture_masks_and_advantages_follow_espo(golden):
    """The recorded masks have ESPO's stratified counts (x = p·(L+1), consecutive rows (L+1)/B apart); the
    advantages are ESPO's leave-one-out ones."""
    from dllm_rl.rl.advantages import group_advantages
    g = golden
    length = g["completion_ids"].shape[1]
    for case in CASES:
        x = g[f"{case}/is_mask"].sum(-1)  # [μ, M, B]
        np.testing.assert_allclose(x / (length + 1), g[f"{case}/p_mask"], rtol=1e-6)
        b = x.shape[-1]
        k = x[..., :1]
        np.testing.assert_array_equal(x, np.round(k + np.arange(b) * (length + 1) / b) % (length + 1))
        adv, _ = group_advantages(jnp.asarray(g["rewards"]), int(g["num_generations"]),
                                  scale_by_std=bool(g[f"{case}/scale_rewards"]), leave_one_out=True)
        np.testing.assert_allclose(adv, g[f"{case}/advantages"], rtol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_golden_elbos_losses_metrics_and_gradients(case, golden, models):
    """Per iteration: old/ref/policy ELBOs within 1e-5 relative, the loss and ESPO's logged kl / entropy / clip
    ratios, and every parameter's gradient within 1e-4 of its norm (full fine-tuning, float32, no attention mask)."""
    g, (model_config, params) = golden, models
    config = espo.ESPOConfig(num_iterations=int(g[f"{case}/num_iterations"]), num_mc=int(g[f"{case}/num_mc"]),
                             epsilon=float(g[f"{case}/epsilon"]), beta=float(g[f"{case}/beta"]),
                             num_generations=int(g["num_generations"]))
    batch = golden_batch(g, g[f"{case}/advantages"])
    for i in range(config.num_iterations):
        old, ref, policy, (loss, grads, metrics) = elbos_and_grad(model_config, config)(
            params, batch, jnp.asarray(g[f"{case}/is_mask"][i]))
        if old is not None:
            assert rel(old, g[f"{case}/elbo_old"][i]) < 1e-5
        assert rel(ref, g[f"{case}/elbo_ref"][i]) < 1e-5
        assert rel(policy, g[f"{case}/elbo_policy"][i]) < 1e-5
        # The loss is a sum of O(1) per-sequence terms that cancels to ~1e-3 with these advantages: compared within
        # 1e-5 of the terms' scale, not relative to the cancelled value (compile settings move it by ~1e-6).
        np.testing.assert_allclose(float(loss), g[f"{case}/loss"][i], rtol=1e-4, atol=1e-5)
        for ours, theirs in (("kl", "kl"), ("entropy", "entropy"), ("clip_ratio_low", "clip_ratio_low"),
                             ("clip_ratio_high", "clip_ratio_high"), ("clip_ratio", "clip_ratio_region")):
            np.testing.assert_allclose(float(metrics[ours]), g[f"{case}/{theirs}"][i], rtol=1e-4, atol=1e-7)
        prefix = f"{case}/grad/{i}/"
        hf = to_hf_tensors(model_config, grads)
        assert sorted(hf) == sorted(k[len(prefix):] for k in g if k.startswith(prefix))
        errors = {name: np.linalg.norm(np.asarray(x, np.float64) - g[prefix + name]) / np.linalg.norm(g[prefix + name])
                  for name, x in hf.items()}
        worst = max(errors, key=errors.get)
        assert errors[worst] < 1e-4, (i, worst, errors[worst])


def test_copies_in_chunks_give_the_same_elbo_loss_and_gradients(golden, models):
    """`copies_per_call=1` (each of the 2·num_mc = 4 noised copies its own model call, in a rematerialised scan)
    against all copies in one call: the same ELBOs, loss and gradients (float32, to rounding)."""
    g, (model_config, params) = golden, models
    case = "mu1_mc2_eps02_beta001_std"
    kw = dict(num_iterations=1, num_mc=2, epsilon=float(g[f"{case}/epsilon"]), beta=float(g[f"{case}/beta"]),
              num_generations=int(g["num_generations"]))
    batch, draws = golden_batch(g, g[f"{case}/advantages"]), jnp.asarray(g[f"{case}/is_mask"][0])
    whole = elbos_and_grad(model_config, espo.ESPOConfig(**kw))(params, batch, draws)
    chunked = elbos_and_grad(model_config, espo.ESPOConfig(copies_per_call=1, **kw))(params, batch, draws)
    for ours, theirs in zip(jax.tree.leaves(chunked[1:3]), jax.tree.leaves(whole[1:3])):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    (loss, grads, _), (loss_whole, grads_whole, _) = chunked[3], whole[3]
    np.testing.assert_allclose(float(loss), float(loss_whole), rtol=1e-5, atol=1e-7)
    for ours, theirs in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_whole)):
        assert np.linalg.norm(np.asarray(ours) - theirs) <= 1e-5 * np.linalg.norm(theirs)
    with pytest.raises(ValueError, match="ESPOConfig.copies_per_call=3 must divide the 2·num_mc = 4"):
        espo.ESPOConfig(num_mc=2, copies_per_call=3)
