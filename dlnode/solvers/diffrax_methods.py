"""diffrax's adaptive Runge–Kutta methods (`tsit5`, `dopri5`, `dopri8`, `kvaerno5`), window by window.

Each window is one ``diffeqsolve`` from the time a cell reached to the window's last save time, with PID step
control, the convergence and divergence events of the shared stop rule, and at most `WINDOW_STEPS` steps; the
driver carries the state between windows. t, save times, tolerances and thresholds are traced arguments.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from dlnode.flows.flow import Flow
from dlnode.solvers.core import RUNNING, Method, Status, batched, by_cell, call, repeated, stop_flags
from dlnode.solvers.stepping import lanczos_start

__all__ = ["DIFFRAX"]

# diffrax's solvers by name: diffrax (with equinox) loads with the first run of one of them, not with `import dlnode`
SOLVERS = {"tsit5": "Tsit5", "dopri5": "Dopri5", "dopri8": "Dopri8", "kvaerno5": "Kvaerno5"}
WINDOW_STEPS = 4096  # steps per diffeqsolve (static: diffrax sizes its loop by it)
# ... of the central flow, whose every field evaluation holds a Lanczos solve (a 4096-step window of an 8 × 8
# completion's central flow took 110 s, so long between the driver's checks, Ctrl-C and the progress bar)
CENTRAL_WINDOW_STEPS = 256
# cells of at least this many unknowns run one at a time (`core.by_cell`), smaller ones as one vmapped batch (see
# benchmarks/batch_cells.py and docs/solvers.md). Measured
# with tsit5 on a quiet 2-core CPU, 8 cells (Gaussian init 1e-1 and 1e-2 × 4 seeds, completions with 20 % observed),
# run time of the vmapped batch against one at a time: 20 × 20 at depth 2 (800 unknowns) 0.33 s / 0.50 s, 30 × 30
# (1800) 0.66 / 0.66 s, 40 × 40 (3200) 0.90 / 0.94 s, 60 × 60 (7200) 4.8 / 1.9 s, 100 × 100 at depth 2 63 / 7.8 s;
# at depth 1 the batch stays ahead (60 × 60: 0.46 / 0.81 s, 100 × 100: 1.5 / 1.8 s), a second or less lost there.
ALONE_UNKNOWNS = 4000
_SWAP = threading.Lock()  # one trace at a time swaps equinox's check (threads of a Dask worker trace concurrently)


@cache
def _nan_checks() -> Callable | None:
    """equinox's jitted runtime check with its default mode set to NaN, or None where equinox has no such function."""
    try:
        import equinox as eqx
        from equinox import _errors
    except ImportError:  # pragma: no cover - equinox comes with diffrax
        return None
    impl = getattr(_errors, "branched_error_if_impl", None)
    if impl is None or not hasattr(_errors, "branched_error_if_impl_jit"):
        return None

    def checks(x: Any, pred: Any, index: Any, msgs: Any, *, on_error: str) -> Any:
        return impl(x, pred, index, msgs, on_error="nan" if on_error == "default" else on_error)

    return eqx.filter_jit(checks)


@contextlib.contextmanager
def _checks_in_graph() -> Iterator[None]:
    """Trace-time scope in which equinox's runtime checks (`eqx.error_if`) poison their output with NaN instead of
    raising through a host callback, unless the user set ``EQX_ON_ERROR`` themselves.

    A host callback in the compiled window keeps JAX from storing it in its persistent compilation cache, so every
    process compiled diffrax's methods anew (measured: tsit5's warm compile 3.15 s with the callback, 1.76 s without,
    benchmarks/README.md "Compile targets"). The checks a window traces cannot fire here: its save times are clipped
    into [t0, t1] and increase, and ``throw=False`` hands diffrax's own result code to `_status`; were one to fire,
    its NaN makes the cell's state non-finite, which `window` reports as ``solver_failure``. equinox's jitted check
    is swapped for one of its own (a separate trace cache: a check traced here never serves a user's call, nor theirs
    ours) while dlnode traces its window, one thread at a time; where equinox lacks that function nothing changes.
    """
    checks = None if "EQX_ON_ERROR" in os.environ else _nan_checks()
    if checks is None:
        yield
        return
    from equinox import _errors

    with _SWAP:
        before = _errors.branched_error_if_impl_jit
        _errors.branched_error_if_impl_jit = checks
        try:
            yield
        finally:
            _errors.branched_error_if_impl_jit = before


