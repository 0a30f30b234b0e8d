"""The arithmetic world: word problems whose every step can be checked exactly.

A problem is a chain of operations on one quantity ("Mia has 17 apples. She buys 6
more. She gives away 4. ... How many apples does Mia have now?"); a solution writes
one step per operation, each as ``a op b = c`` with plain integers, carrying the
running value from the step before:

    17 + 6 = 23, so Mia has 23 apples.
    23 - 4 = 19, so the answer is 19.

Correct values stay in ``[0, max_value]`` (two-digit operands by default). A policy
makes mistakes with a per-step hazard that depends on the operation's difficulty and
grows towards the end of the solution; the first mistake is one of three kinds:

* ``wrong_result``    - ``c`` is not ``a op b``;
* ``wrong_carry``     - ``a`` is not the value the previous step produced (or the start);
* ``wrong_operation`` - ``op`` is not the problem's operation (``c`` is right for the wrong op).

After a mistake the solution goes on correctly from the wrong value, as policies do,
so ``first_error_step`` is the index of that step and the final answer is wrong.

Unfamiliar phrasings (``novel_share``, off by default): a share of the problems states its
additions and subtractions with verbs the shipped backbone never read (:data:`NOVEL_ADD`,
:data:`NOVEL_SUB`), so the LM cannot tell from the text which operation a step should apply;
``novel_error_kinds`` sets the kinds of mistake on those problems (a policy confusing an
unfamiliar verb writes the wrong operation). ``configs/worlds/arith-hard.yaml`` uses them.
Every parameter is in :class:`ArithWorld` (``configs/worlds/arith.yaml`` documents
each one). Row ``i`` depends only on (seed, split, i): any sharding gives the same rows.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from actprm.config import read_yaml
from actprm.errors import UserError

WORLD_VERSION = "v1"
OpKind = Literal["add1", "add2", "sub1", "sub2", "mul"]
ErrorKind = Literal["wrong_result", "wrong_carry", "wrong_operation"]

#: operand range of each operation kind (inclusive) and its symbol
OPERATIONS: dict[str, tuple[str, int, int]] = {
    "add1": ("+", 1, 9),
    "add2": ("+", 10, 99),
    "sub1": ("-", 1, 9),
    "sub2": ("-", 10, 99),
    "mul": ("×", 2, 9),
}
SYMBOL_OP = {"+": "add", "-": "sub", "×": "mul", "*": "mul"}
#: split -> id prefix. train: natural error rates (the unlabelled pool); eval: held out, a share
#: `eval_error_share` with an error (like ProcessBench); lm: correct solutions only (backbone pretraining)
SPLITS = {"train": "arith", "eval": "arith-eval", "lm": "arith-lm"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Level(_Strict):
    """One difficulty level: how often it occurs, how long its solutions are, which operations."""

    weight: float = Field(gt=0)
    min_steps: int = Field(ge=1)
    max_steps: int = Field(ge=1)
    ops: dict[OpKind, float]

    @model_validator(mode="after")
    def _check(self) -> Level:
        if self.max_steps < self.min_steps:
            raise ValueError("max_steps < min_steps")
        if not self.ops or any(w < 0 for w in self.ops.values()) or sum(self.ops.values()) <= 0:
            raise ValueError("ops needs positive weights")
        return self


class ArithWorld(_Strict):
    """Parameters of the arithmetic world (defaults = configs/worlds/arith.yaml)."""

    max_value: int = Field(99, ge=9)
    max_wrong_value: int = Field(999, ge=99)
    levels: dict[str, Level] = Field(default_factory=lambda: {
        "easy": Level(weight=0.5, min_steps=2, max_steps=4,
                      ops={"add1": 0.35, "sub1": 0.35, "add2": 0.15, "sub2": 0.15}),
        "medium": Level(weight=0.35, min_steps=3, max_steps=7,
                        ops={"add1": 0.2, "sub1": 0.2, "add2": 0.2, "sub2": 0.2, "mul": 0.2}),
        "hard": Level(weight=0.15, min_steps=6, max_steps=12,
                      ops={"add1": 0.1, "sub1": 0.1, "add2": 0.25, "sub2": 0.25, "mul": 0.3}),
    })
    step_error_rate: dict[OpKind, float] = Field(default_factory=lambda: {
        "add1": 0.04, "sub1": 0.05, "add2": 0.08, "sub2": 0.10, "mul": 0.12})
    late_error_factor: float = Field(1.0, ge=0)
    error_kinds: dict[ErrorKind, float] = Field(default_factory=lambda: {
        "wrong_result": 0.5, "wrong_carry": 0.25, "wrong_operation": 0.25})
    result_deltas: dict[int, float] = Field(default_factory=lambda: {1: 0.4, 2: 0.2, 3: 0.1, 10: 0.3})
    eval_error_share: float = Field(0.5, ge=0, le=1)
    novel_share: float = Field(0.0, ge=0, le=1)
    novel_error_kinds: dict[ErrorKind, float] | None = None

    @model_validator(mode="after")
    def _check(self) -> ArithWorld:
        for name, rate in self.step_error_rate.items():
            if not 0 <= rate < 1:
                raise ValueError(f"step_error_rate.{name} must be in [0, 1)")
        for lv in self.levels.values():
            missing = set(lv.ops) - set(self.step_error_rate)
            if missing:
                raise ValueError(f"step_error_rate lacks {sorted(missing)}")
        if not self.error_kinds or sum(self.error_kinds.values()) <= 0:
            raise ValueError("error_kinds needs positive weights")
        if not self.result_deltas or any(d <= 0 for d in self.result_deltas):
            raise ValueError("result_deltas: positive magnitudes (the sign is drawn)")
        if self.novel_error_kinds is not None and sum(self.novel_error_kinds.values()) <= 0:
            raise ValueError("novel_error_kinds needs positive weights")
        return self

    def fingerprint(self) -> str:
        """8 hex digits identifying these parameters (written into every row's `source`)."""
        data = self.model_dump(mode="json")
        for name in _LATER_FIELDS:  # options added later leave the fingerprints of worlds without them as they were
            if data[name] == type(self).model_fields[name].default:
                del data[name]
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]

    def source(self) -> str:
        return f"world/arith-{WORLD_VERSION}/{self.fingerprint()}"


