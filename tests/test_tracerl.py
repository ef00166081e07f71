"""TraceRL: merged steps, trace rows, log-probs, loss and gradients against the official code
(tests/fixtures/tracerl_loss, a hand-made trace), and the loss gradient of the paper on a hand-computable case."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl.checkpoint.hf import load_hf, to_hf_tensors
from dllm_rl.rl import tracerl as tr
from tests.helpers.hf_params import load_prefixed

CASES = ("default", "variant")


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    return dict(np.load(fixtures_dir / "tracerl_loss" / "golden.npz"))


@pytest.fixture(scope="module")
def models(golden, tiny_dir, tmp_path_factory):
    config, _ = load_hf(tiny_dir)
    return config, {name: load_prefixed(golden, f"{name}/", tiny_dir, tmp_path_factory.mktemp(name))[1]
                    for name in ("policy", "old")}


def case_config(g, case):
    post_num = int(g[f"{case}/post_num"])
    return tr.TraceRLConfig(sampling_steps=int(g["sampling_steps"]), shrink=int(g[f"{case}/shrink"]),
                            post_num=None if post_num < 0 else post_num, epsilon=float(g[f"{case}/epsilon"]),
                            beta=float(g[f"{case}/beta"]), kl_estimator="k3" if bool(g[f"{case}/k3"]) else "k1")


def rows_of(g, case):
    """(our rows, valid [N]) of the fixture's trace; no attention mask (the official passes none)."""
    samples = tr.TraceSamples(prompt_ids=jnp.asarray(g["prompt_ids"]), prompt_mask=None,
                              completion_ids=jnp.asarray(g["completion_ids"]),
                              unmask_step=jnp.asarray(g["unmask_step"]), advantages=jnp.asarray(g["advantages"]))
    batch = jax.jit(functools.partial(tr.trace_rows, config=case_config(g, case),
                                      pad_token_id=int(g["pad_token_id"])))(samples)
    return batch, np.asarray(batch.target).any(1)


def token_rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref) / np.maximum(1.0, np.abs(ref))))


@functools.lru_cache(maxsize=None)
def fns(model_config, config):
    logps = jax.jit(lambda params, batch: tr.token_logps(model_config, params, batch, config))
    grad = jax.jit(lambda params, batch, old: tr.tracerl_grad(params, None, batch, old, None,
                                                              model_config=model_config, config=config))
    return logps, grad