def _alone(y: Any) -> bool:
    """Whether cells of state `y` (a batch) are large enough to run one at a time (`core.by_cell`)."""
    return sum(int(np.prod(np.shape(a)[1:])) for a in jax.tree_util.tree_leaves(y)) >= ALONE_UNKNOWNS


def _status(result: Any, converged: Any) -> Any:
    """diffrax's result → RUNNING (reached the window's end or its step budget), CONVERGED, DIVERGED or
    SOLVER_FAILURE."""
    import diffrax

    event = Status.where(converged, Status.CONVERGED, jnp.int64(Status.DIVERGED))
    ok = (result == diffrax.RESULTS.successful) | (result == diffrax.RESULTS.max_steps_reached)
    failed = Status.where(result == diffrax.RESULTS.event_occurred, event, jnp.int64(Status.SOLVER_FAILURE))
    return Status.where(ok, RUNNING, failed)


@cache
def _functions(name: str, flow: Flow, window_steps: int = WINDOW_STEPS) -> tuple[Callable, Callable, Callable]:
    import diffrax

    term = diffrax.ODETerm(flow.field)
    solver = getattr(diffrax, SOLVERS[name])()

    def start(y0: Any, arrays: dict, c: dict) -> dict:
        args = flow.prepare(y0, arrays, c)
        zero = jnp.zeros((), jnp.int64)
        return {"y": y0, "t": jnp.zeros(()), "steps": zero, "rejected": zero, "status": zero, "args": args,
                "loss0": flow.loss(y0, args), "start": lanczos_start(flow, ravel_pytree(y0)[0])}  # fmt: skip

    # A flow that saves the curvature is observed after the solve, save after save, each save's Lanczos warm-started
    # from the last save's Ritz vectors as the in-house methods do (docs/finite-step.md §1): diffrax's save function
    # sees one state alone. Other flows are observed by diffrax at the save times.
    warm = flow.observe_warm is not None

    def window(st: dict, arrays: dict, ts: Any, c: dict) -> tuple:
        args, loss0, t0 = st["args"], st["loss0"], st["t"]
        active = (st["status"] == RUNNING) & (ts[-1] > t0) & (st["steps"] + st["rejected"] < c["max_steps"])
        # an inactive cell integrates a dummy sliver and keeps its state (vmap runs every cell's loop anyway)
        t1 = jnp.where(active, ts[-1], t0 + jnp.maximum(jnp.abs(t0), 1.0) * 1e-6)
        saves = jnp.clip(ts, t0, t1)

        def stop(t, y, args, **kwargs):  # one loss evaluation a step for both flags; which one held is read after
            converged, diverged = stop_flags(flow.loss(y, args), loss0, arrays["loss_min"], c)
            return converged | diverged

        observed = (lambda t, y, args: y) if warm else (lambda t, y, args: flow.observe(y, args))
        at_save = diffrax.SubSaveAt(ts=saves, fn=observed)
        saveat = diffrax.SaveAt(subs=[at_save, diffrax.SubSaveAt(t1=True)])
        with _checks_in_graph():
            sol = diffrax.diffeqsolve(
                term, solver, t0, t1, None, st["y"], args, saveat=saveat,
                stepsize_controller=diffrax.PIDController(rtol=c["rtol"], atol=c["atol"]),
                event=diffrax.Event(stop), max_steps=window_steps, throw=False,
                adjoint=diffrax.ForwardMode(),
            )  # fmt: skip
        y1 = jax.tree_util.tree_map(lambda a: a[0], sol.ys[1])
        t_end = sol.ts[1][0]
        ok_state = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(y1)]))
        converged_at_end = stop_flags(flow.loss(y1, args), loss0, arrays["loss_min"], c)[0]
        status = _status(sol.result, converged_at_end)
        status = Status.where(~ok_state & (status == RUNNING), Status.SOLVER_FAILURE, status)

        def keep(new, old):
            return jnp.where(active, new, old)

        new = dict(
            st,
            y=jax.tree_util.tree_map(keep, y1, st["y"]),
            t=keep(t_end, t0),
            steps=st["steps"] + jnp.where(active, sol.stats["num_accepted_steps"], 0),
            rejected=st["rejected"] + jnp.where(active, sol.stats["num_rejected_steps"], 0),
            status=keep(status, st["status"]).astype(jnp.int64),
        )
        # saves at the start time are the state itself (diffrax fills saves of a failed first step with inf)
        at_start = ts <= t0

        def at_start_or(saved: Any, now: Any) -> Any:
            return jnp.where(at_start.reshape((-1,) + (1,) * (saved.ndim - 1)), now[None], saved)

        if not warm:
            obs = jax.tree_util.tree_map(at_start_or, sol.ys[0], flow.observe(st["y"], args))
            return obs, flow.observe(new["y"], args), new
        # a save the solve did not reach is inf in diffrax's output; observe the state it ended at there instead (the
        # driver reads reached saves only), so that no inf reaches the Lanczos solve or LAPACK
        reached = (saves <= t_end).reshape(-1)
        ys = jax.tree_util.tree_map(
            lambda saved, end: jnp.where(reached.reshape((-1,) + (1,) * (saved.ndim - 1)), saved, end[None]),
            sol.ys[0], y1,
        )  # fmt: skip
        ys = jax.tree_util.tree_map(at_start_or, ys, st["y"])
        repeats = repeated(ts)  # a repeated save time holds the same state: observed once
        shapes = jax.eval_shape(lambda y: flow.observe_warm(y, args, st["start"])[0], st["y"])
        blank = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)  # never read: ts[0] no repeat

        def save(carry: tuple, x: tuple) -> tuple[tuple, dict]:
            start, previous = carry
            y, repeat = x
            obs, start = jax.lax.cond(repeat, lambda y: (previous, start),
                                      lambda y: flow.observe_warm(y, args, start), y)  # fmt: skip
            return (start, obs), obs

        (start, _), obs = jax.lax.scan(save, (st["start"], blank), (ys, repeats))
        end_obs, start = flow.observe_warm(new["y"], args, start)
        return obs, end_obs, dict(new, start=start)

    def final(st: dict) -> Any:
        return st["y"]

    return batched(start, window, final)


