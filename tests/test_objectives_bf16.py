"""The newer objectives (wd1, ESPO, SPG, DMPO, TraceRL, DiPO) in bfloat16, as the 8B runs train them: through the
trainer's own programs (`steps.MASKED_OBJECTIVES[m].prepare`, then `steps.masked_grads` on the first unit), the
loss and gradient with bf16 params and bf16 compute stay within bf16 rounding of the float32 ones on the tiny model,
and where the method has an importance ratio, the on-policy ratio (the rollout policy's log-probs from the
rollout-time program, the policy's from the gradient program) is exactly 1."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_rl.checkpoint.hf import load_hf
from dllm_rl.rl import dipo, dmpo, espo, spg, steps, tracerl, wd1

B, P, L = 4, 4, 8  # one group of G = 4, 8 completion tokens decoded one per step
CONFIGS = {
    "wd1": functools.partial(wd1.WD1Config, num_generations=4, num_iterations=1),
    "espo": functools.partial(espo.ESPOConfig, num_generations=4, num_iterations=2, num_mc=1, beta=0.01),
    "spg": functools.partial(spg.SPGConfig, num_generations=4, num_iterations=1, block_length=4),
    "dmpo": functools.partial(dmpo.DMPOConfig, num_generations=4, num_iterations=1, num_replicates=2,
                              elbo_replicates=2),
    "tracerl": functools.partial(tracerl.TraceRLConfig, num_generations=4, sampling_steps=L, shrink=1, post_num=None,
                                 row_batch_size=8),
    "dipo": functools.partial(dipo.DiPOConfig, num_generations=4, sampling_steps=L, row_batch_size=8, beta=0.1),
}
RATIOS = ("espo", "tracerl", "dipo")  # the methods whose loss has an importance ratio against the rollout policy
# bf16 keeps 8 significant bits (rounding 2^-9 ≈ 0.2 % per op): the log-prob of each token (≈ −5 on this
# 160-token model) moves by ~0.01. The gradient is compared relative to its norm; the loss absolutely, since each
# loss is a weighted sum of such log-probs whose terms cancel (a relative error of the sum means nothing: ESPO's
# on-policy loss is exactly 0). Measured on 2026-12-07 (2-core CPU): gradients within 1.2-1.8 % of their norm,
# losses within 0.042 (wd1; SPG 0.006, DMPO 0.029, the others exact).
LOSS_ATOL, GRAD_RTOL = 0.08, 0.05


@pytest.fixture(scope="module")
def model(tiny_dir):
    return load_hf(tiny_dir)


@pytest.fixture(scope="module")
def samples():
    r = np.random.default_rng(0)
    unmask_step = np.stack([r.permutation(L) for _ in range(B)]).astype(np.int32)
    return steps.Samples(jnp.asarray(r.integers(0, 150, (B, P)), jnp.int32), None,
                         jnp.asarray(r.integers(0, 150, (B, L)), jnp.int32), jnp.asarray(unmask_step),
                         jnp.asarray([1.0, -1.0, 0.5, -0.5], jnp.float32))


def first_unit_grads(algorithm, params, model_config, config, samples):
    """(loss, grads, metrics) of the first gradient call the trainer makes for one rollout micro-batch (full
    fine-tuning, the reference = the rollout policy)."""
    objective = steps.MASKED_OBJECTIVES[algorithm]
    units, _ = objective.prepare(params, None, params, samples, 0, jax.random.key(1), model_config=model_config,
                                 config=config, lora_config=None)
    batch, rng, old, ref = units[0]
    return steps.masked_grads(params, None, batch, rng, old, ref, algorithm=algorithm, model_config=model_config,
                              config=config, lora_config=None)


@pytest.mark.parametrize("algorithm", list(CONFIGS))
def test_bf16_loss_and_gradient_are_the_float32_ones_to_bf16_rounding(algorithm, model, samples):
    model_config, params = model
    f32 = first_unit_grads(algorithm, params, model_config, CONFIGS[algorithm](), samples)
    params_bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    bf16 = first_unit_grads(algorithm, params_bf16, model_config, CONFIGS[algorithm](compute_dtype="bfloat16"),
                            samples)
    (loss, grads, metrics), (loss32, grads32, metrics32) = bf16, f32
    g, g32 = (np.concatenate([np.asarray(x, np.float32).ravel() for x in jax.tree.leaves(t)]) for t in (grads, grads32))
    assert np.isfinite(float(loss32)) and abs(float(loss) - float(loss32)) <= LOSS_ATOL, (float(loss), float(loss32))
    assert jax.tree.leaves(grads)[0].dtype == jnp.bfloat16 and np.linalg.norm(g32) > 0
    assert np.linalg.norm(g - g32) <= GRAD_RTOL * np.linalg.norm(g32), np.linalg.norm(g - g32) / np.linalg.norm(g32)
    if algorithm in RATIOS:  # on-policy: the rollout-time log-probs are the gradient program's, bit for bit
        assert float(metrics["ratio_mean"]) == 1.0 == float(metrics32["ratio_mean"]), float(metrics["ratio_mean"])
