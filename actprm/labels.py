"""Labels: annotations joined with their trajectories by id, into labelled rows (data_schemas/labelled.yaml).

Only `problem` and `steps` are taken from the trajectories: a ground-truth column a corpus may carry
(`first_error_step`) never becomes a label. Steps before the earliest error are correct (1), the
earliest error is wrong (0), later steps are not trained; soft `step_labels` (rollout values) win
where a row has them (docs/loop-and-stream.md, "Training rounds").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from actprm.config import TrainConfig
from actprm.errors import UserError
from actprm.io.readers import iter_batches, list_files, open_corpus


@dataclass
class LabelCounts:
    """What became of the labels on the way to training (trainer_state.json's `counts`)."""

    annotations: int = 0  # annotation rows read
    labelled: int = 0  # labelled rows built from them
    # annotations dropped: no label, no trajectory with that id, a second annotation of an id
    failed_annotations: int = 0
    without_trajectory: int = 0
    duplicate_annotations: int = 0
    # trajectories dropped: no annotation, a label outside the steps
    without_annotation: int = 0
    invalid_label: int = 0
    # rows the model could not learn from whole: too long for it, cut short, their earliest error cut off
    too_long: int = 0
    truncated: int = 0
    error_cut_off: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def label_source(judge: str | None) -> str:
    for source in ("verifier", "outcome", "rollout"):  # outcome: actprm.outcome's checker; rollout: prover values
        if (judge or "").startswith(source):
            return source
    return "judge"


def read_annotations(paths: Sequence[str], counts: LabelCounts) -> dict[str, dict[str, Any]]:
    """id -> annotation row, failed ones dropped (and counted); the first of duplicate ids wins."""
    out: dict[str, dict[str, Any]] = {}
    for path in list_files(list(paths)):
        try:
            names = pq.read_schema(path).names  # per-step columns: rollout annotations (older tables lack them)
            table = pq.read_table(path, columns=["id", "first_error_step", "judge", "agreement"]
                                  + [c for c in ("step_labels", "step_progress") if c in names])
        except Exception as exc:  # noqa: BLE001 - a bad file is a user error, one line
            raise UserError(f"{path}: not an annotations table ({' '.join(str(exc).split())[:160]})") from None
        for row in table.to_pylist():
            counts.annotations += 1
            if row["first_error_step"] is None:
                counts.failed_annotations += 1
            elif row["id"] in out:
                counts.duplicate_annotations += 1
            else:
                out[row["id"]] = row
    return out


def labelled_row(traj: dict[str, Any], ann: dict[str, Any], label_weight: float | str = 1.0) -> dict[str, Any]:
    """A labelled-table row from a trajectory and its (successful) annotation: the earliest-error label,
    the per-step labels and progress of rollout annotations, the weight (a number, or "agreement")."""
    weight = (float(ann.get("agreement") if ann.get("agreement") is not None else 1.0)
              if label_weight == "agreement" else float(label_weight))
    return {"id": traj["id"], "problem": traj["problem"], "steps": traj["steps"],
            "label_first_error": int(ann["first_error_step"]), "label_source": label_source(ann.get("judge")),
            "step_labels": ann.get("step_labels"), "step_progress": ann.get("step_progress"), "label_weight": weight}


def labelled_rows(trajectories: Iterable[dict[str, Any]], annotations: dict[str, dict[str, Any]],
                  counts: LabelCounts, label_weight: float | str = 1.0) -> list[dict[str, Any]]:
    """Labelled rows of the trajectories whose (successful) annotation has a label in range."""
    rows = []
    for traj in trajectories:
        ann = annotations.get(traj["id"])
        if ann is None:
            counts.without_annotation += 1
            continue
        label = int(ann["first_error_step"])
        if not -1 <= label < len(traj["steps"]):
            counts.invalid_label += 1
            continue
        rows.append(labelled_row(traj, ann, label_weight))
    counts.labelled += len(rows)
    return rows


def labelled_rows_of(annotations: list[dict[str, Any]], rows_by_id: dict[str, dict[str, Any]],
                     label_weight: float | str = 1.0) -> list[dict[str, Any]]:
    """The labelled rows of annotation rows (failed ones skipped) whose trajectories are in `rows_by_id`."""
    labelled = {a["id"]: a for a in annotations if a["first_error_step"] is not None}
    return labelled_rows([rows_by_id[a["id"]] for a in annotations], labelled, LabelCounts(), label_weight)


def join_annotations(trajectory_paths: Sequence[str], annotation_paths: Sequence[str], counts: LabelCounts,
                     batch_rows: int = 2048, label_weight: float | str = 1.0) -> list[dict[str, Any]]:
    """Labelled rows from trajectories x annotations tables, joined by id.

    `label_weight`: every row's weight, or "agreement" for the share of the judge's votes that agree
    with the label (1.0 for one sample; `actprm judge-check` suggests a fixed weight from a judge's F1).
    """
    annotations = read_annotations(annotation_paths, counts)
    seen: set[str] = set()

    def trajectories():
        for batch in iter_batches(open_corpus(list(trajectory_paths)), batch_rows=batch_rows):
            for traj in batch.valid:
                if traj["id"] in annotations:
                    seen.add(traj["id"])
                yield traj

    rows = labelled_rows(trajectories(), annotations, counts, label_weight)
    counts.without_trajectory = len(set(annotations) - seen)
    return rows


def labelled_from_trajectories(path: str) -> list[dict[str, Any]]:
    """Labelled rows from a file of per-step-labelled trajectories (ActivePRM's hard_labels/soft_labels,
    TRL's labels): the label is its first wrong step, the soft targets its `step_labels` (kept in meta)."""
    rows, read = [], 0
    for batch in iter_batches(open_corpus([path])):
        for r in batch.valid:
            read += 1
            meta = json.loads(r["meta"]) if r.get("meta") else {}
            meta = meta if isinstance(meta, dict) else {}
            label = r["first_error_step"]
            if label is None:  # a labelled table written as JSON: its label_first_error is in meta
                label = meta.get("label_first_error")
            if label is None or isinstance(label, bool) or not isinstance(label, int):
                continue
            weight = meta.get("label_weight")
            rows.append({"id": r["id"], "problem": r["problem"], "steps": r["steps"],
                         "label_first_error": int(label), "label_source": meta.get("label_source") or "dataset",
                         "step_labels": meta.get("step_labels"),
                         "label_weight": float(weight) if isinstance(weight, (int, float)) else 1.0})
    if read and not rows:
        raise UserError(f"{path}: {read} rows and none with a label (first_error_step, label_first_error, "
                        "hard_labels or labels); is it the right file?")
    return rows


def _labelled_table(path) -> bool:
    """A Parquet labelled table (else a trajectories file with per-step labels)."""
    if not isinstance(path, Path) or path.suffix != ".parquet":
        return not isinstance(path, Path)  # a remote URI: read as a labelled table, as before
    try:
        return "label_first_error" in pq.read_schema(path).names
    except Exception:  # noqa: BLE001 - a corrupt file: the read below reports it
        return True


def read_labelled(paths: Sequence[str], counts: LabelCounts) -> list[dict[str, Any]]:
    rows = []
    for path in list_files(list(paths)):
        if not _labelled_table(path):
            rows.extend(labelled_from_trajectories(str(path)))  # e.g. ActivePRM or TRL training data
            continue
        try:
            rows.extend(pq.read_table(path).to_pylist())
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{path}: not a labelled table ({' '.join(str(exc).split())[:160]})") from None
    for row in rows:
        missing = {"id", "problem", "steps", "label_first_error"} - set(row)
        if missing:
            raise UserError(f"labelled table lacks column(s) {sorted(missing)}")
    counts.labelled = len(rows)
    return rows


def step_targets(label: int, n_steps: int, soft: Sequence[float | None] | None = None) -> list[float | None]:
    """Per-step training targets; None = not trained. Soft labels win where given."""
    if soft is not None:
        return [None if s is None else float(s) for s in soft[:n_steps]] + [None] * max(0, n_steps - len(soft))
    if label == -1:
        return [1.0] * n_steps
    return [1.0] * label + [0.0] + [None] * (n_steps - label - 1)


def load_rows(cfg: TrainConfig, counts: LabelCounts) -> list[dict[str, Any]]:
    """A training round's rows: a labelled table, trajectories x annotations, or (implicit objectives)
    the trajectories alone, whose outcome labels the trainer derives."""
    if cfg.labelled:
        return read_labelled(cfg.labelled, counts)
    if cfg.objective != "actprm" and not cfg.annotations:
        rows = [r for b in iter_batches(open_corpus(list(cfg.trajectories)), batch_rows=cfg.batch_rows)
                for r in b.valid]
        counts.labelled = len(rows)
        return rows
    return join_annotations(cfg.trajectories, cfg.annotations, counts, batch_rows=cfg.batch_rows,
                            label_weight=cfg.label_weight)
