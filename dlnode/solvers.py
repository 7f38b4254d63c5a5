"""One registry of integration methods, one result type.

Every method integrates a batch of initial layer tuples (leading batch axis) of one shape and returns a
`Solution`: observables at the save times (see `flows.observables`), the final layers, a `status` per run
(0 reached t1, 1 converged early, −1 max steps, −2 non-finite or diverged, −3 solver failure), the time each
run reached, and step counts. This is the only module that imports diffrax or scipy.integrate.

- diffrax (`tsit5`, `dopri5`, `dopri8`, `kvaerno5`): PID step-size control, vmapped over the batch, jitted once
  per (method, problem kind, shapes); t1, save times, tolerances and stopping thresholds are traced arguments.
- scipy (`scipy:RK45`, `scipy:LSODA`, `scipy:BDF`, `scipy:Radau`): the float64 reference; a jitted right-hand
  side and, for the implicit methods, the jitted Jacobian −∇²L.
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

from .flows import flat_problem, initial_balancedness, layer_gradients, make_layer_field, observables

__all__ = ["METHODS", "STATUS", "Solution", "TRACE_COUNT", "solve"]

STATUS = {0: "finished", 1: "converged", -1: "max_steps", -2: "diverged", -3: "solver_failure"}

# Incremented each time a solver body is traced: tests use it to show that new t1/rtol/lr/save times reuse
# the compiled code.
TRACE_COUNT = {"n": 0}


@dataclasses.dataclass(frozen=True)
class Solution:
    """Result of one batch: every array has the batch as its leading axis (times second where present)."""

    ts: np.ndarray
    observed: dict[str, np.ndarray]
    final_layers: tuple[np.ndarray, ...]
    status: np.ndarray
    t_final: np.ndarray
    num_steps: np.ndarray
    num_rejected: np.ndarray
    wall_time: float
    compile_time: float
    messages: tuple[str, ...]
    step: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Controls:
    """Traced run controls: changing any of them reuses the compiled solver."""

    t1: float
    rtol: float
    atol: float
    lr: float
    loss_tol: float  # stop when ℓ − ℓ* ≤ loss_tol·(ℓ₀ − ℓ*); −inf disables
    diverge: float  # stop (status −2) when ℓ > diverge·max(ℓ₀, tiny) or ℓ is not finite
    max_steps: int


def _stop_flags(layers: tuple, problem_cls: type, arrays: dict, loss0: Any, c: dict) -> tuple[Any, Any]:
    """(converged, diverged) for the current layers."""
    grads, w, e = layer_gradients(layers, problem_cls.grad_fn, arrays)
    loss = problem_cls.loss_from_grad(w, e, arrays)
    excess, excess0 = loss - arrays["loss_min"], loss0 - arrays["loss_min"]
    converged = excess <= c["loss_tol"] * excess0
    diverged = ~jnp.isfinite(loss) | (loss > c["diverge"] * jnp.maximum(loss0, 1e-300))
    return converged, diverged


def _initial_loss(layers: tuple, problem_cls: type, arrays: dict) -> Any:
    _, w, e = layer_gradients(layers, problem_cls.grad_fn, arrays)
    return problem_cls.loss_from_grad(w, e, arrays)


# ----------------------------------------------------------------------------------------------- diffrax
_DIFFRAX = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "kvaerno5": diffrax.Kvaerno5,
}


@cache
def _diffrax_batch(name: str, problem_cls: type, save_weights: bool, max_steps: int) -> Callable:
    term = diffrax.ODETerm(make_layer_field(problem_cls.grad_fn))
    solver = _DIFFRAX[name]()

    def one(y0: tuple, arrays: dict, ts: Any, c: dict) -> tuple:
        TRACE_COUNT["n"] += 1
        args = {"problem": arrays, "d0": initial_balancedness(y0)}
        loss0 = _initial_loss(y0, problem_cls, arrays)

        def converged(t, y, args, **kwargs):
            return _stop_flags(y, problem_cls, arrays, loss0, c)[0]

        def diverged(t, y, args, **kwargs):
            return _stop_flags(y, problem_cls, arrays, loss0, c)[1]

        def save(t, y, args):
            return observables(y, args, problem_cls, save_weights)

        saveat = diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=ts, fn=save), diffrax.SubSaveAt(t1=True)])
        sol = diffrax.diffeqsolve(
            term, solver, 0.0, c["t1"], None, y0, args, saveat=saveat,
            stepsize_controller=diffrax.PIDController(rtol=c["rtol"], atol=c["atol"]),
            event=diffrax.Event([converged, diverged]), max_steps=max_steps, throw=False,
            adjoint=diffrax.ForwardMode(),
        )  # fmt: skip
        final = jax.tree_util.tree_map(lambda a: a[0], sol.ys[1])
        event = sol.result == diffrax.RESULTS.event_occurred
        status = jnp.where(
            sol.result == diffrax.RESULTS.successful,
            0,
            jnp.where(
                event,
                jnp.where(sol.event_mask[0], 1, -2),
                jnp.where(sol.result == diffrax.RESULTS.max_steps_reached, -1, -3),
            ),
        )
        end_obs = save(sol.ts[1][0], final, args)
        stats = (sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"])
        return sol.ys[0], end_obs, final, status, sol.ts[1][0], stats

    return jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))


# ---------------------------------------------------------------------------------------------------- gd
@cache
def _gd_batch(problem_cls: type, save_weights: bool) -> Callable:
    """Gradient descent W_j ← W_j − lr·G_j, observed after `steps[k]` steps for every save index k."""

    def one(y0: tuple, arrays: dict, steps: Any, c: dict) -> tuple:
        TRACE_COUNT["n"] += 1
        args = {"problem": arrays, "d0": initial_balancedness(y0)}
        loss0 = _initial_loss(y0, problem_cls, arrays)

        def body(carry):
            y, n, status = carry
            grads, w, e = layer_gradients(y, problem_cls.grad_fn, arrays)
            loss = problem_cls.loss_from_grad(w, e, arrays)
            excess = loss - arrays["loss_min"]
            converged = excess <= c["loss_tol"] * (loss0 - arrays["loss_min"])
            diverged = ~jnp.isfinite(loss) | (loss > c["diverge"] * jnp.maximum(loss0, 1e-300))
            status = jnp.where(diverged, -2, jnp.where(converged, 1, 0)).astype(jnp.int64)
            go = status == 0
            y = tuple(jnp.where(go, a - c["lr"] * g, a) for a, g in zip(y, grads, strict=True))
            n = n + go
            status = jnp.where(go & (n >= c["max_steps"]), -1, status).astype(jnp.int64)
            return y, n, status

        def advance(carry, target):
            carry = jax.lax.while_loop(lambda cr: (cr[1] < target) & (cr[2] == 0), body, carry)
            return carry, (observables(carry[0], args, problem_cls, save_weights), carry[1])

        init = (y0, jnp.zeros((), jnp.int64), jnp.zeros((), jnp.int64))
        (final, n, status), (obs, reached) = jax.lax.scan(advance, init, steps)
        status = jnp.where((status == 0) & (n < steps[-1]), -1, status)
        end_obs = observables(final, args, problem_cls, save_weights)
        return obs, end_obs, final, status, n.astype(jnp.float64) * c["lr"], (n, jnp.zeros((), jnp.int64))

    return jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))


# ------------------------------------------------------------------------------------------------- scipy
_SCIPY = {"scipy:RK45": "RK45", "scipy:LSODA": "LSODA", "scipy:BDF": "BDF", "scipy:Radau": "Radau"}
_SCIPY_IMPLICIT = {"scipy:LSODA", "scipy:BDF", "scipy:Radau"}


@cache
def _scipy_functions(problem_cls: type, shapes: tuple, save_weights: bool) -> dict[str, Callable]:
    """Jitted flat right-hand side, Jacobian −∇²L, stop flags and observables for one network shape."""
    template = tuple(jnp.zeros(s) for s in shapes)
    _, unravel = ravel_pytree(template)
    loss_fn, _ = flat_problem(problem_cls)
    field = make_layer_field(problem_cls.grad_fn)

    def rhs(y, arrays):
        TRACE_COUNT["n"] += 1
        return ravel_pytree(field(0.0, unravel(y), {"problem": arrays}))[0]

    def jac(y, arrays):
        return -jax.hessian(lambda v: loss_fn(unravel(v), arrays))(y)

    def flags(y, arrays, loss0, c):
        return _stop_flags(unravel(y), problem_cls, arrays, loss0, c)

    def obs(ys, y0, arrays):
        args = {"problem": arrays, "d0": initial_balancedness(unravel(y0))}
        return jax.vmap(lambda y: observables(unravel(y), args, problem_cls, save_weights))(ys)

    def loss0(y, arrays):
        return _initial_loss(unravel(y), problem_cls, arrays)

    fns = {"rhs": rhs, "jac": jac, "flags": flags, "obs": obs, "loss0": loss0}
    out = {k: jax.jit(f) for k, f in fns.items()}
    out["unravel"] = unravel
    return out


def _scipy_one(method: str, fns: dict, y0: np.ndarray, arrays: dict, ts: np.ndarray, c: dict) -> dict[str, Any]:
    """Step one scipy solver by hand: dense output fills the save times, stop tests run after every step."""
    kwargs = {"rtol": c["rtol"], "atol": c["atol"]}
    if method in _SCIPY_IMPLICIT:
        kwargs["jac"] = lambda t, y: np.asarray(fns["jac"](y, arrays))
    solver = getattr(scipy.integrate, _SCIPY[method])(
        lambda t, y: np.asarray(fns["rhs"](y, arrays)), 0.0, y0, float(c["t1"]), **kwargs
    )
    loss0 = fns["loss0"](y0, arrays)
    saved = np.full((len(ts), y0.size), np.nan)
    k = int(np.searchsorted(ts, 0.0, side="right"))
    saved[:k] = y0
    steps, status, message = 0, 0, "reached t1"
    while solver.status == "running":
        message = solver.step() or message
        if solver.status == "failed":
            status = -3
            break
        steps += 1
        interp = solver.dense_output()
        while k < len(ts) and ts[k] <= solver.t:
            saved[k] = interp(ts[k])
            k += 1
        converged, diverged = (bool(f) for f in fns["flags"](solver.y, arrays, loss0, c))
        if diverged or converged or steps >= c["max_steps"]:
            status = -2 if diverged else (1 if converged else -1)
            message = STATUS[status]
            break
    return {"saved": saved, "reached": k, "y": solver.y, "t": solver.t, "status": status, "steps": steps,
            "message": message}  # fmt: skip


def _solve_scipy(method, problem_cls, y0, arrays, ts, c, save_weights, progress):  # noqa: ANN001
    shapes = tuple(tuple(a.shape[1:]) for a in y0)
    fns = _scipy_functions(problem_cls, shapes, save_weights)
    flat0 = [np.asarray(ravel_pytree(tuple(a[b] for a in y0))[0]) for b in range(y0[0].shape[0])]
    compile_start = time.perf_counter()
    fns["rhs"](flat0[0], arrays).block_until_ready()
    fns["flags"](flat0[0], arrays, 1.0, c)
    if method in _SCIPY_IMPLICIT:
        fns["jac"](flat0[0], arrays).block_until_ready()
    compile_time = time.perf_counter() - compile_start
    start = time.perf_counter()
    runs = [_scipy_one(method, fns, f, arrays, ts, c) for f in progress(flat0)]
    wall = time.perf_counter() - start
    observed = [jax.device_get(fns["obs"](jnp.asarray(np.nan_to_num(r["saved"])), f, arrays)) for r, f in
                zip(runs, flat0, strict=True)]  # fmt: skip
    obs = {key: np.stack([o[key] for o in observed]) for key in observed[0] if key != "weights"}
    if save_weights:
        obs["weights"] = tuple(np.stack([o["weights"][j] for o in observed]) for j in range(len(shapes)))
    ends = [jax.device_get(fns["obs"](jnp.asarray(r["y"])[None], f, arrays)) for r, f in zip(runs, flat0, strict=True)]
    end_obs = jax.tree_util.tree_map(lambda *a: np.concatenate(a), *ends)
    finals = [fns["unravel"](jnp.asarray(r["y"])) for r in runs]
    final = tuple(np.stack([np.asarray(f[j]) for f in finals]) for j in range(len(shapes)))
    reached_t = np.array([ts[r["reached"] - 1] if r["reached"] < len(ts) else r["t"] for r in runs])
    raw = {
        "obs": obs, "end_obs": end_obs, "final": final, "status": np.array([r["status"] for r in runs]),
        "t_final": np.array([r["t"] for r in runs]), "steps": np.array([r["steps"] for r in runs]),
        "rejected": np.full(len(runs), -1), "messages": tuple(r["message"] for r in runs),
    }  # fmt: skip
    del reached_t
    return raw, wall, compile_time


# -------------------------------------------------------------------------------------------------- solve
METHODS: tuple[str, ...] = (*_DIFFRAX, *_SCIPY, "gd")


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
    problem_cls: type,
    arrays: dict,
    y0: tuple[np.ndarray, ...],
    ts: np.ndarray,
    controls: Controls,
    save_weights: bool = False,
    progress: Callable = lambda it: it,
) -> Solution:
    """Integrate a batch of initial layers `y0` (each of shape (batch, d_j, d_{j−1})) and observe at `ts`.

    For ``gd`` the save times are rounded to whole steps (t = k·lr) before the call.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    c = _controls_tree(controls)
    step = None
    if method in _SCIPY:
        raw, wall, compile_time = _solve_scipy(method, problem_cls, y0, arrays, ts, c, save_weights, progress)
        return _finish(raw, ts, wall, compile_time, None)
    if method == "gd":
        step = np.rint(ts / controls.lr).astype(np.int64)
        fn, data = _gd_batch(problem_cls, save_weights), step
    else:
        fn, data = _diffrax_batch(method, problem_cls, save_weights, int(controls.max_steps)), ts
    args = (tuple(jnp.asarray(a) for a in y0), jax.tree_util.tree_map(jnp.asarray, arrays), jnp.asarray(data), c)
    compiled, compile_time = _compile(fn, args)
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    wall = time.perf_counter() - start
    obs, end_obs, final, status, t_final, (steps, rejected) = jax.device_get(out)
    raw = {"obs": obs, "end_obs": end_obs, "final": final, "status": status, "t_final": t_final, "steps": steps,
           "rejected": rejected, "messages": tuple(STATUS[int(s)] for s in status)}  # fmt: skip
    return _finish(raw, ts if step is None else step * controls.lr, wall, compile_time, step)


