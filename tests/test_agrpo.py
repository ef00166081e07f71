"""AGRPO loss: golden gradients of the official code, rollout-state rebuild, unbiasedness, padded gathers, errors."""
import dataclasses
import functools
import shutil

import jax
import jax.extend
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from dllm_rl.checkpoint.hf import load_hf, to_hf_tensors
from dllm_rl.models import llada
from dllm_rl.models.lora import LoRAConfig, init_lora, merge_lora
from dllm_rl.rl import agrpo
from tests.helpers import objective_numpy

CASES = {  # golden case → (proposal, low_discrepancy)
    "entropy_ld_beta0": ("entropy", True),
    "uniform_iid_beta0": ("uniform", False),
    "entropy_ld_beta004": ("entropy", True),
}
RUN = "random_t06"  # the rollout the golden loss was computed on


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    return dict(np.load(fixtures_dir / "agrpo_loss" / "golden.npz"))


@pytest.fixture(scope="module")
def rollouts(fixtures_dir):
    return dict(np.load(fixtures_dir / "agrpo_rollout" / "golden.npz"))


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_hf(tiny_dir)


@pytest.fixture(scope="module")
def policy(golden, tiny_dir, tmp_path_factory):
    """The golden loss's policy (tiny model with perturbed weights), loaded through the HF loader."""
    folder = tmp_path_factory.mktemp("agrpo_policy")
    shutil.copy(tiny_dir / "config.json", folder)
    save_file({k[len("policy/"):]: np.ascontiguousarray(v) for k, v in golden.items() if k.startswith("policy/")},
              str(folder / "model.safetensors"))
    return load_hf(folder)[1]


def make_batch(rollouts, run, advantages):
    p = rollouts["prompt"].shape[1]
    return agrpo.AGRPOBatch(
        prompt_ids=jnp.asarray(rollouts["prompt"]), prompt_mask=None,
        completion_ids=jnp.asarray(rollouts[f"{run}_tokens"][:, p:]),
        unmask_step=jnp.asarray(rollouts[f"{run}_unmask_steps"]),
        old_logp=jnp.asarray(rollouts[f"{run}_token_logps"]),
        entropy=jnp.asarray(rollouts[f"{run}_token_entropies"]),
        advantages=jnp.asarray(advantages, jnp.float32),
        keep=jnp.asarray(rollouts[f"{run}_sampling_masks"]))


def make_config(proposal="uniform", low_discrepancy=False, beta=0.0, mc_samples=4, **kw):
    """The golden setup: L = 24, m = 8 steps, G = 3, ε = 0.2, τ = 0.6."""
    return agrpo.AGRPOConfig(mc_samples=mc_samples, sampling_steps=8, gen_length=24, proposal=proposal,
                             low_discrepancy=low_discrepancy, epsilon_low=0.2, epsilon_high=0.2, beta=beta,
                             temperature=0.6, num_generations=3, **kw)


@pytest.fixture(scope="module")
def batch(rollouts, golden):
    return make_batch(rollouts, RUN, golden["advantages"])


@functools.lru_cache(maxsize=None)
def jitted_grad(model_config, config, lora_config=None):
    return jax.jit(functools.partial(agrpo.agrpo_grad, model_config=model_config, config=config,
                                     lora_config=lora_config))


