"""Local and remote (gs://) run paths."""
import os

from dllm_rl import paths


def test_local_paths_become_absolute_and_urls_stay():
    assert os.fspath(paths.absolute("rel/dir")) == os.path.abspath("rel/dir")
    assert os.fspath(paths.absolute("gs://bucket/run/checkpoints")) == "gs://bucket/run/checkpoints"
    assert os.fspath(paths.absolute("gs://bucket/run") / "metrics.jsonl") == "gs://bucket/run/metrics.jsonl"
    assert paths.is_remote("gs://bucket/x") and not paths.is_remote("/tmp/x")
