"""Tests for actprm.uncertainty: expected values are computed by hand in each test."""
import hashlib
import math

import numpy as np
import pytest

from actprm import uncertainty as U

LN2 = math.log(2.0)


def H(p):  # binary entropy in nats, written out independently of the module
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


def rows(*steps):
    """Build an (n_steps, K) array from per-step lists of head probabilities."""
    return np.array(steps, dtype=np.float64)


# ----------------------------------------------------------------------------- stats
def test_step_stats_unbiased_std_3_steps_4_heads():
    probs = rows(
        [0.9, 0.9, 1.0, 1.0],  # mean 0.95, devs +-0.05: sum sq 0.01 -> var 0.01/3
        [0.2, 0.4, 0.6, 0.8],  # mean 0.5, devs +-0.3, +-0.1: sum sq 0.2 -> var 0.2/3
        [0.1, 0.1, 0.1, 0.1],  # mean 0.1, std 0
    )
    mean, std = U.step_stats(probs)
    np.testing.assert_allclose(mean, [0.95, 0.5, 0.1], atol=1e-12)
    np.testing.assert_allclose(std, [math.sqrt(0.01 / 3), math.sqrt(0.2 / 3), 0.0], atol=1e-12)
    assert std[0] == pytest.approx(0.0577350269, abs=1e-9)  # ddof=0 would give 0.05
    assert mean.dtype == np.float64 and std.dtype == np.float64


def test_step_stats_single_head_std_is_zero():
    mean, std = U.step_stats(rows([0.3], [0.8]))
    np.testing.assert_allclose(mean, [0.3, 0.8])
    np.testing.assert_array_equal(std, [0.0, 0.0])


def test_step_stats_rejects_bad_shapes():
    with pytest.raises(ValueError):
        U.step_stats(np.array([0.1, 0.2]))
    with pytest.raises(ValueError):
        U.step_stats(np.zeros((3, 0)))


def test_predicted_first_error():
    assert U.predicted_first_error(np.array([0.95, 0.5, 0.1, 0.2])) == 2  # 0.5 is not < 0.5
    assert U.predicted_first_error(np.array([0.4, 0.9])) == 0
    assert U.predicted_first_error(np.array([0.9, 0.7])) == -1
    assert U.predicted_first_error(np.array([])) == -1
    assert U.predicted_first_error(np.array([0.9, 0.7]), threshold=0.8) == 1


# ----------------------------------------------------------------------------- ActPRM rule
def uncertain(probs, **kw):
    """The rule at the paper's deltas (0.95 / 0.005) unless others are given."""
    mean, std = U.step_stats(probs)
    kw = {"delta_pred": U.PAPER_DELTA_PRED, "delta_std": U.PAPER_DELTA_STD} | kw
    return U.is_uncertain(mean, std, **kw)


def test_rule_a_confidently_correct_tiny_spread_is_certain():
    probs = rows(
        [0.99, 0.99, 0.99, 0.99],
        [0.980, 0.982, 0.984, 0.986],  # mean 0.983, var 2e-5/3 -> std 0.00258 <= 0.005
        [1.0, 1.0, 1.0, 1.0],
    )
    assert not uncertain(probs)


def test_rule_b_aleatoric_step_before_first_error_is_uncertain():
    probs = rows([0.99] * 4, [0.6] * 4, [0.99] * 4, [0.02] * 4)  # E = 3; step 1 mean 0.6
    assert uncertain(probs)


def test_rule_c_epistemic_disagreement_at_confident_mean_is_uncertain():
    # mean 0.975 >= 0.95, devs -0.075, +0.025 x3: sum sq 0.0075 -> var 0.0025 -> std 0.05
    probs = rows([0.99] * 4, [0.9, 1.0, 1.0, 1.0])
    mean, std = U.step_stats(probs)
    assert mean[1] == pytest.approx(0.975) and std[1] == pytest.approx(0.05)
    assert uncertain(probs)


def test_rule_d_uncertain_step_after_first_error_is_ignored():
    garbage = [0.6, 0.1, 0.9, 0.3]
    assert not uncertain(rows([0.99] * 4, [0.02] * 4, garbage))  # E = 1
    assert uncertain(rows([0.99] * 4, [0.99] * 4, garbage))  # no early error: counted