def rel_err(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


# ---------------------------------------------------------------------------------------------------------------
# Conformance with the official loss


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_gradients(case, golden, batch, policy, tiny):
    model_config, base = tiny
    proposal, ld = CASES[case]
    assert int(golden["mc_samples"]) == 4 and int(golden["num_generations"]) == 3
    config = make_config(proposal, ld, beta=float(golden[f"{case}/beta"]))
    u_BK = jnp.asarray(golden[f"{case}/u"])
    u_BxK = agrpo.stratify(u_BK, jnp.asarray(golden[f"{case}/perm"]), 3, 4) if ld else u_BK.reshape(3, 4)
    steps, weights = agrpo.timesteps(u_BxK, batch, config, model_config.eos_token_id)
    loss, grads, metrics = jitted_grad(model_config, config)(policy, None, base, batch, steps, weights)
    ours = to_hf_tensors(model_config, grads)
    errors = {name: rel_err(g, golden[f"{case}/grad/{name}"]) for name, g in ours.items()}
    assert len(errors) == len([k for k in golden if k.startswith(f"{case}/grad/")])
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-4, (worst, errors[worst])
    np.testing.assert_allclose(float(metrics["last_microloss"]), golden[f"{case}/last_microloss"], rtol=1e-5)
    assert 0.0 < float(metrics["clip_fraction"]) < 1.0  # the fixture's policy clips some tokens
    assert float(metrics["dropped_tokens"]) == 0.0
    assert ("kl" in metrics) == (config.beta > 0)


def test_bf16_gradients_in_either_accumulator_stay_near_the_golden(golden, batch, policy, tiny):
    """bf16 full fine-tuning: summing the K timesteps' gradients in bf16 ("params") instead of float32 keeps
    the gradient within bf16 precision of the official float32 one (8B: saves 2 bytes per parameter)."""
    model_config, base = tiny
    case = "entropy_ld_beta0"
    u_BxK = agrpo.stratify(jnp.asarray(golden[f"{case}/u"]), jnp.asarray(golden[f"{case}/perm"]), 3, 4)
    bf16 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.bfloat16), tree)  # noqa: E731
    errors, flat = {}, {}
    for accum in ("float32", "params"):
        config = make_config("entropy", True, grad_accum_dtype=accum, compute_dtype="bfloat16")
        steps, weights = agrpo.timesteps(u_BxK, batch, config, model_config.eos_token_id)
        _, grads, _ = jitted_grad(model_config, config)(bf16(policy), None, None, batch, steps, weights)
        assert all(g.dtype == jnp.bfloat16 for g in jax.tree.leaves(grads))
        ours = to_hf_tensors(model_config, jax.tree.map(lambda g: g.astype(jnp.float32), grads))
        errors[accum] = max(rel_err(g, golden[f"{case}/grad/{name}"]) for name, g in ours.items())
        flat[accum] = np.concatenate([np.asarray(g, np.float64).ravel() for g in ours.values()])
    assert errors["float32"] < 0.1, errors  # bf16 weights and compute: a few % from the float32 golden
    # Rounding the K = 4 additions to bf16 adds little on top (bf16's relative step is 2^-8).
    assert rel_err(flat["params"], flat["float32"]) < 1e-2 and errors["params"] < errors["float32"] + 1e-2, errors
    with pytest.raises(ValueError, match="grad_accum_dtype"):
        make_config(grad_accum_dtype="float16")


