"""One registry of integration methods, one result type.

Every method integrates a batch of initial layer tuples (leading batch axis) of one shape and returns a
`Solution`: observables at the save times (see `flows.Flow`), the final states, a `status` per run
(0 reached t1, 1 converged early, −1 max steps, −2 non-finite or diverged, −3 solver failure), the time each
run reached, and step counts. This is the only module that imports diffrax or scipy.integrate.

- diffrax (`tsit5`, `dopri5`, `dopri8`, `kvaerno5`): PID step-size control, vmapped over the batch, jitted once
  per (method, problem kind, shapes); t1, save times, tolerances and stopping thresholds are traced arguments.
- scipy (`scipy:RK45`, `scipy:LSODA`, `scipy:BDF`, `scipy:Radau`): the float64 reference; a jitted right-hand
  side and, for the implicit methods, the jitted Jacobian −∇²L.
- `rosenbrock`: RODAS3, a linearly implicit (L-stable) Rosenbrock method of order 3 with matrix-free CG stage
  solves on Hessian-vector products, for stiff small-init flows through every plateau (see `rosenbrock`); on
  ``end_to_end`` flows Shampine's order-4 Rosenbrock method in singular coordinates (U, ln σ, V) with dense LU
  (see `dlnode.solvers.singular`).
- `gd`: explicit Euler with constant step lr, i.e. gradient descent exactly; step k sits at time t = k·lr.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from functools import cache
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import scipy.integrate
from jax.flatten_util import ravel_pytree

from ..flows import Flow, layer_gradients
from . import rosenbrock, singular
from .core import MESSAGES, TRACE_COUNT, Controls, Solution, Status, stop_flags

__all__ = ["METHODS", "solve"]

# ----------------------------------------------------------------------------------------------- diffrax
_DIFFRAX = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "kvaerno5": diffrax.Kvaerno5,
}


def _status(result: Any, converged_event: Any) -> Any:
    """diffrax's result code → dlnode status (0, 1, −1, −2, −3)."""
    event = jnp.where(converged_event, 1, -2)
    failure = jnp.where(result == diffrax.RESULTS.max_steps_reached, -1, -3)
    return jnp.where(
        result == diffrax.RESULTS.successful, 0, jnp.where(result == diffrax.RESULTS.event_occurred, event, failure)
    )


@cache
def _diffrax_batch(name: str, flow: Flow, max_steps: int) -> Callable:
    term = diffrax.ODETerm(flow.field)
    solver = _DIFFRAX[name]()

    def one(y0: Any, arrays: dict, ts: Any, c: dict) -> tuple:
        TRACE_COUNT["n"] += 1
        args = flow.prepare(y0, arrays, c)
        loss0 = flow.loss(y0, args)

        def converged(t, y, args, **kwargs):
            return stop_flags(flow.loss(y, args), loss0, arrays["loss_min"], c)[0]

        def diverged(t, y, args, **kwargs):
            return stop_flags(flow.loss(y, args), loss0, arrays["loss_min"], c)[1]

        saveat = diffrax.SaveAt(
            subs=[diffrax.SubSaveAt(ts=ts, fn=lambda t, y, args: flow.observe(y, args)), diffrax.SubSaveAt(t1=True)]
        )
        sol = diffrax.diffeqsolve(
            term, solver, 0.0, c["t1"], None, y0, args, saveat=saveat,
            stepsize_controller=diffrax.PIDController(rtol=c["rtol"], atol=c["atol"]),
            event=diffrax.Event([converged, diverged]), max_steps=max_steps, throw=False,
            adjoint=diffrax.ForwardMode(),
        )  # fmt: skip
        final = jax.tree_util.tree_map(lambda a: a[0], sol.ys[1])
        stats = (sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"])
        status = _status(sol.result, sol.event_mask[0])
        return sol.ys[0], flow.observe(final, args), final, status, sol.ts[1][0], stats

    return jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))


# ---------------------------------------------------------------------------------------------------- gd
@cache
def _gd_batch(problem_cls: type, flow: Flow) -> Callable:
    """Gradient descent W_j ← W_j − lr·G_j, observed after `steps[k]` steps for every save index k."""

    def one(y0: tuple, arrays: dict, steps: Any, c: dict) -> tuple:
        TRACE_COUNT["n"] += 1
        args = flow.prepare(y0, arrays, c)
        loss0 = flow.loss(y0, args)

        def body(carry):
            y, n, status = carry
            grads, w, e = layer_gradients(y, problem_cls.grad_fn, arrays)
            converged, diverged = stop_flags(problem_cls.loss_from_grad(w, e, arrays), loss0, arrays["loss_min"], c)
            status = jnp.where(diverged, -2, jnp.where(converged, 1, 0)).astype(jnp.int64)
            go = status == 0
            y = tuple(jnp.where(go, a - c["lr"] * g, a) for a, g in zip(y, grads, strict=True))
            n = n + go
            return y, n, jnp.where(go & (n >= c["max_steps"]), -1, status).astype(jnp.int64)

        def advance(carry, target):
            carry = jax.lax.while_loop(lambda cr: (cr[1] < target) & (cr[2] == 0), body, carry)
            return carry, flow.observe(carry[0], args)

        init = (y0, jnp.zeros((), jnp.int64), jnp.zeros((), jnp.int64))
        (final, n, status), obs = jax.lax.scan(advance, init, steps)
        status = jnp.where((status == 0) & (n < steps[-1]), -1, status)
        t_final = n.astype(jnp.float64) * c["lr"]
        return obs, flow.observe(final, args), final, status, t_final, (n, jnp.full((), -1, jnp.int64))

    return jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))


