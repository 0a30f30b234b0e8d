"""The estimate job: what labelling a corpus will cost, before anything is paid.

1. read and validate the whole corpus (actprm.io) and keep a uniform sample of `sample` valid
   rows (actprm.sample: bottom-k by id hash);
2. score the sample with the PRM (actprm.scoring) and apply the selection rule
   (actprm.uncertainty; `--target-rate` first chooses δ_pred/δ_std on the same sample);
3. project for the corpus: rows selected = rate × valid rows, with a Wilson interval on the
   rate at `confidence` (with the finite-population correction when the sample is a large
   share of the corpus; exact when it is all of it); judge requests = rows × (1 with `use_n`,
   else `samples`); prompt tokens = the selected sample rows' mean judge prompt
   (actprm.judge.prompt.render_prompt) in characters / 4, the judge's own estimate, once per
   request; completion tokens = `samples` × `mean_output_tokens` per row; dollars at
   `price_in` / `price_out`. The intervals on calls, tokens and dollars are the rate's; the
   spread of answer lengths is not in them (`mean_output_tokens` is taken as given).

Printed as a few lines and, with --output DIR, written to DIR/estimate.json.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

from actprm.checkpoint import load_for_scoring
from actprm.config import EstimateConfig
from actprm.errors import UserError
from actprm.io.readers import open_corpus
from actprm.io.writers import optional_output
from actprm.judge.prompt import render_prompt
from actprm.progress import ReportResult
from actprm.sample import sample_corpus
from actprm.selection import (
    deltas_for_rate,
    model_calibration,
    rule_summary,
    score_rows,
)


def normal_quantile(confidence: float) -> float:
    """z with P(|Z| <= z) = confidence."""
    return statistics.NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(k: int, n: int, confidence: float = 0.95, population: int | None = None) -> tuple[float, float]:
    """Wilson score interval for a rate k/n; with `population` N, the finite-population correction
    (the sample is drawn without replacement): exact when n == N."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    if population is not None and n >= population:
        return p, p
    n_eff = n * (population - 1) / (population - n) if population and population > 1 else n
    z = normal_quantile(confidence)
    centre = (p + z * z / (2 * n_eff)) / (1 + z * z / n_eff)
    half = z / (1 + z * z / n_eff) * math.sqrt(p * (1 - p) / n_eff + z * z / (4 * n_eff * n_eff))
    return max(0.0, centre - half), min(1.0, centre + half)


class EstimateResult(ReportResult):
    def details(self) -> str:
        r, p = self.report, self.report["projection"]

        def span(key: str, fmt: str = "{:,.0f}") -> str:
            return f"{fmt.format(p[key])} ({fmt.format(p[key + '_low'])} to {fmt.format(p[key + '_high'])})"

        pct = int(round(100 * r["confidence"]))
        lines = [
            f"corpus: {r['rows_valid']:,} valid rows ({r['rows_read']:,} read); sample {r['sample_scored']:,} scored",
            f"selection rate: {r['rate']:.1%} ({r['rate_low']:.1%} to {r['rate_high']:.1%}, {pct}% Wilson) "
            f"with delta_pred {r['delta_pred']:g}, delta_std {r['delta_std']:g}",
            f"rows to the judge: {span('rows_selected')}",
            f"judge requests: {span('calls')}",
            f"tokens: {span('prompt_tokens')} prompt + {span('completion_tokens')} completion "
            f"(prompt {r['prompt_tokens_per_request']:,.0f}/request, completion {r['completion_tokens_per_row']:,}/row)",
            f"cost: {span('usd', '${:,.2f}')} at ${r['price_in']:g}/${r['price_out']:g} per M tokens "
            f"(judge {r['judge']})",
        ]
        return "\n".join(lines)

    def summary_line(self) -> str:
        p = self.report["projection"]
        where = f" -> {self.output / 'estimate.json'}" if self.output else ""
        return (f"estimate: {p['calls']:,.0f} judge requests ({p['calls_low']:,.0f} to {p['calls_high']:,.0f}), "
                f"${p['usd']:,.2f} (${p['usd_low']:,.2f} to ${p['usd_high']:,.2f}) in {self.seconds:.1f}s{where}")