def scan_carries(jaxpr: jax.extend.core.Jaxpr):
    """The carry avals of every `scan` in `jaxpr`, nested jaxprs included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            n, c = eqn.params["num_consts"], eqn.params["num_carry"]
            yield [v.aval for v in eqn.invars[n:n + c]]
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from scan_carries(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from scan_carries(sub)


@pytest.mark.parametrize("accum,dtype", [("float32", jnp.float32), ("params", jnp.bfloat16)])
def test_gradient_accumulator_has_the_configured_dtype(accum, dtype, batch, policy, tiny):
    """With bf16 params, the scan over the K timesteps carries its gradient sum in `grad_accum_dtype`: read
    from the traced program, since the gradients alone hardly tell the two apart (bf16 rounding of K = 4 additions
    is within the golden tolerance)."""
    model_config, _ = tiny
    trainable = jax.tree.map(lambda x: x.astype(jnp.bfloat16), policy)
    config = make_config("entropy", True, grad_accum_dtype=accum, compute_dtype="bfloat16")
    steps_BxK, weights_BxK = jnp.zeros((3, 4), jnp.int32), jnp.ones((3, 4), jnp.float32)
    grad_fn = functools.partial(agrpo.agrpo_grad, model_config=model_config, config=config)
    jaxpr = jax.make_jaxpr(grad_fn)(trainable, None, None, batch, steps_BxK, weights_BxK).jaxpr
    shapes = [x.shape for x in jax.tree.leaves(trainable)]
    accumulators = [avals for avals in scan_carries(jaxpr) if [a.shape for a in avals] == shapes]
    assert len(accumulators) == 1
    assert {a.dtype for a in accumulators[0]} == {jnp.dtype(dtype)}


# ---------------------------------------------------------------------------------------------------------------
# The rollout record rebuilds every state


@pytest.mark.parametrize("run", ["random_t06", "lowconf_t06", "random_t1_nocut"])
def test_rebuilt_states_and_token_logps(run, rollouts, tiny):
    model_config, params = tiny
    b = make_batch(rollouts, run, np.zeros(3))
    config = dataclasses.replace(make_config(), temperature=float(rollouts[f"{run}_temperature"]))
    forward = jax.jit(functools.partial(llada.forward, model_config))
    logps = jax.jit(functools.partial(agrpo.token_logps, model_config, config=config))
    seen = np.zeros(b.completion_ids.shape, bool)
    for s in range(config.sampling_steps):
        step_B = jnp.full((3,), s)
        state = agrpo.state_at_step(b.completion_ids, b.unmask_step, step_B, model_config.mask_token_id)
        logits = forward(params, jnp.concatenate([b.prompt_ids, state], axis=1))
        np.testing.assert_allclose(logits, rollouts[f"{run}_step_logits"][s], atol=2e-5, rtol=1e-5)
        logp, pos, valid = logps(params, b, step_B)
        assert np.asarray(valid).all()  # 3 tokens per step, 3 slots
        rows = np.arange(3)[:, None]
        np.testing.assert_allclose(logp, rollouts[f"{run}_token_logps"][rows, pos], atol=1e-5)
        seen[rows, np.asarray(pos)] = True
    assert seen.all()


# ---------------------------------------------------------------------------------------------------------------
# Unbiasedness: the MC gradient's mean is the exact all-timesteps gradient


def eos_batch(batch, eos_id):
    """The golden batch with its last steps turned EOS-only: T = 6, 8, 7 (the EOS slots keep every token)."""
    eos_from = jnp.array([6, 8, 7])[:, None]
    is_eos = batch.unmask_step >= eos_from
    return batch._replace(completion_ids=jnp.where(is_eos, eos_id, batch.completion_ids),
                          keep=batch.keep | is_eos[..., None])


@pytest.fixture(scope="module")
def per_step_grads(batch, policy, tiny):
    """Gradient of f_b(s)/G for every (row b, step s) as rows of a matrix [B·m, P], on the EOS batch."""
    model_config, _ = tiny
    config = make_config()
    b_eos = eos_batch(batch, model_config.eos_token_id)

    def f(step, row):
        loss_fn = lambda p: agrpo.timestep_loss(p, None, b_eos, jnp.full((3,), step), jax.nn.one_hot(row, 3),
                                                model_config=model_config, config=config, mc_samples=1)[0]
        return jax.flatten_util.ravel_pytree(jax.grad(loss_fn)(policy))[0]

    steps, rows = jnp.meshgrid(jnp.arange(8), jnp.arange(3), indexing="ij")
    g = jax.jit(jax.vmap(f))(steps.ravel(), rows.ravel())  # index s·B + b
    return b_eos, np.asarray(g, np.float64)


def coefficients(steps_RxBxK, weights_RxBxK, m):
    """Each draw's estimate as weights over the (step, row) gradients of f/G: C[r, s·B + b] = Σ_k w·[s_bk = s]/K."""
    r, b, k = steps_RxBxK.shape
    onehot = np.asarray(steps_RxBxK)[..., None] == np.arange(m)
    c_RxBxM = np.einsum("rbkm,rbk->rbm", onehot, np.asarray(weights_RxBxK, np.float64)) / k
    return c_RxBxM.transpose(0, 2, 1).reshape(r, m * b)


@pytest.mark.parametrize("proposal,ld", [("uniform", False), ("uniform", True), ("entropy", False),
                                         ("entropy", True)])
