"""DMPO: masks, ELBOs, weights, the WDCE loss and its gradient against the official code (tests/fixtures/dmpo_loss,
the official draws replayed), and the WDCE gradient of the paper on a hand-computable case."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl.checkpoint.hf import load_hf, to_hf_tensors
from dllm_rl.rl import dmpo
from tests.helpers.hf_params import load_prefixed

MASK = 156
ELBO_CASES = ("elbo_anti4", "elbo_plain2")
WEIGHT_CASES = ("w_alpha004", "w_alpha0")
LOSS_CASES = ("loss_default", "loss_variant")


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    return dict(np.load(fixtures_dir / "dmpo_loss" / "golden.npz"))


@pytest.fixture(scope="module")
def models(golden, tiny_dir, tmp_path_factory):
    """(model config, {"ref", "policy", "old": params}): the fixture's perturbed params through the HF loader."""
    config, ref = load_hf(tiny_dir)
    params = {name: load_prefixed(golden, f"{name}/", tiny_dir, tmp_path_factory.mktemp(name))[1]
              for name in ("policy", "old")}
    return config, dict(params, ref=ref)


def golden_batch(g, weights_case=None, centering=None):
    """The fixture's batch without an attention mask (the official passes none to the model)."""
    w = jnp.zeros(4) if weights_case is None else jnp.asarray(g[f"{weights_case}/weights"])
    neg = jnp.zeros(4) if weights_case is None else jnp.asarray(g[f"{weights_case}/negative_weights"])
    return dmpo.DMPOBatch(prompt_ids=jnp.asarray(g["prompt_ids"]), prompt_mask=None,
                          completion_ids=jnp.asarray(g["completion_ids"]),
                          completion_mask=jnp.asarray(g["completion_mask"].astype(bool)), weights=w,
                          negative_weights=neg)


def golden_draws(g, case):
    """The official torch.rand draws of a case as `MaskDraws` (rows r·B + b → [r, b])."""
    b = g["prompt_ids"].shape[0]
    return dmpo.MaskDraws(jnp.asarray(g[f"{case}/t"].reshape(-1, b)),
                          jnp.asarray(g[f"{case}/u"].reshape(-1, b, g["completion_ids"].shape[1])))


def case_config(g, case):
    r, anti, clamp = int(g[f"{case}/num_replicates"]), bool(g[f"{case}/antithetic"]), bool(g[f"{case}/mask_prob_clamp"])
    extra = {}
    if case.startswith("loss"):
        extra = dict(mask_non_eos=bool(g[f"{case}/mask_non_eos"]), centering=str(g[f"{case}/centering"]),
                     centering_strength=float(g[f"{case}/centering_strength"]))
    return dmpo.DMPOConfig(num_generations=int(g["num_generations"]), num_replicates=r, elbo_replicates=r,
                           antithetic=anti, mask_prob_clamp=clamp, **extra)