def run(cfg: EstimateConfig, progress: bool = True) -> EstimateResult:
    start = time.perf_counter()
    if not cfg.input:
        raise UserError("no input: pass --input PATH (a file, a directory or a glob)")
    if cfg.selection != "threshold":
        raise UserError("estimate projects the ActPRM rule (--selection threshold); a budget selects --budget rows")
    with optional_output(cfg.output, ["estimate.json"], cfg.overwrite) as out:
        sources = open_corpus(cfg.input, cfg.format)
        sample = sample_corpus(sources, cfg, cfg.sample, seed=cfg.seed)
        rows = sample.rows()
        if not rows:
            raise UserError(f"{', '.join(cfg.input)}: no valid rows to estimate from")
        loaded = load_for_scoring(cfg)
        probs, ids = score_rows(cfg, rows, loaded)
        delta_pred, delta_std, calibration = cfg.delta_pred, cfg.delta_std, None
        if cfg.target_rate is not None and probs:
            calibration = deltas_for_rate(probs, cfg, model_calibration(loaded[1]))
            delta_pred, delta_std = calibration["delta_pred"], calibration["delta_std"]
        uncertain = (rule_summary(probs, ids, cfg, model_calibration(loaded[1]), delta_pred, delta_std)["uncertain"]
                     if probs else [])
        chosen = {i for i, u in zip(ids, uncertain) if u}
        k, n, total = len(chosen), len(rows), sample.seen  # rows too long to score count as not selected
        rate = k / n
        low, high = wilson_interval(k, n, cfg.confidence, population=total)
        by_id = {r["id"]: r for r in rows}
        prompts = [len(render_prompt(by_id[i]["problem"], by_id[i]["steps"])) / 4 for i in (chosen or by_id)]
        prompt_per_request = sum(prompts) / len(prompts)
        requests_per_row = 1 if cfg.use_n else cfg.samples
        completion_per_row = cfg.samples * cfg.mean_output_tokens
        usd_per_row = (cfg.price_in * prompt_per_request * requests_per_row
                       + cfg.price_out * completion_per_row) / 1e6

        projection: dict[str, float] = {}
        for suffix, r in (("", rate), ("_low", low), ("_high", high)):
            selected = r * total
            projection["rows_selected" + suffix] = selected
            projection["calls" + suffix] = selected * requests_per_row
            projection["prompt_tokens" + suffix] = selected * requests_per_row * prompt_per_request
            projection["completion_tokens" + suffix] = selected * completion_per_row
            projection["usd" + suffix] = selected * usd_per_row
        report = {
            "files": [str(s.path) for s in sources], "rows_read": sample.read, "rows_valid": total,
            "sample": cfg.sample, "sample_scored": n, "sample_unscorable": n - len(ids), "sample_selected": k,
            "rate": rate, "rate_low": low, "rate_high": high, "confidence": cfg.confidence,
            "delta_pred": delta_pred, "delta_std": delta_std, "calibration": calibration,
            "model": cfg.model or "actprm/assets/prm", "judge": cfg.judge_model or cfg.backend,
            "samples": cfg.samples, "use_n": cfg.use_n, "requests_per_row": requests_per_row,
            "prompt_tokens_per_request": prompt_per_request, "completion_tokens_per_row": completion_per_row,
            "mean_output_tokens": cfg.mean_output_tokens, "price_in": cfg.price_in, "price_out": cfg.price_out,
            "usd_per_row": usd_per_row, "projection": projection,
        }
        seconds = time.perf_counter() - start
        report["seconds"] = round(seconds, 3)
        if out is not None:
            out.path("estimate.json").write_text(json.dumps(report, indent=2) + "\n")
    return EstimateResult(report, seconds, Path(cfg.output) if cfg.output else None)
