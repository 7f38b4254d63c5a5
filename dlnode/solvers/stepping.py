"""One step, one loop: the base class of the methods dlnode writes itself, and the windowed loop that drives them.

As scipy's `OdeSolver` is one `step` that `solve_ivp` drives, a `SteppingMethod` says how a cell starts
(`start`), takes one attempt towards a save time (`step`), whether it is still short of that save time (`short`)
and what it observes (`observe`); `window`, the same for every such method, runs a window of save times: for each
one, attempts until the cell reaches it, stops (a status other than RUNNING) or spends its budget
(``c["max_steps"]`` attempts in all, ``c["window_steps"]`` in this window), then observes. `compiled` vmaps start,
window and final over a batch of cells and jits them, once per method instance (a method and its flow), and
`method_entry` makes the registry's `core.Method` of it.

Gradient descent and its stochastic and SDE relatives (`gd`), the stiff layer path (`rosenbrock`) and the
singular-coordinate path (`singular`) are SteppingMethods. diffrax's methods and scipy's run their libraries'
own loops (``diffeqsolve``, ``OdeSolver.step`` on the host) under the same window contract (`core.Method`).

A cell's state is a dict: ``"s"``, the carry that steps change (a NamedTuple with at least ``status``), and
whatever the steps read but never change (the flow's prepared arguments, ℓ₀, …).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from dlnode.solvers.core import RUNNING, Method, by_cell, call, repeated

__all__ = ["BATCH_AXIS", "SteppingMethod", "compiled", "lanczos_start", "method_entry", "warm_observed", "window"]

BATCH_AXIS = "batch"  # the vmapped batch's axis name: a step may reduce over the batch (`jax.lax.pmax`)


class SteppingMethod:
    """One cell's method, defined by its step. Subclasses are frozen dataclasses (hashable: `compiled` caches on
    them) holding the flow and any static option."""

    # Whether the cells of a batch run one after another, each a batch of one, instead of as one vmapped batch
    # (`core.by_cell`). The adaptive stiff paths' lockstep (their Krylov iterations, their explicit/implicit and
    # dense/Krylov choices are the costliest cell's) costs more than vmapping saves at every size measured
    # (docs/solvers.md); fixed steps have no lockstep.
    one_cell_at_a_time: ClassVar[bool] = False

    def start(self, y0: Any, arrays: dict, c: dict) -> dict:
        """The cell's state at t = 0 (``{"s": carry, ...}``)."""
        raise NotImplementedError

    def step(self, s: Any, st: dict, target: Any, arrays: dict, c: dict) -> Any:
        """One attempt from carry `s` towards the save time `target` (never past it): the new carry. A stop (the
        shared stop rule, a failure) is a status other than RUNNING in the carry."""
        raise NotImplementedError

    def short(self, s: Any, target: Any) -> Any:
        """Whether carry `s` is still short of `target`."""
        raise NotImplementedError

    def attempts(self, s: Any) -> Any:
        """Attempts spent so far (accepted and rejected steps), against the budgets."""
        return s.steps + s.rejected

    def targets(self, ts: Any, st: dict) -> Any:
        """The window's save times as `step` and `short` read them."""
        return jnp.asarray(ts)

    def observe(self, s: Any, st: dict, arrays: dict) -> dict:
        """The flow's observables at carry `s`."""
        raise NotImplementedError

    def observed(self, s: Any, st: dict, arrays: dict) -> tuple[Any, dict]:
        """The carry after observing it and the observables: a method may carry what an observation learnt to the
        next one (`FixedStep`: the curvature's Lanczos start); by default the carry is unchanged."""
        return s, self.observe(s, st, arrays)

    def variant(self, st: dict) -> SteppingMethod:
        """The method that runs the next window of the batch in state `st`, chosen on the host between windows
        (a method may change how it solves, e.g. the singular path's stage solves); by default itself."""
        return self

    def end_window(self, s0: Any, s: Any, st: dict, arrays: dict, c: dict) -> Any:
        """The carry after a window that went from `s0` to `s` (a method may stop a cell here)."""
        return s

    def final(self, st: dict) -> Any:
        """The state reached, as the flow's state (the layers, or the end-to-end matrix)."""
        raise NotImplementedError