def test_rule_e_confidently_wrong_first_step_is_certain():
    # mean 0.01, devs -0.002, 0, 0, +0.002: var 8e-6/3 -> std 0.00163
    probs = rows([0.008, 0.010, 0.010, 0.012], [0.5, 0.9, 0.1, 0.7], [0.2, 0.8, 0.5, 0.5])
    assert U.predicted_first_error(U.step_stats(probs)[0]) == 0
    assert not uncertain(probs)


def test_rule_f_boundaries_are_inclusive():
    assert U.certain_steps(np.array([0.95]), np.array([0.005]), 0.95, 0.005).tolist() == [True]
    low = 1 - 0.95
    assert U.certain_steps(np.array([low]), np.array([0.005]), 0.95, 0.005).tolist() == [True]
    got = U.certain_steps(np.array([0.9499, 0.95, 0.06]), np.array([0.0, 0.0051, 0.0]), 0.95, 0.005)
    assert got.tolist() == [False, False, False]
    assert not U.is_uncertain(np.array([0.95]), np.array([0.005]), 0.95, 0.005)


def test_rule_defaults_and_custom_deltas():
    probs = rows([0.92] * 4)  # mean 0.92: uncertain at the paper's 0.95, certain at 0.9
    assert uncertain(probs)
    assert not uncertain(probs, delta_pred=0.9, delta_std=0.01)
    # the defaults (0.8 / 0.05) allow for a noisy judge: a correct step at 0.85 with heads 0.04 apart is certain
    noisy = rows([0.83, 0.87, 0.83, 0.87])
    assert not U.is_uncertain(*U.step_stats(noisy)) and uncertain(noisy)
    assert U.is_uncertain(*U.step_stats(rows([0.78] * 4)))  # under 0.8
    assert U.is_uncertain(*U.step_stats(rows([0.95, 0.95, 0.85, 0.85])))  # spread 0.058 > 0.05
    assert (U.DEFAULT_DELTA_PRED, U.DEFAULT_DELTA_STD) == (0.8, 0.05)


def test_rule_single_head_and_empty_trajectory():
    assert not uncertain(rows([0.99], [0.97]))  # K=1: std 0
    assert uncertain(rows([0.99], [0.7]))
    assert not U.is_uncertain(np.array([]), np.array([]))


@pytest.mark.parametrize("dp,ds", [(0.5, 0.005), (1.01, 0.005), (0.3, 0.005),
                                   (0.95, -0.001), (float("nan"), 0.005), (0.95, float("nan"))])
def test_rule_rejects_bad_deltas(dp, ds):
    with pytest.raises(ValueError):
        U.is_uncertain(np.array([0.99]), np.array([0.0]), dp, ds)
    with pytest.raises(ValueError):
        U.certain_steps(np.array([0.99]), np.array([0.0]), dp, ds)


def test_delta_pred_one_is_allowed():
    got = U.certain_steps(np.array([1.0, 0.0, 0.99]), np.zeros(3), 1.0, 0.0)
    assert got.tolist() == [True, True, False]


# ----------------------------------------------------------------------------- acquisition
def test_binary_entropy_values():
    assert float(U.binary_entropy(0.5)) == pytest.approx(LN2, abs=1e-12)
    assert float(U.binary_entropy(0.1)) == pytest.approx(0.1 * math.log(10) - 0.9 * math.log(0.9))
    assert float(U.binary_entropy(0.1)) == pytest.approx(0.3250829734, abs=1e-9)
    assert 0.0 <= float(U.binary_entropy(0.0)) < 1e-10  # clipped, finite
    assert 0.0 <= float(U.binary_entropy(1.0)) < 1e-10


def test_entropy_is_entropy_of_mean():
    probs = rows([0.5, 0.5], [0.2, 0.8], [0.1, 0.1])  # means 0.5, 0.5, 0.1
    np.testing.assert_allclose(U.entropy_per_step(probs), [LN2, LN2, H(0.1)], atol=1e-12)
    assert U.acquisition("entropy", rows([0.5, 0.5])) == pytest.approx(LN2)


