"""PRMBench (Song et al. 2025), scored as its official scorer scores it: pure Python.

**The data**: one row per solution with an injected error of one of eight classes; `error_steps` are
1-based indices into `modified_process`. Each `redundency` row's original solution is also scored
once, as a sample of class ``correct`` (its id ``correct_<idx>``); every other sample's id is
``<classification>_<idx>``.

**A PRM's step labels** are validity labels: step *i* is valid when its score is *strictly above*
the threshold. Only the scored steps carry labels (a truncated trajectory has fewer); an error step
past the last label is never counted, as in the official scorer.

**The figures**, per class and overall (overall leaves the ``correct`` samples out), from counts
summed over samples: a correct step labelled valid is a TP, labelled invalid an FN; an error step
labelled invalid a TN, labelled valid an FP. ``f1`` is the positive F1 (precision TP/(TP+FP), recall
TP/(TP+FN)), ``negative_f1`` the negative one (TN/(TN+FN), TN/(TN+FP)); **PRMScore** = 0.5 · f1 +
0.5 · negative_f1. Step accuracies are means over steps, ``first_error_acc`` over samples whose first
error step was labelled, ``similarity`` the mean |share of valid labels − that share on the item's
``correct`` sample|. Where a ratio has no denominator the figure is -1, and F1 is computed from
such parts with the same formula, as the official scorer does (so compare only figures ≠ -1).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from actprm.schemas import RowError

#: The error classes, in the paper's order within its groups (the data's spelling, `redundency`).
CLASSES = ("redundency", "circular", "counterfactual", "step_contradiction", "domain_inconsistency",
           "confidence", "missing_condition", "deception")
CORRECT = "correct"
#: The class whose rows also give the original solution as a `correct` sample.
CORRECT_FROM = "redundency"
#: The paper's groups of classes (multi_solutions, in the paper's sensitivity group, is not in this data).
GROUPS = {"simplicity": ("redundency", "circular"),
          "soundness": ("counterfactual", "step_contradiction", "domain_inconsistency", "confidence"),
          "sensitivity": ("missing_condition", "deception")}
UNDEFINED = -1.0


def sample_id(classification: str, idx: str) -> str:
    return f"{classification}_{idx}"


def error_steps_of(record: dict[str, Any], n_steps: int) -> list[int]:
    """The row's 1-based error steps, checked: a list of integers ≥ 1, at least one within the steps.

    An index past the last step is kept (the data has such rows; the official scorer ignores them), but a row
    none of whose indices is within its steps has no error to find and is refused (RowError)."""
    if "error_steps" not in record or record["error_steps"] is None:
        raise RowError("missing label", "error_steps is null or absent")
    steps = record["error_steps"]
    if not isinstance(steps, (list, tuple)):
        raise RowError("wrong type", f"error_steps must be a list of integers, got {type(steps).__name__}")
    if not steps:
        raise RowError("bad label", "error_steps is empty: a PRMBench row names the steps its error is in")
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, int):
            raise RowError("wrong type", f"error_steps must be integers, got {s!r}")
        if s < 1:
            raise RowError("bad label", f"error step {s} is out of range: error_steps are 1-based")
    if min(steps) > n_steps:
        raise RowError("bad label", f"error steps {list(steps)} are all past the last of the {n_steps} steps")
    return [int(s) for s in steps]


def check_classification(value: Any) -> str:
    if not isinstance(value, str):
        raise RowError("wrong type", f"classification must be a string, got {type(value).__name__}")
    if value not in CLASSES:
        raise RowError("bad label", f"unknown PRMBench class {value!r}; the classes are {', '.join(CLASSES)}")
    return value


def step_validity(step_mean: Sequence[float], threshold: float) -> list[bool]:
    """Validity labels of the scored steps: score > threshold (strictly), in float64."""
    return [float(m) > threshold for m in step_mean]


# --------------------------------------------------------------------------- counting


@dataclass
class Tally:
    """One sample's counts (``confusion``: tp, fp, tn, fn) and hits (1 right, 0 wrong) on its correct steps,
    its error steps and its first error step (none when that step was not labelled) — or many summed."""

    confusion: Counter = field(default_factory=Counter)
    steps: dict[str, list[int]] = field(default_factory=lambda: {"correct": [], "wrong": []})
    first_error: list[int] = field(default_factory=list)
    similarity: list[float] = field(default_factory=list)
    n: int = 0

    def add(self, other: Tally) -> None:
        self.confusion.update(other.confusion)
        for kind, hits in other.steps.items():
            self.steps[kind] += hits
        self.first_error += other.first_error
        self.similarity += other.similarity
        self.n += other.n

    def figures(self) -> dict[str, Any]:
        tp, fp, tn, fn = (self.confusion[k] for k in ("tp", "fp", "tn", "fn"))
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        neg_precision, neg_recall = _ratio(tn, tn + fn), _ratio(tn, tn + fp)
        f1, neg_f1 = _f1(precision, recall), _f1(neg_precision, neg_recall)
        return {"prmscore": 0.5 * f1 + 0.5 * neg_f1, "f1": f1, "negative_f1": neg_f1,
                "precision": precision, "recall": recall,
                "negative_precision": neg_precision, "negative_recall": neg_recall,
                "correct_step_acc": _mean(self.steps["correct"]), "wrong_step_acc": _mean(self.steps["wrong"]),
                "total_step_acc": _mean(self.steps["correct"] + self.steps["wrong"]),
                "first_error_acc": _mean(self.first_error), "similarity": _mean(self.similarity),
                "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": self.n}


def tally(error_steps: Iterable[int], valid: Sequence[bool]) -> Tally:
    """Score one sample's validity labels against its 1-based error steps."""
    wrong = {s - 1 for s in error_steps}
    first = min(wrong) if wrong else None
    t = Tally(n=1)
    for i, ok in enumerate(valid):
        if i in wrong:  # an error step: right when labelled invalid
            right = not ok
            t.steps["wrong"].append(int(right))
            t.confusion["tn" if right else "fp"] += 1
        else:
            right = bool(ok)
            t.steps["correct"].append(int(right))
            t.confusion["tp" if right else "fn"] += 1
        if i == first:
            t.first_error.append(int(right))
    return t


