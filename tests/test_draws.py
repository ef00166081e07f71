"""The sampler's randomness with row keys (`SamplerConfig.row_keys`): a row's sampled completion does not depend on
the batch it is sampled in (float32 and bf16, fixed call shapes as invariant evaluation makes them), one key per
call does; keyed draws per row still follow the truncated distribution; row keys are laid out per prompt and
generation; bad inputs fail before compiling."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from dllm_rl.checkpoint import load_hf
from dllm_rl.rl import evaluate as eval_lib
from dllm_rl.sampling import SamplerConfig, SamplerInputError, sampler_config
from dllm_rl.sampling.draws import row_keys
from dllm_rl.sampling.proposal import propose
from dllm_rl.tokenizer import Tokenizer
from tests.test_proposal import FREQUENCY_CASES

SUBSETS = ([20, 3, 17, 5, 11], [9], list(range(23, -1, -3)))  # 5 shuffled, alone, 8 in reverse order
BATCHING = eval_lib.Batching(rows_per_device=8, prompt_bucket=16)  # every call: 8 rows, prompts padded to 16k


def _by_index(completions, indices):
    return dict(zip(indices, completions))


def _assert_invariant_and_one_key_is_not(sample):
    """sample(indices, row_keys) -> {index: completion}. With row keys, every subset gives each member the
    completion it gets among all 24; with one key per call, some member's completion changes."""
    for row_keyed in (True, False):
        everything = sample(list(range(24)), row_keyed)
        same = [sample(subset, row_keyed) == {i: everything[i] for i in subset} for subset in SUBSETS]
        assert all(same) if row_keyed else not all(same), (row_keyed, same)


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return Tokenizer.from_dir(tiny_tokenizer_dir)


def test_float32_rollout_rows_do_not_depend_on_their_batch(tiny_dir, tokenizer):
    """The AGRPO rollout (records, top-k + top-p, random remasking) on the float32 tiny model, 24 prompts of 5-14
    tokens: each row's completion is the same alone, among 5 in a shuffled order, and in 3 calls of 8."""
    config, params = load_hf(tiny_dir)
    lengths = np.random.default_rng(0).integers(5, 15, 24)
    prompts = [np.random.default_rng(i).integers(0, 150, n).tolist() for i, n in enumerate(lengths)]
    rollout = SamplerConfig(steps=16, gen_length=32, block_length=16, temperature=0.9, top_k=40, top_p=0.95,
                            remasking="random", record=True, row_keys=True)

    def sample(indices, row_keyed):
        sampler = dataclasses.replace(rollout, row_keys=row_keyed)
        return _by_index(eval_lib.complete(config, params, tokenizer, [prompts[i] for i in indices], sampler,
                                           batching=BATCHING, rng=jax.random.key(7), indices=indices), indices)

    _assert_invariant_and_one_key_is_not(sample)


def test_bf16_sampled_evaluation_does_not_depend_on_the_batch(tiny_dir, tokenizer):
    """Sampled evaluation (T 0.8, low-confidence remasking, early stop) in bf16 through `rl.evaluate`, prompts of
    37-79 tokens in three length buckets: each example's completion depends only on it and its index."""
    from tests.test_evaluate import _VariedIncrement

    config, params = load_hf(tiny_dir, dtype="bfloat16")
    task = _VariedIncrement()
    examples = task.load("test")[::80][:24]
    sampled = SamplerConfig(steps=16, gen_length=32, block_length=16, temperature=0.8, row_keys=True)

    def sample(indices, row_keyed):
        graded = eval_lib.evaluate(config, params, tokenizer, task, [examples[i] for i in indices],
                                   dataclasses.replace(sampled, row_keys=row_keyed), batching=BATCHING,
                                   rng=jax.random.key(3), indices=indices)
        return _by_index([g.completion for g in graded], indices)

    _assert_invariant_and_one_key_is_not(sample)


@pytest.mark.parametrize("probs,top_k,top_p,kept", FREQUENCY_CASES,
                         ids=["full", "top_k_top_p", "top_p", "top_k_tie"])
