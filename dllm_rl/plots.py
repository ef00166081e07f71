"""Pictures of a run: training curves from `metrics.jsonl`, and the denoising trajectory of one completion.

`plot_run(workdir)` writes one PNG per panel (reward and its components, held-out eval, KL, clip fraction,
rollout/loss log-prob mismatch, completion length, throughput) plus `overview.png` with all of them under
`workdir/plots`; keys a run did not log are skipped. `trajectory_figure(rollout, tokenizer, row)` draws which
generated position was committed at which sampler step and the tokens filling in; the quickstart notebook and
`experiments.eval --trajectories` both use it. Figures are `matplotlib.figure.Figure` objects made without
pyplot: no global figure state and no backend switch, so they behave the same in a script and in a notebook.
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from dllm_rl import paths
from dllm_rl.metrics import read_metrics

PLOTS_DIR = "plots"
OVERVIEW = "overview"


@dataclasses.dataclass(frozen=True)
class Panel:
    """One chart: `keys` plotted against step (plus every key starting with `prefix`, when given)."""

    name: str
    title: str
    keys: tuple[str, ...]
    prefix: str | None = None


PANELS = (
    Panel("reward", "training reward (mean and components)", ("reward_mean",), prefix="reward/"),
    Panel("eval", "held-out evaluation (greedy)", ("eval_accuracy", "eval_reward_mean")),
    Panel("kl", "KL to the reference policy", ("kl",)),
    Panel("clip_fraction", "PPO clip fraction", ("clip_fraction",)),
    Panel("logp_mismatch", "rollout vs. loss log-prob mismatch", ("logp_mismatch_mean",)),
    Panel("completion_length", "completion length (non-EOS tokens)", ("completion_length",)),
    Panel("throughput", "rollout throughput (tokens/s)", ("tokens_per_second",)),
)


def series(rows: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows that logged a number for `key`."""
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [s for s, _ in points], [v for _, v in points]


def panel_keys(rows: Sequence[dict], panel: Panel) -> list[str]:
    """The panel's keys that have at least one value in `rows`, in a stable order."""
    keys = list(panel.keys)
    if panel.prefix:
        keys += sorted({k for r in rows for k in r if k.startswith(panel.prefix)})
    return [k for k in keys if series(rows, k)[0]]


def draw_panel(ax, rows: Sequence[dict], panel: Panel) -> None:
    """Draws every present key of `panel` on `ax`."""
    for key in panel_keys(rows, panel):
        steps, values = series(rows, key)
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, label=key)
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def save_figure(fig, path: str) -> str:
    """Writes `fig` to `path` (local or gs://; its folder is made) as PNG atomically (a reader never sees half a
    file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    target = paths.absolute(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    paths.replace_bytes(target, buffer.getvalue())
    return path


def plot_run(workdir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[str]:
    """PNGs of every panel with data, plus the overview, under `out_dir` (default `workdir/plots`); their paths."""
    rows = read_metrics(workdir)
    panels = [p for p in PANELS if panel_keys(rows, p)]
    if not panels:
        return []
    out_dir = os.fspath(out_dir or os.path.join(os.fspath(workdir), PLOTS_DIR))
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for panel in panels:
        fig = Figure(figsize=(6, 4))
        draw_panel(fig.subplots(), rows, panel)
        written.append(save_figure(fig, os.path.join(out_dir, f"{panel.name}.png")))
    cols = min(len(panels), 3)
    rows_of_panels = -(-len(panels) // cols)
    fig = Figure(figsize=(5 * cols, 3.6 * rows_of_panels))
    axes = fig.subplots(rows_of_panels, cols, squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        draw_panel(ax, rows, panel)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    written.append(save_figure(fig, os.path.join(out_dir, f"{OVERVIEW}.png")))
    return written


def trajectory_grid(unmask_step_L: np.ndarray, steps: int) -> np.ndarray:
    """committed_MxL: the step (0-based) at which each position was committed, shown from that step on; NaN
    where the position is still masked (or was never committed, step -1)."""
    step_M1 = np.arange(steps)[:, None]
    committed_MxL = (unmask_step_L[None, :] >= 0) & (unmask_step_L[None, :] <= step_M1)
    return np.where(committed_MxL, unmask_step_L[None, :].astype(np.float32), np.nan)


def trajectory_figure(rollout, tokenizer, row: int = 0, *, max_positions: int = 64, title: str | None = None):
    """A Figure of one completion's denoising: x = generated position, y = sampler step; a cell is
    coloured from the step its position was committed at (colour = that step), and the committed token is
    written where it appeared. Shows the first `max_positions` generated positions."""
    unmask_step_L = np.asarray(rollout.unmask_step)[row][:max_positions]
    length = unmask_step_L.shape[0]
    gen_length = np.asarray(rollout.unmask_step).shape[1]
    tokens_L = np.asarray(rollout.tokens)[row, -gen_length:][:length]
    steps = max(int(unmask_step_L.max()) + 1, 1)
    fig = Figure(figsize=(max(4.0, 0.32 * length + 1.5), max(2.5, 0.28 * steps + 1.2)))
    ax = fig.subplots()
    ax.set_facecolor("#e8e8e8")  # still masked
    image = ax.imshow(trajectory_grid(unmask_step_L, steps), aspect="auto", cmap="viridis", origin="upper",
                      vmin=0, vmax=max(steps - 1, 1), alpha=0.8)
    for position, (step, token) in enumerate(zip(unmask_step_L, tokens_L)):
        if step >= 0:
            text = tokenizer.decode([int(token)], skip_special_tokens=False)
            ax.text(position, step, text if len(text) <= 4 else text[:3] + "…", ha="center", va="center",
                    fontsize=7, color="white" if step < steps / 2 else "black")
    ax.set_xlabel("generated position")
    ax.set_ylabel("sampler step")
    fig.colorbar(image, ax=ax, label="step committed", fraction=0.03, pad=0.01)
    completion = tokenizer.decode([int(t) for t in tokens_L], skip_special_tokens=True)
    ax.set_title(title if title is not None else f"completion: {completion[:80]!r}", fontsize=9)
    fig.tight_layout()
    return fig
