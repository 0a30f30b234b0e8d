"""`actprm score`: every step of every trajectory through the PRM, in-process (no Ray).

    DIR/scored/*.parquet   scored schema: step_mean, step_std, pred_first_error, uncertain,
                           acquisition, selected, n_scored_steps, prm_model
    DIR/errors/*.parquet   errors schema: invalid rows, and rows whose first step cannot fit
    DIR/summary.json       counts, selection rate, tokens, padding efficiency, rows/s
    DIR/selection.png      step mean vs spread with the rule's certain region; acquisition histogram

Read + validate (actprm.io) → score (actprm.scoring) → the ActPRM rule and selection
(actprm.selection) → write (actprm.io.writers). With `selection: budget` the top-k by
acquisition score is chosen over the whole corpus, so `selected` is set in a second
pass over the staged shards. `actprm filter` is the same at corpus scale on Ray.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actprm.calibration import rule_constants
from actprm.checkpoint import load_for_scoring
from actprm.config import ScoreConfig
from actprm.errors import UserError
from actprm.io.readers import Batch, check_paths, iter_batches, known_rows
from actprm.io.writers import ShardWriter, StagedOutput
from actprm.plots import plot_selection
from actprm.precision import model_dtype
from actprm.progress import JobResult, RowCounts, progress_bar
from actprm.schemas import error_row
from actprm.scoring import ScoringStats, score_trajectories
from actprm.selection import (
    apply_budget,
    calibrate,
    calibration_text,
    join_scores,
    model_calibration,
)

PARTS = ["scored", "errors", "summary.json", "selection.png"]
PLOT_MAX_STEPS = 50_000  # steps kept for the plot (the first ones scored)


def scored_rows(batch: Batch, results: list, cfg: ScoreConfig, model_name: str, calibration: dict | None = None
                ) -> tuple[list[dict], list[dict]]:
    """Join a batch's valid rows with their scores: (scored rows, error rows for unscorable ones);
    `calibration`: the model's record (its decision threshold and spread scale).

    An unscorable row (its first step alone does not fit the model) goes to errors with
    its canonical row as `row_json`.
    """
    out, too_long = join_scores(batch.valid, results, cfg, model_name, by_rule=cfg.selection == "threshold",
                                calibration=calibration)
    errors = [error_row(batch.source_file, batch.valid_index[i], batch.valid[i]["id"], reason, batch.valid[i])
              for i, reason in too_long]
    return out, errors


@dataclass
class ScoreJobResult(JobResult):
    counts: RowCounts
    n_scored: int
    n_uncertain: int
    n_selected: int
    stats: ScoringStats
    seconds: float
    output: Path
    calibration: dict | None = None

    def summary_line(self) -> str:
        rate = self.counts.read / self.seconds if self.seconds > 0 else 0.0
        return (f"score: {self.counts.read} rows in, {self.n_scored} scored, {self.n_uncertain} uncertain, "
                f"{self.n_selected} selected{calibration_text(self.calibration)}, {self.counts.n_errors} "
                f"quarantined in {self.seconds:.1f}s ({rate:,.1f} rows/s) -> {self.output}")


def run(cfg: ScoreConfig, progress: bool = True) -> ScoreJobResult:
    start = time.perf_counter()
    sources = check_paths(cfg)
    if cfg.selection == "budget" and cfg.budget is None:
        raise UserError("--selection budget needs --budget N")
    loaded = load_for_scoring(cfg)
    device, model, tokenizer, model_name, batch_tokens = loaded
    calibration = None
    if cfg.target_rate is not None:
        cfg, calibration = calibrate(cfg, sources, loaded)
    counts, stats = RowCounts(), ScoringStats()
    n_scored = n_uncertain = n_selected = 0
    plot = {"mean": [], "std": [], "acq": [], "unc": [], "steps": 0}
    total = known_rows(sources)
    with StagedOutput(cfg.output, PARTS, cfg.overwrite) as out:
        with ShardWriter(out.path("scored"), "scored", cfg.rows_per_shard) as scored, \
             ShardWriter(out.path("errors"), "errors", cfg.rows_per_shard) as errors, \
             progress_bar(total, "score", progress) as bar:
            for batch in iter_batches(sources, limits=cfg.limits, step_separator=cfg.step_separator,
                                      batch_rows=cfg.batch_rows):
                results = score_trajectories(
                    model, tokenizer, [r["problem"] for r in batch.valid], [r["steps"] for r in batch.valid],
                    batch_tokens=batch_tokens, max_length=cfg.max_length, device=device, stats=stats,
                    system_prompt=cfg.system_prompt)
                rows, too_long = scored_rows(batch, results, cfg, model_name, model_calibration(model))
                scored.add_rows(rows)
                errors.add_rows(batch.errors + too_long)
                counts.read += batch.n_read
                counts.valid += len(rows)
                counts.add_errors(batch.errors + too_long)
                if plot["steps"] < PLOT_MAX_STEPS:
                    for r in rows:
                        plot["mean"] += r["step_mean"]
                        plot["std"] += r["step_std"] or [0.0] * len(r["step_mean"])
                        plot["steps"] += len(r["step_mean"])
                    plot["acq"] += [r["acquisition"] for r in rows]
                    plot["unc"] += [r["uncertain"] for r in rows]
                n_scored += len(rows)
                n_uncertain += sum(r["uncertain"] for r in rows)
                n_selected += sum(r["selected"] for r in rows)
                bar.update(batch.n_read)
                bar.set_postfix(uncertain=n_uncertain, tok_s=f"{stats.real_tokens / max(stats.seconds_forward, 1e-9):,.0f}")
        if cfg.selection == "budget":
            n_selected = apply_budget(out.path("scored"), cfg.budget)
        seconds = time.perf_counter() - start
        summary = {
            "files": [str(s.path) for s in sources], **counts.as_dict(), "rows_scored": n_scored,
            "rows_uncertain": n_uncertain, "rows_selected": n_selected,
            "selection_rate": n_selected / n_scored if n_scored else 0.0,
            **dict(zip(("decision_threshold", "spread_scale"),
                       rule_constants(model_calibration(model), cfg.decision_threshold, cfg.spread_scale))),
            "delta_pred": cfg.delta_pred, "delta_std": cfg.delta_std, "calibration": calibration,
            "model": model_name, "device": device, "dtype": model_dtype(model), "seconds": round(seconds, 3),
            "rows_per_second": counts.read / seconds if seconds else 0.0,
            "scoring": stats.as_dict(),
        }
        out.path("summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if n_scored:
            plot_selection(np.array(plot["mean"]), np.array(plot["std"]), np.array(plot["acq"]),
                           np.array(plot["unc"], dtype=bool), cfg.delta_pred,
                           cfg.delta_std * rule_constants(model_calibration(model), cfg.decision_threshold,
                                                          cfg.spread_scale)[1],
                           out.path("selection.png"), title=f"{model_name}: {n_uncertain}/{n_scored} uncertain")
    return ScoreJobResult(counts, n_scored, n_uncertain, n_selected, stats, seconds, Path(cfg.output), calibration)
