"""Runs whose time stops moving: an escape beyond the resolution of time, and the driver's stall rule.

Depth 3 from a decoupled init of per-layer scale 1e-40: each mode is the balanced scalar flow du/dt = 3u^{4/3}(s − u)
(docs/math.md §3), so d(u^{−1/3})/dt = −(s − u) and the top mode (s = 2, u₀ = 1e-120) escapes at
t* = u₀^{−1/3}/s = 5e39, on the time scale 1/(3s) of its escape. Time carried as a compensated two-float sum resolves
about 2^{−105}·t ≈ 1e8 there: the escape's steps are below what the time can resolve. The state still moves through
the escape (the top mode is learned), the time does not; after it, the stiff steps the solver may take on the next
plateau (h·γ·λ_max ≤ 1e8) are below that resolution too, so the rest of the flow cannot be integrated in float64 and
the run stops as `unresolved` at t*, with the plateau before it kept.

The driver's rule, on a scripted method: a cell whose time does not move fails (`solver_failure`) at once when its
accepted steps leave the state as it was, and after `STALL_WINDOWS` windows in a row when they still change it.
"""

import math

import numpy as np
import pytest

import dlnode as dln
from dlnode.solvers import driver
from dlnode.solvers.core import Controls, Method, Status

TOP, NEXT = 2.0, 1.0
SCALE, DEPTH = 1e-40, 3


def test_an_escape_beyond_the_resolution_of_time_is_learned_and_the_run_says_unresolved():
    prob = dln.Factorization(np.diag([TOP, NEXT]))
    with pytest.warns(UserWarning, match="unresolved"):
        ds = dln.integrate(prob, depth=DEPTH, init="decoupled", scale=SCALE, progress=False)
    assert ds["status"].item() == dln.Status.UNRESOLVED
    escape = (SCALE**DEPTH) ** (-1 / 3) / TOP  # t* of the closed form
    t_final = float(ds["t_final"].item())
    # the escape time to within the run's own tolerance (2.4e-8 off at the default rtol 2e-7; below 1e-9 when the
    # default was tightened to 1e-9 on plateaus)
    assert abs(t_final / escape - 1) < ds.attrs["rtol"]
    assert t_final * 2.0**-105 > 1e6 / (3 * TOP)  # the time's resolution there, against the escape's time scale
    loss = ds["loss"].isel(depth=0, scale=0, seed=0).values
    kept = loss[ds["time"].values <= t_final]
    assert len(kept) > 100 and np.all(np.isfinite(kept))  # the plateau before the escape is kept
    assert math.isclose(kept[-1], kept[0], rel_tol=1e-12)  # still on it at the last save: nothing learned by then
    # the final state went through the escape: the top mode's layers at its balanced value s^{1/N}, the next one
    # still at its initial scale
    final = ds["weights_final"].isel(depth=0, scale=0, seed=0).values
    assert np.allclose([layer[0, 0] for layer in final], TOP ** (1 / DEPTH), rtol=1e-6)
    assert np.allclose([layer[1, 1] for layer in final], SCALE, rtol=1e-3)


def _one_cell(start, advance, summary) -> Method:
    """A scripted method of one cell, 100 attempts a window."""
    return Method(name="scripted", family="test", stiff=False, max_steps=10**9, window_steps=100,
                  supports=lambda flow: None, start=start, advance=advance, summary=summary,
                  final=lambda flow, st: np.zeros((1, 1)))  # fmt: skip


class _Scripted:
    """One cell whose time never moves; `changes` says whether its accepted steps change its loss."""

    def __init__(self, changes: bool) -> None:
        self.changes, self.windows = changes, 0

    def method(self) -> Method:
        def start(flow, y0, arrays, c):
            return {"t": 1e40, "steps": 0, "loss": 1.0}

        def advance(flow, st, arrays, ts, c):
            self.windows += 1
            loss = st["loss"] * (0.5 if self.changes else 1.0)
            st = {"t": st["t"], "steps": st["steps"] + 100, "loss": loss}
            return {"loss": np.full((1, len(ts)), loss)}, {"loss": np.array([loss])}, st

        def summary(st):
            return {"t": np.array([st["t"]]), "steps": np.array([st["steps"]]), "rejected": np.array([0]),
                    "status": np.array([0])}  # fmt: skip

        return _one_cell(start, advance, summary)


