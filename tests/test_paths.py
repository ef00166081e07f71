"""Local and remote (gs://) paths: runs, model folders and tokenizers."""
import os
import shutil

import pytest
from etils.epath import testing as epath_testing

from dllm_rl import paths
from dllm_rl.models.llada import LLaDAConfig
from dllm_rl.tokenizer import Tokenizer


def test_local_paths_become_absolute_and_urls_stay():
    assert os.fspath(paths.absolute("rel/dir")) == os.path.abspath("rel/dir")
    assert os.fspath(paths.absolute("gs://bucket/run/checkpoints")) == "gs://bucket/run/checkpoints"
    assert os.fspath(paths.absolute("gs://bucket/run") / "metrics.jsonl") == "gs://bucket/run/metrics.jsonl"
    assert paths.is_remote("gs://bucket/x") and not paths.is_remote("/tmp/x")


def test_gs_without_gcsfs_says_what_to_install(monkeypatch):
    monkeypatch.setattr(paths, "_has_module", lambda name: False)
    with pytest.raises(ImportError, match=r"dllm_rl\[gcs\]"):
        paths.absolute("gs://bucket/run")
    assert os.fspath(paths.absolute("relative")) == os.path.abspath("relative")  # local paths need nothing


def test_model_config_and_tokenizer_are_read_from_gs(tiny_dir, tiny_tokenizer_dir, tmp_path):
    """A gs:// model folder (config.json + tokenizer files) reads through epath: the gs:// backend is replaced
    by one that maps gs://bucket/ onto a local folder."""
    shutil.copy(tiny_dir / "config.json", tmp_path / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_tokenizer_dir / name, tmp_path / name)

    def local(fn, path, *args, **kwargs):
        assert os.fspath(path).startswith("gs://bucket"), path
        return fn(os.fspath(path).replace("gs://bucket", str(tmp_path)), *args, **kwargs)

    with epath_testing.mock_epath(open=local, exists=local, isdir=local):
        config = LLaDAConfig.from_hf_config("gs://bucket")
        tokenizer = Tokenizer.from_dir("gs://bucket")
    assert config == LLaDAConfig.from_hf_config(tiny_dir)
    assert tokenizer.encode("12+3") == Tokenizer.from_dir(tiny_tokenizer_dir).encode("12+3")