def test_row_keyed_draws_follow_the_truncated_distribution(probs, top_k, top_p, kept):
    """Per-position keys [B, N] (the row-keys source) through the production proposal: 20,000 draws, one per key,
    never leave the kept set and pass a chi-square test at p-value 1e-6, as one key per call does
    (test_proposal.py)."""
    temperature, n = 0.5, 20_000
    logits_1x1xV = jnp.asarray(temperature * np.log(probs), jnp.float32)[None, None]
    sampler = sampler_config(steps=1, gen_length=1, block_length=1, temperature=temperature, top_k=top_k,
                             top_p=top_p, row_keys=True)
    draw = jax.jit(jax.vmap(lambda key: propose(logits_1x1xV, sampler, key.reshape(1, 1), False).x0_BxN[0, 0]))
    counts = np.bincount(np.asarray(draw(row_keys(jax.random.key(0), np.arange(n)))), minlength=len(probs))
    tokens = sorted(kept)
    assert counts.sum() == counts[tokens].sum(), counts
    expected = n * np.array([kept[t] for t in tokens])
    assert scipy.stats.chisquare(counts[tokens], expected).pvalue > 1e-6, (counts, expected)


def test_row_keys_follow_prompt_and_generation_not_row():
    key = jax.random.key(11)
    keys = row_keys(key, [4, 9], group=3)
    assert keys.shape == (6,)
    for row, (index, g) in enumerate([(4, 0), (4, 1), (4, 2), (9, 0), (9, 1), (9, 2)]):
        want = jax.random.fold_in(jax.random.fold_in(key, index), g)
        np.testing.assert_array_equal(jax.random.key_data(keys[row]), jax.random.key_data(want))
    raw = row_keys(jax.random.key_data(key), [4, 9], group=3)
    np.testing.assert_array_equal(jax.random.key_data(raw), jax.random.key_data(keys))


@pytest.mark.parametrize("kwargs,match", [
    (dict(rng=jax.random.key(0)), "rng must be 2 keys"),
    (dict(rng=row_keys(jax.random.key(0), [0, 1, 2])), "rng must be 2 keys"),
    (dict(rng=np.zeros((2, 3), np.uint32)), "rng must be 2 keys"),
    (dict(draws={"gumbel": np.zeros((8, 2, 32, 160))}), "replayed draws"),
])
def test_row_keys_need_one_key_per_row_and_no_replay(kwargs, match, tiny_dir, uncompiled_generate):
    config, params = load_hf(tiny_dir)
    with pytest.raises(SamplerInputError, match=match):
        uncompiled_generate(config, params, np.zeros((2, 16), np.int64), steps=8, gen_length=16, block_length=8,
                            temperature=0.7, row_keys=True, **kwargs)


def test_a_row_keeps_its_draws_when_another_row_forces_the_tie_fallback():
    """Top-k ties in one row switch the whole batch to the full-vocabulary candidate list (candidates.py); the
    other row's draws stay those it makes alone: its noise comes from a key per position, whose first k slots do
    not depend on the list's length (keys per row drawing [N, C] change 66 of these 120 draws)."""
    rng = np.random.default_rng(0)
    logits_2xNxV = rng.normal(0, 2, (2, 6, 300)).astype(np.float32)
    logits_2xNxV[1, :, :10] = 5.0  # row 1: ten tokens tied at the top, so top_k=4 keeps ten (the fallback)
    sampler = sampler_config(steps=1, gen_length=6, block_length=6, temperature=1.0, top_k=4, top_p=0.95,
                             record=True, row_keys=True)
    draw = jax.jit(lambda logits, keys: propose(logits, sampler, keys, True))
    for seed in range(20):
        keys_2xN = jax.random.split(jax.random.key(seed), 12).reshape(2, 6)
        both, alone = draw(jnp.asarray(logits_2xNxV), keys_2xN), draw(jnp.asarray(logits_2xNxV[:1]), keys_2xN[:1])
        np.testing.assert_array_equal(both.x0_BxN[:1], alone.x0_BxN)
        np.testing.assert_allclose(both.logp_BxN[:1], alone.logp_BxN, atol=1e-6)