def test_mc_gradient_is_unbiased(proposal, ld, per_step_grads, policy, tiny):
    model_config, _ = tiny
    b_eos, g_SxP = per_step_grads
    config = make_config(proposal, ld)
    t_B = np.array([6, 8, 7])
    np.testing.assert_array_equal(agrpo.num_steps(b_eos.completion_ids, b_eos.unmask_step,
                                                  model_config.eos_token_id), t_B)
    exact_c = ((np.arange(8)[:, None] < t_B) / t_B).ravel()  # J = Σ_b (1/T_b) Σ_{s<T_b} f_b(s) / G

    reps = 4000
    keys = jax.random.split(jax.random.key(0), reps)
    draw = jax.jit(jax.vmap(lambda key: agrpo.timesteps(agrpo.draw_uniforms(key, 3, 4, ld), b_eos, config,
                                                        model_config.eos_token_id)))
    steps, weights = draw(keys)
    assert (np.asarray(steps) < t_B[:, None]).all()  # EOS-only steps are never drawn
    c = coefficients(steps, weights, 8)

    # One draw's estimate through the real scan equals its linear decomposition over the (step, row) gradients.
    _, grads, _ = jitted_grad(model_config, make_config())(policy, None, None, b_eos, steps[0], weights[0])
    flat = np.asarray(jax.flatten_util.ravel_pytree(grads)[0], np.float64)
    assert rel_err(flat, c[0] @ g_SxP) < 1e-5

    # Mean coefficient of each (step, row) gradient vs. the exact one, with a z-score bound per coefficient.
    # The entropy proposal practically never draws a step whose tokens all have zero entropy (q ≈ 1e-8); the
    # keep set of such a token is the token alone, so its log-prob is 0 for every θ and the gradient is exactly 0.
    mean, se = c.mean(0), c.std(0) / np.sqrt(reps)
    drawn = se > 0
    assert np.abs(g_SxP[~drawn & (exact_c > 0)]).max(initial=0.0) == 0.0
    assert drawn.sum() >= 16
    z = (mean - exact_c)[drawn] / se[drawn]
    assert np.abs(z).max() < 4.5, z
    # ...and the mean gradient vs. the exact gradient, within 4 standard errors of its norm.
    err = np.linalg.norm((mean - exact_c) @ g_SxP)
    cov = np.cov(c, rowvar=False)
    bound = 4.0 * np.sqrt(np.trace(cov @ (g_SxP @ g_SxP.T)) / reps)  # E‖err‖² = tr(Cov_grad)/R
    assert err < bound, (err, bound)
    assert bound < 0.1 * np.linalg.norm(exact_c @ g_SxP)  # the bound is tight enough to mean something


def test_unbiasedness_check_detects_missing_importance_weights(per_step_grads, tiny):
    """Power of the test above: the entropy proposal without its weights (1/T)/q is visibly biased."""
    model_config, _ = tiny
    b_eos, _ = per_step_grads
    config = make_config("entropy", True)
    t_B = np.array([6, 8, 7])
    exact_c = ((np.arange(8)[:, None] < t_B) / t_B).ravel()
    keys = jax.random.split(jax.random.key(1), 4000)
    steps, _ = jax.vmap(lambda key: agrpo.timesteps(agrpo.draw_uniforms(key, 3, 4, True), b_eos, config,
                                                    model_config.eos_token_id))(keys)
    c = coefficients(steps, np.ones(steps.shape), 8)
    z = (c.mean(0) - exact_c) / np.maximum(c.std(0) / np.sqrt(4000), 1e-12)
    assert np.abs(z).max() > 10


