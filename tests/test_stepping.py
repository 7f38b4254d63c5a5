"""The shared windowed loop (`solvers.stepping`): a method written as one `step` gets the save times, the budgets
and the stop rule of every in-house method, checked on explicit Euler for y' = −y (closed form (1 − h)ⁿ)."""

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from dlnode.solvers.core import RUNNING, Status
from dlnode.solvers.gd import FixedStep
from dlnode.solvers.rosenbrock import LayerRosenbrock
from dlnode.solvers.singular import SingularRosenbrock
from dlnode.solvers.stepping import SteppingMethod, compiled


class _Carry(NamedTuple):
    y: Any
    n: Any
    steps: Any
    rejected: Any
    status: Any


@dataclass(frozen=True)
class Euler(SteppingMethod):
    """y' = −y with step h; stops as CONVERGED once y < stop."""

    h: float
    stop: float = 0.0

    def start(self, y0, arrays, c):
        zero = jnp.zeros((), jnp.int64)
        return {"s": _Carry(y0, zero, zero, zero, zero), "h": jnp.asarray(self.h)}

    def step(self, s, st, target, arrays, c):
        y = s.y * (1.0 - st["h"])
        status = jnp.where(y < self.stop, int(Status.CONVERGED), RUNNING).astype(jnp.int64)
        return _Carry(y, s.n + 1, s.steps + 1, s.rejected, status)

    def short(self, s, target):
        return s.n < target

    def targets(self, ts, st):
        return jnp.rint(ts / st["h"]).astype(jnp.int64)

    def observe(self, s, st, arrays):
        return {"y": s.y, "n": s.n}

    def end_window(self, s0, s, st, arrays, c):
        return s._replace(rejected=s.rejected - 1)  # marks that the hook ran once per window

    def final(self, st):
        return st["s"].y


def _run(method, ts, max_steps=1e9, window_steps=1e9, y0=(1.0, 2.0)):
    start, window, final = compiled(method)
    c = {"max_steps": np.float64(max_steps), "window_steps": np.float64(window_steps)}
    st = start(jnp.asarray(y0), {}, c)
    obs, last, st = window(st, {}, jnp.asarray(ts), c)
    return obs, last, st, final(st)


def test_a_method_of_one_step_lands_on_every_save_time():
    h = 0.125
    ts = np.array([0.0, 0.25, 1.0, 1.0, 2.5])  # padded as the driver pads, by repeating the last time
    obs, last, st, y = _run(Euler(h), ts)
    n = np.rint(ts / h).astype(int)
    np.testing.assert_array_equal(np.asarray(obs["n"]), np.stack([n, n]))
    np.testing.assert_array_equal(np.asarray(obs["y"]), np.outer([1.0, 2.0], (1 - h) ** n))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(last["y"]))
    assert (np.asarray(st["s"].rejected) == -1).all()  # end_window ran once


@dataclass(frozen=True)
class CountingEuler(Euler):
    """`Euler` whose every observation adds 100 to the carry's `rejected` (as `FixedStep` carries its Lanczos start
    from one observation to the next)."""

    def observed(self, s, st, arrays):
        return s._replace(rejected=s.rejected + 100), self.observe(s, st, arrays)


def test_a_repeated_save_time_is_observed_once():
    """The driver pads a window by repeating its last time; a repeat takes no step, so its observables are the last
    ones and are not computed again (with the curvature, a Lanczos solve each). Control: the same number of distinct
    times observes each of them. (100 per observation, the end-of-window one included, and −1 from `end_window`.)"""
    repeated = np.array([0.0, 0.25, 1.0, 1.0, 2.5])
    obs, _, st, _ = _run(CountingEuler(0.125), repeated)
    assert (np.asarray(st["s"].rejected) == 5 * 100 - 1).all()
    np.testing.assert_array_equal(np.asarray(obs["y"])[:, 3], np.asarray(obs["y"])[:, 2])
    _, _, st, _ = _run(CountingEuler(0.125), np.array([0.0, 0.25, 1.0, 1.5, 2.5]))
    assert (np.asarray(st["s"].rejected) == 6 * 100 - 1).all()


