"""Arora et al. (2019) in its quick mode: every check passes, and each check fails on a configuration that must
fail it (depth 2 on the recovery and rank rows, depth 3 on the init-dependence row, the small |Ω| on the
every-method-recovers row, a truncated solve on the duality-gap row)."""

import numpy as np
import pytest

import dlnode as dln
import studies

arora = studies.load("arora2019")


@pytest.fixture(scope="module")
def quick():
    return arora.compute(arora.QUICK)


@pytest.mark.slow
def test_quick_mode_passes_every_check_with_depth_inf_in_the_run(quick, tmp_path):
    rows = arora.check(quick)
    assert len(rows) >= 8
    assert all(r["passed"] for r in rows), studies.format_table(rows)
    assert np.inf in quick["depth"].values and int(quick["status"].sel(depth=np.inf).max()) == 1
    paths = arora.plot(quick, tmp_path)
    assert [p.name for p in paths] == ["arora2019-spectra.png", "arora2019-rank-vs-depth.png"]
    assert all(10_000 < p.stat().st_size < 300_000 for p in paths)


@pytest.mark.slow
def test_depth_two_fails_the_checks_that_depth_three_and_inf_pass(quick):
    small = int(quick["observed"].min())
    for deep in (3.0, np.inf):
        assert arora.recovers(quick, small, deep)[0] and arora.erank_at_target(quick, small, deep)[0]
    # the negative control: depth 2 neither recovers M nor ends at its effective rank, nor beats the nuclear norm
    assert not arora.recovers(quick, small, 2.0)[0]
    assert not arora.erank_at_target(quick, small, 2.0)[0]
    assert arora.beats_nuclear(quick, small, 3.0)[0] and not arora.beats_nuclear(quick, small, 2.0)[0]
    # a depth that was not run is "not tested", a failure
    ok, text = arora.recovers(quick, small, 4.0)
    assert not ok and "not tested" in text


@pytest.mark.slow
def test_init_dependence_separates_depth_two_from_three(quick):
    small = int(quick["observed"].min())
    assert arora.init_slope(quick, small, 2.0)[0]
    assert not arora.init_slope(quick, small, 3.0)[0]  # depth 3 is recovered at every init: no slope
    one_scale = quick.isel(scale=[0])
    ok, text = arora.init_slope(one_scale, small, 2.0)
    assert not ok and "not tested" in text


@pytest.mark.slow
def test_every_method_recovers_only_at_the_larger_sample(quick):
    small, large = int(quick["observed"].min()), int(quick["observed"].max())
    assert arora.all_recover(quick, large)[0]
    assert not arora.all_recover(quick, small)[0]


def test_nuclear_norm_completion_against_a_closed_form():
    """[[1, 1], [1, x]] has nuclear norm sqrt((1 - x)^2 + 4) for x <= 1 and 1 + x for x >= 1: unique minimum 2 at
    x = 1, the rank-one completion."""
    target = np.ones((2, 2))
    mask = np.array([[True, True], [True, False]])
    x, gap = arora.nuclear_norm_completion(target * np.where(mask, 1.0, 7.0), mask, gap_tol=1e-10)
    assert gap < 1e-10
    np.testing.assert_array_equal(x[mask], 1.0)
    # ||X||_* - 2 = (1 - x)^2/4 + O((1 - x)^4) <= 2 gap bounds the distance to the minimiser: |1 - x| <= sqrt(8 gap)
    assert abs(x[1, 1] - 1.0) <= np.sqrt(8 * gap) * (1 + 1e-6)
    np.testing.assert_allclose(np.linalg.svd(x, compute_uv=False).sum(), 2.0, rtol=2e-10)


def test_nuclear_norm_completion_recovers_a_well_sampled_low_rank_matrix():
    prob = dln.MatrixCompletion.random(shape=(30, 30), rank=2, observed=600, seed=1)
    x, gap = arora.nuclear_norm_completion(prob.target_matrix, prob.mask)
    assert gap < 1e-7
    np.testing.assert_array_equal(x[prob.mask], prob.target_matrix[prob.mask])  # feasible exactly
    assert np.linalg.norm(x - prob.target_matrix) / np.linalg.norm(prob.target_matrix) < 1e-5
    # the negative control of the duality-gap row: a truncated solve is not certified
    _, early = arora.nuclear_norm_completion(prob.target_matrix, prob.mask, max_iter=26)
    assert early > arora.GAP_TOL


def test_effective_rank_of_known_spectra():
    assert arora.effective_rank(np.array([1.0, 1.0, 1.0, 0.0])) == pytest.approx(3.0, rel=1e-14)
    assert arora.effective_rank(np.array([1.0])) == pytest.approx(1.0, rel=1e-14)


@pytest.mark.slow
def test_full_mode_runs_each_depth_as_a_dask_sweep_with_the_integrate_results():
    """FULL runs every depth's (scale, seed) cells as a Dask sweep; on QUICK's instance at |Ω| = 300 (depths 3 and
    ∞) the sweep path's dataset equals the integrate path's: the same plan, cell by cell (one worker)."""
    small = {**arora.QUICK, "observed": [300], "depths": [3], "init_scales": [1e-3], "inf_scales": [1e-3]}
    assert arora.FULL["sweep"] and not small["sweep"]
    direct, swept = arora.compute(small), arora.compute({**small, "sweep": True, "workers": 1})
    np.testing.assert_array_equal(swept["status"].values, direct["status"].values)
    for name in ("singular_values", "effective_rank", "recovery_error", "train_loss", "initial_loss"):
        np.testing.assert_allclose(swept[name].values, direct[name].values, rtol=1e-10, atol=0, err_msg=name)
