"""Arora et al. (2019) in its quick mode: every check passes and the paper's claim holds as numbers."""

import numpy as np
import pytest

import studies

arora = studies.load("arora2019")


@pytest.fixture(scope="module")
def quick():
    return arora.compute(arora.QUICK)


@pytest.mark.slow
def test_quick_mode_passes_every_check(quick):
    rows = arora.check(quick)
    assert len(rows) >= 5
    assert all(r["passed"] for r in rows), studies.format_table(rows)


@pytest.mark.slow
def test_depth_three_ends_at_a_fifth_of_the_effective_rank_of_depth_one(quick):
    erank = quick["effective_rank"]
    for m in quick["observed"].values:
        assert float(erank.sel(observed=m, depth=3.0)) < float(erank.sel(observed=m, depth=1.0)) / 5
    # deeper is lower at every step of the finite depths, and the depth-inf limit is lowest of all
    small = erank.sel(observed=quick["observed"].values.min()).values
    assert np.all(np.diff(small) < 0)


@pytest.mark.slow
def test_depth_three_recovers_where_the_nuclear_norm_does_not(quick, tmp_path):
    small = quick["observed"].values.min()
    assert float(quick["recovery_error"].sel(observed=small, depth=3.0)) < arora.RECOVERED
    assert float(quick["nuclear_error"].sel(observed=small)) > 10 * arora.RECOVERED
    paths = arora.plot(quick, tmp_path)
    assert [p.name for p in paths] == ["arora2019-spectra.png", "arora2019-rank-vs-depth.png"]
    assert all(10_000 < p.stat().st_size < 300_000 for p in paths)


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
    import dlnode as dln

    prob = dln.MatrixCompletion.random(shape=(30, 30), rank=2, observed=600, seed=1)
    x, gap = arora.nuclear_norm_completion(prob.target_matrix, prob.mask)
    assert gap < 1e-7
    np.testing.assert_array_equal(x[prob.mask], prob.target_matrix[prob.mask])  # feasible exactly
    assert np.linalg.norm(x - prob.target_matrix) / np.linalg.norm(prob.target_matrix) < 1e-5
