"""Interrupt and resume: a windowed run stopped by Ctrl-C at a window boundary and continued with `dlnode.resume`
(or `drive(..., checkpoint=...)`) gives the result of a run never interrupted, bit for bit.

The reference is the uninterrupted run itself: the same compiled code applied to the same carried state must give
the same bits. Ctrl-C is simulated by replacing the driver's check between windows (`_interrupt_requested`) with
one that says yes at its k-th call; one test sends a real SIGINT. Problems are 2 × 2, as in test_properties, so
each example reuses the compiled shapes.
"""

import os
import signal

import jax
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import dlnode as dln
from dlnode.errors import ArgumentError
from dlnode.flows.flow import get_flow
from dlnode.solvers import driver
from dlnode.solvers.core import Controls

SETTINGS = settings(max_examples=3, deadline=None, derandomize=True)
TIMING = ("compile_time", "run_time", "created")  # attrs that say when and how fast, not what

values = st.lists(st.floats(0.5, 3.0), min_size=1, max_size=2)
problems = st.builds(lambda s, seed: dln.Regression.whitened(sorted(s, reverse=True), 2, 2, seed=seed), values,
                     st.integers(0, 2**32))  # fmt: skip

# the methods and their paths: diffrax, the Rosenbrock–CG layers path, gradient descent, the end-to-end flow in
# singular coordinates (depth inf included), the central flow and the modified flow
CASES = {
    "tsit5": {"method": "tsit5", "depth": [2, 3]},
    "rosenbrock": {"method": "rosenbrock", "depth": [2, 3]},
    "gd": {"method": "gd", "lr": 0.05, "depth": [2, 3]},
    # the curvature's Lanczos start travels in the carry from save to save: a resume keeps it
    "gd+sharpness": {"method": "gd", "lr": 0.05, "depth": [2, 3], "sharpness": 2},
    "rosenbrock+sharpness": {"method": "rosenbrock", "depth": [2, 3], "sharpness": 1},
    "singular": {"method": "rosenbrock", "flow": "end_to_end", "init": "balanced", "scale_of": "product",
                 "depth": [3, "inf"]},
    # the central flow (its saves' Lanczos warm start, its edge rules) at an lr whose edge 2/lr = 4 the larger
    # problems reach
    "central": {"flow": "central", "lr": 0.5, "depth": [2, 3]},
    # the modified flow (its lr-dependent field; the past-edge check reads the final weights of a resumed call too)
    "modified": {"flow": "modified", "lr": 0.5, "depth": [2, 3]},
}  # fmt: skip


def interrupt_at(monkeypatch, *calls):
    """Ctrl-C at the given calls (1-based) of the driver's check between windows, counted over the whole test."""
    seen = {"n": 0}

    def requested(flag):
        seen["n"] += 1
        return seen["n"] in calls

    monkeypatch.setattr(driver, "_interrupt_requested", requested)
    return seen


def assert_bitwise_equal(got: xr.Dataset, want: xr.Dataset) -> None:
    """Identical datasets, every number equal bit for bit (NaN payloads and signed zeros included), timings aside."""
    assert {k: v for k, v in got.attrs.items() if k not in TIMING} == {
        k: v for k, v in want.attrs.items() if k not in TIMING
    }
    got, want = (ds.drop_vars("wall_time").drop_attrs(deep=False) for ds in (got, want))
    xr.testing.assert_identical(got, want)
    for name, var in want.variables.items():
        a, b = np.ascontiguousarray(got[name].values), np.ascontiguousarray(var.values)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name


