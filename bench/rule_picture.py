"""The picture of what the rule routes (docs/ensemble-and-rule.md, "The rule and its calibration").

    python -m bench.rule_picture [--world arith-rare] [--labels 600] [--output docs/images/rule.png]

The shipped PRM's heads trained with `actprm train`'s defaults on --labels random rows of a world pool (the
selection lab's cache, bench/selection_lab.py extract), labelled by the 18%-wrong verifier; then every step
of 3,000 unlabelled rows up to its row's predicted first error is drawn at (calibrated mean, spread in
units of the checkpoint's spread scale), coloured by what the rule does with its row, with the certain
region shaded and the decision threshold marked.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from actprm.calibration import rule_constants
from actprm.config import LoopConfig
from bench.label_savings import Learner, probs_of
from bench.selection_lab import WORK, load

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="arith-rare")
    p.add_argument("--labels", type=int, default=600)
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--output", default=str(REPO / "docs" / "images" / "rule.png"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    pool, pt = load(Path(args.work), args.world, "pool", 20000)
    truth = np.array(pt["first_error_step"])
    x = Learner("random", 0, pool, truth, 0.18)
    x.buy(x.select(args.labels, 1))
    x.train(1)
    threshold, spread = rule_constants(x.heads.calibration)
    rule = LoopConfig()
    rows = np.flatnonzero(~x.labelled)[: args.rows]
    sub = pool.rows(rows)
    from actprm.curves import row_stats

    pr = probs_of(x.heads, sub.x)
    st = row_stats(pr, sub.offsets, delta_pred=rule.delta_pred, delta_std=rule.delta_std, threshold=threshold,
                   spread_scale=spread)
    n = np.diff(sub.offsets)
    row = np.repeat(np.arange(len(rows)), n)
    pos = np.arange(len(pr)) - sub.offsets[row]
    end = np.where(st["pred_first_error"] >= 0, st["pred_first_error"], n - 1)
    read = pos <= end[row]
    mean, rel = st["mean"][read], (st["std"] / spread)[read]
    routed = st["uncertain"][row][read]
    mistake = (pos == truth[rows][row])[read]  # the step is its row's first mistake

    from actprm.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    top = max(float(np.quantile(rel, 0.995)) * 1.1, rule.delta_std * 1.6)
    hi = max(rule.delta_pred, threshold)
    ax.axvspan(hi, 1.0, ymax=rule.delta_std / top, color="tab:green", alpha=0.18, lw=0, label="certain region")
    ax.axvspan(0.0, min(1 - rule.delta_pred, threshold), ymax=rule.delta_std / top, color="tab:green", alpha=0.18,
               lw=0)
    for mask, colour, label in ((~routed, "tab:blue", "step of a row kept"), (routed, "tab:orange",
                                                                            "step of a row routed to the judge")):
        ax.scatter(mean[mask & ~mistake], rel[mask & ~mistake], s=4, alpha=0.45, color=colour,
                   label=f"{label} ({(mask & ~mistake).sum():,})")
    for mask, colour, label in ((~routed, "tab:purple", "a row's real first mistake, kept"),
                                (routed, "tab:red", "a row's real first mistake, routed")):
        ax.scatter(mean[mask & mistake], rel[mask & mistake], s=14, marker="x", color=colour,
                   label=f"{label} ({(mask & mistake).sum():,})")
    ax.axvline(threshold, color="black", lw=0.8, ls="--", label=f"decision threshold {threshold:.2f}")
    ax.axhline(rule.delta_std, color="tab:green", lw=0.8, ls=":")
    ax.set(xlim=(0, 1), ylim=(0, top), xlabel="calibrated step mean (chance the step is right)",
           ylabel="spread over heads / the checkpoint's spread scale",
           title=f"what the rule routes: {args.world}, heads trained on {args.labels} verifier labels; "
                 f"{st['uncertain'].mean():.0%} of {len(rows):,} rows routed")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper left", markerscale=3)
    save_figure(fig, args.output)
    print(f"{args.output}: {st['uncertain'].mean():.1%} of rows routed; of the rows with a mistake "
          f"{st['uncertain'][truth[rows] >= 0].mean():.1%}, of the others {st['uncertain'][truth[rows] < 0].mean():.1%}; "
          f"threshold {threshold:.2f}, spread scale {spread:.4f}")


if __name__ == "__main__":
    main()
