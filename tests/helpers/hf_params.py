"""Params stored in a golden .npz under `<prefix>/<HF name>`, loaded through the project's HF loader."""
import pathlib
import shutil

import numpy as np
from safetensors.numpy import save_file

from dllm_rl.checkpoint.hf import load_hf


def load_prefixed(golden: dict, prefix: str, config_dir: pathlib.Path, folder: pathlib.Path):
    """(config, params) of the tensors `golden[prefix + name]`, written as an HF folder beside config_dir's
    config.json into `folder` and read back with `load_hf`."""
    shutil.copy(config_dir / "config.json", folder)
    save_file({k[len(prefix):]: np.ascontiguousarray(v) for k, v in golden.items() if k.startswith(prefix)},
              str(folder / "model.safetensors"))
    return load_hf(folder)