def _finish(raw: dict, ts: np.ndarray, wall: float, compile_time: float, step: np.ndarray | None) -> Solution:
    """Past the time a run reached: hold the converged state (status 1), NaN otherwise (nothing invented)."""
    obs = {k: np.array(v, dtype=np.float64) if k != "weights" else tuple(np.array(w) for w in v)
           for k, v in raw["obs"].items()}  # fmt: skip
    status, t_final = np.asarray(raw["status"]), np.asarray(raw["t_final"], dtype=np.float64)
    after = ts[None, :] > t_final[:, None] * (1 + 1e-12)
    for key, value in obs.items():
        arrays, ends = (value, raw["end_obs"][key]) if key == "weights" else ((value,), (raw["end_obs"][key],))
        for arr, end in zip(arrays, ends, strict=True):
            for b in range(arr.shape[0]):
                arr[b, after[b]] = np.asarray(end)[b] if status[b] == 1 else np.nan
    return Solution(
        ts=np.asarray(ts, dtype=np.float64), observed=obs,
        final_layers=tuple(np.asarray(a) for a in raw["final"]), status=status.astype(np.int64), t_final=t_final,
        num_steps=np.asarray(raw["steps"], dtype=np.int64), num_rejected=np.asarray(raw["rejected"], dtype=np.int64),
        wall_time=wall, compile_time=compile_time, messages=tuple(raw["messages"]), step=step,
    )  # fmt: skip
