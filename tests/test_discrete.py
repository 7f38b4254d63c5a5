"""Tests of dlnode.analysis.discrete: GD against the flow (compare, gd_errors) and the fitted convergence order in lr.

References: the exact depth-2 flow of `reference_runs` (Saxe's closed form) and a hand-written NumPy GD loop; GD's
global error against the flow is O(lr) and against the modified flow O(lr²) (Barrett & Dherin 2021).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import xarray as xr
from reference_runs import S_WELL_SEPARATED, build_dataset, decoupled_runs, exact_flow_states, gd_dataset

import dlnode as dln
import dlnode.analysis.accessor  # noqa: F401  (registers ds.dln)
from dlnode.analysis.discrete import compare, convergence_order, gd_errors
from dlnode.flows.flow import sharpness_floors
from dlnode.run.integrate import past_edge
from dlnode.run.plan import Plan

# Explicit Euler has global error O(lr): the fitted order of GD against the exact flow is 1 up to O(lr) terms.
ORDER_ATOL = 0.15


def test_compare_matches_times_by_value():
    flow, (gd,) = decoupled_runs([0.01])
    same = compare(flow, flow)
    assert same.sizes["time"] == flow.sizes["time"] and float(abs(same["product_error"]).max()) == 0.0
    result = flow.dln.compare(gd)  # flow against GD: the flow's 76 grid times are all GD steps (t = 4k·0.01)
    assert result.sizes["time"] == flow.sizes["time"]
    np.testing.assert_allclose(result["time"].values, flow["time"].values)
    error = compare(gd, flow)
    assert error.attrs["lr_a"] == 0.01 and np.isnan(error.attrs["lr_b"])
    assert 0 < float(error["product_error"].max()) < 0.1  # O(lr·s) for lr = 0.01, s ≤ 4


def test_gradient_descent_converges_to_the_flow_with_order_one():
    lrs = [0.02, 0.01, 0.005, 0.0025]
    flow, runs = decoupled_runs(lrs)
    errors = gd_errors(flow, runs)
    np.testing.assert_array_equal(errors["lr"].values, sorted(lrs))
    for variable in ("product_error", "loss_error", "singular_values_error"):
        order = convergence_order(flow, runs, variable)
        assert order.item() == pytest.approx(1.0, abs=ORDER_ATOL), variable


def test_compare_interpolates_the_flow_at_every_gd_time():
    # GD at lr = 0.01 saves every step; the exact flow is saved every 0.04 only. compare() reports the error at all
    # 301 GD times, the flow spline-interpolated between its saves, as if the flow had been saved at GD's times.
    flow, (gd,) = decoupled_runs([0.01])
    result = compare(gd, flow)
    assert result.sizes["time"] == gd.sizes["time"] and int(result["interpolated"].sum()) == 225
    prob = dln.Regression.whitened(S_WELL_SEPARATED, 3, 3, seed=0)
    times = gd["time"].values
    dense = build_dataset(prob, {(2, 0.3, 0): exact_flow_states(prob, 0.3, times)}, times, init="decoupled")
    reference = compare(gd, dense)  # every time saved by both: no interpolation
    assert not reference["interpolated"].any()
    # compare's promise: the reported error is within `accuracy` (0.1) of the run's largest error of the true one;
    # here, the flow's spline errs by ~(8h)⁴/384 ≈ 3e-5 relative near t = 0 (rate 2s = 8, h = 0.04) and less later
    diff = abs(result["product_error"] - reference["product_error"])
    assert float(diff.max()) <= 0.1 * float(reference["product_error"].max())
    assert float(diff.max()) <= 3e-4
    assert float(result["product_error"].max()) == pytest.approx(float(reference["product_error"].max()), rel=1e-3)


def test_compare_refuses_a_save_grid_too_coarse_for_the_escape():
    # From scale 1e-3 the modes escape at t ≈ ln(1/ε)/s_i in a rise of width ~1/s_i; a 12-point log grid holds
    # no point inside most rises, so GD cannot be compared with it, only with a flow saved at GD's times.
    prob = dln.Regression.whitened(S_WELL_SEPARATED, 3, 3, seed=0)
    steps = np.arange(0, 801)
    gd = gd_dataset(prob, [2], [1e-3], [0], 0.01, steps, init="decoupled")
    coarse = np.concatenate([[0.0], np.geomspace(0.08, 8.0, 11)])
    flow = build_dataset(prob, {(2, 1e-3, 0): exact_flow_states(prob, 1e-3, coarse)}, coarse, init="decoupled")
    with pytest.raises(ValueError, match="too coarse to interpolate") as info:
        compare(gd, flow)
    assert "saveat=a['time'].values" in str(info.value) and "\n" not in str(info.value)


def test_sgd_against_the_flow_keeps_its_paths_and_a_coarse_flow_is_refused_in_one_line():
    prob = dln.MatrixSensing.random(shape=(5, 5), rank=2, measurements=30, seed=0)
    common = {"depth": 3, "scale": 0.1, "t1": 2.0, "progress": False}
    sgd = dln.integrate(prob, method="sgd", batch=6, lr=0.01, paths=4, **common)
    coarse = dln.integrate(prob, saveat=12, **common)  # 12 saves for SGD's 200 steps
    with pytest.raises(ValueError, match="too coarse to interpolate") as info:  # a has paths, b has none
        compare(sgd, coarse)
    assert "saveat=a['time'].values" in str(info.value) and "\n" not in str(info.value)
    flow = dln.integrate(prob, saveat=sgd["time"].values, **common)
    errors = compare(sgd, flow)
    assert errors.sizes["path"] == 4 and not bool(errors["interpolated"].any())
    # each path's error against the flow is its own: the paths differ, and from the first step on
    assert float(errors["product_error"].isel(time=-1).std("path").max()) > 0
    assert (errors["product_error"].isel(time=slice(1, None)) > 0).all()


def test_gradient_descent_follows_the_modified_flow_with_order_two():
    # Barrett & Dherin (2021): GD follows the flow of L + (lr/4)‖∇L‖² to O(lr²); the modified flow depends on lr,
    # so each GD run needs its own reference, and one reference for several lr is refused.
    prob = dln.Regression.whitened(S_WELL_SEPARATED, 3, 3, seed=0)
    lrs, grid = [0.02, 0.01, 0.005], np.arange(0, 76) * 0.04
    common = {"depth": 2, "init": "decoupled", "scale": 0.3, "saveat": grid, "t1": grid[-1], "progress": False}
    runs = [dln.integrate(prob, method="gd", lr=lr, **common) for lr in lrs]
    modified = [dln.integrate(prob, flow="modified", lr=lr, rtol=1e-10, atol=1e-12, **common) for lr in lrs]
    assert convergence_order(modified, runs).item() == pytest.approx(2.0, abs=ORDER_ATOL)
    with pytest.raises(ValueError, match="depends on lr and cannot serve runs"):
        convergence_order(modified[0], runs)
    with pytest.raises(ValueError, match="run at lr=0.02 is the modified flow for lr=0.005"):
        convergence_order(modified[::-1], runs)


def test_accuracy_reaches_compare_and_accepts_numpy_floats():
    # the flow saved every 0.04 is spline-interpolated at GD's steps (error ~3e-5 relative, see above): within the
    # default accuracy of 0.1 × the largest error, not within 1e-6 × it, which gd_errors and convergence_order
    # must pass on to compare and refuse
    flow, runs = decoupled_runs([0.02, 0.01])
    default = gd_errors(flow, runs)
    xr.testing.assert_identical(gd_errors(flow, runs, accuracy=np.float32(0.1)), default)
    xr.testing.assert_identical(compare(runs[1], flow, accuracy=np.float64(0.1)), compare(runs[1], flow))
    with pytest.raises(ValueError, match="too coarse to interpolate"):
        gd_errors(flow, runs, accuracy=1e-6)
    with pytest.raises(ValueError, match="too coarse to interpolate"):
        convergence_order(flow, runs, accuracy=1e-6)


def test_errors_say_what_was_received():
    flow, (gd,) = decoupled_runs([0.02], end_time=0.4)
    cases = [
        (lambda: compare(gd, flow["loss"]), "b must be a dlnode Dataset.*got a DataArray"),
        (lambda: compare(gd.drop_vars("product"), flow), r"a must be a dlnode Dataset.*lacks \['product'\]"),
        (lambda: gd_errors(flow, [gd]), r"at least two GD Datasets.*got 1 run\(s\)"),
        (lambda: gd_errors(flow, gd), "at least two GD Datasets.*got a Dataset"),
        (lambda: gd_errors(flow, [gd, gd["loss"]]), r"runs must hold GD Datasets; got \['Dataset', 'DataArray'\]"),
        (lambda: convergence_order(flow, [gd, gd], "error"), "variable must be one of"),
        (lambda: compare(gd, flow, accuracy=True), "accuracy must be in"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            call()
        assert "\n" not in str(info.value)


def test_convergence_order_says_how_to_give_one_reference_and_when_the_error_peaks():
    """GD's default save grids differ per lr: a flow saved on its own grid is refused with the fix, and the fix
    (the flow saved at every run's times) gives the first-order slope and the time of each maximum."""
    prob = dln.Regression.whitened([2.0, 1.0], 3, 3, seed=0)
    kw = dict(depth=2, init="gaussian", scale=0.3, seed=0, t1=6.0, progress=False)
    runs = [dln.integrate(prob, method="gd", lr=lr, saveat=40, **kw) for lr in (0.02, 0.01, 0.005)]
    coarse = dln.integrate(prob, method="dopri8", rtol=1e-12, atol=1e-14, saveat=8, **kw)
    with pytest.raises(dln.DlnodeError, match="union1d"):
        dln.convergence_order(coarse, runs)
    times = np.union1d(*[np.union1d(runs[0]["time"].values, r["time"].values) for r in runs[1:]])
    flow = dln.integrate(prob, method="dopri8", rtol=1e-12, atol=1e-14, saveat=times[1:], **kw)
    order = float(dln.convergence_order(flow, runs).item())
    assert abs(order - 1.0) < 0.1  # explicit Euler: first order
    errors = gd_errors(flow, runs)
    assert "product_error_time" in errors and float(errors["product_error_time"].min()) > 0


def test_a_modified_flow_that_settles_past_two_over_lr_says_gd_cannot_follow_it():
    # The modified flow converges to a minimiser of L whatever lr; GD at lr is stable there only if S < 2/lr.
    # Reference: the dense Hessian's top eigenvalue at the final weights, and GD itself at both step sizes.
    prob = dln.MatrixSensing.random(shape=(6, 6), rank=2, measurements=40, seed=0)
    common = dict(depth=2, scale=0.1, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        past = dln.integrate(prob, flow="modified", lr=0.3, **common)
    (message,) = [str(w.message) for w in caught]
    assert "1 of 1 modified-flow runs end where the sharpness S is above 2/lr = 6.66667" in message
    assert past.status.item() == int(dln.Status.CONVERGED)  # true of the flow: the warning is about GD
    exact = past.dln.sharpness(exact=True).item()
    bound = float(re.search(r"S ≥ ([0-9.]+)", message).group(1))
    assert 2 / 0.3 < bound <= exact * (1 + 1e-4) and bound == pytest.approx(exact, rel=1e-2)
    # what a sweep task reports: only the cells it was asked for (a mask of the status's shape)
    plan = Plan.build(prob, flow="modified", lr=0.3, **common)
    assert [p["bound"] for p in past_edge(past, plan)] == [pytest.approx(bound, rel=1e-3)]
    assert past_edge(past, plan, np.zeros(past["status"].shape, bool)) == []
    with pytest.warns(UserWarning, match="diverged"):
        gd = dln.integrate(prob, method="gd", lr=0.3, t1=30.0, **common)
    assert gd.status.item() == int(dln.Status.DIVERGED)
    # negative control: at lr = 0.02 (2/lr = 100 > S) the flow says nothing and GD converges with it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        below = dln.integrate(prob, flow="modified", lr=0.02, **common)
        gd = dln.integrate(prob, method="gd", lr=0.02, t1=below["t_final"].item(), **common)
    assert below.dln.sharpness(exact=True).item() < 2 / 0.02
    assert gd.loss.isel(time=-1).item() < 1e-6 * gd.loss.isel(time=0).item()


def test_the_sharpness_lower_bound_never_exceeds_the_top_eigenvalue():
    # a Rayleigh quotient is at most λ_max, at a saddle (the small init, indefinite Hessian) as at a minimum
    prob = dln.MatrixSensing.random(shape=(5, 4), rank=2, measurements=14, seed=1)
    rng = np.random.default_rng(0)
    for size in (1e-3, 0.3, 1.0):
        layers = [size * rng.standard_normal(s) for s in ((3, 4), (3, 3), (5, 3))]
        exact = dln.sharpness(prob, layers, exact=True)
        bound = sharpness_floors(type(prob), tuple(w[None] for w in layers), prob.arrays())[0]
        assert bound <= exact * (1 + 1e-10) + 1e-12
    bad = sharpness_floors(type(prob), tuple(np.full((1, *s), np.nan) for s in ((3, 4), (3, 3), (5, 3))),
                           prob.arrays())  # fmt: skip
    assert np.isnan(bad[0])
