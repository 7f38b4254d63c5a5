"""Marion & Chizat (2024) in its quick mode: every check passes and S_min <= S <= upper holds as numbers."""

import numpy as np
import pytest

import dlnode as dln
import studies

mc = studies.load("marion_chizat2024")


@pytest.fixture(scope="module")
def quick():
    return mc.compute(mc.QUICK)


@pytest.mark.slow
def test_quick_mode_passes_every_check(quick, tmp_path):
    rows = mc.check(quick)
    assert len(rows) >= 7
    assert all(r["passed"] for r in rows), studies.format_table(rows)
    paths = mc.plot(quick, tmp_path)
    assert all(10_000 < p.stat().st_size < 300_000 for p in paths)


@pytest.mark.slow
def test_small_init_minimiser_lies_between_s_min_and_the_upper_line(quick):
    small = quick["sharpness"].sel(scale=quick["scale"].values.min())
    assert np.all(small >= quick["s_min"] * (1 - 1e-6))
    assert np.all(small <= quick["upper"])
    # the lower bound grows linearly with depth at ||w*|| = 1: S_min / L = a for every depth (dlnode's half)
    np.testing.assert_allclose(quick["s_min"] / quick["depth"], quick.attrs["a"], rtol=1e-12)


@pytest.mark.slow
def test_gd_beyond_two_over_s_min_never_converges(quick):
    above = quick["lr"] > quick["gd_lr_critical"]
    assert int(above.sum()) >= 1
    assert np.all(quick["gd_status"].where(above, drop=True) != int(dln.Status.CONVERGED))


def test_data_recipe_normalises_the_least_squares_solution():
    prob = mc.problem(50, 5, seed=3)
    assert prob.d_out == 1 and prob.d_in == 5
    np.testing.assert_allclose(np.linalg.norm(prob.w_star), 1.0, rtol=1e-12)