def test_enumerating_all_steps_gives_the_exact_objective(batch, policy, tiny):
    """K = T = m with u = (k + ½)/T visits every step once: the estimate is the exact J and its gradient."""
    model_config, _ = tiny
    config = make_config("uniform", mc_samples=8)
    u_BxK = jnp.broadcast_to((jnp.arange(8) + 0.5) / 8, (3, 8))
    steps, weights = agrpo.timesteps(u_BxK, batch, config, model_config.eos_token_id)
    np.testing.assert_array_equal(steps, np.broadcast_to(np.arange(8), (3, 8)))
    loss, grads, _ = jitted_grad(model_config, config)(policy, None, None, batch, steps, weights)

    def exact(p):  # Σ_b (1/T_b) Σ_s f_b(s) / G (T_b = 8), differentiated through a map over the steps
        f = lambda s: agrpo.timestep_loss(p, None, batch, jnp.full((3,), s), jnp.full((3,), 1 / 8),
                                          model_config=model_config, config=config, mc_samples=1)[0]
        return jax.lax.map(f, jnp.arange(8)).sum()

    exact_loss, exact_grads = jax.jit(jax.value_and_grad(exact))(policy)
    np.testing.assert_allclose(loss, exact_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(exact_grads)):
        assert rel_err(a, np.asarray(b, np.float64)) < 1e-5
    steps_all, weights_all = agrpo.all_steps(batch, config, model_config.eos_token_id)
    loss_all, _, _ = jitted_grad(model_config, config)(policy, None, None, batch, steps_all, weights_all)
    np.testing.assert_allclose(loss_all, exact_loss, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Draws


def test_low_discrepancy_draws_fill_every_stratum_once():
    u = np.asarray(agrpo.draw_uniforms(jax.random.key(3), 4, 6, low_discrepancy=True))
    assert u.shape == (4, 6)
    np.testing.assert_array_equal(np.sort(np.floor(u.ravel() * 24)), np.arange(24))
    iid = np.asarray(agrpo.draw_uniforms(jax.random.key(3), 4, 6, low_discrepancy=False))
    assert ((0 <= iid) & (iid < 1)).all() and len(np.unique(np.floor(iid * 24))) < 24


def test_timesteps_match_the_official_inverse_cdf(batch, tiny):
    """NumPy float64 replay of the official proposal (scatter-add, zero past T, searchsorted left)."""
    model_config, _ = tiny
    config = make_config("entropy")
    u = np.asarray(jax.random.uniform(jax.random.key(5), (3, 64)))
    steps, weights = agrpo.timesteps(jnp.asarray(u), batch, config, model_config.eos_token_id)
    unmask = np.asarray(batch.unmask_step)
    ent = np.full((3, 8), 1e-8)
    for b in range(3):
        np.add.at(ent[b], unmask[b], np.asarray(batch.entropy, np.float64)[b])
    q = ent / ent.sum(1, keepdims=True)
    ref_steps = np.stack([np.searchsorted(np.cumsum(q[b]), u[b], side="left") for b in range(3)])
    np.testing.assert_array_equal(steps, ref_steps)
    np.testing.assert_allclose(weights, (1 / 8) / np.take_along_axis(q, ref_steps, 1), rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Varying token counts per step: padded gather + validity mask


def irregular_batch(rng, model_config, b=3, p=5, l=12, m=6):
    """Random rollout whose steps unmask 0..5 tokens each (not L/m), random keep sets holding the token."""
    r = np.random.default_rng(rng)
    unmask = r.integers(0, m, (b, l))
    tokens = r.integers(0, 150, (b, l))
    keep = r.random((b, l, model_config.embedding_size)) < 0.5
    keep[np.arange(b)[:, None], np.arange(l), tokens] = True
    return agrpo.AGRPOBatch(
        prompt_ids=jnp.asarray(r.integers(0, 150, (b, p))), prompt_mask=jnp.asarray(r.random((b, p)) > 0.2),
        completion_ids=jnp.asarray(tokens), unmask_step=jnp.asarray(unmask),
        old_logp=jnp.asarray(-r.random((b, l)) * 3, jnp.float32), entropy=jnp.asarray(r.random((b, l)), jnp.float32),
        advantages=jnp.asarray(r.normal(size=b), jnp.float32), keep=jnp.asarray(keep))


def reference_timestep_loss(model_config, params, ref_params, b, step_B, weight_B, config, k):
    """Float64 NumPy loss from full-sequence logits and boolean indexing (no slots)."""
    p = b.prompt_ids.shape[1]
    unmask = np.asarray(b.unmask_step)
    state = np.where(unmask >= np.asarray(step_B)[:, None], model_config.mask_token_id, np.asarray(b.completion_ids))
    ids = jnp.concatenate([b.prompt_ids, jnp.asarray(state)], axis=1)
    att = jnp.concatenate([b.prompt_mask, jnp.ones(state.shape, bool)], axis=1)

    def logps(prm):
        lg = np.asarray(llada.forward(model_config, prm, ids, att), np.float64)[:, p:] / config.temperature
        return objective_numpy.token_log_probs(np.where(np.asarray(b.keep), lg, -np.inf), b.completion_ids)

    lp, total = logps(params), 0.0
    ref = logps(ref_params) if config.beta else None
    for row in range(lp.shape[0]):
        sel = unmask[row] == int(step_B[row])
        tok, _, _ = objective_numpy.clipped_token_loss(
            lp[row, sel][None], np.asarray(b.old_logp, np.float64)[row, sel][None],
            None if ref is None else ref[row, sel][None], np.asarray(b.advantages, np.float64)[row:row + 1],
            config.epsilon_low, config.epsilon_high, config.beta, kl_times_ratio=True)
        total += float(weight_B[row]) * tok.sum()
    return total / (k * config.num_generations)


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_varying_counts_per_step_match_dense_reference(beta, tiny, policy):
    model_config, base = tiny
    b = irregular_batch(7, model_config)
    config = agrpo.AGRPOConfig(mc_samples=3, sampling_steps=6, gen_length=12, proposal="uniform", beta=beta,
                               temperature=0.8, num_generations=3, max_tokens_per_step=12, epsilon_low=0.1,
                               epsilon_high=0.05)
    steps = np.array([[0, 3, 5], [1, 1, 4], [2, 5, 0]])
    weights = np.array([[1.0, 0.5, 2.0], [1.5, 1.0, 0.7], [0.3, 1.0, 1.2]], np.float32)
    counts = (np.asarray(b.unmask_step)[:, None, :] == steps[..., None]).sum(-1)
    assert len(np.unique(counts)) > 2  # genuinely irregular
    fn = jax.jit(functools.partial(agrpo.timestep_loss, model_config=model_config, config=config, mc_samples=3))
    for k in range(3):
        loss, metrics = fn(policy, base, b, jnp.asarray(steps[:, k]), jnp.asarray(weights[:, k]))
        ref = reference_timestep_loss(model_config, policy, base, b, steps[:, k], weights[:, k], config, 3)
        np.testing.assert_allclose(float(loss), ref, rtol=2e-5, atol=1e-7)
        assert float(metrics["scored_tokens"]) == counts[:, k].sum() and float(metrics["dropped_tokens"]) == 0


def test_too_few_slots_are_reported(tiny, policy):
    model_config, _ = tiny
    b = irregular_batch(7, model_config)
    config = agrpo.AGRPOConfig(mc_samples=1, sampling_steps=6, gen_length=12, proposal="uniform",
                               temperature=0.8, num_generations=3, max_tokens_per_step=1)
    step = jnp.array([0, 1, 2])
    _, metrics = agrpo.timestep_loss(policy, None, b, step, jnp.ones(3), model_config=model_config, config=config,
                                     mc_samples=1)
    counts = (np.asarray(b.unmask_step) == np.asarray(step)[:, None]).sum()
    assert float(metrics["dropped_tokens"]) == counts - 3 > 0


@pytest.mark.parametrize("proposal", agrpo.PROPOSALS)
def test_an_all_eos_row_scores_nothing_and_keeps_metrics_finite(proposal, batch, policy, tiny):
    """T_i = 0 (all EOS): no step is scored, its weight is finite, importance_weight_mean averages the live rows."""
    model_config, _ = tiny
    eos = model_config.eos_token_id
    b = batch._replace(completion_ids=batch.completion_ids.at[1].set(eos), keep=batch.keep.at[1].set(True))
    assert agrpo.num_steps(b.completion_ids, b.unmask_step, eos).tolist()[1] == 0
    config = make_config(proposal, True)
    steps, weights = agrpo.timesteps(agrpo.draw_uniforms(jax.random.key(4), 3, 4, True), b, config, eos)
    assert np.isfinite(np.asarray(weights)).all() and (np.asarray(steps)[1] == -1).all()
    loss, grads, metrics = jitted_grad(model_config, config)(policy, None, None, b, steps, weights)
    assert all(np.isfinite(float(v)) for v in [loss, *metrics.values()]), metrics
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    live = np.asarray(weights)[[0, 2]]
    np.testing.assert_allclose(float(metrics["importance_weight_mean"]), live.mean(), rtol=1e-6)
    if proposal == "entropy":
        assert not np.asarray(weights)[1].any()


def test_logp_mismatch_is_the_rollout_to_loss_log_prob_gap(batch, tiny):
    """Scored with the rollout's own policy the mismatch is float noise; perturbing the old log-probs shows up."""
    model_config, params = tiny
    config = make_config()
    steps_all, weights_all = agrpo.all_steps(batch, config, model_config.eos_token_id)
    run = jitted_grad(model_config, dataclasses.replace(config, mc_samples=8))
    _, _, same = run(params, None, None, batch, steps_all, weights_all)
    assert float(same["logp_mismatch_max"]) < 1e-4
    shifted = batch._replace(old_logp=batch.old_logp.at[2, 5].add(0.5))
    _, _, moved = run(params, None, None, shifted, steps_all, weights_all)
    np.testing.assert_allclose(float(moved["logp_mismatch_max"]), 0.5, atol=1e-4)
    assert float(moved["logp_mismatch_mean"]) > float(same["logp_mismatch_mean"])


# ---------------------------------------------------------------------------------------------------------------
# LoRA: reference = LoRA off; gradients reach the adapters only


def test_lora_grads_match_merged_objective(batch, tiny):
    model_config, base = tiny
    lora_config = LoRAConfig(rank=4, alpha=8.0, lm_head=True)
    lora = init_lora(base, lora_config, jax.random.key(0))
    lora = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), lora)  # B ≠ 0
    config = make_config("entropy", True, beta=0.04)
    steps, weights = agrpo.timesteps(agrpo.draw_uniforms(jax.random.key(2), 3, 4, True), batch, config,
                                     model_config.eos_token_id)
    loss, grads, metrics = jitted_grad(model_config, config, lora_config)(lora, base, base, batch, steps, weights)
    assert jax.tree.structure(grads) == jax.tree.structure(lora)

    def merged_objective(ad):  # merged kernels, differentiated through a map over the timesteps
        params = merge_lora(base, ad, lora_config)
        f = lambda sw: agrpo.timestep_loss(params, base, batch, sw[0], sw[1], model_config=model_config,
                                           config=config, mc_samples=4)[0]
        return jax.lax.map(f, (steps.T, weights.T)).sum()

    ref_loss, ref_grads = jax.jit(jax.value_and_grad(merged_objective))(lora)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        assert rel_err(a, np.asarray(b, np.float64)) < 1e-4
    assert float(metrics["kl"]) > 0


