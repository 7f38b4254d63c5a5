"""Statuses that cannot lie: each `dlnode.Status` a call can return is reached here on purpose, and a status is
never better than what happened (an infinite loss never "converged", a degenerate horizon never planned, a depth
not begun never left out of an interrupted call's dataset, a step budget never reported as a solver failure)."""

import dataclasses
import math
import os
import signal
import warnings

import numpy as np
import pytest

import dlnode as dln

S = dln.Status
TARGET = np.diag([2.0, 1.0])
QUICK = {"scale": 0.3, "saveat": 4, "progress": False, "method": "gd", "lr": 0.05}  # gd: compiled once, cached


def test_an_infinite_initial_loss_never_converges():
    prob = dln.Factorization(TARGET)
    for t1, method in ((None, {"method": "gd", "lr": 0.05}), (1.0, {"method": "gd", "lr": 0.05}),
                       (None, {"method": "scipy:RK45"})):  # fmt: skip
        ds = dln.integrate(prob, depth=2, scale=1e200, t1=t1, saveat=4, progress=False, **method)
        assert not np.isfinite(ds["loss"].isel(time=0)).any()
        assert int(ds["status"].item()) in (int(S.NO_STEP), int(S.DIVERGED)), t1


def test_a_zero_target_plans_a_finite_horizon_and_converges():
    """∇ℓ(0) = 0 for a zero target: the time unit 1/‖∇ℓ(0)‖ is infinite, so the horizon has its own rule."""
    for target in (np.zeros((2, 2)), np.full((2, 2), 1e-310)):
        ds = dln.integrate(dln.Factorization(target), depth=1, scale=0.5, saveat=8, progress=False)
        t = ds["time"].values
        assert np.all(np.isfinite(t)) and t[-1] < 1e6 and len(t) > 4, t
        loss = ds["loss"].values.ravel()
        # depth 1 on a zero target: W(t) = W(0) e^{-t}, so the loss criterion 1e-8 holds at t = ln(1e8)/2 ≈ 9.2
        assert int(ds["status"].item()) == int(S.CONVERGED)
        assert loss[-1] <= 1e-8 * loss[0] and 9.0 < float(ds["time"][-1]) < 1e3


def test_a_large_init_converges_against_the_problem_s_own_loss_scale():
    """From per-layer scale 10 at depth 3, ℓ₀ is 3·10⁴ times ℓ(W = 0) = 2.5: the stop rule measures the gap from
    min(ℓ₀, ℓ(0)), so "converged" means ℓ − ℓ* ≤ 1e-8 ℓ(0), where a rule on ℓ₀ alone stops anywhere below
    1e-8 ℓ₀ = 7.6e-4 (the run's first save there holds 9.4e-5, 3.7e-5 ℓ(0): the negative control below)."""
    prob = dln.Factorization(TARGET)
    ds = dln.integrate(prob, depth=3, scale=10.0, saveat=8, progress=False)
    loss = ds["loss"].values.ravel()
    loss_at_zero = float(prob.loss(np.zeros((2, 2))))
    assert loss[0] > 1e4 * loss_at_zero
    assert int(ds["status"].item()) == int(S.CONVERGED)
    assert loss[-1] <= 1e-8 * loss_at_zero
    # the rule on ℓ₀ alone would have stopped at an earlier save, far above 1e-8 ℓ(0)
    early = np.nonzero(loss <= 1e-8 * loss[0])[0][0]
    assert early < len(loss) - 1 and loss[early] > 1e3 * 1e-8 * loss_at_zero
    converged, _ = dln.solvers.core.stop_flags(loss[early], loss[0], 0.0, {"loss_tol": 1e-8, "diverge": 1e6,
                                                                         "loss_scale": loss_at_zero})  # fmt: skip
    assert not bool(converged)


def test_a_large_init_far_above_the_minimiser_is_not_called_a_runaway_norm():
    """σ₁ from a large init starts far above ‖W*‖₂ and falls; a small rise at the end, still below σ₁(0), is not a
    norm running away (GD from per-layer scale 10 at depth 3 on an 8 × 8 completion ended at σ₁ = 359, 47× the
    minimiser's, against 1735 at t = 0, and was said to run away); a σ₁ growing past 3× both is."""
    from dlnode.run.integrate import running_away

    assert not running_away(np.array([1735.0, 427.0, 359.0, 359.1]), 7.6)
    assert running_away(np.array([1e-3, 2.0, 30.0, 40.0]), 7.6)
    assert not running_away(np.array([1e-3, 2.0, 40.0, 30.0]), 7.6)  # falling at the end


