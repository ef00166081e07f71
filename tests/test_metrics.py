"""Metrics JSONL/TensorBoard writer, resume truncation, torn lines, plots."""
import json
import os

import numpy as np

from dllm_rl.metrics import MetricsWriter, read_metrics


def test_rows_scalars_and_tensorboard(tmp_path):
    with MetricsWriter(tmp_path) as w:
        row = w.write(1, {"reward_mean": np.float32(0.5), "n": np.int64(3), "bad": float("nan"), "tag": "x"})
    assert row == {"step": 1, "reward_mean": 0.5, "n": 3, "bad": None, "tag": "x"}
    assert read_metrics(tmp_path) == [row]
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "tensorboard"))


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        for s in range(1, 6):
            w.write(s, {"reward_mean": s})
    with MetricsWriter(tmp_path, resume_step=3, tensorboard=False) as w:
        w.write(4, {"reward_mean": 40})
    assert [(r["step"], r["reward_mean"]) for r in read_metrics(tmp_path)] == [(1, 1), (2, 2), (3, 3), (4, 40)]
    with MetricsWriter(tmp_path, tensorboard=False):  # a fresh run starts a fresh file
        pass
    assert read_metrics(tmp_path) == []


def test_torn_last_line_is_ignored(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "rew')
    assert read_metrics(tmp_path) == [{"step": 1}]