@pytest.mark.parametrize("case", CASES)
@SETTINGS
@given(problem=problems, scale=st.floats(0.2, 0.8), k=st.integers(1, 4), until_converged=st.booleans())
def test_interrupt_and_resume_equals_an_uninterrupted_run(case, problem, scale, k, until_converged):
    kw = {"scale": scale, "seed": [0, 1], "saveat": 40, "progress": False, **CASES[case]}
    kw["t1"] = None if until_converged else 6.0
    if not case.startswith("gd"):
        kw.update(rtol=1e-6, atol=1e-9)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(driver, "_interrupt_requested", lambda flag: False)
        want = dln.integrate(problem, **kw)
    with pytest.MonkeyPatch.context() as m:
        seen = interrupt_at(m, k)
        first = dln.integrate(problem, **kw)
        if seen["n"] < k:  # the run ended before its k-th window boundary: nothing was interrupted
            assert_bitwise_equal(first, want)
            return
        stopped = first["status"] == int(dln.Status.INTERRUPTED)
        assert stopped.any()
        got = dln.resume(first)
    assert_bitwise_equal(got, want)
    # the first part is the uninterrupted run's beginning: every save it holds, it holds exactly
    part = want["loss"].sel(depth=first["depth"], time=first["time"])
    held = np.isfinite(first["loss"].values)
    assert np.array_equal(first["loss"].values[held], part.values[held])
    begun = first["status"] != int(dln.Status.PENDING)  # the depths not begun are there, pending, NaN
    assert (first["t_final"] <= want["t_final"].sel(depth=first["depth"])).where(begun, True).all()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_run_stopped_at_its_subspace_optimum_resumes(k):
    """Depth ∞ on a rectangular W stops at the best fit inside W(0)'s column space (`subspace_optimum`, its floor
    computed before the run): an interrupted run keeps that floor in its checkpoint, and resumes to the same bits."""
    rng = np.random.default_rng(1)
    problem = dln.Factorization(rng.standard_normal((5, 2)) @ rng.standard_normal((2, 3)))
    kw = {"depth": "inf", "flow": "end_to_end", "init": "balanced", "scale": 1e-2, "scale_of": "product",
          "seed": [0, 1], "progress": False}  # fmt: skip
    with pytest.MonkeyPatch.context() as m, pytest.warns(UserWarning, match="keeps W"):
        m.setattr(driver, "_interrupt_requested", lambda flag: False)
        want = dln.integrate(problem, **kw)
    assert (want["status"] == int(dln.Status.SUBSPACE_OPTIMUM)).all()
    with pytest.MonkeyPatch.context() as m, pytest.warns(UserWarning, match="keeps W"):
        interrupt_at(m, k)
        first = dln.integrate(problem, **kw)
        assert (first["status"] == int(dln.Status.INTERRUPTED)).all()
        got = dln.resume(first)
    assert_bitwise_equal(got, want)


def test_a_run_interrupted_twice_resumes_twice(monkeypatch):
    problem = dln.Regression.whitened([2.0, 1.0], 2, 2, seed=0)
    kw = {"depth": [2, 3], "scale": 0.5, "seed": [0, 1], "method": "tsit5", "t1": 6.0, "saveat": 40,
          "rtol": 1e-6, "atol": 1e-9, "progress": False}  # fmt: skip
    want = dln.integrate(problem, **kw)
    interrupt_at(monkeypatch, 1, 3)
    first = dln.integrate(problem, **kw)
    second = dln.resume(first)
    assert (second["status"] == int(dln.Status.INTERRUPTED)).any()
    assert_bitwise_equal(dln.resume(second), want)


@pytest.mark.parametrize(("k", "stopped"), [(1, 2.0), (4, 4.0)])
def test_a_call_whose_depths_run_different_methods_resumes(monkeypatch, k, stopped):
    """auto gives depth 2 tsit5 and depth 4 the singular path here ("per depth"): a Ctrl-C in either depth's run
    resumes to the uninterrupted dataset, method_used included."""
    problem = dln.MatrixCompletion.random((6, 6), 2, 22, seed=2)
    kw = {"depth": [2, 4], "flow": "end_to_end", "init": "balanced", "scale_of": "product", "scale": 1e-8,
          "t1": 50.0, "saveat": 40, "rtol": 1e-7, "atol": 1e-12, "progress": False}  # fmt: skip
    want = dln.integrate(problem, **kw)  # 41 save times: three windows of each depth
    assert want.attrs["method"] == "per depth"
    seen = interrupt_at(monkeypatch, k)
    got = dln.integrate(problem, **kw)
    assert seen["n"] >= k
    assert (got["status"].sel(depth=stopped) == int(dln.Status.INTERRUPTED)).all()
    assert_bitwise_equal(dln.resume(got), want)


