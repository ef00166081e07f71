"""DiPO: trace rows, log-probs, loss and gradients against the official DiRL code run on the tiny LLaDA model
(tests/fixtures/dipo_loss, the TraceRL fixture's hand-made trace), and the loss gradient on a hand-computable case."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl.checkpoint.hf import load_hf, to_hf_tensors
from dllm_rl.rl import dipo
from dllm_rl.rl.tracerl import TraceRLBatch, TraceSamples
from tests.helpers.hf_params import load_prefixed

CASES = ("default", "on_policy_k1", "per_row")


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    return dict(np.load(fixtures_dir / "dipo_loss" / "golden.npz"))


@pytest.fixture(scope="module")
def models(golden, tiny_dir, tmp_path_factory):
    config, _ = load_hf(tiny_dir)
    return config, {"policy": load_prefixed(golden, "policy/", tiny_dir, tmp_path_factory.mktemp("policy"))[1]}


def case_config(g, case):
    return dipo.DiPOConfig(sampling_steps=int(g["sampling_steps"]), beta=float(g[f"{case}/beta"]),
                           kl_estimator="k3" if bool(g[f"{case}/k3"]) else "k1",
                           reduction="row" if case == "per_row" else "token")


@pytest.fixture(scope="module")
def rows(golden):
    g = golden
    samples = TraceSamples(prompt_ids=jnp.asarray(g["prompt_ids"]), prompt_mask=None,
                           completion_ids=jnp.asarray(g["completion_ids"]), unmask_step=jnp.asarray(g["unmask_step"]),
                           advantages=jnp.asarray(g["advantages"]))
    batch = jax.jit(functools.partial(dipo.trace_rows, config=case_config(g, "default")))(samples)
    return batch, np.asarray(batch.target).any(1)


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref) / np.maximum(1.0, np.abs(ref))))


@functools.lru_cache(maxsize=None)
def case_grads_fn(model_config, configs, has_old):
    """One program for every case: the policy's log-probs once, each case's loss and d loss / d logp, pulled back
    through one backward (lax.map): `dipo_loss`'s value and gradient by the chain rule, one compile."""
    def run(params, batch, old, ref):
        logp, pullback = jax.vjp(lambda q: dipo.token_logps(model_config, q, batch, configs[0]), params)
        losses, cotangents = zip(*[jax.value_and_grad(lambda x, c=c, h=h: dipo.dipo_token_loss(
            x, old if h else None, ref, batch, c)[0])(logp) for c, h in zip(configs, has_old)])
        return logp, jnp.stack(losses), jax.lax.map(lambda ct: pullback(ct)[0], jnp.stack(cotangents))
    return jax.jit(run)


@pytest.fixture(scope="module")
def case_results(golden, models, rows):
    """(policy log-probs [N, L], {case: (loss, HF-named gradients)}) on the fixture's rows, old / ref log-probs the
    official's."""
    g, (model_config, params), (batch, valid) = golden, models, rows
    p = g["prompt_ids"].shape[1]
    full = lambda key: jnp.zeros(batch.masked.shape).at[np.flatnonzero(valid)].set(g[key][:, p:])  # noqa: E731
    fn = case_grads_fn(model_config, tuple(case_config(g, c) for c in CASES),
                       tuple(bool(g[f"{c}/has_old"]) for c in CASES))
    logp, losses, grads = fn(params["policy"], batch, full("logp_old"), full("logp_ref"))
    return np.asarray(logp), {c: (float(losses[i]), to_hf_tensors(model_config, jax.tree.map(lambda x, i=i: x[i], grads)))
            for i, c in enumerate(CASES)}


def test_rows_are_the_official_rows(golden, rows):
    """`generate_training_samples_for_one` with one block over the sequence: our valid rows, in order."""
    g, (batch, valid) = golden, rows
    p = g["prompt_ids"].shape[1]
    noisy = np.where(np.asarray(batch.masked), int(g["mask_token_id"]), np.asarray(batch.completion_ids))
    ours_ids = np.concatenate([np.asarray(batch.prompt_ids), np.asarray(batch.completion_ids)], 1)[valid]
    np.testing.assert_array_equal(ours_ids, g["input_ids"])
    np.testing.assert_array_equal(np.asarray(batch.masked)[valid], g["masked_indices"][:, p:])
    np.testing.assert_array_equal(np.asarray(batch.target)[valid], g["p_mask"][:, p:])
    assert not g["masked_indices"][:, :p].any() and noisy.shape[0] == 32
    np.testing.assert_array_equal(np.asarray(batch.advantages)[valid], g["row_advantages"])


