"""diffu-GRPO: prompt masking, completion mask, the loss against a float64 NumPy reference of d1's estimator, d1's
own loss code (golden log-probs, losses, metrics and gradients with d1's masks replayed), d1's mask order and the
d1 configs."""
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl.assets import LLADA_8B_META_DIR
from dllm_rl.checkpoint.hf import load_hf, to_hf_tensors
from dllm_rl.export.peft import index_module_names, lora_module_names, peft_adapted
from dllm_rl.models import llada
from dllm_rl.models.lora import LoRAConfig, init_lora
from dllm_rl.rl import diffu_grpo as dg
from experiments.run import parse_config
from tests.helpers import objective_numpy
from tests.helpers.hf_params import load_prefixed

MASK, EOS = 156, 150  # the tiny model's ids
CONFIGS = pathlib.Path(__file__).parent.parent / "experiments" / "configs"


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_hf(tiny_dir)


def rel_err(a, b):
    """‖a − b‖ / ‖b‖ in float64."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def make_batch(seed=0, b=4, p=6, l=10):
    r = np.random.default_rng(seed)
    completion = r.integers(0, 150, (b, l))
    completion[0, 4] = EOS  # row 0 ends early; the tokens after its EOS are not trained on
    return dg.DiffuGRPOBatch(prompt_ids=jnp.asarray(r.integers(0, 150, (b, p))),
                             prompt_mask=jnp.asarray(np.arange(p)[None, :] >= np.array([[0], [2], [0], [1]])),
                             completion_ids=jnp.asarray(completion),
                             completion_mask=dg.completion_mask(jnp.asarray(completion), EOS),
                             advantages=jnp.asarray(r.normal(size=b), jnp.float32))


def test_perturb_masks_the_completion_and_a_fraction_of_the_prompt():
    prompt = jnp.arange(64 * 200).reshape(64, 200) % 100
    completion = jnp.ones((64, 30), jnp.int32)
    out = dg.perturb(jax.random.key(0), prompt, completion, 0.15, MASK)
    assert out.shape == (64, 230) and (np.asarray(out[:, 200:]) == MASK).all()
    frac = float((out[:, :200] == MASK).mean())
    assert abs(frac - 0.15) < 4 * np.sqrt(0.15 * 0.85 / prompt.size)  # binomial, 4σ
    kept = np.asarray(out[:, :200]) != MASK
    np.testing.assert_array_equal(np.asarray(out[:, :200])[kept], np.asarray(prompt)[kept])
    np.testing.assert_array_equal(dg.perturb(jax.random.key(0), prompt, completion, 0.15, MASK), out)
    assert (dg.perturb(jax.random.key(1), prompt, completion, 0.15, MASK) != out).any()
    assert not (dg.perturb(jax.random.key(0), prompt, completion, 0.0, MASK)[:, :200] == MASK).any()
    assert (dg.perturb(jax.random.key(0), prompt, completion, 1.0, MASK) == MASK).all()
    keys = dg.iteration_keys(jax.random.key(2), 12)
    masks = [np.asarray(dg.perturb(k, prompt, completion, 0.15, MASK)) for k in keys[:3]]
    assert keys.shape == (12,) and not np.array_equal(masks[0], masks[1])


def test_completion_mask_includes_the_first_eos():
    ids = jnp.array([[5, EOS, 7, EOS], [1, 2, 3, 4]])
    np.testing.assert_array_equal(dg.completion_mask(ids, EOS), [[1, 1, 0, 0], [1, 1, 1, 1]])


def numpy_loss(logits_BxLxV, completion, old, ref, adv, mask, eps, beta):
    """d1's loss in float64 from the completion logits (plain k3, mean over the masked tokens)."""
    lp = objective_numpy.token_log_probs(logits_BxLxV, completion)
    tok, _, _ = objective_numpy.clipped_token_loss(lp, old, ref, adv, eps, eps, beta, kl_times_ratio=False)
    m = np.asarray(mask, np.float64)
    return (tok * m).sum() / m.sum(), lp


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_matches_numpy_reference(beta, tiny):
    model_config, params = tiny
    batch = make_batch()
    config = dg.DiffuGRPOConfig(p_mask_prompt=0.3, epsilon=0.05, beta=beta, num_generations=2)
    key = jax.random.key(3)
    # old / reference policies differ from the current one, so ratios leave the clip range.
    old_params = jax.tree.map(lambda x: x * 1.05, params)
    ref_params = jax.tree.map(lambda x: x * 0.95, params)
    logps = jax.jit(functools.partial(dg.completion_logps, model_config, config=config))
    old, ref = np.asarray(logps(old_params, batch, key), np.float64), np.asarray(logps(ref_params, batch, key))
    loss_fn = jax.jit(functools.partial(dg.diffu_grpo_loss, model_config=model_config, config=config))
    loss, metrics = loss_fn(params, None, batch, key, jnp.asarray(old, jnp.float32), jnp.asarray(ref, jnp.float32))

    ids = dg.perturb(key, batch.prompt_ids, batch.completion_ids, config.p_mask_prompt, MASK)
    att = jnp.concatenate([batch.prompt_mask, jnp.ones(batch.completion_ids.shape, bool)], axis=1)
    logits = llada.forward(model_config, params, ids, att)[:, batch.prompt_ids.shape[1]:]
    ref_loss, lp = numpy_loss(logits, batch.completion_ids, old, ref, batch.advantages, batch.completion_mask,
                              config.epsilon, beta)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5, atol=1e-7)
    clipped = np.abs(np.exp(lp - old) - 1) > config.epsilon
    assert 0 < float(metrics["clip_fraction"]) < 1 and clipped.any()
    assert ("kl" in metrics) == bool(beta)