# ---------------------------------------------------------------------------------------------------------------
# Bad input


def test_config_errors():
    with pytest.raises(ValueError, match="mc_samples K=9 exceeds sampling_steps m=8"):
        make_config(mc_samples=9)
    with pytest.raises(ValueError, match="proposal"):
        make_config("stratified")
    with pytest.raises(ValueError, match="temperature"):
        dataclasses.replace(make_config(), temperature=0.0)
    with pytest.raises(ValueError, match="remat"):
        make_config(remat="everything")


def test_batch_errors(batch, policy, tiny):
    model_config, _ = tiny
    steps, weights = jnp.zeros((3, 4), jnp.int32), jnp.ones((3, 4))
    with pytest.raises(ValueError, match="not a multiple of num_generations 2"):
        agrpo.agrpo_grad(policy, None, None, batch, steps, weights, model_config=model_config,
                         config=dataclasses.replace(make_config(), num_generations=2))
    with pytest.raises(ValueError, match="gen_length"):
        agrpo.agrpo_grad(policy, None, None, batch, steps, weights, model_config=model_config,
                         config=dataclasses.replace(make_config(), gen_length=32))
    with pytest.raises(ValueError, match="steps"):
        agrpo.agrpo_grad(policy, None, None, batch, steps[:2], weights[:2], model_config=model_config,
                         config=make_config())
    with pytest.raises(ValueError, match="ref_params"):
        agrpo.agrpo_grad(policy, None, None, batch, steps, weights, model_config=model_config,
                         config=make_config(beta=0.04))