#: fields added after v1: left out of the fingerprint at their defaults
_LATER_FIELDS = ("novel_share", "novel_error_kinds")

# --------------------------------------------------------------------------- text

NAMES = ("Mia", "Leo", "Ava", "Sam", "Zoe", "Max", "Ivy", "Ben", "Amy", "Tom", "Eva", "Dan")
SUBJECT = {"Mia": "She", "Leo": "He", "Ava": "She", "Sam": "He", "Zoe": "She", "Max": "He", "Ivy": "She",
           "Ben": "He", "Amy": "She", "Tom": "He", "Eva": "She", "Dan": "He"}
ITEMS = ("apples", "marbles", "stickers", "coins", "books", "pencils", "cards", "shells", "stamps", "cookies")
ADD_SENTENCES = ("{S} buys {b} more.", "{S} finds {b} more.", "{S} gets {b} more.")
SUB_SENTENCES = ("{S} gives away {b}.", "{S} loses {b}.", "{S} sells {b}.")
MUL_SENTENCES = ("{S} ends up with {b} times as many.", "The number of {item} is multiplied by {b}.")
#: phrasings of the `novel_share` problems: verbs the default world never uses ("trades" both ways)
NOVEL_ADD = ("{S} trades for {b} extra.", "{S} is handed {b} extra.", "{S} wins {b} in a raffle.")
NOVEL_SUB = ("{S} trades off {b}.", "{S} hands over {b}.", "{S} spends {b} in a raffle.")


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "add" else a - b if op == "sub" else a * b


SYMBOL = {"add": "+", "sub": "-", "mul": "×"}


@dataclass
class Trajectory:
    problem: str
    steps: list[str]
    first_error_step: int
    answer: int
    reference: int
    level: str
    ops: list[str]
    error_kind: str | None
    novel: bool = False

    def row(self, rid: str, source: str) -> dict[str, Any]:
        meta = {"level": self.level, "ops": self.ops, "error_kind": self.error_kind}
        if self.novel:
            meta["novel"] = True
        return {
            "id": rid,
            "problem": self.problem,
            "steps": self.steps,
            "first_error_step": self.first_error_step,
            "final_answer_correct": self.answer == self.reference,
            "reference_answer": str(self.reference),
            "source": source,
            "meta": json.dumps(meta, separators=(",", ":")),
        }


