"""The judge-check job: how good are the judge's labels, before paying for a corpus of them?

The configured annotator (any backend; the openai judge with its cache, limits and budget) labels
labelled subsets — ProcessBench's four files, or any set in a supported format with
`first_error_step` — and its labels are scored exactly as `actprm evaluate` scores a PRM's
predictions (actprm.evaluate.processbench_scores per subset, mean_f1 the unweighted mean). A row
the judge failed to label counts as a wrong answer (and is counted). PRMBench's files are scored by
PRMBench's metric: the judge's verdict is read as a model that stops at the first error it finds —
the steps before it valid, that step invalid, no label after it (PRMBench scores only the steps a
model labels; a judge says nothing about the steps after its first error); a sample it failed to
label is left out, as the official scorer leaves out an answer it cannot parse. Also: `exact_match`, the
share of items whose label is ProcessBench's exactly, over all subsets — the probability that one
of this judge's labels is right, and so the `label_weight` to give its labels in a labelled table
against ground-truth labels at 1.0.

    DIR/judge_check.json        the figures per subset and overall, with the settings
    DIR/annotations.parquet     every annotation the judge gave (annotations schema)
    DIR/judge_cache.sqlite      the openai judge's answers (a rerun pays nothing again; --cache PATH
                                shares one with annotate jobs)
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from actprm.config import JudgeCheckConfig
from actprm.errors import UserError
from actprm.io.subsets import labelled_batches, resolve_subsets
from actprm.io.writers import optional_output, write_parquet_atomic
from actprm.judge import error_kind, make_annotator
from actprm.judge.budget import check_spend_settings
from actprm.judge.interrupt import annotate_draining
from actprm.metrics import benchmark_tables, mean_f1, processbench_scores
from actprm.prmbench import prmbench_metrics
from actprm.progress import ReportResult
from actprm.sample import BottomK
from actprm.schemas import table_from_rows

PARTS = ["judge_check.json", "annotations.parquet"]
FAILED = -2  # the prediction of a row the judge did not label: equal to no label


def labelled_rows(subset: Any, cfg: JudgeCheckConfig, seen: set[str]) -> tuple[list[dict[str, Any]], int]:
    """The subset's rows that carry a label (PRMBench: its samples) — `limit` of them drawn uniformly (bottom-k
    by id hash, the same on every run; ProcessBench files list their error items first) — and how many rows
    had no label."""
    sample = BottomK(cfg.limit if cfg.limit is not None else 2**62, seed=cfg.seed)
    skipped = 0
    for batch in labelled_batches(subset, limits=cfg.limits, step_separator=cfg.step_separator,
                                  batch_rows=cfg.batch_rows, seen=seen):
        skipped += batch.unlabelled
        sample.add(batch.rows)
    return sample.rows(), skipped


def verdict_validity(first_error_step: int, n_steps: int) -> list[bool]:
    """PRMBench validity labels of a judge's verdict: valid up to its first error, that step invalid, no label
    after it (a model that stops there); every step valid for a verdict of no error."""
    return [True] * n_steps if first_error_step == -1 else [True] * first_error_step + [False]


class JudgeCheckResult(ReportResult):
    def details(self) -> str:
        return benchmark_tables(self.report, extra=("failed",))

    def summary_line(self) -> str:
        r = self.report
        where = f" -> {self.output}" if self.output else ""
        f1 = "-" if r["mean_f1"] is None else f"{r['mean_f1']:.3f}"
        if r["prmbench"]:
            f1 += f", PRMBench PRMScore {r['prmbench']['prmscore']:.3f}"
        return (f"judge-check: {r['judge']} on {r['n']} items: mean F1 {f1}, exact match {r['exact_match']:.3f} "
                f"-> label_weight {r['label_weight']:.2f} for its labels (ground truth 1.0); "
                f"{r['failed']} failed, ${r['cost_usd']:.2f} in {self.seconds:.1f}s{where}")


def run(cfg: JudgeCheckConfig, progress: bool = True) -> JudgeCheckResult:
    start = time.perf_counter()
    subsets = resolve_subsets(cfg.data, cfg.format)
    check_spend_settings(cfg)
    # a rerun into the same output replaces the check (its answers come from the cache)
    overwrite = cfg.overwrite or bool(cfg.output and (Path(cfg.output) / "judge_check.json").exists())
    with optional_output(cfg.output, PARTS, overwrite) as out:
        annotator = make_annotator(cfg)
        seen: set[str] = set()
        per_subset = [(s, *labelled_rows(s, cfg, seen)) for s in subsets]
        if not any(rows for _, rows, _ in per_subset):
            raise UserError(f"{', '.join(cfg.data)}: no labelled rows (first_error_step) to check the judge on")

        # one call for every subset: SIGINT/SIGTERM/SIGHUP drain the requests in flight (as annotate does)
        everything = [row for _, rows, _ in per_subset for row in rows]
        labelled = iter(annotate_draining(annotator, everything, cfg.interrupt_grace_s))
        annotated = [[next(labelled) for _ in rows] for _, rows, _ in per_subset]
        report_subsets, items, failures, prm_rows, prm_failed = {}, [], Counter(), [], 0
        hits = total = 0
        cost = 0.0
        for (subset, rows, skipped), ann in zip(per_subset, annotated):
            by_id = {a["id"]: a for a in ann}
            labels = [r["first_error_step"] for r in rows]
            preds = [FAILED if by_id[r["id"]]["error"] else by_id[r["id"]]["first_error_step"] for r in rows]
            hits += sum(p == y for p, y in zip(preds, labels))
            total += len(rows)
            items += ann
            for a in ann:
                if a["error"]:
                    failures[error_kind(a["error"])] += 1
                cost += a["cost_usd"]
            if subset.benchmark == "prmbench":
                prm_rows += [r | {"step_valid": verdict_validity(p, len(r["steps"]))}
                             for r, p in zip(rows, preds) if p != FAILED]
                prm_failed += sum(p == FAILED for p in preds)
                continue
            name = subset.name
            scores = processbench_scores(labels, preds) if rows else {"error_acc": None, "correct_acc": None,
                                                                       "f1": None, "n": 0, "n_error": 0,
                                                                       "n_correct": 0}
            failed = sum(p == FAILED for p in preds)
            report_subsets[name] = {**scores, "failed": failed, "unlabelled_skipped": skipped}
        exact = hits / total if total else 0.0
        report = {
            "judge": annotator.judge, "prompt_version": annotator.prompt_version, "backend": cfg.backend,
            "samples": cfg.samples, "limit": cfg.limit, "data": [s.path for s in subsets],
            "mean_f1": mean_f1(list(report_subsets.values())), "subsets": report_subsets,
            "prmbench": ({**prmbench_metrics(prm_rows), "failed": prm_failed,
                          "verdict_rule": "valid before the first error, invalid at it, no label after"}
                         if prm_rows or prm_failed else None),
            "n": total, "exact_match": exact, "label_weight": round(exact, 3),
            "failed": sum(failures.values()), "failures_by_kind": dict(failures.most_common()),
            "cost_usd": round(cost, 6),
        }
        stats = getattr(annotator, "stats", None)
        if stats is not None:
            report.update(stats.as_dict())
        seconds = time.perf_counter() - start
        report["seconds"] = round(seconds, 3)
        if out is not None:
            out.path("judge_check.json").write_text(json.dumps(report, indent=2) + "\n")
            write_parquet_atomic(table_from_rows(items, "annotations"), out.path("annotations.parquet"))
    return JudgeCheckResult(report, seconds, Path(cfg.output) if cfg.output else None)
