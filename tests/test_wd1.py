"""wd1: the weighted-likelihood gradient against the paper's weights in float64 NumPy, its group / local-batch
softmax, and wd1's own loss code (golden log-likelihoods, losses and gradients with wd1's masks replayed)."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl.checkpoint.hf import load_hf, to_hf_tensors
from dllm_rl.rl import diffu_grpo as dg, wd1
from tests.helpers.hf_params import load_prefixed


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_gradient_is_the_papers_weights():
    """d loss / d logp_ij = mask_ij·(softmax(−A)_i − softmax(A)_i) / (number of groups), softmax per group; for a
    group of two with A = ±a that is ∓tanh(a) per scored token."""
    r = np.random.default_rng(0)
    lp = -r.random((6, 5)) * 3
    mask = r.random((6, 5)) > 0.3
    adv = r.normal(size=6)
    adv[3:] = 0.4  # a zero-variance group: uniform weights, no gradient
    loss_fn = lambda x, a, g, m=jnp.asarray(mask): wd1.weighted_loss(x, m, a, g)[0]  # noqa: E731
    grad = jax.jit(jax.grad(loss_fn), static_argnums=2)(jnp.asarray(lp, jnp.float32), jnp.asarray(adv, jnp.float32), 3)
    weights = np.concatenate([softmax(-adv[g:g + 3]) - softmax(adv[g:g + 3]) for g in (0, 3)])
    np.testing.assert_allclose(grad, weights[:, None] * mask / 2, rtol=1e-5, atol=1e-7)
    assert not np.asarray(grad[3:]).any()
    loss = float(jax.jit(loss_fn, static_argnums=2)(jnp.asarray(lp, jnp.float32), jnp.asarray(adv, jnp.float32), 3))
    np.testing.assert_allclose(loss, (weights * (lp * mask).sum(1)).sum() / 2, rtol=1e-5)

    a = 0.7  # by hand: softmax([a, −a]) = (σ(2a), σ(−2a)), so the row weights are −tanh(a) and +tanh(a)
    grad_fn = jax.jit(jax.grad(loss_fn), static_argnums=2)
    two = grad_fn(jnp.zeros((2, 5)), jnp.asarray([a, -a]), 2, jnp.ones((2, 5), bool))
    np.testing.assert_allclose(two, np.repeat([[-np.tanh(a)], [np.tanh(a)]], 5, axis=1), rtol=1e-6)


def test_local_batch_softmax_runs_over_every_row():
    """softmax_over_local_batch: one softmax over the whole micro-batch and the sum (wd1's code); the same as the
    group loss when the micro-batch is one group."""
    r = np.random.default_rng(1)
    lp, adv = jnp.asarray(-r.random((4, 3)), jnp.float32), jnp.asarray(r.normal(size=4), jnp.float32)
    mask = jnp.ones((4, 3), bool)
    seq = np.asarray(lp, np.float64).sum(1)
    a = np.asarray(adv, np.float64)
    local = float(wd1.weighted_loss(lp, mask, adv, None)[0])
    np.testing.assert_allclose(local, ((softmax(-a) - softmax(a)) * seq).sum(), rtol=1e-5)
    np.testing.assert_allclose(float(wd1.weighted_loss(lp, mask, adv, 4)[0]), local, rtol=1e-6)
    assert abs(float(wd1.weighted_loss(lp, mask, adv, 2)[0]) - local) > 1e-3


def test_config_errors():
    with pytest.raises(ValueError, match="p_mask_prompt"):
        wd1.WD1Config(p_mask_prompt=-0.1)
    with pytest.raises(ValueError, match="d1_accumulation_steps"):
        wd1.WD1Config(d1_accumulation_steps=0)
    assert wd1.WD1Config().beta == 0.0 and "beta" not in {f.name for f in dataclasses.fields(wd1.WD1Config)}


# ---------------------------------------------------------------------------------------------------------------
# Conformance with wd1's own loss code (tests/fixtures/wd1_loss), wd1's prompt masks replayed through `draws`

CASES = ("local_batch", "per_group")


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    return dict(np.load(fixtures_dir / "wd1_loss" / "golden.npz"))


@pytest.fixture(scope="module")
def policy(golden, tiny_dir, tmp_path_factory):
    return load_prefixed(golden, "policy/", tiny_dir, tmp_path_factory.mktemp("policy"))[1]


@pytest.fixture(scope="module")
def model_config(tiny_dir):
    return load_hf(tiny_dir)[0]


@functools.lru_cache(maxsize=None)
def logps_fn(model_config, config):
    return jax.jit(lambda params, batch, draws: dg.completion_logps(model_config, params, batch, None, config, draws))


def fns(model_config, config):
    """(log-likelihood program, gradient program); the first is shared by both cases (it ignores the softmax)."""
    logps = logps_fn(model_config, dataclasses.replace(config, softmax_over_local_batch=False))
    grad = jax.jit(lambda params, batch, draws: wd1.wd1_grad(params, None, batch, None, model_config=model_config,
                                                             config=config, draws=draws))
    return logps, grad


def rel_err(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("case", CASES)
def test_wd1_golden_logps_losses_and_gradients(case, golden, policy, model_config):
    """Per inner iteration: the policy's token log-likelihoods, the loss and the gradient of every parameter agree
    with wd1's `compute_loss` (full fine-tuning, float32, no attention mask as wd1). local_batch: wd1's code on the
    6 rows (two groups) at once; per_group: wd1's code on each group (one per device), losses and gradients
    averaged, which is our default loss on the 6 rows."""
    g = golden
    completion = jnp.asarray(g["completion_ids"])
    batch = dg.DiffuGRPOBatch(jnp.asarray(g["prompt_ids"]), None, completion,
                              dg.completion_mask(completion, int(g["eos_token_id"])), jnp.asarray(g["advantages"]))
    np.testing.assert_array_equal(batch.completion_mask, g["completion_mask"].astype(bool))
    config = wd1.WD1Config(p_mask_prompt=float(g["p_mask_prompt"]), num_iterations=int(g["num_iterations"]),
                           num_generations=int(g["num_generations"]), softmax_over_local_batch=case == "local_batch")
    logps, grad = fns(model_config, config)
    p = batch.prompt_ids.shape[1]
    for i in range(config.num_iterations):
        draws = jnp.asarray(g[f"{case}/u"][i][:, :p])
        lp, ref = np.asarray(logps(policy, batch, draws), np.float64), g[f"{case}/logp_policy"][i]
        assert np.max(np.abs(lp - ref) / np.maximum(1.0, np.abs(ref))) < 1e-5
        loss, grads, _ = grad(policy, batch, draws)
        np.testing.assert_allclose(float(loss), g[f"{case}/loss"][i], rtol=1e-5)
        ours = to_hf_tensors(model_config, grads)
        prefix = f"{case}/grad/{i}/"
        assert sorted(ours) == sorted(k[len(prefix):] for k in g if k.startswith(prefix))
        errors = {name: rel_err(x, g[prefix + name]) for name, x in ours.items()}
        worst = max(errors, key=errors.get)
        assert errors[worst] < 1e-5, (i, worst, errors[worst])


def test_gsm8k_wd1_config_is_wd1s_run():
    """gsm8k_wd1.gin: wd1's train.yaml / wll_NP_gsm8k.sh settings (LoRA on the LLaDA modules PEFT matches, μ = 12,
    G = 6, 8 groups per update in 2 micro-batches as wd1's 2 accumulation steps, d1's sampler settings)."""
    from dllm_rl.assets import LLADA_8B_META_DIR
    from dllm_rl.export.peft import index_module_names, lora_module_names, peft_adapted
    from dllm_rl.models import llada
    from experiments.run import parse_config

    cfg = parse_config(["experiments/configs/gsm8k_wd1.gin"], [])
    w, lora, train = cfg.wd1, cfg.lora, cfg.train
    assert cfg.algorithm_config is w and cfg.diffu_grpo is None and cfg.agrpo is None and train.algorithm == "wd1"
    wd1_targets = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]  # run_train.py
    llada_8b = llada.LLaDAConfig.from_hf_config(LLADA_8B_META_DIR / "config.json")
    assert lora_module_names(lora, llada_8b) == peft_adapted(wd1_targets, index_module_names())
    assert (lora.rank, lora.alpha, lora.dropout) == (128, 64.0, 0.05)
    assert (train.learning_rate, train.weight_decay, train.max_grad_norm, train.adam_b2) == (3e-6, 0.1, 0.2, 0.99)
    assert (train.prompts_per_micro_batch * train.grad_accum, train.grad_accum, w.d1_accumulation_steps) == (8, 2, 2)
    assert (w.num_iterations, w.num_generations, w.p_mask_prompt, w.prompt_keep_last) == (12, 6, 0.15, 200)
    assert not w.softmax_over_local_batch and not train.scale_rewards_by_std
    assert (cfg.rollout.gen_length, cfg.rollout.block_length, cfg.rollout.steps, cfg.rollout.temperature) == (
        256, 32, 128, 0.9)