def test_logps_match_the_official(golden, rows, case_results):
    """The policy's log-probs at every masked position of every row (old and reference enter the loss as given)."""
    g, (_, valid), logp = golden, rows, case_results[0]
    p = g["prompt_ids"].shape[1]
    m = g["masked_indices"][:, p:]
    assert rel_err(logp[valid][m], g["logp_policy"][:, p:][m]) < 1e-5


@pytest.mark.parametrize("case", CASES)
def test_loss_and_gradients_match_the_official(case, golden, case_results):
    g, (loss, ours) = golden, case_results[1][case]
    np.testing.assert_allclose(loss, g[f"{case}/loss"], rtol=1e-5, atol=1e-7)
    prefix = f"{case}/grad/"
    assert sorted(ours) == sorted(k[len(prefix):] for k in g if k.startswith(prefix))
    errors = {name: float(np.linalg.norm(np.asarray(x, np.float64) - g[prefix + name])
                          / np.linalg.norm(g[prefix + name])) for name, x in ours.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-4, (worst, errors[worst])


@pytest.mark.parametrize("reduction", ["token", "row"])
def test_token_loss_gradient_is_the_papers(reduction):
    """∂L/∂logp_nj (float64 NumPy) = w_nj·(−ρA where the unclipped term is the min, else 0; + β(1 − e^{ref−logp}))
    with w = 1/(scored tokens) ("token") or 1/(R·n_n) ("row", R rows, n_n scored in row n); clip [1−ε, 1+ε+0.08]."""
    r = np.random.default_rng(3)
    lp, old, ref = -r.random((4, 5)) * 2, -r.random((4, 5)) * 2, -r.random((4, 5)) * 2
    target = r.random((4, 5)) > 0.4
    target[3] = False  # an empty row: counted among the rows, scores nothing
    adv = r.normal(size=4)
    eps, beta = 0.2, 0.3
    config = dipo.DiPOConfig(sampling_steps=1, beta=beta, reduction=reduction)
    batch = TraceRLBatch(None, None, None, None, jnp.asarray(target), jnp.asarray(adv, jnp.float32))
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    grad = jax.jit(jax.grad(lambda x: dipo.dipo_token_loss(x, f32(old), f32(ref), batch, config)[0]))(f32(lp))
    ratio, a = np.exp(lp - old), adv[:, None]
    active = ratio * a <= np.clip(ratio, 1 - eps, 1 + eps + 0.08) * a
    w = 1 / target.sum() if reduction == "token" else 1 / (4 * np.maximum(target.sum(1, keepdims=True), 1))
    expected = w * (np.where(active, -ratio * a, 0.0) + beta * (1 - np.exp(ref - lp))) * target
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
    assert (ratio[target] > 1 + eps).any() or (ratio[target] < 1 - eps).any()  # some tokens clipped


def test_on_policy_ratio_is_one_and_beta_needs_ref():
    lp = jnp.full((1, 2), -0.5)
    batch = TraceRLBatch(None, None, None, None, jnp.ones((1, 2), bool), jnp.ones(1))
    with pytest.raises(ValueError, match="ref_logp"):
        jax.eval_shape(lambda x: dipo.dipo_token_loss(x, None, None, batch, dipo.DiPOConfig()), lp)
    loss, metrics = jax.jit(lambda x: dipo.dipo_token_loss(x, None, None, batch, dipo.DiPOConfig(beta=0.0)))(lp)
    assert float(loss) == -1.0 and float(metrics["ratio_mean"]) == 1.0


def test_config_errors():
    with pytest.raises(ValueError, match="kl_estimator"):
        dipo.DiPOConfig(kl_estimator="k2")
    with pytest.raises(ValueError, match="reduction"):
        dipo.DiPOConfig(reduction="sequence")
    with pytest.raises(ValueError, match="sampling_steps"):
        dipo.DiPOConfig(sampling_steps=0)