def token_rel_err(ours, ref):
    """max |Δ| / max(1, |ref|) over the entries."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref) / np.maximum(1.0, np.abs(ref))))


@functools.lru_cache(maxsize=None)
def fns(model_config, config):
    elbo = jax.jit(lambda params, batch, draws: dmpo.token_elbo(model_config, params, batch, None, config, draws))
    grad = jax.jit(lambda params, batch, draws: dmpo.dmpo_grad(params, None, batch, None, model_config=model_config,
                                                               config=config, draws=draws))
    return elbo, grad


@pytest.mark.parametrize("case", ELBO_CASES + LOSS_CASES)
def test_replayed_masks_are_the_official_model_inputs(case, golden):
    g, config = golden, case_config(golden, case)
    batch = golden_batch(g)
    masked = dmpo.replicate_masks(golden_draws(g, case), config.antithetic, config.mask_prob_clamp)
    if case.startswith("loss") and config.mask_non_eos:
        masked = masked & batch.completion_mask[None]
    noisy = np.where(np.asarray(masked), MASK, np.asarray(batch.completion_ids)[None])
    p = batch.prompt_ids.shape[1]
    np.testing.assert_array_equal(noisy.reshape(-1, noisy.shape[-1]), g[f"{case}/noisy_ids"][:, p:])
    np.testing.assert_array_equal(np.tile(g["prompt_ids"], (config.num_replicates, 1)), g[f"{case}/noisy_ids"][:, :p])


@pytest.mark.parametrize("case", ELBO_CASES)
def test_elbos_match_the_official(case, golden, models):
    """`compute_log_prob_elbo`: per-token ELBOs of the rollout policy and the reference (shared masks)."""
    g, (model_config, params) = golden, models
    batch, config = golden_batch(g), case_config(g, case)
    elbo, _ = fns(model_config, config)
    p = batch.prompt_ids.shape[1]
    for name in ("old", "ref"):
        assert not g[f"{case}/elbo_{name}"][:, :p].any()
        ours = elbo(params[name], batch, golden_draws(g, case))
        assert token_rel_err(ours, g[f"{case}/elbo_{name}"][:, p:]) < 1e-5
        np.testing.assert_allclose(ours.sum(1), g[f"{case}/elbo_{name}"].sum(1), rtol=1e-5)


@pytest.mark.parametrize("case", WEIGHT_CASES)
def test_weights_match_the_official(case, golden):
    g = golden
    config = dmpo.DMPOConfig(alpha=float(g[f"{case}/alpha"]), coeff=float(g[f"{case}/coeff"]),
                             num_generations=int(g["num_generations"]))
    w, neg, metrics = dmpo.dmpo_weights(jnp.asarray(g[f"{case}/rewards"]), jnp.asarray(g[f"{case}/log_prob_ref"]),
                                        jnp.asarray(g[f"{case}/log_prob_old"]), config)
    np.testing.assert_allclose(w, g[f"{case}/weights"], rtol=1e-5)
    np.testing.assert_allclose(neg, g[f"{case}/negative_weights"], rtol=1e-5)
    np.testing.assert_allclose(float(metrics["ess"]), g[f"{case}/ess"].mean(), rtol=1e-5)


@pytest.mark.parametrize("case", LOSS_CASES)
def test_loss_and_gradients_match_the_official(case, golden, models):
    """`compute_loss` (wdce): the policy's masked token log-probs, the loss, and the gradient of every parameter."""
    g, (model_config, params) = golden, models
    config = case_config(g, case)
    batch = golden_batch(g, str(g[f"{case}/weights_case"]))
    draws = golden_draws(g, case)
    masked = np.asarray(dmpo.replicate_masks(draws, config.antithetic, config.mask_prob_clamp))
    if config.mask_non_eos:
        masked = masked & np.asarray(batch.completion_mask)[None]
    lp = g[f"{case}/logp_policy_tokens"].reshape(masked.shape).astype(np.float64)
    if case == "loss_default":  # the policy's log-probs, through the ELBO program of the same masks (compiled once)
        elbo, _ = fns(model_config, case_config(g, "elbo_anti4"))
        length = masked.shape[-1]
        expected = np.mean(np.where(masked, lp, 0) * length / np.maximum(masked.sum(-1, keepdims=True), 1), axis=0)
        assert token_rel_err(elbo(params["policy"], batch, draws), expected) < 1e-5
    _, grad = fns(model_config, config)
    loss, grads, metrics = grad(params["policy"], batch, draws)
    np.testing.assert_allclose(float(loss), g[f"{case}/loss"], rtol=1e-5)
    dce = -(np.where(masked, lp, 0).sum(-1) / np.maximum(masked.sum(-1), 1))
    np.testing.assert_allclose(float(metrics["dce"]), dce.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["mask_fraction"]), masked.mean(), rtol=1e-6)
    ours = to_hf_tensors(model_config, grads)
    prefix = f"{case}/grad/"
    assert sorted(ours) == sorted(k[len(prefix):] for k in g if k.startswith(prefix))
    errors = {name: float(np.linalg.norm(np.asarray(x, np.float64) - g[prefix + name])
                          / np.linalg.norm(g[prefix + name])) for name, x in ours.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-4, (worst, errors[worst])


def test_wdce_gradient_is_the_papers_on_a_hand_case():
    """One token, V = 3, free logits z_b per row: L = Σ_{r,b} ã_b·(−log softmax(z_b)[x_b])·[masked_rb] / R, so
    ∂L/∂z_b = ã_b·(n_b/R)·(softmax(z_b) − e_{x_b}) with n_b the replicates that mask row b (DMPO's gradient: the
    denoising cross-entropy pulled toward samples with weight w and pushed from them with w⁻)."""
    z = np.array([[0.3, -1.2, 2.0], [1.0, 0.0, -0.5], [-0.7, 0.4, 0.1], [2.2, -0.3, 0.6]])
    x = np.array([2, 0, 1, 1])
    rewards, log_ref, log_old = np.array([1.0, 0.0, 0.5, 0.5]), np.array([-1.0, -2.0, -0.5, -0.3]), np.zeros(4)
    alpha = 0.5
    config = dmpo.DMPOConfig(alpha=alpha, num_generations=4)
    w, neg, _ = dmpo.dmpo_weights(jnp.asarray(rewards), jnp.asarray(log_ref), jnp.asarray(log_old), config)
    soft = lambda v: np.exp(v - v.max()) / np.exp(v - v.max()).sum()  # noqa: E731
    np.testing.assert_allclose(w, soft(log_ref - log_old + rewards / alpha), rtol=1e-6)  # p*/p_old, normalised
    np.testing.assert_allclose(neg, soft(log_ref - log_old - rewards / alpha), rtol=1e-6)
    a = np.asarray(dmpo.centred_weights(w, neg, config), np.float64)
    masked = np.array([[True, False, True, True], [False, True, True, False]])[..., None]  # R = 2, L = 1
    loss_fn = lambda zz: dmpo.wdce_loss(jax.nn.log_softmax(zz)[None, :, :][  # noqa: E731
        jnp.zeros(2, int)[:, None], jnp.arange(4)[None], jnp.asarray(x)[None]][..., None],
        jnp.asarray(masked), jnp.asarray(a, jnp.float32))[0]
    grad = jax.jit(jax.grad(loss_fn))(jnp.asarray(z, jnp.float32))
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    n = masked[..., 0].sum(0)
    expected = (a * n / 2)[:, None] * (probs - np.eye(3)[x])
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
    assert abs(a.sum()) < 1e-6  # negative centring: the weights cancel, Σ_b ã_b = 1 − 1


def test_masks_antithetic_and_clamped():
    draw = jax.jit(lambda key: (lambda d: (d, dmpo.replicate_masks(d, True, True)))(
        dmpo.draw_masks(key, 3, 4000, 4, antithetic=True)))
    draws, masked = draw(jax.random.key(0))
    assert draws.t.shape == (2, 3) and draws.u.shape == (2, 3, 4000)
    masked = np.asarray(masked)
    assert masked.shape == (4, 3, 4000)
    np.testing.assert_array_equal(masked[2:], ~masked[:2])
    lam = 0.1 + 0.9 * np.asarray(draws.t)
    assert np.abs(masked[:2].mean(-1) - lam).max() < 0.03  # each row's rate is its λ
    plain = jax.eval_shape(lambda k: dmpo.replicate_masks(dmpo.draw_masks(k, 3, 8, 2, False), False, False),
                           jax.random.key(0))
    assert plain.shape == (2, 3, 8)


def test_config_errors():
    with pytest.raises(ValueError, match="alpha"):
        dmpo.DMPOConfig(alpha=-1)
    with pytest.raises(ValueError, match="centering"):
        dmpo.DMPOConfig(centering="unbias")
    with pytest.raises(ValueError, match="num_replicates must be even"):
        dmpo.DMPOConfig(num_replicates=3)
    with pytest.raises(ValueError, match="coeff"):
        dmpo.DMPOConfig(coeff=2.0)


def test_replicates_in_chunks_give_the_same_elbo_loss_and_gradients(golden, models):
    """`copies_per_call=1` (each replicate mask its own model call, in a rematerialised scan) against all replicates
    in one call: the same per-token ELBOs, loss and gradients (float32, to rounding)."""
    g, (model_config, params) = golden, models
    case = "loss_default"
    config = case_config(g, case)
    batch, draws = golden_batch(g, str(g[f"{case}/weights_case"])), golden_draws(g, case)
    results = []
    for c in (config, dataclasses.replace(config, copies_per_call=1)):
        elbo, grad = fns(model_config, c)
        results.append((elbo(params["old"], batch, draws), *grad(params["policy"], batch, draws)))
    (elbo1, loss1, grads1, _), (elbo2, loss2, grads2, _) = results
    np.testing.assert_allclose(elbo2, elbo1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss2), float(loss1), rtol=1e-5)
    for ours, theirs in zip(jax.tree.leaves(grads2), jax.tree.leaves(grads1)):
        assert np.linalg.norm(np.asarray(ours) - theirs) <= 1e-5 * np.linalg.norm(theirs)
    with pytest.raises(ValueError, match="DMPOConfig.copies_per_call=3 must divide num_replicates 4"):
        dmpo.DMPOConfig(copies_per_call=3)