def test_a_width_below_the_minimiser_s_rank_is_said_before_the_run_and_ends_not_converged():
    """Width 1 caps the product's rank at 1 below W*'s 2: the call says so before it runs, and the run ends at the
    best rank-one fit, ½σ₂² = 0.5 (Eckart–Young), as not_converged, never converged. Width 2 says nothing."""
    prob = dln.Factorization(TARGET)
    with pytest.warns(UserWarning, match="width 1 is below the rank 2 of the problem's minimiser") as record:
        ds = dln.integrate(prob, depth=2, width=1, **{**QUICK, "saveat": 4})
    assert "width" in str(record[0].message)  # the plan's warning comes first, before the run's own
    assert int(ds["status"].item()) == int(S.NOT_CONVERGED)
    assert float(ds["loss"].isel(time=-1).item()) == pytest.approx(0.5 * TARGET[1, 1] ** 2, rel=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dln.run.plan.Plan.build(prob, depth=2, width=2, scale=0.3)


def test_scipy_rk45_out_of_steps_says_max_steps():
    prob = dln.Factorization(TARGET)
    ds = dln.integrate(prob, depth=2, scale=0.1, t1=100.0, method="scipy:RK45", max_steps=5, saveat=4,
                       progress=False)  # fmt: skip
    assert int(ds["status"].item()) == int(S.MAX_STEPS)


def test_each_status_is_reached_on_purpose():
    prob = dln.Factorization(TARGET)
    run = dict(QUICK, depth=2)
    assert int(dln.integrate(prob, t1=1.0, **run)["status"].item()) == int(S.FINISHED)
    assert int(dln.integrate(prob, t1=None, **run)["status"].item()) == int(S.CONVERGED)
    assert int(dln.integrate(prob, t1=100.0, max_steps=3, **run)["status"].item()) == int(S.MAX_STEPS)
    gd = dln.integrate(prob, depth=2, scale=0.3, method="gd", lr=5.0, t1=200.0, saveat=4, progress=False)
    assert int(gd["status"].item()) == int(S.DIVERGED)
    huge = dln.integrate(prob, depth=2, scale=1e200, t1=1.0, saveat=4, progress=False, method="gd", lr=0.05)
    assert int(huge["status"].item()) == int(S.NO_STEP)


def test_a_norm_that_runs_away_stops_with_its_trajectory_and_a_converging_one_does_not():
    """Observe W₁₂ = W₂₁ = 1, W₂₂ = 0 of a 2×2 matrix: no rank-1 matrix fits them, and rank-1 ones come closer
    only as W₁₁ = 1/ε² → ∞ (W₂₂ = ε). From a small init the depth-3 flow learns one mode first and runs along that
    family, its norm growing, until the second mode escapes (σ₁ 385 ≈ 385‖W*‖₂ at t ≈ 10⁶, measured, then it
    converges): under the default limit (1e3) it converges; with norm_limit=100 it stops as NORM_RUNAWAY once σ₁
    passes 100‖W*‖₂, keeping the trajectory up to then and the weights where it stopped."""
    prob = dln.MatrixCompletion(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([[False, True], [True, True]]))
    kw = {"depth": 3, "scale": 1e-3, "method": "rosenbrock", "progress": False}
    free = dln.integrate(prob, **kw)
    assert int(free["status"].item()) == int(S.CONVERGED) and free.attrs["norm_limit"] == 1e3
    assert float(free["singular_values"].max()) > 300  # it did run far out before converging
    with pytest.warns(UserWarning, match="norm_runaway"):
        away = dln.integrate(prob, norm_limit=100.0, **kw)
    assert int(away["status"].item()) == int(S.NORM_RUNAWAY) and away.attrs["norm_limit"] == 100.0
    sv = away["singular_values"].isel(depth=0, scale=0, seed=0, k=0)
    kept = sv.dropna("time")
    assert len(kept) > 10 and float(kept[-1]) < 100 * 4  # the saves up to the stop (the grid is cut there)
    t_stop = float(away["t_final"].item())
    assert float(kept["time"][-1]) <= t_stop < float(free["t_final"].item())
    final = np.linalg.multi_dot(away["weights_final"].isel(depth=0, scale=0, seed=0).values[::-1])
    assert np.linalg.norm(final, 2) > 100  # the state it stopped at is past the limit
    assert "norm ran away" in S.NORM_RUNAWAY.message


def test_a_cell_stopped_for_its_norm_keeps_its_own_end_while_the_batch_runs_on():
    """Two cells run away at different times (scales 1e-3, 1e-4): the first one stopped is held where it stopped
    while the method's state runs the batch on, so its final weights are the flow's at its own t_final (checked
    against a run of that cell alone up to that time, no limit: same flow, other steps; measured 1.2e-5 apart, while
    the state the method ran on to, the other cell's t_final, is 0.2 away)."""
    prob = dln.MatrixCompletion(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([[False, True], [True, True]]))
    kw = {"depth": 3, "method": "rosenbrock", "progress": False}
    with pytest.warns(UserWarning, match="norm_runaway"):
        both = dln.integrate(prob, scale=[1e-3, 1e-4], norm_limit=100.0, **kw)
    assert (both["status"] == int(S.NORM_RUNAWAY)).all()
    t_stop = both["t_final"].isel(depth=0, seed=0).values
    assert t_stop[0] < 0.9 * t_stop[1]  # the 1e-3 cell stopped first and was held while the other ran on
    alone = dln.integrate(prob, scale=1e-3, t1=float(t_stop[0]), saveat=np.array([0.0, t_stop[0]]),
                          norm_limit=math.inf, **kw)  # fmt: skip
    assert int(alone["status"].item()) == int(S.FINISHED)
    held = both["weights_final"].isel(depth=0, seed=0, scale=0).values
    ref = alone["weights_final"].isel(depth=0, seed=0, scale=0).values
    np.testing.assert_allclose(np.linalg.multi_dot(held[::-1]), np.linalg.multi_dot(ref[::-1]), rtol=1e-4)


@pytest.mark.parametrize("value", [1, 0.5, -1.0, "big", True, float("nan")])
def test_a_bad_norm_limit_is_refused_in_one_line(value):
    with pytest.raises(dln.DlnodeError, match=r"norm_limit must be a number above 1") as err:
        dln.integrate(dln.Factorization(TARGET), depth=2, norm_limit=value, **QUICK)
    assert "\n" not in str(err.value)


def _interrupting(monkeypatch, name, when):
    """Replace the registered method `name` by one that sends this process SIGINT at `when(call)` of its windows."""
    real = dln.METHODS[name]
    calls = {"n": 0}

    def advance(flow, state, arrays, ts, c):
        calls["n"] += 1
        if when(calls["n"]):
            os.kill(os.getpid(), signal.SIGINT)
        return real.advance(flow, state, arrays, ts, c)

    monkeypatch.setitem(dln.METHODS, name, dataclasses.replace(real, advance=advance))
    return calls


def test_ctrl_c_in_the_window_that_finishes_a_depth_stops_the_call(monkeypatch):
    """A depth of fewer than 16 save times is one window: a Ctrl-C during it must still stop the call."""
    prob = dln.Factorization(TARGET)
    _interrupting(monkeypatch, "gd", lambda n: n == 1)
    ds = dln.integrate(prob, depth=[2, 3, 4], t1=1.0, **QUICK)
    status = ds["status"].sel(depth=[2.0, 3.0, 4.0]).values.ravel()
    assert status[0] in (int(S.FINISHED), int(S.INTERRUPTED))
    assert list(status[1:]) == [int(S.PENDING)] * 2
    monkeypatch.undo()
    whole = dln.resume(ds, progress=False)
    assert (whole["status"].values == int(S.FINISHED)).all()


def test_ctrl_c_between_depths_returns_the_dataset_so_far():
    """A Ctrl-C while the next depth is being set up (its init drawn) keeps the finished depth."""
    prob = dln.Factorization(TARGET)
    seen = {"n": 0}

    def init(shapes, scale, rng):
        seen["n"] += 1
        if len(shapes) == 3 and seen["n"] > 2:  # depth 3, after the validation draw: the call is running
            os.kill(os.getpid(), signal.SIGINT)
        return [scale * rng.standard_normal(s) for s in shapes]

    try:
        ds = dln.integrate(prob, depth=[2, 3], init=init, t1=1.0, **QUICK)
    except KeyboardInterrupt:
        pytest.fail("a Ctrl-C between depths escaped integrate as a raw KeyboardInterrupt")
    status = ds["status"].values.ravel()
    assert list(ds["depth"].values) == [2.0, 3.0]
    assert status[0] == int(S.FINISHED) and status[1] == int(S.PENDING)
    assert np.isfinite(ds["loss"].sel(depth=2.0)).all()


def test_an_interrupted_call_says_how_to_continue(monkeypatch):
    prob = dln.Factorization(TARGET)
    _interrupting(monkeypatch, "gd", lambda n: n == 1)
    with pytest.warns(UserWarning, match=r"dlnode\.resume"):
        dln.integrate(prob, depth=[2, 3], t1=1.0, **QUICK)


@pytest.mark.parametrize("method", ["scipy:BDF", "scipy:Radau"])
def test_implicit_scipy_starts_where_singular_values_tie(method):
    """A balanced end-to-end W(0) = s·I has equal singular values, where the SVD's derivative (inside JAX's
    Jacobian of the field) is 0/0: the implicit scipy methods take central differences there instead of stopping on
    NaNs before their first step, and reach the same completion as tsit5 (the 2×2 example: complete from the
    diagonal)."""
    prob = dln.MatrixCompletion(np.array([[1.0, 0.5], [0.5, 1.0]]), np.eye(2, dtype=bool))
    kw = dict(depth=3, flow="end_to_end", init="balanced", scale=0.1, scale_of="product", seed=0, saveat=10,
              progress=False)  # fmt: skip
    ds = dln.integrate(prob, method=method, **kw)
    reference = dln.integrate(prob, method="tsit5", rtol=1e-10, atol=1e-12, **kw)
    assert ds.status.item() == dln.Status.CONVERGED
    end, want = (d["product"].isel(time=-1).values.ravel() for d in (ds, reference))
    assert np.abs(end - want).max() < 2e-5  # measured 4.6e-6 (BDF), 8.2e-6 (Radau) at the default tolerances