def _summary(st: dict) -> dict[str, np.ndarray]:
    st = jax.device_get({k: st[k] for k in ("t", "steps", "rejected", "status")})
    return {k: np.asarray(v) for k, v in st.items()}


def _window(c: dict, flow: Flow) -> int:
    """Steps per diffeqsolve: `WINDOW_STEPS` (`CENTRAL_WINDOW_STEPS` for the central flow), or the whole budget when
    that is smaller (a small budget is then never overrun; a larger one by less than one window, since the driver
    checks it between windows)."""
    return int(min(CENTRAL_WINDOW_STEPS if flow.name == "central" else WINDOW_STEPS, c["max_steps"]))


def _method(name: str) -> Method:
    def supports(flow: Flow) -> str | None:
        return None

    return Method(
        name=name, family="diffrax", stiff=name == "kvaerno5", max_steps=200_000, window_steps=WINDOW_STEPS,
        supports=supports,
        start=lambda flow, y0, arrays, c: by_cell(lambda y: call(_functions(name, flow)[0], y, arrays, c), y0,
                                                  _alone(y0)),
        advance=lambda flow, st, arrays, ts, c: by_cell(
            lambda b: call(_functions(name, flow, _window(c, flow))[1], b, arrays, ts, c), st, _alone(st["y"])),
        summary=_summary,
        final=lambda flow, st: by_cell(lambda b: call(_functions(name, flow)[2], b), st, _alone(st["y"])),
    )  # fmt: skip


DIFFRAX = {name: _method(name) for name in SOLVERS}
