"""The gidel2019 study in its quick mode: every row of its check table holds, its claims restated, and each check
of the non-whitened, randomly initialised runs fails on a configuration that must fail it."""

import numpy as np
import pytest

import dlnode as dln
from studies import gidel2019


@pytest.fixture(scope="module")
def ds():
    return gidel2019.compute(gidel2019.QUICK)


def test_every_check_passes(ds):
    rows = gidel2019.check(ds)
    assert len(rows) >= 10 and all(set(row) == {"claim", "paper", "ours", "passed"} for row in rows)
    assert all(row["passed"] for row in rows), [row for row in rows if not row["passed"]]


def test_staircase_times(ds):
    # at ε = 1e-8 mode i is learned at t/ln(1/ε) = 1/s_i + ln(s_i)/(2 s_i ln(1/ε)): within 4 % of 1/s_i
    tau = ds["escape_flow"].sel(depth=2, scale=1e-8) / np.log(1e8)
    np.testing.assert_allclose(tau.values * ds["target_s"].values, 1.0, atol=0.04)
    # and exactly at the closed form, up to the solver and the 0.01 save grid
    np.testing.assert_allclose(ds["escape_flow"].sel(depth=2), ds["escape_exact"], rtol=gidel2019.FLOW_RTOL)
    # GD escapes later than the flow: its linear phase grows by 1 + lr·s < e^{lr·s} per step
    assert bool((ds["escape_gd"] > ds["escape_flow"].sel(depth=2)).all())


def test_rrr_problem_is_theirs_and_not_whitened(ds):
    prob = gidel2019.rrr_problem(gidel2019.QUICK["rrr"])
    gram = prob.sigma_yx.T @ prob.sigma_yx
    np.testing.assert_allclose(prob.sigma_xx @ gram, gram @ prob.sigma_xx, atol=1e-12)  # their assumption
    assert np.linalg.norm(prob.sigma_xx - np.eye(3)) > 1  # and not whitened
    # the stored init projections are those of the runs' W(0) (= W2 W1 from the same init)
    w1, w2 = dln.init_layers(prob, 2, "gaussian", 1e-4, 0)
    w0 = ds["rrr_product"].sel(rrr_method="flow", rrr_scale=1e-4, rrr_seed=0).isel(rrr_time=0).values
    np.testing.assert_allclose(w0, w2 @ w1, rtol=1e-12)
    assert bool((ds["rrr_status"] == 1).all())  # every run converged


def test_rrr_negative_controls(ds):
    for method in ("flow", "gd"):
        assert gidel2019.staircase_row(ds, method)["passed"]
        # the truncated SVD of the least-squares solution is not the path when Σ_xx ≠ I
        assert not gidel2019.staircase_row(ds, method, reference="tsvd")["passed"]
        # a large init visits no plateau: its tolerance exceeds half the distance between plateaus, nothing is tested
        control = gidel2019.staircase_row(ds, method, eps=[ds.attrs["rrr_control_eps"]])
        assert not control["passed"] and "not tested" in control["ours"]
        # and its plateau errors are far from the small-init ones: the flow does not pass near the RRR solutions
        errors = gidel2019.plateau_errors(ds, method, ds.attrs["rrr_control_eps"], 0)["err"]
        assert errors[1:].min() > 0.1
        # modes are learned in the order of Σ_yx's singular values, not of W*'s
        assert gidel2019.order_row(ds, method)["passed"]
        assert not gidel2019.order_row(ds, method, by="level")["passed"]
    # no small-ε run: the rows say "not tested" and fail
    only = ds.sel(rrr_scale=[ds.attrs["rrr_control_eps"]])
    for result in (gidel2019.staircase_row(only, "flow"), gidel2019.order_row(only, "flow")):
        assert not result["passed"] and "not tested" in result["ours"]


def test_figures(ds, tmp_path):
    paths = gidel2019.plot(ds, tmp_path)
    assert [p.name for p in paths] == ["gidel2019-staircase.png", "gidel2019-rrr.png"]
    assert all(0 < p.stat().st_size < 300_000 for p in paths)
