"""Dream's own sampler rules (schedule="dream", remasking maskgit_plus / topk_margin / entropy / origin, alg_temp,
truncation="dream" with top-p / top-k) token for token against Dream's `_sample` run on the tiny Dream fixture (tests/fixtures/dream_sampler/README.md),
under left padding, greedy and with replayed draws; and the bit-exact copy of its float32 timesteps."""
import numpy as np
import pytest

from dllm_rl.sampling.generate import generate
from dllm_rl.sampling.schedule import SamplerInputError, dream_timesteps, sampler_config
from tests.helpers import family_goldens as fg

STEPS, GEN, EPS, LM_HEAD_SCALE = 5, 10, 1e-3, 6.0
CASES = {  # name: (remasking, temperature, alg_temp, seed of the replayed uniforms, top_p, top_k), as the generator's
    "maskgit_plus_greedy": ("maskgit_plus", 0.0, None, 11, None, None),
    "topk_margin_greedy": ("topk_margin", 0.0, None, 12, None, None),
    "entropy_greedy": ("entropy", 0.0, None, 13, None, None),
    "origin_greedy": ("origin", 0.0, None, 14, None, None),
    "maskgit_plus_t07": ("maskgit_plus", 0.7, None, 21, None, None),
    "topk_margin_t07": ("topk_margin", 0.7, None, 22, None, None),
    "entropy_t07": ("entropy", 0.7, None, 23, None, None),
    "origin_t07": ("origin", 0.7, None, 24, None, None),
    "maskgit_plus_t07_algtemp05": ("maskgit_plus", 0.7, 0.5, 31, None, None),
    "topk_margin_greedy_algtemp02": ("topk_margin", 0.0, 0.2, 32, None, None),
    "maskgit_plus_t1_topp09_topk20": ("maskgit_plus", 1.0, None, 41, 0.9, 20),
    "entropy_t1_topk8": ("entropy", 1.0, None, 42, None, 8),
    "maskgit_plus_greedy_topp095_topk3": ("maskgit_plus", 0.0, None, 43, 0.95, 3),
    "origin_t1_topp08": ("origin", 1.0, None, 44, 0.8, None),
}


@pytest.fixture(scope="module")
def dream(fixtures_dir):
    config, params, _ = fg.load("dream")
    params = {**params, "lm_head": params["lm_head"] * LM_HEAD_SCALE}
    return config, params, dict(np.load(fixtures_dir / "dream_sampler" / "golden.npz"))


def replayed_draws(seed, shape_BxT, vocab, temperature, remasking, alg_temp):
    """The generator's uniforms: Gumbel draws [steps, B, T, V] (float64), position draws [steps, B, T] (float32)."""
    draws = {}
    if temperature > 0:
        draws["gumbel"] = np.random.default_rng(seed).uniform(size=(STEPS, *shape_BxT, vocab))
    if remasking == "origin" or alg_temp:
        draws["score"] = np.random.default_rng(seed + 1).uniform(size=(STEPS, *shape_BxT)).astype(np.float32)
    return draws or None


# Each case compiles its own sampler program (about 2 s of CPU). The fast tier runs a greedy case of every rule,
# sampled maskgit_plus / topk_margin / origin, alg_temp greedy and sampled, and truncation at temperature 0 and 1;
# the slow tier (CI runs both) the rest.
SLOW = ("topk_margin_greedy", "maskgit_plus_t07", "entropy_t07", "entropy_t1_topk8", "origin_t1_topp08")


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES])
def test_matches_dreams_sampler(dream, case):
    config, params, golden = dream
    remasking, temperature, alg_temp, seed, top_p, top_k = CASES[case]
    ids, mask = golden["prompt_ids"], golden["prompt_mask"]
    shape = (ids.shape[0], ids.shape[1] + GEN)
    out = generate(config, params, ids, attention_mask=mask, steps=STEPS, gen_length=GEN, block_length=GEN,
                   temperature=temperature, remasking=remasking, schedule="dream", eps=EPS, alg_temp=alg_temp,
                   top_p=top_p or 1.0, top_k=top_k, truncation="dream",
                   draws=replayed_draws(seed, shape, config.embedding_size, temperature, remasking, alg_temp))
    np.testing.assert_array_equal(np.asarray(out.tokens), golden[f"{case}_tokens"])
    # the step each position was revealed at: Dream's history against our unmask steps
    history = golden[f"{case}_history"][:, :, ids.shape[1]:]
    revealed = np.where((history != config.mask_token_id).any(0),
                        np.argmax(history != config.mask_token_id, axis=0), -1)
    np.testing.assert_array_equal(np.asarray(out.unmask_step), revealed)


def test_timesteps_are_torchs_float32_linspace(dream):
    _, _, golden = dream
    np.testing.assert_array_equal(dream_timesteps(STEPS, EPS), golden["timesteps"])
    for key in (k for k in golden if k.startswith("linspace_")):
        np.testing.assert_array_equal(dream_timesteps(int(key.split("_")[1]), EPS), golden[key], err_msg=key)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(schedule="dream", block_length=4), "block_length = gen_length"),
    (dict(remasking="origin"), "schedule='dream'"),
    (dict(truncation="hf"), "truncation="),
    (dict(remasking="random", alg_temp=0.5), "alg_temp"),
    (dict(schedule="cosine"), "schedule="),
])
def test_dream_options_are_checked(kwargs, needle):
    with pytest.raises(SamplerInputError, match=needle):
        sampler_config(**{**dict(steps=4, gen_length=8, block_length=8), **kwargs}).validate()