def lanczos_start(flow: Any, flat: Any) -> Any:
    """A carry's first Lanczos start: zeros of the flat state's size (the fixed start vector) where the flow saves the
    curvature (`Flow.observe_warm`), else a scalar that nothing reads."""
    return jnp.zeros_like(flat) if flow.observe_warm is not None else jnp.zeros((), flat.dtype)


def warm_observed(flow: Any, y: Any, args: dict, s: Any) -> tuple[Any, dict]:
    """`SteppingMethod.observed` for a carry with a ``start`` field (see `lanczos_start`) at the flow's state `y`:
    where the flow saves the curvature, each save's Lanczos starts from the last save's Ritz vectors, which move
    little from save to save along a run (docs/finite-step.md §1)."""
    if flow.observe_warm is None:
        return s, flow.observe(y, args)
    obs, start = flow.observe_warm(y, args, s.start)
    return s._replace(start=start), obs


def window(method: SteppingMethod, st: dict, arrays: dict, ts: Any, c: dict) -> tuple:
    """The shared windowed loop for one cell: ``(observables at ts, observables at the state reached, state)``.
    `ts` is increasing, padded by repeating its last time (a repeated time is stepped to and observed once)."""
    s0 = st["s"]
    spent = method.attempts(s0)

    def advance(carry: tuple, target: Any, repeat: Any) -> tuple[tuple, dict]:
        def cond(s: Any) -> Any:
            attempts = method.attempts(s)
            budget = (attempts < c["max_steps"]) & (attempts - spent < c["window_steps"])
            return (s.status == RUNNING) & method.short(s, target) & budget

        def reach(s: Any) -> tuple[Any, dict]:
            s = jax.lax.while_loop(cond, lambda s: method.step(s, st, target, arrays, c), s)
            return method.observed(s, st, arrays)

        # a save time equal to the one before (the driver pads a window by repeating its last) takes no step, so its
        # observables are the last ones: no second observation (a Lanczos solve, with the curvature)
        s, previous = carry
        s, obs = jax.lax.cond(repeat, lambda s: (s, previous), reach, s)
        return (s, obs), obs

    ts, repeats = jnp.asarray(ts), repeated(ts)
    shapes = jax.eval_shape(lambda s: method.observed(s, st, arrays)[1], s0)
    none = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)  # never read: ts[0] is no repeat
    (s, _), obs = jax.lax.scan(lambda carry, x: advance(carry, *x), (s0, none), (method.targets(ts, st), repeats))
    s = method.end_window(s0, s, st, arrays, c)
    s, end_obs = method.observed(s, st, arrays)
    return obs, end_obs, dict(st, s=s)


@cache
def compiled(method: SteppingMethod) -> tuple[Callable, Callable, Callable]:
    """Jitted (start, window, final) of `method` over a batch of cells on the leading axis (named `BATCH_AXIS`)."""

    def advance(st: dict, arrays: dict, ts: Any, c: dict) -> tuple:
        return window(method, st, arrays, ts, c)

    return (
        jax.jit(jax.vmap(method.start, in_axes=(0, None, None))),
        jax.jit(jax.vmap(advance, in_axes=(0, None, None, None), axis_name=BATCH_AXIS)),
        jax.jit(jax.vmap(method.final)),
    )


def method_entry(of: Callable[[Any], SteppingMethod], *, initial: Callable | None = None, **fields: Any) -> Method:
    """The registry's `Method` for the SteppingMethod ``of(flow)``: `fields` are `Method`'s (name, family, stiff,
    budgets, supports, summary, needs_lr); `initial(flow, y0, arrays, c) -> (y0, c)` prepares a batch's initial
    states on the host (the singular path's coordinates) before the jitted start."""

    def start(flow: Any, y0: Any, arrays: dict, c: dict) -> Any:
        if initial is not None:
            y0, c = initial(flow, y0, arrays, c)
        method = of(flow)
        return by_cell(lambda y: call(compiled(method)[0], y, arrays, c), y0, method.one_cell_at_a_time)

    return Method(
        start=start,
        advance=lambda flow, st, arrays, ts, c: by_cell(
            lambda b: call(compiled(of(flow).variant(b))[1], b, arrays, ts, c), st, of(flow).one_cell_at_a_time
        ),
        final=lambda flow, st: by_cell(lambda b: call(compiled(of(flow))[2], b), st, of(flow).one_cell_at_a_time),
        **fields,
    )