def collapse_k_unique(lst, k):
    """The official `collapse_k_unique` (rl_llada.py), restated: each value → the last of its run of k distinct."""
    uniq = sorted(set(lst))
    return [uniq[min((uniq.index(x) // k + 1) * k - 1, len(uniq) - 1)] for x in lst]


def test_merged_step_is_the_rank_of_collapse_k_unique():
    r = np.random.default_rng(0)
    steps = r.integers(0, 20, (6, 15))
    steps[0, 3] = -1  # never decoded
    shrinks = (1, 2, 3, 8)
    merged_all = jax.jit(lambda x: [tr.merged_step(x, 20, k) for k in shrinks])(jnp.asarray(steps))
    for shrink, merged in zip(shrinks, merged_all):
        for row, m in zip(steps, np.asarray(merged)):
            dec = row >= 0
            collapsed = np.array(collapse_k_unique(row[dec].tolist(), shrink))
            # same partition, numbered 0.. in order: the rank of the collapsed value
            np.testing.assert_array_equal(m[dec], np.searchsorted(np.unique(collapsed), collapsed))
            assert (m[~dec] == -1).all()


@pytest.mark.parametrize("case", CASES)
def test_rows_are_the_official_trace_rows(case, golden):
    """The official noisy inputs, scored positions and row advantages, in order, are our valid rows."""
    g = golden
    batch, valid = rows_of(g, case)
    p = g["prompt_ids"].shape[1]
    noisy = np.where(np.asarray(batch.masked), int(g["mask_token_id"]), np.asarray(batch.completion_ids))
    np.testing.assert_array_equal(np.concatenate([np.asarray(batch.prompt_ids), noisy], 1)[valid],
                                  g[f"{case}/noisy_ids"])
    assert not g[f"{case}/p_mask"][:, :p].any()
    np.testing.assert_array_equal(np.asarray(batch.target)[valid], g[f"{case}/p_mask"][:, p:])
    np.testing.assert_array_equal(np.asarray(batch.advantages)[valid], g[f"{case}/row_advantages"])
    assert valid.sum() < valid.size  # the fixture has rows the official drops (nothing left to score)


@pytest.mark.parametrize("case", CASES)
def test_logps_loss_and_gradients_match_the_official(case, golden, models):
    g, (model_config, params) = golden, models
    config = case_config(g, case)
    batch, valid = rows_of(g, case)
    p = g["prompt_ids"].shape[1]
    logps, grad = fns(model_config, config)
    old_golden = np.zeros(batch.masked.shape, np.float32)
    old_golden[valid] = g[f"{case}/logp_old"][:, p:]
    if case == "default":  # the log-probs of every row, old and policy (the variant's follow from its loss)
        assert token_rel_err(np.asarray(logps(params["old"], batch))[valid], g[f"{case}/logp_old"][:, p:]) < 1e-5
        assert token_rel_err(np.asarray(logps(params["policy"], batch))[valid],
                             g[f"{case}/logp_policy"][:, p:]) < 1e-5
    loss, grads, metrics = grad(params["policy"], batch, jnp.asarray(old_golden))
    np.testing.assert_allclose(float(loss), g[f"{case}/loss"], rtol=1e-5)
    assert int(metrics["valid_rows"]) == g[f"{case}/noisy_ids"].shape[0]
    pm = g[f"{case}/p_mask"][:, p:]
    ratio = np.exp(g[f"{case}/logp_policy"][:, p:].astype(np.float64) - g[f"{case}/logp_old"][:, p:])
    np.testing.assert_allclose(float(metrics["ratio_mean"]), ratio[pm].mean(), rtol=1e-5)
    assert 0 < g[f"{case}/outside_clip"] < 1
    ours = to_hf_tensors(model_config, grads)
    prefix = f"{case}/grad/"
    assert sorted(ours) == sorted(k[len(prefix):] for k in g if k.startswith(prefix))
    errors = {name: float(np.linalg.norm(np.asarray(x, np.float64) - g[prefix + name])
                          / np.linalg.norm(g[prefix + name])) for name, x in ours.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-4, (worst, errors[worst])


@pytest.mark.parametrize("estimator", ["k3", "k1"])
def test_token_loss_gradient_is_the_papers(estimator):
    """∂L/∂logp_nj for a scored token j of row n (rows R): −ρA/(R·n_n) where the unclipped term is the min, else 0,
    plus β/R·(1 − e^{old−new}) (k3) or β/R (k1): TraceRL's per-step PPO objective with its KL to the old policy."""
    r = np.random.default_rng(3)
    lp, old = -r.random((4, 5)) * 2, -r.random((4, 5)) * 2
    target = r.random((4, 5)) > 0.4
    target[3] = False  # an empty row: not counted
    adv = r.normal(size=4)
    eps, beta = 0.2, 0.3
    config = tr.TraceRLConfig(sampling_steps=4, shrink=1, epsilon=eps, beta=beta, kl_estimator=estimator)
    batch = tr.TraceRLBatch(None, None, None, None, jnp.asarray(target), jnp.asarray(adv, jnp.float32))
    grad = jax.jit(jax.grad(lambda x: tr.trace_token_loss(x, jnp.asarray(old, jnp.float32), None, batch, config)[0]))(
        jnp.asarray(lp, jnp.float32))
    ratio, a = np.exp(lp - old), adv[:, None]
    active = ratio * a <= np.clip(ratio, 1 - eps, 1 + eps) * a
    rows, n = 3, np.maximum(target.sum(1, keepdims=True), 1)
    kl_grad = 1 - np.exp(old - lp) if estimator == "k3" else np.ones_like(lp)
    expected = (np.where(active, -ratio * a, 0.0) / (rows * n) + beta * kl_grad / rows) * target
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_kl_reference_ref_uses_the_reference_and_needs_it():
    lp = jnp.zeros((1, 2))
    batch = tr.TraceRLBatch(None, None, None, None, jnp.ones((1, 2), bool), jnp.ones(1))
    config = tr.TraceRLConfig(kl_reference="ref", beta=1.0)
    with pytest.raises(ValueError, match="ref_logp"):
        jax.eval_shape(lambda x: tr.trace_token_loss(x, x, None, batch, config), lp)
    m_ref, m_old = jax.jit(lambda ref: [tr.trace_token_loss(lp, lp, ref, batch, c)[1]
                                        for c in (config, tr.TraceRLConfig(beta=1.0))])(jnp.full((1, 2), -1.0))
    assert float(m_old["kl"]) == 0.0 and float(m_ref["kl"]) == pytest.approx(np.exp(-1.0) - 1 + 1)


def test_config_errors():
    with pytest.raises(ValueError, match="kl_estimator"):
        tr.TraceRLConfig(kl_estimator="k2")
    with pytest.raises(ValueError, match="kl_reference"):
        tr.TraceRLConfig(kl_reference="base")
    with pytest.raises(ValueError, match="shrink"):
        tr.TraceRLConfig(shrink=0)
    assert tr.TraceRLConfig(sampling_steps=512, shrink=8).rows_per_sample == 64