def test_token_loss_gradient_matches_numpy():
    """d/dlogp of the clipped surrogate + k3: −ρA where the unclipped branch is active, plus β(1 − e^{ref−lp})."""
    r = np.random.default_rng(4)
    lp, old, ref = (-r.random((3, 5)) * 2 for _ in range(3))
    adv, mask = r.normal(size=3), r.random((3, 5)) > 0.3
    eps, beta = 0.1, 0.2
    grad = jax.grad(lambda x: dg.grpo_token_loss(x, jnp.asarray(old, jnp.float32), jnp.asarray(ref, jnp.float32),
                                                 jnp.asarray(adv, jnp.float32), jnp.asarray(mask), eps, beta)[0])(
        jnp.asarray(lp, jnp.float32))
    ratio, a = np.exp(lp - old), adv[:, None]
    active = ratio * a <= np.clip(ratio, 1 - eps, 1 + eps) * a  # min picks the unclipped term
    ref_grad = (np.where(active, -ratio * a, 0.0) + beta * (1 - np.exp(ref - lp))) * mask / mask.sum()
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-7)


def test_group_average_is_the_mean_of_each_groups_own_loss():
    """loss_average='group': the mean over groups of each group's token-mean loss, i.e. d1's update with one group
    per device whatever the micro-batch holds; one group alone gives the micro-batch loss."""
    r = np.random.default_rng(7)
    lp, old, ref = (jnp.asarray(-r.random((6, 5)) * 2, jnp.float32) for _ in range(3))
    adv, mask = jnp.asarray(r.normal(size=6), jnp.float32), jnp.asarray(r.random((6, 5)) > 0.4)
    mask = mask.at[0].set(True).at[5, 1:].set(False)  # groups with different numbers of scored tokens
    loss = lambda *rows, g=None: dg.grpo_token_loss(*rows, 0.2, 0.04, g)[0]  # noqa: E731
    grouped = float(loss(lp, old, ref, adv, mask, g=2))
    per_group = [float(loss(lp[i:i + 2], old[i:i + 2], ref[i:i + 2], adv[i:i + 2], mask[i:i + 2]))
                 for i in (0, 2, 4)]
    np.testing.assert_allclose(grouped, np.mean(per_group), rtol=1e-6)
    assert abs(grouped - float(loss(lp, old, ref, adv, mask))) > 1e-4  # not the micro-batch token mean
    np.testing.assert_allclose(float(loss(lp[:2], old[:2], ref[:2], adv[:2], mask[:2], g=2)), per_group[0], rtol=1e-6)


def test_first_iteration_is_on_policy_and_grads_reach_lora(tiny):
    model_config, params = tiny
    batch = make_batch(1)
    config = dg.DiffuGRPOConfig(beta=0.0, num_generations=2)
    lora_config = LoRAConfig(rank=2, alpha=2.0)
    lora = init_lora(params, lora_config, jax.random.key(0))
    grad_fn = jax.jit(functools.partial(dg.diffu_grpo_grad, model_config=model_config, config=config,
                                        lora_config=lora_config))
    loss, grads, metrics = grad_fn(lora, params, batch, jax.random.key(5), None, None)
    m = np.asarray(batch.completion_mask, np.float64)
    # ρ = 1 (old = detached current): loss = −Σ A·mask / Σ mask, gradient = −Σ A ∇logp / Σ mask ≠ 0.
    np.testing.assert_allclose(float(loss), -(np.asarray(batch.advantages)[:, None] * m).sum() / m.sum(), rtol=1e-5)
    assert float(metrics["ratio_mean"]) == pytest.approx(1.0)
    assert jax.tree.structure(grads) == jax.tree.structure(lora)
    assert any(np.asarray(g).any() for g in jax.tree.leaves(grads))