# ------------------------------------------------------------------------------------------------- scipy
_SCIPY = {"scipy:RK45": "RK45", "scipy:LSODA": "LSODA", "scipy:BDF": "BDF", "scipy:Radau": "Radau"}
_SCIPY_IMPLICIT = {"scipy:LSODA", "scipy:BDF", "scipy:Radau"}


@cache
def _scipy_functions(flow: Flow, template: tuple) -> dict[str, Callable]:
    """Jitted flat right-hand side, its Jacobian (−∇²L for gradient flows), loss and observables."""
    _, unravel = ravel_pytree(jax.tree_util.tree_unflatten(template[0], [jnp.zeros(s) for s in template[1]]))

    def rhs(y, args):
        TRACE_COUNT["n"] += 1
        return ravel_pytree(flow.field(0.0, unravel(y), args))[0]

    fns = {
        "rhs": rhs,
        "jac": jax.jacfwd(rhs),
        "loss": lambda y, args: flow.loss(unravel(y), args),
        "obs": lambda ys, args: jax.vmap(lambda y: flow.observe(unravel(y), args))(ys),
        "args": lambda y0, arrays, c: flow.prepare(unravel(y0), arrays, c),
    }
    out = {k: jax.jit(f) for k, f in fns.items()}
    out["unravel"] = unravel
    return out


def _scipy_one(method: str, fns: dict, y0: np.ndarray, args: dict, ts: np.ndarray, c: dict) -> dict[str, Any]:
    """Step one scipy solver by hand: dense output fills the save times, stop tests run after every step."""
    kwargs = {"rtol": c["rtol"], "atol": c["atol"]}
    if method in _SCIPY_IMPLICIT:
        kwargs["jac"] = lambda t, y: np.asarray(fns["jac"](y, args))
    rhs = fns["rhs"]
    solver = getattr(scipy.integrate, _SCIPY[method])(lambda t, y: np.asarray(rhs(y, args)), 0.0, y0, c["t1"], **kwargs)
    loss0, loss_min = float(fns["loss"](y0, args)), float(args["problem"]["loss_min"])
    saved = np.full((len(ts), y0.size), np.nan)
    k = int(np.searchsorted(ts, 0.0, side="right"))
    saved[:k] = y0
    steps, status = 0, 0
    while solver.status == "running":
        solver.step()
        if solver.status == "failed":
            status = -3
            break
        steps += 1
        interp = solver.dense_output()
        while k < len(ts) and ts[k] <= solver.t:
            saved[k] = interp(ts[k])
            k += 1
        converged, diverged = stop_flags(float(fns["loss"](solver.y, args)), loss0, loss_min, c)
        if diverged or converged or steps >= c["max_steps"]:
            status = -2 if diverged else (1 if converged else -1)
            break
    return {"saved": saved, "y": solver.y, "t": solver.t, "status": status, "steps": steps}


def _solve_scipy(method: str, flow: Flow, y0: Any, arrays: dict, ts: np.ndarray, c: dict) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(y0)
    fns = _scipy_functions(flow, (treedef, tuple(tuple(a.shape[1:]) for a in leaves)))
    cells = [jax.tree_util.tree_map(lambda a, b=b: a[b], y0) for b in range(leaves[0].shape[0])]
    flat0 = [np.asarray(ravel_pytree(cell)[0]) for cell in cells]
    args = [fns["args"](f, arrays, c) for f in flat0]
    compile_start = time.perf_counter()
    fns["rhs"](flat0[0], args[0]).block_until_ready()
    if method in _SCIPY_IMPLICIT:
        fns["jac"](flat0[0], args[0]).block_until_ready()
    compile_time = time.perf_counter() - compile_start
    start = time.perf_counter()
    runs = [_scipy_one(method, fns, f, a, ts, c) for f, a in zip(flat0, args, strict=True)]
    wall = time.perf_counter() - start

    def stacked(states):  # per-cell observables of (T, n) flat states, stacked over cells
        obs = [jax.device_get(fns["obs"](jnp.asarray(np.nan_to_num(y)), a)) for y, a in zip(states, args, strict=True)]
        return jax.tree_util.tree_map(lambda *x: np.stack(x), *obs)

    finals = [jax.tree_util.tree_map(np.asarray, fns["unravel"](jnp.asarray(r["y"]))) for r in runs]
    raw = {
        "obs": stacked([r["saved"] for r in runs]),
        "end_obs": jax.tree_util.tree_map(lambda a: a[:, 0], stacked([r["y"][None] for r in runs])),
        "final": jax.tree_util.tree_map(lambda *x: np.stack(x), *finals),
        "status": np.array([r["status"] for r in runs]), "t_final": np.array([r["t"] for r in runs]),
        "steps": np.array([r["steps"] for r in runs]), "rejected": np.full(len(runs), -1),
    }  # fmt: skip
    return raw, wall, compile_time


