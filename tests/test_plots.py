"""dllm_rl.plots: run panels from metrics.jsonl (missing keys skipped), and the denoising-trajectory figure."""
import types

import numpy as np
import pytest

from dllm_rl import plots
from dllm_rl.metrics import MetricsWriter
from dllm_rl.tokenizer import Tokenizer
from experiments import plot as plot_cli


def write_rows(workdir, rows):
    with MetricsWriter(workdir, tensorboard=False) as writer:
        for row in rows:
            writer.write(row.pop("step"), row)


def test_plot_run_writes_a_png_per_logged_panel_and_skips_missing_keys(tmp_path):
    write_rows(tmp_path, [{"step": 0, "eval_accuracy": 0.2},
                          {"step": 1, "reward_mean": 0.5, "reward/format": 0.1, "kl": 0.01, "tokens_per_second": 9.0},
                          {"step": 2, "reward_mean": 0.7, "reward/format": 0.3, "kl": None, "eval_accuracy": 0.4,
                           "logp_mismatch_mean": 1e-3}])
    paths = plots.plot_run(tmp_path)
    names = sorted(p.rsplit("/", 1)[-1] for p in paths)
    assert names == ["eval.png", "kl.png", "logp_mismatch.png", "overview.png", "reward.png", "throughput.png"]
    assert all((tmp_path / "plots" / n).read_bytes()[:4] == b"\x89PNG" for n in names)
    rows = [{"step": 1, "reward_mean": 0.5, "reward/format": 0.1}, {"step": 2, "reward/format": None}]
    assert plots.panel_keys(rows, plots.PANELS[0]) == ["reward_mean", "reward/format"]
    assert plots.series(rows, "reward/format") == ([1], [0.1])


def test_plot_run_without_metrics_writes_nothing(tmp_path):
    assert plots.plot_run(tmp_path) == [] and not (tmp_path / "plots").exists()


def test_plot_cli_writes_into_out_dir(tmp_path, capsys):
    write_rows(tmp_path, [{"step": 1, "reward_mean": 0.5}])
    assert plot_cli.main(["--workdir", str(tmp_path), "--out_dir", str(tmp_path / "png")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "png" / "reward.png"),
                                               str(tmp_path / "png" / "overview.png")]
    with pytest.raises(FileNotFoundError, match="No such file"):
        plot_cli.main(["--workdir", str(tmp_path / "missing")])


def test_trajectory_grid_shows_each_position_from_its_commit_step_on():
    grid_MxL = plots.trajectory_grid(np.array([2, 0, -1, 1]), steps=3)
    expected = [[np.nan, 0, np.nan, np.nan], [np.nan, 0, np.nan, 1], [2, 0, np.nan, 1]]
    np.testing.assert_array_equal(grid_MxL, np.array(expected, np.float32))


def test_trajectory_figure_writes_each_committed_token_at_its_step(tiny_tokenizer_dir, tmp_path):
    tok = Tokenizer.from_dir(tiny_tokenizer_dir)
    prompt = tok.encode("ab")
    completion = tok.encode("xyz")
    rollout = types.SimpleNamespace(tokens=np.array([prompt + completion + [tok.eos_token_id]]),
                                    unmask_step=np.array([[3, 0, 2, 1]]))
    fig = plots.trajectory_figure(rollout, tok, 0)
    ax = fig.axes[0]
    cells = sorted((t.get_position(), t.get_text()) for t in ax.texts)
    assert [(x, y) for (x, y), _ in cells] == [(0, 3), (1, 0), (2, 2), (3, 1)]
    assert [text for _, text in cells[:3]] == ["x", "y", "z"]
    assert "xyz" in ax.get_title()
    path = plots.save_figure(fig, str(tmp_path / "t.png"))
    assert open(path, "rb").read(4) == b"\x89PNG"