def valid_share(valid: Sequence[bool]) -> float:
    """The share of steps labelled valid (the official `model_response_acc`), -1 with no label."""
    return sum(bool(v) for v in valid) / len(valid) if valid else UNDEFINED


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else UNDEFINED


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if (p + r) != 0 else UNDEFINED


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else UNDEFINED


def _item(row: dict[str, Any]) -> str:
    return row["id"][len(row["classification"]) + 1:]


def prmbench_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Every PRMBench figure from prediction rows (dicts with id, classification, error_steps, step_valid).

    Per class (``correct`` included) and overall (``correct`` left out), plus the paper's group averages of
    the per-class PRMScore. A repeated id keeps its first row. (The official scorer's ``validitiy_rate``, the
    share of samples a judge model answered in its format, has no meaning for a PRM and is not reported.)"""
    seen: set[str] = set()
    unique = []
    for r in rows:
        if r["id"] not in seen:
            seen.add(r["id"])
            unique.append(r)
    correct = [r for r in unique if r["classification"] == CORRECT]
    others = [r for r in unique if r["classification"] != CORRECT]
    order = [c for c in (*CLASSES, CORRECT) if any(r["classification"] == c for r in unique)]
    per = {c: Tally() for c in order}
    total = Tally()
    share_correct = {_item(r): valid_share(r["step_valid"]) for r in correct}
    for r in correct:
        per[CORRECT].add(tally(r["error_steps"], r["step_valid"]))
    for r in others:
        t = tally(r["error_steps"], r["step_valid"])
        base, share = share_correct.get(_item(r)), valid_share(r["step_valid"])
        if base is not None and base != 0 and share != UNDEFINED:  # the official scorer's truthiness
            t.similarity.append(abs(share - base))
        per[r["classification"]].add(t)
        total.add(t)
    out = total.figures()
    out["classes"] = {c: per[c].figures() for c in order}
    out["groups"] = {g: _mean([out["classes"][c]["prmscore"] for c in members if c in out["classes"]])
                     for g, members in GROUPS.items()}
    return out


def prmbench_table(m: dict[str, Any]) -> str:
    """Class, n, PRMScore, F1, negative F1, first-error accuracy in percent (-1: undefined), and overall."""
    def pct(x: float) -> str:
        return "-" if x == UNDEFINED else f"{100 * x:.1f}"

    rows = [("class", "n", "PRMScore", "F1", "neg_F1", "first_err")]
    rows += [(c, str(v["n"]), pct(v["prmscore"]), pct(v["f1"]), pct(v["negative_f1"]), pct(v["first_error_acc"]))
             for c, v in m["classes"].items()]
    rows.append(("overall", str(m["n"]), pct(m["prmscore"]), pct(m["f1"]), pct(m["negative_f1"]),
                 pct(m["first_error_acc"])))
    widths = [max(len(r[0]) for r in rows), 6, 8, 6, 6, 9]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)