# -------------------------------------------------------------------------------------------------- solve
METHODS: tuple[str, ...] = (*_DIFFRAX, "rosenbrock", *_SCIPY, "gd")


def _compile(fn: Callable, args: tuple) -> tuple[Callable, float]:
    """Ahead-of-time compile `fn` for `args` (cached per abstract signature); returns (compiled, seconds)."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    key = (fn, treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x)))) for x in leaves))
    if key in _COMPILED:
        return _COMPILED[key], 0.0
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    _COMPILED[key] = compiled
    return compiled, time.perf_counter() - start


_COMPILED: dict = {}


def _controls_tree(c: Controls) -> dict[str, Any]:
    return {k: np.float64(v) for k, v in dataclasses.asdict(c).items()}


def solve(
    method: str,
    flow: Flow,
    problem_cls: type,
    arrays: dict,
    y0: Any,
    ts: np.ndarray,
    controls: Controls,
) -> Solution:
    """Integrate a batch of initial states `y0` (a pytree whose leaves have the batch as leading axis: the layer
    tuple, or the end-to-end matrix) under `flow` and observe at `ts`.

    For ``gd`` (per-layer flows only) the save times are rounded to whole steps, t = k·lr.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    c = _controls_tree(controls)
    if method in _SCIPY:
        raw, wall, compile_time = _solve_scipy(method, flow, y0, arrays, ts, c)
        return _finish(raw, ts, wall, compile_time, None)
    step = None
    if method == "gd":
        step = np.rint(ts / controls.lr).astype(np.int64)
        fn, data = _gd_batch(problem_cls, flow), step
    elif method == "rosenbrock" and flow.name == "end_to_end":
        fn, data = singular.make_batch(flow, int(controls.max_steps)), ts
        y0 = singular.initial_coordinates(flow, y0, arrays)
    elif method == "rosenbrock":
        fn, data = rosenbrock.make_batch(flow, int(controls.max_steps)), ts
    else:
        fn, data = _diffrax_batch(method, flow, int(controls.max_steps)), ts
    args = (jax.tree_util.tree_map(jnp.asarray, y0), jax.tree_util.tree_map(jnp.asarray, arrays), jnp.asarray(data), c)
    compiled, compile_time = _compile(fn, args)
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    wall = time.perf_counter() - start
    obs, end_obs, final, status, t_final, (steps, rejected) = jax.device_get(out)
    raw = {"obs": obs, "end_obs": end_obs, "final": final, "status": status, "t_final": t_final, "steps": steps,
           "rejected": rejected}  # fmt: skip
    return _finish(raw, ts if step is None else step * controls.lr, wall, compile_time, step)


def _finish(raw: dict, ts: np.ndarray, wall: float, compile_time: float, step: np.ndarray | None) -> Solution:
    """Past the time a run reached: hold the converged state (status 1), NaN otherwise (nothing invented)."""
    status, t_final = np.asarray(raw["status"], dtype=np.int64), np.asarray(raw["t_final"], dtype=np.float64)
    after = ts[None, :] > t_final[:, None] * (1 + 1e-12)
    held = status == 1

    def fill(saved, end):  # (batch, time, ...) and (batch, ...)
        saved = np.array(saved, dtype=np.float64)
        for b in range(saved.shape[0]):
            saved[b, after[b]] = np.asarray(end)[b] if held[b] else np.nan
        return saved

    observed = jax.tree_util.tree_map(fill, raw["obs"], raw["end_obs"])
    return Solution(
        ts=np.asarray(ts, dtype=np.float64), observed=observed,
        final=jax.tree_util.tree_map(np.asarray, raw["final"]), status=status, t_final=t_final,
        num_steps=np.asarray(raw["steps"], dtype=np.int64), num_rejected=np.asarray(raw["rejected"], dtype=np.int64),
        wall_time=wall, compile_time=compile_time, messages=tuple(MESSAGES[Status(int(v))] for v in status), step=step,
    )  # fmt: skip
