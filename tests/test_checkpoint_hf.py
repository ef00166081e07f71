"""checkpoint/hf.py: HF safetensors → params and back, exactly; dtype names."""
import numpy as np
import pytest
from safetensors.numpy import load_file

from dllm_rl.checkpoint import CheckpointError, load_hf, to_hf_tensors


def test_hf_round_trip_is_exact(tiny_dir):
    config, params = load_hf(tiny_dir)
    original = load_file(str(tiny_dir / "model.safetensors"))
    back = to_hf_tensors(config, params)
    assert sorted(back) == sorted(original)
    for name, tensor in original.items():
        np.testing.assert_array_equal(back[name], tensor, err_msg=name)


def test_load_hf_unknown_dtype(tiny_dir):
    with pytest.raises(CheckpointError, match="unknown dtype"):
        load_hf(tiny_dir, dtype="int4")
