"""Metrics JSONL/TensorBoard writer, resume truncation, torn lines, plots."""
import json
import os

import numpy as np
import pytest

from dllm_rl import metrics
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


def test_wandb_logs_every_row_and_a_resume_continues_the_same_run(tmp_path, monkeypatch):
    """With WandbOptions every row also goes to a W&B run (offline mode here: no account, no network); the run id
    is kept in the workdir, so a resumed run logs into the same W&B run."""
    wandb = pytest.importorskip("wandb", reason="pip install 'dllm_rl[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged, inits = [], []
    real_init = wandb.init

    def recording_init(**kwargs):
        inits.append(kwargs)
        run = real_init(**kwargs)
        real_log = run.log
        run.log = lambda data, step: (logged.append((step, data)), real_log(data, step=step))
        return run

    monkeypatch.setattr(wandb, "init", recording_init)
    options = metrics.WandbOptions(project="dllm-test", name="demo")
    with metrics.MetricsWriter(tmp_path, wandb=options, config={"train.seed": 0}) as writer:
        writer.write(1, {"reward_mean": 0.5, "kl": float("nan")})
    with metrics.MetricsWriter(tmp_path, resume_step=1, wandb=options) as writer:
        writer.write(2, {"reward_mean": 0.75})
    run_id = (tmp_path / metrics.WANDB_ID_FILE).read_text()
    assert [i["id"] for i in inits] == [run_id, run_id] and all(i["resume"] == "allow" for i in inits)
    assert inits[0]["project"] == "dllm-test" and inits[0]["config"] == {"train.seed": 0}
    assert logged == [(1, {"reward_mean": 0.5}), (2, {"reward_mean": 0.75})]  # NaN (null in JSONL) is not sent
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(runs) == 2 and all(r.stat().st_size > 0 for r in runs)