# the first window moves the time from 0 to the scripted 1e40; from the second on it stands still
@pytest.mark.parametrize(("changes", "windows"), [(False, 2), (True, driver.STALL_WINDOWS + 2)])
def test_a_cell_whose_time_stops_fails_at_once_unless_its_steps_still_change_its_state(changes, windows):
    script = _Scripted(changes)
    controls = Controls(t1=2e40, rtol=1e-6, atol=1e-9, lr=math.nan, loss_tol=-math.inf, diverge=1e12, max_steps=10**9)
    sol = driver.drive(script.method(), None, {}, np.zeros((1, 1)), np.array([0.0, 2e40]), controls)
    assert int(sol.status[0]) == Status.SOLVER_FAILURE
    assert script.windows == windows


class _Measured:
    """One cell whose summary carries its state's change over each window (as the singular path's does): the first
    window takes its time to 1e40, the next `windows` move it by `rate` of itself and change the state by `change`
    (the loss stays), and the one after reaches the end. 100 attempts a window."""

    def __init__(self, rate: float, change: float | None, windows: int) -> None:
        self.rate, self.change, self.last, self.windows = rate, change, windows + 1, 0

    def method(self) -> Method:
        def start(flow, y0, arrays, c):
            return {"t": 0.0, "steps": 0}

        def advance(flow, st, arrays, ts, c):
            self.windows += 1
            t = 1e40 if self.windows == 1 else st["t"] * (1 + self.rate) if self.windows <= self.last else ts[-1]
            return {"loss": np.ones((1, len(ts)))}, {"loss": np.ones(1)}, {"t": t, "steps": st["steps"] + 100}

        def summary(st):
            out = {"t": np.array([st["t"]]), "steps": np.array([st["steps"]]), "rejected": np.array([0]),
                   "status": np.array([0])}  # fmt: skip
            return out if self.change is None else dict(out, change=np.array([self.change]))

        return _one_cell(start, advance, summary)


def _run_measured(script: _Measured, max_steps: int) -> int:
    controls = Controls(t1=2e40, rtol=1e-6, atol=1e-9, lr=math.nan, loss_tol=-math.inf, diverge=1e12,
                        max_steps=max_steps)  # fmt: skip
    return int(driver.drive(script.method(), None, {}, np.zeros((1, 1)), np.array([0.0, 2e40]), controls).status[0])


def test_a_creep_that_the_budget_left_cannot_carry_to_the_next_save_fails_after_a_few_windows():
    """The creep after case 42's escape (benchmarks/README.md): the time moves by 4e-13 of itself a window, many
    ulps, and the state by 1e-11. With the state's change measured, that stops as `solver_failure` after
    `CREEP_WINDOWS` windows; without it (the ulp rule alone, the negative control) it runs on to its budget."""
    script = _Measured(rate=4e-13, change=1e-11, windows=10**6)
    assert _run_measured(script, max_steps=10**6) == Status.SOLVER_FAILURE
    assert script.windows == driver.CREEP_WINDOWS + 2
    blind = _Measured(rate=4e-13, change=None, windows=10**6)
    assert _run_measured(blind, max_steps=10**4) == Status.MAX_STEPS
    assert blind.windows == 100


def test_a_slow_time_that_the_budget_can_carry_or_a_state_that_still_moves_is_not_a_creep():
    """The same creep with a budget whose windows at that rate would reach the next save time goes on (and here
    reaches it); so does an escape whose time stands still while its state changes by 3 a window, where the ulp
    rule alone (no change measured: the loss did not move) fails it at once."""
    slow = _Measured(rate=4e-13, change=1e-11, windows=20)
    assert _run_measured(slow, max_steps=10**16) == Status.FINISHED and slow.windows == 22
    escape = _Measured(rate=0.0, change=3.0, windows=20)
    assert _run_measured(escape, max_steps=10**6) == Status.FINISHED and escape.windows == 22
    blind = _Measured(rate=0.0, change=None, windows=20)
    assert _run_measured(blind, max_steps=10**6) == Status.SOLVER_FAILURE and blind.windows == 2