def _pick(rng: random.Random, weights: dict[Any, float]) -> Any:
    keys = list(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


class Generator:
    """Draws trajectories of one :class:`ArithWorld`; pure Python, deterministic per (seed, split, index)."""

    def __init__(self, world: ArithWorld | None = None, seed: int = 0):
        self.world = world or ArithWorld()
        self.seed = int(seed)
        w = self.world
        self._levels = list(w.levels)
        self._level_w = [w.levels[k].weight for k in self._levels]
        self._kinds = list(w.error_kinds)
        self._kind_w = [w.error_kinds[k] for k in self._kinds]
        novel = w.novel_error_kinds or w.error_kinds
        self._novel_kinds = list(novel)
        self._novel_kind_w = [novel[k] for k in self._novel_kinds]
        self._deltas = list(w.result_deltas)
        self._delta_w = [w.result_deltas[k] for k in self._deltas]

    # ---- one trajectory
    def _plan(self, rng: random.Random) -> tuple[str, int, list[tuple[str, str, int]]]:
        """(level, start value, [(kind, op, operand)]) with every true value in [1, max_value]."""
        w = self.world
        level_name = rng.choices(self._levels, weights=self._level_w)[0]
        level = w.levels[level_name]
        n = rng.randint(level.min_steps, level.max_steps)
        start = value = rng.randint(1, w.max_value)
        plan = []
        for _ in range(n):
            options = {}
            for kind, weight in level.ops.items():
                sym, lo, hi = OPERATIONS[kind]
                op = SYMBOL_OP[sym]
                if op == "add":
                    hi = min(hi, w.max_value - value)
                elif op == "sub":
                    hi = min(hi, value - 1)  # values stay >= 1: a zero would hide later mistakes
                else:
                    hi = min(hi, w.max_value // value)
                if hi >= lo and weight > 0:
                    options[kind] = (op, lo, hi, weight)
            if not options:  # e.g. 99 with only additions: fall back to a one-digit subtraction
                options["sub1"] = ("sub", 1, min(9, value - 1), 1.0)
            kind = rng.choices(list(options), weights=[o[3] for o in options.values()])[0]
            op, lo, hi, _ = options[kind]
            b = rng.randint(lo, hi)
            plan.append((kind, op, b))
            value = _apply(op, value, b)
        return level_name, start, plan

    def _error_at(self, rng: random.Random, plan: list[tuple[str, str, int]]) -> int:
        """Index of the first mistake drawn from the per-step hazard, -1 for none."""
        n = len(plan)
        rates = self.world.step_error_rate
        late = self.world.late_error_factor
        for i, (kind, _, _) in enumerate(plan):
            pos = i / (n - 1) if n > 1 else 0.0
            if rng.random() < min(0.99, rates[kind] * (1.0 + late * pos)):
                return i
        return -1

    def _continuation_ok(self, value: int, plan: list[tuple[str, str, int]], start: int) -> bool:
        top = self.world.max_wrong_value
        for _, op, b in plan[start:]:
            value = _apply(op, value, b)
            if not 0 <= value <= top:
                return False
        return True

    def _mistake(self, rng: random.Random, a_true: int, plan, i: int, novel: bool = False
                 ) -> tuple[str, int, str, int, int] | None:
        """(kind, a, op, b, c) of a wrong step i whose continuation stays in [0, max_wrong_value].

        The kind is drawn from ``error_kinds``; when no mistake of that kind keeps the
        continuation in range, a wrong result is tried; None when neither can (a run of
        multiplications ahead), and the caller moves the mistake one step later.
        """
        _, op, b = plan[i]
        top = self.world.max_wrong_value
        if novel:
            kind = rng.choices(self._novel_kinds, weights=self._novel_kind_w)[0]
        else:
            kind = rng.choices(self._kinds, weights=self._kind_w)[0]
        for attempt_kind in (kind, "wrong_result"):
            candidates = []
            if attempt_kind == "wrong_result":
                c_true = _apply(op, a_true, b)
                for d in self._deltas:
                    for c in (c_true + d, c_true - d):
                        if 0 <= c <= top:
                            candidates.append(((a_true, op, c), self.world.result_deltas[d]))
            elif attempt_kind == "wrong_carry":
                for d in self._deltas:
                    for a in (a_true + d, a_true - d):
                        c = _apply(op, a, b)
                        if 0 <= a <= top and 0 <= c <= top:
                            candidates.append(((a, op, c), self.world.result_deltas[d]))
            else:
                for other in ("add", "sub", "mul"):
                    if other == op or (other == "mul" and b > 9):
                        continue
                    c = _apply(other, a_true, b)
                    if 0 <= c <= top and c != _apply(op, a_true, b):
                        candidates.append(((a_true, other, c), 1.0))
            candidates = [(x, wt) for x, wt in candidates if self._continuation_ok(x[2], plan, i + 1)]
            if candidates:
                (a, op_used, c) = rng.choices([x for x, _ in candidates], weights=[wt for _, wt in candidates])[0]
                return attempt_kind, a, op_used, b, c
        return None

    def trajectory(self, rng: random.Random, force_error: bool | None = None) -> Trajectory:
        """One trajectory; ``force_error`` redraws until it has (True) or lacks (False) a mistake."""
        while True:
            level, start, plan = self._plan(rng)
            err = self._error_at(rng, plan)
            if force_error is None or force_error == (err >= 0):
                break
        return self._render(rng, level, start, plan, err)

    def _render(self, rng: random.Random, level: str, start: int, plan, err: int) -> Trajectory:
        name = rng.choice(NAMES)
        subj = SUBJECT[name]
        item = rng.choice(ITEMS)
        # drawn only when the option is on: worlds without it consume the same random numbers as before
        novel = self.world.novel_share > 0 and rng.random() < self.world.novel_share
        add_pool, sub_pool = (NOVEL_ADD, NOVEL_SUB) if novel else (ADD_SENTENCES, SUB_SENTENCES)
        sentences = [f"{name} has {start} {item}."]
        for _, op, b in plan:
            pool = add_pool if op == "add" else sub_pool if op == "sub" else MUL_SENTENCES
            sentences.append(rng.choice(pool).format(S=subj, b=b, item=item))
        sentences.append(f"How many {item} does {name} have now?")
        steps: list[str] = []
        true_value = value = start
        kind = None
        for i, (_, op, b) in enumerate(plan):
            mistake = self._mistake(rng, value, plan, i, novel) if i == err else None
            if i == err and mistake is None:
                err += 1  # the last step always admits a wrong result, so err stays < n
            if mistake is not None:
                kind, a, op_used, b, c = mistake
            else:
                a, op_used, c = value, op, _apply(op, value, b)
            tail = "so the answer is" if i == len(plan) - 1 else f"so {name} has"
            end = f" {c}." if i == len(plan) - 1 else f" {c} {item}."
            steps.append(f"{a} {SYMBOL[op_used]} {b} = {c}, {tail}{end}")
            value = c
            true_value = _apply(op, true_value, b)
        return Trajectory(" ".join(sentences), steps, err, value, true_value, level,
                          [k for k, _, _ in plan], kind, novel)

    # ---- rows
    def _rng(self, split: str, index: int) -> random.Random:
        return random.Random(f"arith/{WORLD_VERSION}/{split}/{self.seed}/{index}")

    def row(self, index: int, split: str = "train") -> dict[str, Any]:
        """Row ``index`` of a split (:data:`SPLITS`); each split is its own random stream."""
        rng = self._rng(split, index)
        if split == "train":
            force = None
        elif split == "eval":
            force = rng.random() < self.world.eval_error_share
        elif split == "lm":
            force = False
        else:
            raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
        traj = self.trajectory(rng, force)
        return traj.row(f"{SPLITS[split]}-s{self.seed}-{index:09d}", self.world.source())

    def rows(self, start: int, stop: int, split: str = "train") -> Iterator[dict[str, Any]]:
        for i in range(start, stop):
            yield self.row(i, split)


def load_world(path: str | None) -> ArithWorld:
    """The world's parameters: built-in defaults, or a YAML (configs/worlds/arith.yaml)."""
    if not path:
        return ArithWorld()
    try:
        return ArithWorld.model_validate(read_yaml(path))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "world"
        raise UserError(f"{path}: {where}: {first['msg']}") from None
