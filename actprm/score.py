"""The score job (in-process, no Ray): every step of every trajectory through the ensemble PRM.

    DIR/scored/*.parquet   scored schema: step_mean, step_std, pred_first_error, uncertain,
                           acquisition, selected, n_scored_steps, prm_model
    DIR/errors/*.parquet   errors schema: invalid rows, and rows whose first step cannot fit
    DIR/summary.json       counts, selection rate, tokens, padding efficiency, rows/s
    DIR/selection.png      step mean vs spread with the rule's certain region; acquisition histogram

Read + validate (actprm.io) → score (actprm.scoring) → uncertainty and selection
(actprm.uncertainty) → write (actprm.io.writers). With `selection: budget` the top-k by
acquisition score is chosen over the whole corpus, so `selected` is set in a second
pass over the staged shards.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from actprm import uncertainty
from actprm.config import ScoreConfig
from actprm.errors import UserError
from actprm.io.readers import Batch, iter_batches, known_rows
from actprm.io.writers import ShardWriter, StagedOutput, write_parquet_atomic
from actprm.plots import plot_selection
from actprm.precision import model_dtype
from actprm.progress import RowCounts, progress_bar
from actprm.schemas import error_row
from actprm.scoring import ScoringStats, default_batch_tokens, score_trajectories
from actprm.validate import check_paths

PARTS = ["scored", "errors", "summary.json", "selection.png"]
DEFAULT_MODEL_NAME = "actprm/assets/prm"  # prm_model of rows scored by the shipped PRM (same on every machine)
PLOT_MAX_STEPS = 50_000  # steps kept for the plot (the first ones scored)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (use --device cpu)")
    return name


def load_scoring_model(path: str | None, device: str, implicit: dict | None = None, dtype: str = "auto"):
    """(model, tokenizer) from a PRM directory (None: the shipped default PRM); a user error if it is not one.
    `implicit`: the implicit scorer's settings (ScorerConfig.implicit_settings): load `path` (None: the
    shipped backbone) as an implicit PRM instead (actprm.implicit). `dtype`: the backbone's
    (auto | float32 | bfloat16, actprm.precision.resolve_dtype)."""
    from actprm.model import PRM_CONFIG_NAME, default_prm_path, load_prm
    from actprm.precision import resolve_dtype

    dtype = resolve_dtype(dtype, device)
    if implicit is not None:
        from actprm.implicit import load_implicit

        return load_implicit(path, device, dtype=dtype, **implicit)
    path = path or str(default_prm_path())
    if not (Path(path) / PRM_CONFIG_NAME).is_file():
        raise UserError(f"{path}: not a PRM directory (no {PRM_CONFIG_NAME}); make one with actprm init-model")
    try:
        return load_prm(path, device=device, dtype=dtype)
    except (OSError, ValueError) as exc:  # missing/foreign weights (no safetensors), bad config
        detail = " ".join(str(exc).split())
        raise UserError(f"{path}: cannot load the PRM ({detail[:200]})") from None


def load_for_scoring(cfg) -> tuple[str, torch.nn.Module, object, str, int]:
    """(device, model, tokenizer, model name, batch tokens) for a job config with
    `device`, `threads`, `model` and `batch_tokens` (score, evaluate)."""
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    implicit = cfg.implicit_settings()
    model, tokenizer = load_scoring_model(cfg.model, device, implicit, cfg.dtype)
    name = cfg.model or (DEFAULT_MODEL_NAME if implicit is None else "actprm/assets/backbone")
    return device, model, tokenizer, name, cfg.batch_tokens or default_batch_tokens(device)


def join_scores(rows: list[dict], results: list, cfg: ScoreConfig, model_name: str
                ) -> tuple[list[dict], list[tuple[int, str]]]:
    """Rows joined with their scores and the selection rule: (scored rows, [(position, reason)] of
    the rows that could not be scored, i.e. whose first step alone does not fit the model)."""
    ok = [(row, res) for row, res in zip(rows, results) if res.error is None]
    too_long = [(i, f"too long: {res.error}") for i, res in enumerate(results) if res.error is not None]
    if not ok:
        return [], too_long
    summary = uncertainty.summarize(
        [res.probs for _, res in ok], [row["id"] for row, _ in ok],
        delta_pred=cfg.delta_pred, delta_std=cfg.delta_std,
        acquisition=cfg.acquisition, reduction=cfg.reduction, seed=cfg.seed)
    out = []
    for i, (row, res) in enumerate(ok):
        out.append(row | {
            "step_mean": summary["step_mean"][i].tolist(),
            # the implicit scorer: no spread (one model), and its values and rewards (actprm.implicit)
            "step_std": summary["step_std"][i].tolist() if res.step_value is None else None,
            "step_value": None if res.step_value is None else res.step_value.tolist(),
            "step_reward": None if res.step_reward is None else res.step_reward.tolist(),
            "pred_first_error": int(summary["pred_first_error"][i]),
            "uncertain": bool(summary["uncertain"][i]),
            "acquisition": float(summary["acquisition"][i]),
            "selected": bool(summary["uncertain"][i]) if cfg.selection == "threshold" else False,
            "n_scored_steps": int(res.n_scored_steps),
            "prm_model": model_name,
        })
    return out, too_long


def scored_rows(batch: Batch, results: list, cfg: ScoreConfig, model_name: str) -> tuple[list[dict], list[dict]]:
    """Join a batch's valid rows with their scores: (scored rows, error rows for unscorable ones).

    An unscorable row (its first step alone does not fit the model) goes to errors with
    its canonical row as `row_json`.
    """
    out, too_long = join_scores(batch.valid, results, cfg, model_name)
    errors = [error_row(batch.source_file, batch.valid_index[i], batch.valid[i]["id"], reason, batch.valid[i])
              for i, reason in too_long]
    return out, errors


def apply_budget(directory: Path, budget: int) -> int:
    """Set `selected` on the top-`budget` rows by acquisition (ties by id) across every shard."""
    files = sorted(directory.glob("*.parquet"))
    keys = [pq.read_table(f, columns=["id", "acquisition"]) for f in files]
    ids = [i for t in keys for i in t.column("id").to_pylist()]
    scores = np.concatenate([t.column("acquisition").to_numpy() for t in keys]) if keys else np.zeros(0)
    chosen = {rid for rid, keep in zip(ids, uncertainty.select_budget(ids, scores, budget)) if keep}
    for f in files:
        table = pq.read_table(f)
        mask = pa.array([rid in chosen for rid in table.column("id").to_pylist()], type=pa.bool_())
        table = table.set_column(table.schema.get_field_index("selected"), table.schema.field("selected"), mask)
        write_parquet_atomic(table, f)
    return len(chosen)


def calibrate(cfg, sources: list, loaded: tuple | None = None, rows: list | None = None):
    """`cfg` with δ_pred/δ_std chosen on a sample for a selection rate of about `cfg.target_rate`, and the
    calibration record (actprm.uncertainty.calibrate_deltas + target and sample size). `rows`: the sample,
    when the caller has drawn it (default: `calibration_sample` rows of `sources`, by id hash)."""
    from actprm.sample import sample_corpus, score_rows

    if cfg.selection != "threshold":
        raise UserError("--target-rate chooses the ActPRM rule's deltas; with --selection budget choose --budget")
    if rows is None:
        rows = sample_corpus(sources, cfg, cfg.calibration_sample, seed=cfg.seed).rows()
    probs, _ = score_rows(cfg, rows, loaded)
    if not probs:
        raise UserError("--target-rate: the corpus has no scorable rows to calibrate on")
    found = uncertainty.calibrate_deltas(probs, cfg.target_rate)
    record = {"target_rate": cfg.target_rate, **found}
    return cfg.model_copy(update={"delta_pred": found["delta_pred"], "delta_std": found["delta_std"]}), record


def calibration_text(record: dict | None) -> str:
    if not record:
        return ""
    return (f" (target rate {record['target_rate']:.1%}: delta_pred {record['delta_pred']:.6g}, "
            f"delta_std {record['delta_std']:.6g}, {record['rate']:.1%} of {record['n']} sampled rows)")


@dataclass
class ScoreJobResult:
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


def run_score(cfg: ScoreConfig, progress: bool = True) -> ScoreJobResult:
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
                    batch_tokens=batch_tokens, max_length=cfg.max_length, device=device, stats=stats)
                rows, too_long = scored_rows(batch, results, cfg, model_name)
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
            "delta_pred": cfg.delta_pred, "delta_std": cfg.delta_std, "calibration": calibration,
            "model": model_name, "device": device, "dtype": model_dtype(model), "seconds": round(seconds, 3),
            "rows_per_second": counts.read / seconds if seconds else 0.0,
            "scoring": stats.as_dict(),
        }
        out.path("summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if n_scored:
            plot_selection(np.array(plot["mean"]), np.array(plot["std"]), np.array(plot["acq"]),
                           np.array(plot["unc"], dtype=bool), cfg.delta_pred, cfg.delta_std,
                           out.path("selection.png"), title=f"{model_name}: {n_uncertain}/{n_scored} uncertain")
    return ScoreJobResult(counts, n_scored, n_uncertain, n_selected, stats, seconds, Path(cfg.output), calibration)