def test_scipy_resumes_too(monkeypatch):
    problem = dln.Regression.whitened([2.0, 1.0], 2, 2, seed=0)
    kw = {"depth": 2, "scale": 0.5, "seed": [0, 1], "method": "scipy:LSODA", "t1": 6.0, "saveat": 40,
          "rtol": 1e-6, "atol": 1e-9, "progress": False}  # fmt: skip
    want = dln.integrate(problem, **kw)
    interrupt_at(monkeypatch, 2)
    assert_bitwise_equal(dln.resume(dln.integrate(problem, **kw)), want)


@pytest.fixture(scope="module")
def interrupted():
    problem = dln.Regression.whitened([2.0, 1.0], 2, 2, seed=0)
    with pytest.MonkeyPatch.context() as m:
        interrupt_at(m, 1)
        return dln.integrate(problem, depth=2, scale=0.5, seed=[0, 1], method="tsit5", t1=6.0, saveat=40,
                             rtol=1e-6, atol=1e-9, progress=False)  # fmt: skip


def one_line_error(call, *words):
    with pytest.raises(ArgumentError) as err:
        call()
    text = str(err.value)
    assert "\n" not in text and all(w in text for w in words), text
    return text


def test_what_cannot_be_resumed_is_refused_in_one_line(interrupted, tmp_path):
    assert (interrupted["status"] == int(dln.Status.INTERRUPTED)).any()
    path = tmp_path / "run.nc"
    dln.save(interrupted, path)
    one_line_error(lambda: dln.resume(dln.open(path)), "ds", "no solver state", "2 interrupted runs",
                   "run the same integrate call again")  # fmt: skip
    one_line_error(lambda: dln.resume(interrupted.copy()), "no solver state")
    one_line_error(lambda: dln.resume(interrupted.isel(seed=[0])), "no solver state")
    done = interrupted.assign(status=interrupted["status"] * 0)
    one_line_error(lambda: dln.resume(done), "no interrupted runs")
    one_line_error(lambda: dln.resume("run.nc"), "must be the dataset an interrupted")
    one_line_error(lambda: dln.resume(interrupted, progress="yes"), "progress")


def test_a_dataset_resumes_once(monkeypatch):
    problem = dln.Regression.whitened([2.0, 1.0], 2, 2, seed=0)
    interrupt_at(monkeypatch, 1)
    # more saves than one window of GD's holds, so that the run is interrupted in its first
    first = dln.integrate(problem, depth=2, scale=0.5, seed=[0, 1], method="gd", lr=0.05, t1=60.0, saveat=400,
                          progress=False)  # fmt: skip
    dln.resume(first)
    one_line_error(lambda: dln.resume(first), "resumed already")


def _drive_args():
    problem = dln.Regression.whitened([2.0, 1.0], 2, 2, seed=0)
    y0 = tuple(np.stack([w, w]) for w in dln.init_layers(problem, 2, "gaussian", 0.5, 0))
    ts = np.concatenate([[0.0], np.linspace(0.1, 6.0, 40)])
    controls = Controls(t1=6.0, rtol=1e-6, atol=1e-9, lr=np.nan, loss_tol=-np.inf, diverge=1e12, max_steps=10_000)
    return get_flow("layers", type(problem), 2.0, False), problem.arrays(), y0, ts, controls  # as integrate asks


