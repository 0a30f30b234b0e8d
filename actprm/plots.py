"""Plots for people: what the scorer saw and what the ActPRM rule selected."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_selection(step_mean: np.ndarray, step_std: np.ndarray, acquisition: np.ndarray, uncertain: np.ndarray,
                   delta_pred: float, delta_std: float, path: str | Path, title: str = "") -> Path:
    """Two panels: each step's ensemble mean vs its spread over heads, with the certain regions
    of the ActPRM rule shaded; and the acquisition scores of certain vs uncertain trajectories."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    top = max(float(step_std.max(initial=0.0)) * 1.1, delta_std * 4, 1e-3)
    for lo, hi in ((delta_pred, 1.0), (0.0, 1.0 - delta_pred)):
        left.axvspan(lo, hi, ymax=min(1.0, delta_std / top), color="tab:green", alpha=0.25, lw=0)
    left.scatter(step_mean, step_std, s=4, alpha=0.35, color="tab:blue", rasterized=True)
    left.axhline(delta_std, color="tab:green", lw=0.8, ls="--")
    left.axvline(0.5, color="grey", lw=0.8, ls=":")
    left.set(xlim=(0, 1), ylim=(0, top), xlabel="step mean over heads (P step correct)",
             ylabel="std over heads", title=f"steps (certain region shaded: δ_pred={delta_pred}, δ_std={delta_std})")
    bins = np.linspace(float(acquisition.min(initial=0.0)), float(acquisition.max(initial=1.0)) + 1e-9, 40)
    right.hist([acquisition[~uncertain], acquisition[uncertain]], bins=bins, stacked=True,
               color=["tab:green", "tab:red"],
               label=[f"certain ({int((~uncertain).sum())})", f"uncertain ({int(uncertain.sum())})"])
    right.set(xlabel="acquisition score", ylabel="trajectories", title="trajectories by acquisition")
    right.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def plot_f1_vs_labels(series: dict[str, tuple[list[int], list[float]]], path: str | Path, title: str = "") -> Path:
    """Eval mean F1 against labels bought, one line per strategy (name -> (labels, F1))."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, (labels, f1) in series.items():
        ax.plot(labels, f1, marker="o", label=name)
    ax.set(xlabel="labels bought (rows sent to the annotator)", ylabel="eval mean F1 (ProcessBench)",
           title=title or "F1 against labels")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_step_stats(named: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, delta_pred: float,
                    delta_std: float, title: str = "") -> Path:
    """Histograms of the step means and of the step spreads over heads (name -> (means, stds)), with the
    ActPRM rule's thresholds marked."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    top = max([float(np.max(s, initial=0.0)) for _, s in named.values()] + [delta_std * 4])
    for name, (mean, std) in named.items():
        left.hist(mean, bins=np.linspace(0, 1, 51), alpha=0.55, label=f"{name} ({mean.size} steps)")
        right.hist(std, bins=np.linspace(0, top, 51), alpha=0.55, label=name)
    for x in (delta_pred, 1 - delta_pred):
        left.axvline(x, color="tab:green", lw=0.8, ls="--")
    right.axvline(delta_std, color="tab:green", lw=0.8, ls="--")
    left.set(xlabel="step mean over heads (P step correct)", ylabel="steps", title="step mean (δ_pred dashed)")
    right.set(xlabel="step std over heads", ylabel="steps", title="step std (δ_std dashed)")
    left.legend()
    right.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_selection_rate(series: dict[str, tuple[list[int], list[float]]], path: str | Path, title: str = "") -> Path:
    """Per round, the share of scored rows the ActPRM rule calls uncertain (name -> (rounds, rates))."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, (rounds, rates) in series.items():
        ax.plot(rounds, rates, marker="o", label=name)
    ax.set(xlabel="round", ylabel="share of rows", ylim=(0, 1.02), title=title or "selection rate per round")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
