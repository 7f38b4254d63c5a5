"""Fixed-step methods, one loop: gradient descent, its stochastic versions, and fixed-step SDE solvers.

- ``gd``: W_j ← W_j − lr·∂L/∂W_j: explicit Euler with a constant step, exactly; step k at t = k·lr.
- ``sgd``, ``label_noise``: the same step with the gradient of a minibatch and/or of labels perturbed afresh each
  step (see `stochastic`): the updates researchers run, step k at t = k·lr, one noise path per `path`.
- ``sde_euler``, ``sde_heun``: one step of a diffrax SDE solver over [k·dt, (k+1)·dt] on the SDE of that noise
  (see `sde`), step k at t = k·dt.

A step is a pure function of (state, k, path): a window, a resumed checkpoint and a vmapped batch of paths all run
exactly the same steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from dlnode.flows.flow import Flow, layer_gradients
from dlnode.problems.samples import samples_of
from dlnode.solvers.core import RUNNING, Method, Status, stop_flags
from dlnode.solvers.sde import SDE_SOLVERS, brownian_increment, control_size, sde_solver, sde_terms
from dlnode.solvers.stepping import SteppingMethod, lanczos_start, method_entry, warm_observed
from dlnode.solvers.stochastic import step_gradient

__all__ = ["DISCRETE", "FIXED_STEP", "GD", "SDE_METHODS", "FixedStep"]

# A window of these methods is bounded by its save times and by a step count. Its save times are 8× the default:
# saved at every step, a window of 16 spent more on its host round trip than on its steps (GD on the cohen2021
# network, 3500 steps: 0.198 s in 16-save windows, 0.091 s in 128, 0.075 s in 256; medians of 7); a batch of more
# than `driver.WINDOW_STATE_MAX` state numbers (noise paths) keeps 16. Its steps bound the time between Ctrl-C
# checks where saves are sparse (2^17 steps: about 1.5 s on that network).
WINDOW_SAVES, WINDOW_STEPS = 128, 2**17
DISCRETE = ("gd", "sgd", "label_noise")  # step k at t = k·lr
SDE_METHODS = tuple(SDE_SOLVERS)  # step k at t = k·dt


@cache
def _stepper(name: str, flow: Flow) -> Callable:
    """(y, n, key, solver_state, args, c) -> (y at step n + 1, loss at y, solver_state)."""
    problem_cls = flow.problem_cls
    backprop = flow.backprop or layer_gradients
    if name == "gd":

        def step(y, n, key, state, args, c):
            grads, w, e = backprop(y, problem_cls.grad_fn, args["problem"])
            y1 = jax.tree_util.tree_map(lambda a, g: a - c["lr"] * g, y, grads)
            return y1, problem_cls.loss_from_grad(w, e, args["problem"]), state

        return step
    if name in DISCRETE:

        def step(y, n, key, state, args, c):
            gradient = step_gradient(flow.noise, problem_cls, key, n, c["noise"])
            grads, w, _ = backprop(y, gradient, args["problem"])
            y1 = jax.tree_util.tree_map(lambda a, g: a - c["lr"] * g, y, grads)
            return y1, problem_cls.loss_fn(w, args["problem"]), state

        return step
    solver = sde_solver(name)

    def step(y, n, key, state, args, c):
        width = samples_of(problem_cls.kind).width(args["problem"])
        size = control_size(flow.noise, width)
        level = jnp.rint(jnp.log2(c["dt"] / c["lr"])).astype(n.dtype)  # dt = lr·2^level, by the rules
        dw = brownian_increment(key, n, level, c["lr"], size)
        terms = sde_terms(name, flow, dw, args["problem"], c["lr"], c["noise"], width)
        y1 = solver.step(terms, n * c["dt"], (n + 1) * c["dt"], y, args, state, made_jump=False)[0]
        return y1, flow.loss(y, args), state

    return step


class _Carry(NamedTuple):
    y: Any  # the layers
    n: Any  # steps taken: the cell is at t = n·h
    status: Any
    start: Any  # the next save's Lanczos start (`stepping.lanczos_start`)


@dataclass(frozen=True)
class FixedStep(SteppingMethod):
    """The fixed-step loop of every method here: step n goes from n·h to (n + 1)·h, h = lr (dt for the SDEs);
    a save time t is the step count rint(t/h)."""

    name: str
    flow: Flow

    @property
    def noisy(self) -> bool:
        return self.name != "gd"

    def start(self, y0: Any, arrays: dict, c: dict) -> dict:
        y0, key = y0 if self.noisy else (y0, jnp.zeros((2,), jnp.uint32))
        args = self.flow.prepare(y0, arrays, c)
        zero = jnp.zeros((), jnp.int64)
        start = lanczos_start(self.flow, ravel_pytree(y0)[0])
        return {"s": _Carry(y0, zero, zero, start), "args": args, "loss0": self.flow.loss(y0, args), "lr": c["lr"],
                "h": c["dt"] if self.name in SDE_METHODS else c["lr"], "key": key}  # fmt: skip

    def step(self, s: _Carry, st: dict, target: Any, arrays: dict, c: dict) -> _Carry:
        y1, loss, _ = _stepper(self.name, self.flow)(s.y, s.n, st["key"], None, st["args"], c)
        converged, diverged = stop_flags(loss, st["loss0"], arrays["loss_min"], c)
        status = Status.of_stop(converged, diverged)
        go = status == RUNNING
        y = jax.tree_util.tree_map(lambda a, b: jnp.where(go, b, a), s.y, y1)
        return _Carry(y, s.n + go, status, s.start)

    def short(self, s: _Carry, target: Any) -> Any:
        return s.n < target

    def attempts(self, s: _Carry) -> Any:
        return s.n

    def targets(self, ts: Any, st: dict) -> Any:
        return jnp.rint(ts / st["h"]).astype(jnp.int64)

    def observe(self, s: _Carry, st: dict, arrays: dict) -> dict:
        return self.flow.observe(s.y, st["args"])

    def observed(self, s: _Carry, st: dict, arrays: dict) -> tuple[_Carry, dict]:
        return warm_observed(self.flow, s.y, st["args"], s)

    def final(self, st: dict) -> Any:
        return st["s"].y


def _supports(name: str) -> Callable[[Flow], str | None]:
    def supports(flow: Flow) -> str | None:
        if flow.end_to_end:
            return f"method={name!r} steps the layers: use flow='layers'; got flow={flow.name!r}"
        if name in DISCRETE and flow.name != "layers":
            return f"method={name!r} is a discrete method on the layers: use flow='layers'; got flow={flow.name!r}"
        return None  # the noise itself (batch, label noise, a diffusion) is checked with the call's other rules

    return supports


def _summary(st: dict) -> dict[str, np.ndarray]:
    n, status, h = (np.asarray(a) for a in jax.device_get((st["s"].n, st["s"].status, st["h"])))
    return {"t": n * h, "steps": n, "rejected": np.zeros_like(n), "status": status}


def _method(name: str) -> Method:
    return method_entry(
        lambda flow: FixedStep(name, flow),
        name=name, family="gd" if name in DISCRETE else "sde", stiff=False, max_steps=10_000_000,
        window_steps=WINDOW_STEPS, window_saves=WINDOW_SAVES, supports=_supports(name), needs_lr=True, summary=_summary,
    )  # fmt: skip


FIXED_STEP = {name: _method(name) for name in (*DISCRETE, *SDE_METHODS)}
GD = FIXED_STEP["gd"]