def test_the_budgets_bound_the_attempts_of_a_window_and_of_the_run():
    ts = np.array([0.0, 10.0])
    _, last, st, _ = _run(Euler(0.125), ts, window_steps=3)
    assert (np.asarray(last["n"]) == 3).all()  # three attempts in this window, then back to the driver
    _, last, st, _ = _run(Euler(0.125), ts, max_steps=5)
    assert (np.asarray(last["n"]) == 5).all()


def test_a_stop_ends_the_cell_alone():
    ts = np.array([0.0, 10.0])
    _, last, st, _ = _run(Euler(0.5, stop=0.3), ts)  # y = 1·0.5ⁿ < 0.3 at n = 2; 2·0.5ⁿ at n = 3
    np.testing.assert_array_equal(np.asarray(last["n"]), [2, 3])
    np.testing.assert_array_equal(np.asarray(st["s"].status), [Status.CONVERGED] * 2)


def test_the_in_house_methods_are_stepping_methods():
    for cls in (FixedStep, LayerRosenbrock, SingularRosenbrock):
        assert issubclass(cls, SteppingMethod)
        for name in ("start", "step", "short", "observe", "final"):
            assert getattr(cls, name) is not getattr(SteppingMethod, name), (cls, name)


def _cells_alone_and_together(**kw):
    import dlnode as dln

    prob = dln.MatrixCompletion.random(shape=(6, 6), rank=2, observed=24, seed=1)
    init = "balanced" if kw.get("flow") == "end_to_end" else "gaussian"
    # rtol and atol given: by default they follow the smallest scale of the call
    kw = dict(depth=3, init=init, seed=0, t1=400.0, rtol=1e-6, atol=1e-12, saveat=np.linspace(0.0, 400.0, 21),
              progress=False, **kw)  # fmt: skip
    together = dln.integrate(prob, scale=[1e-1, 1e-3], **kw)
    alone = [dln.integrate(prob, scale=s, **kw) for s in (1e-1, 1e-3)]
    return together, alone


def test_a_cell_of_a_stiff_batch_steps_as_it_would_alone():
    """The adaptive stiff paths run a batch's cells one at a time (`one_cell_at_a_time`): a cell's steps, and so its
    trajectory to the bit, do not depend on the other cells of its call (in a vmapped batch, the layer path's
    explicit/implicit switch was the stiffest cell's for all)."""
    for flow in ("layers", "end_to_end"):
        together, alone = _cells_alone_and_together(method="rosenbrock", flow=flow)
        for i, single in enumerate(alone):
            cell = together.isel(scale=i)
            assert int(cell["num_steps"].item()) == int(single["num_steps"].item()), flow
            np.testing.assert_array_equal(cell["loss"].values.ravel(), single["loss"].values.ravel(), err_msg=flow)


def test_a_large_cell_of_a_diffrax_batch_runs_alone():
    """diffrax's methods run cells of `ALONE_UNKNOWNS` or more one at a time: such a cell's trajectory is the same to
    the bit in a call of several cells and alone."""
    import dlnode as dln
    from dlnode.solvers.diffrax_methods import ALONE_UNKNOWNS

    prob = dln.Factorization(np.random.default_rng(0).normal(size=(45, 45)))
    assert 2 * 45 * 45 >= ALONE_UNKNOWNS
    kw = dict(depth=2, init="gaussian", seed=0, t1=2.0, rtol=1e-6, atol=1e-10, saveat=np.linspace(0.0, 2.0, 5),
              method="tsit5", progress=False)  # fmt: skip
    together = dln.integrate(prob, scale=[1e-1, 1e-2], **kw)
    for i, s in enumerate((1e-1, 1e-2)):
        single = dln.integrate(prob, scale=s, **kw)
        np.testing.assert_array_equal(together.isel(scale=i)["loss"].values.ravel(), single["loss"].values.ravel())
