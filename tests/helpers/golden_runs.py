"""Shared setup of the golden LLaDA sampler runs (tests/fixtures/llada_tiny/golden.npz)."""
import numpy as np

from dllm_rl.checkpoint import load_hf


def golden_run(fixture_dir, run: str, kwargs: dict):
    """(config, params, golden arrays, prompt, generate kwargs incl. the stored draws) of one reference run."""
    config, params = load_hf(fixture_dir)
    g = np.load(fixture_dir / "golden.npz")
    prompt = g["gen_prompt"]
    kwargs = dict(kwargs)
    if kwargs.pop("attention_mask", False):
        kwargs["attention_mask"] = np.ones(prompt.shape, np.int64)
    draws = {key: g[f"gen_{run}_{name}"] for key, name in (("score", "remask_uniforms"), ("gumbel", "gumbel_uniforms"))
             if f"gen_{run}_{name}" in g.files}
    kwargs["draws"] = draws or None
    return config, params, g, prompt, kwargs