def test_a_real_ctrl_c_between_windows_gives_a_checkpoint_that_continues_bitwise():
    flow, arrays, y0, ts, controls = _drive_args()
    method = dln.METHODS["tsit5"]
    want = driver.drive(method, flow, arrays, y0, ts, controls)
    assert want.checkpoint is None

    def press_ctrl_c(t, summ):
        os.kill(os.getpid(), signal.SIGINT)  # the driver's handler turns it into its flag: no KeyboardInterrupt

    part = driver.drive(method, flow, arrays, y0, ts, controls, on_window=press_ctrl_c)
    assert (part.status == int(dln.Status.INTERRUPTED)).all() and part.checkpoint is not None
    got = driver.drive(method, flow, arrays, None, None, controls, checkpoint=part.checkpoint)
    for name in ("status", "t_final", "num_steps", "num_rejected", "ts"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    for a, b in zip(*(jax_leaves(s.observed) + jax_leaves(s.final) for s in (got, want)), strict=True):
        assert a.tobytes() == b.tobytes()


def jax_leaves(tree):
    return [np.ascontiguousarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_a_checkpoint_continues_only_its_own_run(monkeypatch):
    flow, arrays, y0, ts, controls = _drive_args()
    interrupt_at(monkeypatch, 1)
    part = driver.drive(dln.METHODS["tsit5"], flow, arrays, y0, ts, controls)
    other = Controls(**{**controls.__dict__, "rtol": 1e-8})
    one_line_error(lambda: driver.drive(dln.METHODS["tsit5"], flow, arrays, None, None, other,
                                        checkpoint=part.checkpoint), "checkpoint", "rtol")  # fmt: skip
    one_line_error(lambda: driver.drive(dln.METHODS["dopri5"], flow, arrays, None, None, controls,
                                        checkpoint=part.checkpoint), "checkpoint", "method")  # fmt: skip
    monkeypatch.setattr(driver, "_interrupt_requested", lambda flag: False)
    assert (
        driver.drive(dln.METHODS["tsit5"], flow, arrays, None, None, controls, checkpoint=part.checkpoint).checkpoint
        is None
    )
    one_line_error(lambda: driver.drive(dln.METHODS["tsit5"], flow, arrays, None, None, controls,
                                        checkpoint=part.checkpoint), "already resumed")  # fmt: skip


@pytest.mark.parametrize("state_max", [None, 0])
def test_gd_windows_hold_more_saves_unless_the_batch_is_large(state_max, monkeypatch):
    """GD's steps are cheap next to a window's round trip, so its windows hold `gd.WINDOW_SAVES` save times; a batch
    of more than `driver.WINDOW_STATE_MAX` state numbers (the control: the limit set to 0) goes back to `WINDOW`, so
    that heavy batches still show progress and take Ctrl-C often. Either way the run is the same, bit for bit."""
    from dlnode.solvers import gd

    if state_max is not None:
        monkeypatch.setattr(driver, "WINDOW_STATE_MAX", state_max)
    flow, arrays, y0, _, _ = _drive_args()
    ts = np.arange(301) * 0.05
    controls = Controls(t1=ts[-1], rtol=1e-6, atol=1e-9, lr=0.05, loss_tol=-np.inf, diverge=1e12, max_steps=10_000)
    windows = []
    got = driver.drive(dln.METHODS["gd"], flow, arrays, y0, ts, controls, on_window=lambda t, s: windows.append(t))
    saves = gd.WINDOW_SAVES if state_max is None else driver.WINDOW
    assert len(windows) == -(-len(ts) // saves)
    if state_max is None:
        monkeypatch.setattr(driver, "WINDOW_STATE_MAX", 0)
        other = driver.drive(dln.METHODS["gd"], flow, arrays, y0, ts, controls)
        for name in ("status", "t_final", "num_steps", "ts"):
            assert np.array_equal(getattr(got, name), getattr(other, name)), name
        for key in got.observed:
            np.testing.assert_array_equal(got.observed[key], other.observed[key], err_msg=key)
