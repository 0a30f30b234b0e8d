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
