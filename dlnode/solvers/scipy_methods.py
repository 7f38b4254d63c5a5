"""scipy's `solve_ivp` methods (`scipy:RK45`, `scipy:LSODA`, `scipy:BDF`, `scipy:Radau`): the float64 reference.

The right-hand side and, for the implicit methods, the Jacobian −∇²L are jitted JAX functions of the flat state.
Each cell keeps its scipy solver object between windows; dense output fills the save times and the shared stop
rule is tested after every step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.integrate
from jax.flatten_util import ravel_pytree

from dlnode.flows.flow import Flow
from dlnode.solvers.core import COMPILE, RUNNING, Method, Status, stop_flags

__all__ = ["SCIPY"]

NAMES = {"scipy:RK45": "RK45", "scipy:LSODA": "LSODA", "scipy:BDF": "BDF", "scipy:Radau": "Radau"}
IMPLICIT = {"scipy:LSODA", "scipy:BDF", "scipy:Radau"}
WINDOW_STEPS = 20_000
DIFFERENCE_STEP = 6e-6  # relative step of the central-difference Jacobian (about the cube root of float64's eps)


@cache
def _functions(flow: Flow, template: tuple) -> dict[str, Callable]:
    """Jitted flat right-hand side, its Jacobian (−∇²L for gradient flows), loss and observables."""
    _, unravel = ravel_pytree(jax.tree_util.tree_unflatten(template[0], [jnp.zeros(s) for s in template[1]]))

    def rhs(y, args):
        return ravel_pytree(flow.field(0.0, unravel(y), args))[0]

    def central_differences(y, args):  # J column by column, (f(y + h e_k) − f(y − h e_k)) / 2h
        h = DIFFERENCE_STEP * jnp.maximum(jnp.abs(y), jnp.max(jnp.abs(y)))
        h = jnp.where(h > 0, h, DIFFERENCE_STEP)
        steps = jnp.diag(h)
        cols = jax.vmap(lambda d: rhs(y + d, args) - rhs(y - d, args))(steps)
        return (cols / (2.0 * h)[:, None]).T

    def jacobian(y, args):
        """JAX's exact Jacobian; where it is not finite, central differences. A field computed through an SVD (the
        end-to-end flow) is smooth where singular values tie (a balanced W(0) = s·O has them all equal), but the
        SVD's derivative there has 0/0 terms: scipy would stop on the NaNs before its first step."""
        exact = jax.jacfwd(rhs)(y, args)
        return jax.lax.cond(jnp.all(jnp.isfinite(exact)), lambda: exact, lambda: central_differences(y, args))

    fns = {
        "rhs": rhs,
        "jac": jacobian,
        "loss": lambda y, args: flow.loss(unravel(y), args),
        "obs": lambda ys, args: jax.vmap(lambda y: flow.observe(unravel(y), args))(ys),
        "args": lambda y0, arrays, c: flow.prepare(unravel(y0), arrays, c),
    }
    out = {k: jax.jit(f) for k, f in fns.items()}
    out["unravel"] = unravel
    return out


def _start(name: str) -> Callable:
    def start(flow: Flow, y0: Any, arrays: dict, c: dict) -> dict:
        leaves, treedef = jax.tree_util.tree_flatten(y0)
        fns = _functions(flow, (treedef, tuple(tuple(a.shape[1:]) for a in leaves)))
        cells = []
        began = time.perf_counter()
        for b in range(leaves[0].shape[0]):
            flat = np.asarray(ravel_pytree(jax.tree_util.tree_map(lambda a, b=b: a[b], y0))[0])
            args = fns["args"](flat, arrays, c)
            rhs, jac = fns["rhs"], fns["jac"]
            kwargs = {"rtol": float(c["rtol"]), "atol": float(c["atol"])}
            if name in IMPLICIT:
                kwargs["jac"] = lambda t, y, args=args, jac=jac: np.asarray(jac(y, args))
            solver = getattr(scipy.integrate, NAMES[name])(
                lambda t, y, args=args, rhs=rhs: np.asarray(rhs(y, args)), 0.0, flat, float(c["t1"]), **kwargs
            )
            loss0 = float(fns["loss"](flat, args))  # not finite: no step is tried (scipy's would shrink forever)
            status = RUNNING if np.isfinite(loss0) else int(Status.DIVERGED)
            cells.append({"solver": solver, "args": args, "loss0": loss0, "steps": 0, "status": status, "y": flat,
                          "t": 0.0})  # fmt: skip
        if cells:  # the first right-hand side and Jacobian calls compile
            fns["rhs"](cells[0]["y"], cells[0]["args"]).block_until_ready()
            if name in IMPLICIT:
                fns["jac"](cells[0]["y"], cells[0]["args"]).block_until_ready()
        COMPILE["seconds"] += time.perf_counter() - began
        return {"fns": fns, "cells": cells, "loss_min": float(np.asarray(arrays["loss_min"]))}

    return start


def _advance(flow: Flow, st: dict, arrays: dict, ts: np.ndarray, c: dict) -> tuple:
    fns = st["fns"]
    saved_all, ends = [], []
    for cell in st["cells"]:
        solver = cell["solver"]
        saved = np.repeat(cell["y"][None], len(ts), axis=0)
        k = int(np.searchsorted(ts, cell["t"], side="right"))
        budget = cell["steps"] + float(c["window_steps"])
        while cell["status"] == RUNNING and solver.status == "running" and k < len(ts):
            if cell["steps"] >= min(budget, float(c["max_steps"])):
                break
            solver.step()
            if solver.status == "failed":
                cell["status"] = int(Status.SOLVER_FAILURE)
                break
            cell["steps"] += 1
            interp = solver.dense_output()
            while k < len(ts) and ts[k] <= solver.t:
                saved[k] = interp(ts[k])
                k += 1
            cell["y"], cell["t"] = np.array(solver.y), float(solver.t)
            converged, diverged = stop_flags(float(fns["loss"](solver.y, cell["args"])), cell["loss0"],
                                             st["loss_min"], c)  # fmt: skip
            if diverged or converged:
                cell["status"] = int(Status.DIVERGED if diverged else Status.CONVERGED)
        saved[k:] = cell["y"]
        saved_all.append(jax.device_get(fns["obs"](jnp.asarray(np.nan_to_num(saved)), cell["args"])))
        ends.append(jax.device_get(fns["obs"](jnp.asarray(cell["y"][None]), cell["args"])))
    obs = jax.tree_util.tree_map(lambda *x: np.stack(x), *saved_all)
    last = jax.tree_util.tree_map(lambda *x: np.stack(x)[:, 0], *ends)
    return obs, last, st


def _summary(st: dict) -> dict[str, np.ndarray]:
    cells = st["cells"]
    return {"t": np.array([c["t"] for c in cells]), "steps": np.array([c["steps"] for c in cells]),
            "rejected": np.full(len(cells), -1), "status": np.array([c["status"] for c in cells])}  # fmt: skip


def _final(flow: Flow, st: dict) -> Any:
    finals = [jax.tree_util.tree_map(np.asarray, st["fns"]["unravel"](jnp.asarray(c["y"]))) for c in st["cells"]]
    return jax.tree_util.tree_map(lambda *x: np.stack(x), *finals)


SCIPY = {
    name: Method(name=name, family="scipy", stiff=name in IMPLICIT, max_steps=200_000, window_steps=WINDOW_STEPS,
                 supports=lambda flow: None, start=_start(name), advance=_advance, summary=_summary, final=_final)
    for name in NAMES
}  # fmt: skip
