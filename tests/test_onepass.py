"""ActPRM's one pass (actprm.onepass): the selection rate falls as the heads learn, labels are replayed from a
bounded uniform reservoir, the window's calibration weighs explored rows, and a pass stopped between batches
and restarted from its saved state ends exactly where the uninterrupted pass does."""

from __future__ import annotations

import numpy as np
import torch

from actprm.calibration import calibration_record
from actprm.config import LoopConfig
from actprm.features import HeadInputs
from actprm.metrics import processbench_scores
from actprm.model import EnsembleHeads
from actprm.onepass import (
    OnePass,
    PassSummary,
    batches_of,
    pass_settings,
    read_pass_state,
    save_pass_state,
)

torch.set_num_threads(1)
H = 8


def synthetic(n: int, seed: int, error_share: float = 0.3) -> tuple[HeadInputs, np.ndarray]:
    """Rows of 1-5 steps whose first feature says whether the step is right (+1) or wrong (-1), plus noise;
    `error_share` of the rows hold a first error at a random step."""
    rng = np.random.default_rng(seed)
    xs, offsets, truth, n_steps = [], [0], [], []
    for _ in range(n):
        k = int(rng.integers(1, 6))
        first = int(rng.integers(k)) if rng.random() < error_share else -1
        x = rng.normal(0, 0.6, (k, H))
        x[:, 0] = [(-1.0 if j >= first >= 0 else 1.0) for j in range(k)]
        x[:, 0] += rng.normal(0, 0.4, k)
        xs.append(x)
        offsets.append(offsets[-1] + k)
        truth.append(first)
        n_steps.append(k)
    ids = [f"r{seed}-{i}" for i in range(n)]
    return HeadInputs(ids, torch.tensor(np.concatenate(xs), dtype=torch.float32), np.array(offsets),
                      np.full(n, 10), np.array(n_steps), [None] * n, "synthetic"), np.array(truth)


def heads(seed: int = 0) -> EnsembleHeads:
    return EnsembleHeads(H, 4, 16, generator=torch.Generator().manual_seed(seed))


def run_pass(learner: OnePass, pool: HeadInputs, truth: np.ndarray, batch: int, start: int = 0,
             stop: int | None = None) -> None:
    n_batches = batches_of(len(pool), batch)
    for b in range(start, n_batches if stop is None else stop):
        idx = np.arange(b * batch, min(len(pool), (b + 1) * batch))
        learner.step(pool.rows(idx), lambda pos, idx=idx: [int(truth[idx[p]]) for p in pos])


@torch.no_grad()
def f1(learner: OnePass, ev: HeadInputs, truth: np.ndarray) -> float:
    from actprm.calibration import rule_constants
    from actprm.curves import row_stats

    st = row_stats(learner.probs(ev.x), ev.offsets, threshold=rule_constants(learner.heads.calibration)[0])
    return processbench_scores(truth, st["pred_first_error"])["f1"]


def settings(n_batches: int, **kw):
    return pass_settings(LoopConfig(**kw), n_batches)


def test_the_selection_rate_falls_as_the_heads_learn():
    pool, truth = synthetic(1600, 0)
    ev, e_truth = synthetic(300, 1)
    learner = OnePass(heads(), settings(batches_of(len(pool), 32)))
    before = f1(learner, ev, e_truth)
    run_pass(learner, pool, truth, 32)
    summary = PassSummary.of(learner.records)
    assert summary.rows == 1600 and summary.labelled == sum(r.labelled for r in learner.records)
    assert learner.records[0].labelled == 32  # the warm-up: no calibration yet, every row labelled
    assert summary.last_tenth_rate < 0.5 * summary.first_tenth_rate
    assert summary.labelled < 0.7 * len(pool)
    assert f1(learner, ev, e_truth) > max(0.85, before + 0.2)
    assert learner.heads.calibration is not None and "window_rows" in learner.heads.calibration
    # the schedule ran to its end: the last step's learning rate is (about) 0
    assert learner.records[-1].lr < 0.05 * learner.s.head_lr


def test_full_labels_every_row_and_random_takes_the_count_it_is_given():
    pool, truth = synthetic(320, 2)
    full = OnePass(heads(), settings(10, strategy="full"))
    run_pass(full, pool, truth, 32)
    assert [r.labelled for r in full.records] == [32] * 10
    rnd = OnePass(heads(), settings(10, strategy="random"))
    counts = [0, 3, 32, 7, 1, 0, 5, 5, 9, 2]
    for b, c in enumerate(counts):
        idx = np.arange(b * 32, (b + 1) * 32)
        rnd.step(pool.rows(idx), lambda pos, idx=idx: [int(truth[idx[p]]) for p in pos], count=c)
    assert [r.labelled for r in rnd.records] == counts


def test_replay_is_a_bounded_uniform_reservoir():
    pool, truth = synthetic(2000, 3)
    learner = OnePass(heads(), settings(63, strategy="full", replay=100))
    run_pass(learner, pool, truth, 32)
    assert learner.seen == 2000 and len(learner.reservoir) == 100
    # a uniform sample of all 2,000 labels: about as many from the first half of the pass as from the second
    row_of = {tuple(pool.x[pool.offsets[i]].tolist()): i for i in range(len(pool))}
    where = [row_of[tuple(lab.x[0].tolist())] for lab in learner.reservoir]
    early = sum(w < 1000 for w in where)
    assert 30 <= early <= 70


def test_explored_rows_weigh_the_inverse_of_their_chance_in_the_calibration():
    # two rows standing for many: weight 9 on a confidently right row moves the Platt fit toward it
    probs = [np.full((2, 4), 0.6), np.full((2, 4), 0.95)]
    targets = [[1.0, 0.0], [1.0, 1.0]]
    plain = calibration_record(probs, targets, [1, -1])
    weighted = calibration_record(probs, targets, [1, -1], weights=[1.0, 9.0])
    assert weighted["scale"] != plain["scale"] or weighted["shift"] != plain["shift"]
    assert calibration_record(probs, targets, [1, -1], weights=[1.0, 1.0]) == plain


def test_a_pass_stopped_between_batches_goes_on_exactly_where_it_was(tmp_path):
    pool, truth = synthetic(640, 4)
    whole = OnePass(heads(), settings(20))
    run_pass(whole, pool, truth, 32)

    first = OnePass(heads(), settings(20))
    run_pass(first, pool, truth, 32, stop=9)
    save_pass_state(tmp_path, first)
    moments = {k: v.clone() for k, v in first.holder.state_dict().items()}
    from actprm.checkpoint import optimizer_state_dict

    opt = optimizer_state_dict(first.holder, first.optimizer)
    second_heads = heads()
    second_heads.load_state_dict({k.removeprefix("heads."): v for k, v in moments.items()})
    second_heads.calibration = first.heads.calibration
    second = OnePass(second_heads, settings(20), anchor=first.anchor, optimizer_state=opt)
    second.load_state_dict(*read_pass_state(tmp_path))
    run_pass(second, pool, truth, 32, start=9)
    assert [r.labelled for r in second.records] == [r.labelled for r in whole.records]
    for a, b in zip(whole.heads.parameters(), second.heads.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert second.heads.calibration == whole.heads.calibration
