"""Learning-curve helpers: labels to reach an F1, the savings ratio, flat per-row selection statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from actprm import uncertainty
from actprm.curves import labels_to_reach, mean_interval, row_stats, savings_ratio


def test_labels_to_reach_interpolates_at_the_first_crossing():
    labels = [100, 200, 400, 800]
    f1 = [0.2, 0.6, 0.8, 0.9]
    assert labels_to_reach(labels, f1, 0.7) == pytest.approx(300.0)  # halfway between 200 and 400
    assert labels_to_reach(labels, f1, 0.1) == 100.0  # the first budget already reaches it
    assert labels_to_reach(labels, f1, 0.9) == 800.0
    assert labels_to_reach(labels, f1, 0.95) is None
    # unsorted input, and a curve that dips after crossing: the first crossing counts
    assert labels_to_reach([400, 100, 200], [0.5, 0.0, 0.6], 0.3) == pytest.approx(150.0)


def test_savings_ratio_on_hand_made_curves():
    random = ([100, 200, 400, 800, 1600], [0.1, 0.3, 0.5, 0.7, 0.9])
    twice = ([100, 200, 400, 800, 1600], [0.3, 0.5, 0.7, 0.9, 0.92])  # the same curve at half the labels
    assert savings_ratio(random, twice, 0.7) == pytest.approx(2.0)
    assert savings_ratio(random, twice, 0.9) == pytest.approx(2.0)
    assert savings_ratio(random, random, 0.6) == pytest.approx(1.0)
    assert savings_ratio(twice, random, 0.7) == pytest.approx(0.5)  # worse than random: below 1
    assert savings_ratio(random, twice, 0.91) is None  # random never gets there


def test_mean_interval():
    m, h = mean_interval([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    assert math.isnan(mean_interval([1.0])[1])


def test_row_stats_match_the_per_row_functions():
    rng = np.random.default_rng(0)
    rows = [rng.uniform(0, 1, (n, 8)) ** rng.uniform(0.02, 1.5) for n in rng.integers(1, 9, 200)]
    rows[0] = np.full((3, 8), 0.99) + rng.normal(0, 0.001, (3, 8))  # a certain row
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    got = row_stats(np.concatenate(rows), offsets, delta_pred=0.9, delta_std=0.01)
    ids = [str(i) for i in range(len(rows))]
    for name in ("entropy", "bald"):
        want = uncertainty.summarize(rows, ids, delta_pred=0.9, delta_std=0.01, acquisition=name)
        np.testing.assert_allclose(got[name], want["acquisition"], rtol=1e-5, atol=1e-6)
    assert np.array_equal(got["uncertain"], want["uncertain"]) and not got["uncertain"][0]
    assert np.array_equal(got["pred_first_error"], want["pred_first_error"])
    assert got["uncertain"].sum() > 100