def test_config_errors():
    with pytest.raises(ValueError, match="p_mask_prompt"):
        dg.DiffuGRPOConfig(p_mask_prompt=1.5)
    with pytest.raises(ValueError, match="epsilon"):
        dg.DiffuGRPOConfig(epsilon=1.0)
    with pytest.raises(ValueError, match="loss_average"):
        dg.DiffuGRPOConfig(loss_average="token")
    with pytest.raises(ValueError, match="ref_logp"):
        dg.grpo_token_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)), None, jnp.ones(1), jnp.ones((1, 2)), 0.2, 0.04)


# ---------------------------------------------------------------------------------------------------------------
# Conformance with d1's own loss code (tests/fixtures/d1_loss), d1's prompt masks replayed through `draws`

D1_CASES = ("mu3_eps02_beta004", "mu3_eps05_beta004", "mu1_eps02_beta0")


@pytest.fixture(scope="module")
def d1_golden(fixtures_dir):
    return dict(np.load(fixtures_dir / "d1_loss" / "golden.npz"))


@pytest.fixture(scope="module")
def d1_params(d1_golden, tiny_dir, tmp_path_factory):
    """{"policy": ..., "old": ...}: the fixture's perturbed params, loaded through the HF loader."""
    return {name: load_prefixed(d1_golden, f"{name}/", tiny_dir, tmp_path_factory.mktemp(name))[1]
            for name in ("policy", "old")}


def d1_batch(g):
    """The fixture's batch, without an attention mask: d1 passes none to the model."""
    completion = jnp.asarray(g["completion_ids"])
    return dg.DiffuGRPOBatch(prompt_ids=jnp.asarray(g["prompt_ids"]), prompt_mask=None, completion_ids=completion,
                             completion_mask=dg.completion_mask(completion, int(g["eos_token_id"])),
                             advantages=jnp.asarray(g["advantages"]))


def d1_config(g, case):
    return dg.DiffuGRPOConfig(p_mask_prompt=float(g[f"{case}/p_mask_prompt"]),
                              num_iterations=int(g[f"{case}/num_iterations"]), epsilon=float(g[f"{case}/epsilon"]),
                              beta=float(g[f"{case}/beta"]), num_generations=int(g["num_generations"]))


def token_rel_err(ours, ref):
    """max |Δ| / max(1, |ref|) over the tokens."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref) / np.maximum(1.0, np.abs(ref))))


@functools.lru_cache(maxsize=None)
def d1_fns(model_config, config):
    logps = jax.jit(lambda params, batch, draws: dg.completion_logps(model_config, params, batch, None, config, draws))
    grad = jax.jit(lambda params, batch, old, ref, draws: dg.diffu_grpo_grad(
        params, None, batch, None, old, ref, model_config=model_config, config=config, draws=draws))
    return logps, grad


def test_d1_fixture_batch_and_masks(d1_golden, tiny):
    """Our completion mask is d1's; d1's masking rule on the recorded draws gives d1's model inputs."""
    g, model_config = d1_golden, tiny[0]
    batch = d1_batch(g)
    np.testing.assert_array_equal(batch.completion_mask, g["completion_mask"].astype(bool))
    assert int(g["mask_token_id"]) == model_config.mask_token_id == MASK
    p = batch.prompt_ids.shape[1]
    for case in D1_CASES:
        for u_BxT, noisy_BxT in zip(g[f"{case}/u"], g[f"{case}/noisy_ids"]):
            ids = dg.mask_prompt(jnp.asarray(u_BxT[:, :p]), batch.prompt_ids, batch.completion_ids,
                                 float(g[f"{case}/p_mask_prompt"]), MASK)
            np.testing.assert_array_equal(ids, noisy_BxT)


@pytest.mark.parametrize("case", D1_CASES)
def test_d1_golden_logps_losses_and_gradients(case, d1_golden, d1_params, tiny):
    """Per iteration: old/ref/policy token log-probs, the loss, d1's logged kl and clip_ratio, and the gradient of
    every parameter agree with d1's code to ~1e-5 relative (full fine-tuning, float32, no attention mask)."""
    g, (model_config, ref_params) = d1_golden, tiny
    batch, config = d1_batch(g), d1_config(g, case)
    logps, grad = d1_fns(model_config, config)
    p, mu, beta = batch.prompt_ids.shape[1], config.num_iterations, config.beta
    for i in range(mu):
        draws = jnp.asarray(g[f"{case}/u"][i][:, :p])
        old = logps(d1_params["old"], batch, draws) if mu > 1 else None
        ref = logps(ref_params, batch, draws) if beta else None
        if old is not None:
            assert token_rel_err(old, g[f"{case}/logp_old"][i]) < 1e-5
        if ref is not None:
            assert token_rel_err(ref, g[f"{case}/logp_ref"][i]) < 1e-5
        assert token_rel_err(logps(d1_params["policy"], batch, draws), g[f"{case}/logp_policy"][i]) < 1e-5
        loss, grads, metrics = grad(d1_params["policy"], batch, old, ref, draws)
        np.testing.assert_allclose(float(loss), g[f"{case}/loss"][i], rtol=1e-5)
        np.testing.assert_allclose(float(metrics["clip_ratio"]), g[f"{case}/clip_ratio"][i], rtol=1e-6)
        assert ("kl" in metrics) == bool(beta)
        if beta:
            np.testing.assert_allclose(float(metrics["kl"]), g[f"{case}/kl"][i], rtol=1e-5)
        ours = to_hf_tensors(model_config, grads)
        prefix = f"{case}/grad/{i}/"
        assert sorted(ours) == sorted(k[len(prefix):] for k in g if k.startswith(prefix))
        errors = {name: rel_err(x, g[prefix + name]) for name, x in ours.items()}
        worst = max(errors, key=errors.get)
        assert errors[worst] < 1e-5, (i, worst, errors[worst])