def test_bald_values():
    np.testing.assert_allclose(U.bald_per_step(rows([0.3, 0.3, 0.3], [0.9, 0.9, 0.9])), [0.0, 0.0],
                               atol=1e-12)
    expected = H(0.5) - H(0.1)  # heads {0.1, 0.9}: H(0.9) == H(0.1); = 0.368064...
    assert U.acquisition("bald", rows([0.1, 0.9])) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.3680642071, abs=1e-9)
    assert U.acquisition("bald", rows([0.7])) == 0.0  # K=1: no disagreement


def test_variance_values():
    probs = rows([0.9, 0.9, 1.0, 1.0], [0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(U.variance_per_step(probs), [0.01 / 3, 0.2 / 3], atol=1e-12)
    np.testing.assert_array_equal(U.variance_per_step(rows([0.4], [0.6])), [0.0, 0.0])


def test_margin_values():
    probs = rows([0.5, 0.5], [0.5, 1.0], [0.0, 0.0], [1.0, 1.0], [0.1, 0.1])
    # means 0.5, 0.75, 0, 1, 0.1 -> 1, 1-0.5, 0, 0, 1-0.8
    np.testing.assert_allclose(U.margin_per_step(probs), [1.0, 0.5, 0.0, 0.0, 0.2], atol=1e-12)


def test_reductions_restricted_to_steps_up_to_first_error():
    probs = rows([0.9, 0.9], [0.6, 0.6], [0.3, 0.3], [0.5, 0.5])  # E = 2; margins .2 .8 .6 (1.0)
    assert U.acquisition("margin", probs, reduction="max") == pytest.approx(0.8)
    assert U.acquisition("margin", probs, reduction="mean") == pytest.approx((0.2 + 0.8 + 0.6) / 3)
    no_error = rows([0.9, 0.9], [0.6, 0.6], [0.7, 0.7])  # E = last; margins .2 .8 .6
    assert U.acquisition("margin", no_error, reduction="mean") == pytest.approx(1.6 / 3)
    first_wrong = rows([0.3, 0.3], [0.5, 0.5])  # E = 0
    assert U.acquisition("entropy", first_wrong, reduction="max") == pytest.approx(H(0.3))
    assert U.acquisition("entropy", np.zeros((0, 3))) == 0.0


def test_random_is_deterministic_and_id_dependent():
    expected = int.from_bytes(hashlib.sha256(b"0:traj-a").digest()[:8], "big") / 2**64
    assert U.random_score("traj-a") == expected
    assert U.random_score("traj-a", seed=0) == 0.6117321687340148  # pinned: same on every machine
    a = U.acquisition("random", rows([0.9, 0.9]), traj_id="traj-a")
    assert a == expected and 0.0 <= a < 1.0
    # independent of probs and reduction
    assert U.acquisition("random", rows([0.1, 0.5], [0.2, 0.2]), traj_id="traj-a",
                         reduction="mean") == a
    assert U.acquisition("random", rows([0.9, 0.9]), traj_id="traj-b") != a
    assert U.acquisition("random", rows([0.9, 0.9]), traj_id="traj-a", seed=1) != a
    np.testing.assert_array_equal(
        U.ACQUISITIONS["random"](rows([0.9], [0.8]), "traj-a", 0), [a, a])
    with pytest.raises(ValueError, match="traj_id"):
        U.acquisition("random", rows([0.9, 0.9]))


def test_acquisition_registry_and_errors():
    assert set(U.ACQUISITIONS) == {"entropy", "bald", "variance", "margin", "random"}
    with pytest.raises(ValueError, match="entropy"):
        U.acquisition("nope", rows([0.5]))
    with pytest.raises(ValueError, match="max"):
        U.acquisition("entropy", rows([0.5]), reduction="sum")
    with pytest.raises(ValueError):
        U.summarize([rows([0.5])], ["a"], acquisition="nope")


# ----------------------------------------------------------------------------- summarize
def test_summarize_ragged_batch():
    batch = [
        rows([0.99, 0.99], [0.6, 0.6], [0.2, 0.2]),  # E=2, uncertain (step 1)
        rows([0.02, 0.02], [0.5, 0.9]),  # E=0, confidently wrong -> certain
        np.zeros((0, 2)),  # empty: certain, score 0
    ]
    out = U.summarize(batch, ["x", "y", "z"], acquisition="margin", reduction="max")
    assert [m.dtype for m in out["step_mean"]] == [np.float32] * 3
    assert [len(m) for m in out["step_std"]] == [3, 2, 0]
    np.testing.assert_allclose(out["step_mean"][0], [0.99, 0.6, 0.2], rtol=1e-6)
    np.testing.assert_allclose(out["step_std"][1], [0.0, math.sqrt(0.08)], rtol=1e-6)
    assert out["pred_first_error"].dtype == np.int32
    assert out["pred_first_error"].tolist() == [2, 0, -1]
    assert out["uncertain"].dtype == bool and out["uncertain"].tolist() == [True, False, False]
    assert out["acquisition"].dtype == np.float32
    # margins: traj 0 steps .02 .8 .4 -> max .8; traj 1 step 0 -> 1 - |0.04 - 1| = .04
    np.testing.assert_allclose(out["acquisition"], [0.8, 0.04, 0.0], rtol=1e-6)


def test_summarize_matches_single_functions_and_random():
    batch = [rows([0.9, 0.95], [0.4, 0.3]), rows([0.5, 0.6])]
    out = U.summarize(batch, ["a", "b"], acquisition="random", seed=7)
    assert out["acquisition"].tolist() == [np.float32(U.random_score("a", 7)),
                                           np.float32(U.random_score("b", 7))]
    ent = U.summarize(batch, ["a", "b"], reduction="mean")["acquisition"]
    np.testing.assert_allclose(ent, [(H(0.925) + H(0.35)) / 2, H(0.55)], rtol=1e-6)


def test_summarize_empty_and_errors():
    out = U.summarize([], [])
    assert out["uncertain"].shape == (0,) and out["acquisition"].dtype == np.float32
    with pytest.raises(ValueError):
        U.summarize([rows([0.5])], [])
    with pytest.raises(ValueError):
        U.summarize([], [], acquisition="nope")
    with pytest.raises(ValueError):
        U.summarize([], [], reduction="median")
    with pytest.raises(ValueError):
        U.summarize([], [], delta_pred=0.4)


# ----------------------------------------------------------------------------- selection
def test_select_budget_top_k_ties_by_id():
    ids = ["c", "b", "a", "d", "e"]
    scores = [0.5, 0.9, 0.5, 0.1, 0.5]
    assert U.select_budget(ids, scores, 1).tolist() == [False, True, False, False, False]
    assert U.select_budget(ids, scores, 2).tolist() == [False, True, True, False, False]  # b, a
    assert U.select_budget(ids, scores, 3).tolist() == [True, True, True, False, False]  # + c
    assert U.select_budget(ids, scores, 5).all() and U.select_budget(ids, scores, 99).all()
    assert not U.select_budget(ids, scores, 0).any()
    assert not U.select_budget(ids, scores, -3).any()
    assert U.select_budget([], [], 3).tolist() == []


def test_select_budget_permutation_invariant():
    ids = [f"t{i:02d}" for i in range(20)]
    scores = np.array([0.1, 0.5, 0.5, 0.9, 0.5, 0.3, 0.5, 0.9, 0.0, 0.2] * 2)
    base = {i for i, m in zip(ids, U.select_budget(ids, scores, 7)) if m}
    assert base == {"t03", "t07", "t13", "t17", "t01", "t02", "t04"}
    rng = np.random.default_rng(0)
    for _ in range(10):
        perm = rng.permutation(20)
        p_ids = [ids[j] for j in perm]
        mask = U.select_budget(p_ids, scores[perm], 7)
        assert {i for i, m in zip(p_ids, mask) if m} == base


def test_select_budget_nan_ranks_last():
    ids = ["a", "b", "c", "d"]
    scores = [float("nan"), 0.2, float("nan"), 0.1]
    assert U.select_budget(ids, scores, 3).tolist() == [True, True, False, True]
    assert U.select_budget(ids[::-1], scores[::-1], 3).tolist() == [True, False, True, True]


def test_select_budget_checks_lengths():
    with pytest.raises(ValueError):
        U.select_budget(["a"], [0.1, 0.2], 1)
