"""The golden forward passes of tests/fixtures/families (see its README): loading and comparing.

Tolerance (float32): |ours - golden| <= ATOL + RTOL * |golden| at every valid position, as
`np.testing.assert_allclose`; the golden logits are O(1) (max |logit| about 2), so ATOL dominates.
"""
import pathlib

import jax.numpy as jnp
import numpy as np

from dllm_rl import models
from dllm_rl.checkpoint import load_hf

FAMILIES_DIR = pathlib.Path(__file__).parents[1] / "fixtures" / "families"
RTOL, ATOL = 1e-5, 1e-4


def load(family: str, dtype="float32"):
    """(config, params, golden arrays) of one family's fixture folder."""
    folder = FAMILIES_DIR / family
    config, params = load_hf(folder, dtype=dtype)
    return config, params, dict(np.load(folder / "golden.npz"))


def aligned_logits(config, params, golden) -> np.ndarray:
    return np.asarray(models.forward(config, params, jnp.asarray(golden["input_ids"]),
                                     jnp.asarray(golden["attention_mask"])))


def max_error(config, params, golden) -> float:
    """Largest |aligned logits - golden| over the valid positions."""
    valid = golden["valid"]
    return float(np.max(np.abs(aligned_logits(config, params, golden)[valid] - golden["logits"][valid])))


def assert_matches(logits_BxTxV, golden) -> None:
    valid = golden["valid"]
    np.testing.assert_allclose(np.asarray(logits_BxTxV)[valid], golden["logits"][valid], rtol=RTOL, atol=ATOL)