# ---------------------------------------------------------------------------------------------------------------
# d1's run: mask order, metrics, configs

def test_mask_index_default_and_d1_order():
    """The default mask order, and d1's: the expected d1 order encodes our reading of d1's trainer code (its step
    counter is incremented before the loss), not a run of that code."""
    config = dg.DiffuGRPOConfig(num_iterations=12)
    assert [dg.mask_index(g, m, config) for g in range(12) for m in range(2)] == [g for g in range(12) for _ in "ab"]
    # d1 (step counter incremented before the loss): micro-batch m of inner update g uses (2g + m + 1) mod μ.
    d1 = dg.DiffuGRPOConfig(num_iterations=12, d1_accumulation_steps=2)
    for m in range(16):  # 8 devices x 2 accumulation steps: every device's step a = m mod 2 uses the same mask
        used = [dg.mask_index(g, m, d1) for g in range(12)]
        assert used == [(2 * g + m % 2 + 1) % 12 for g in range(12)]
        assert len(set(used)) == 6 and all(used.count(j) == 2 and j % 2 == (m + 1) % 2 for j in used)
    with pytest.raises(ValueError, match="d1_accumulation_steps"):
        dg.DiffuGRPOConfig(d1_accumulation_steps=0)


def test_clip_metrics_follow_d1_definitions():
    """clip_ratio (d1's): ρA < clip(ρ)A; clip_fraction (ours): the clipped term is the smaller one."""
    ratio = np.array([[0.5, 0.9, 1.5, 1.5, 0.5, 1.0]])
    adv = jnp.asarray([1.0])
    lp = jnp.asarray(np.log(ratio), jnp.float32)
    mask = jnp.asarray([[True] * 5 + [False]])
    _, m = dg.grpo_token_loss(lp, jnp.zeros_like(lp), None, adv, mask, 0.2, 0.0)
    assert float(m["clip_ratio"]) == pytest.approx(2 / 5)  # ρ = 0.5 (twice) below the range with A > 0
    assert float(m["clip_fraction"]) == pytest.approx(2 / 5)  # ρ = 1.5 (twice) above it


def test_d1_configs_reproduce_d1s_run():
    """The *_d1.gin settings are d1's: PEFT's matching of d1's target_modules on LLaDA-8B's real module names
    (only q, k, v and up_proj exist), LoRA dropout, AdamW weight decay, truncation, μ and the loss settings."""
    d1_list = ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj", "gate_proj", "up_proj"]  # d1's target_modules
    llada_8b = llada.LLaDAConfig.from_hf_config(LLADA_8B_META_DIR / "config.json")
    for task in ("gsm8k", "math", "countdown", "sudoku"):
        cfg = parse_config([str(CONFIGS / f"{task}_d1.gin")], [])
        d1, lora, train = cfg.diffu_grpo, cfg.lora, cfg.train
        assert lora_module_names(lora, llada_8b) == peft_adapted(d1_list, index_module_names())
        assert (lora.dropout, train.weight_decay, train.max_grad_norm, train.learning_rate) == (0.05, 0.1, 0.2, 3e-6)
        assert d1.prompt_keep_last == train.max_prompt_length == 200 and d1.d1_accumulation_steps == 2
        # d1's 16 groups per update, one per device and accumulation step: 4 x 4 groups, each averaged on its own
        assert (train.prompts_per_micro_batch * train.grad_accum, d1.loss_average) == (16, "group")
        assert (d1.epsilon, d1.beta, d1.p_mask_prompt, d1.num_generations) == (0.5, 0.04, 0.15, 6)
        assert d1.num_iterations == (8 if task == "sudoku" else 12)
        assert (cfg.rollout.gen_length, cfg.rollout.block_length, cfg.rollout.steps) == (256, 32, 128)
