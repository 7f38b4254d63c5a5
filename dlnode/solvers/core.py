"""What every method shares: the `Status` vocabulary, the run `Controls`, the `Solution`, and the stop rule.

One vocabulary for every method and for the dataset (its ``status`` variable carries the CF attributes
``flag_values``/``flag_meanings`` built from `Status`): a run says it *finished* only when it reached the t1 the
user asked for, and *converged* only when the loss criterion held.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "COMPILE",
    "MESSAGES",
    "RUNNING",
    "WINDOW",
    "Controls",
    "Method",
    "Solution",
    "Status",
    "call",
    "repeated",
    "stop_flags",
    "stop_gap",
]


class Status(enum.IntEnum):
    """How a run ended. Non-negative codes are successes; negative ones say why the run stopped short."""

    FINISHED = 0  # reached the requested t1
    CONVERGED = 1  # ℓ − ℓ* ≤ loss_tol·(min(ℓ₀, ℓ(0)) − ℓ*)
    MAX_STEPS = -1  # the step budget ran out first
    DIVERGED = -2  # the loss became non-finite or grew past diverge·max(ℓ₀, ℓ(0))
    SOLVER_FAILURE = -3  # repeated rejections, a failed linear solve, steps shrinking to nothing, or a creep
    NOT_CONVERGED = -4  # t1=None: the horizon was reached while the loss criterion still did not hold
    NO_STEP = -5  # not a single step could be taken
    INTERRUPTED = -6  # stopped by the user (Ctrl-C); the trajectory up to then is kept
    PENDING = -7  # a sweep cell whose result has not been written yet
    UNRESOLVED = -8  # float64 stopped resolving the flow (its weights or its time) while the loss was far off
    NORM_RUNAWAY = -9  # ‖W‖₂ passed norm_limit × max(‖W*‖₂, ‖W(0)‖₂) before the loss converged
    SUBSPACE_OPTIMUM = -10  # depth ∞, rectangular W: converged to ℓ*_S, the best fit inside W(0)'s column/row space
    UNTRACKED_EDGE = -11  # central flow: an eigenvalue it does not track (the (k+1)-th) passed 2/lr
    EDGE_REST = -12  # central flow, t1=None: held at the edge, its loss stopped falling (over a decade of time)

    @property
    def meaning(self) -> str:
        return self.name.lower()

    @property
    def message(self) -> str:
        """What the status says to a person (also `Solution.messages`)."""
        return MESSAGES[self]

    @staticmethod
    def where(cond: Any, status: Status | Any, otherwise: Any) -> Any:
        """`status` where `cond` holds, `otherwise` elsewhere: how jitted solver code sets a status (by name,
        never a bare code), as diffrax's ``RESULTS.where`` does."""
        value = jnp.asarray(int(status), dtype=jnp.int64) if isinstance(status, Status) else status
        return jnp.where(cond, value, otherwise)

    @staticmethod
    def of_stop(converged: Any, diverged: Any) -> Any:
        """The stop rule's status of an accepted step: DIVERGED, else CONVERGED, else `RUNNING`."""
        running = jnp.asarray(RUNNING, dtype=jnp.int64)
        return Status.where(diverged, Status.DIVERGED, Status.where(converged, Status.CONVERGED, running))


# A method's state holds 0 while a cell runs; the driver turns a cell that reached t1 into FINISHED (also 0).
RUNNING = 0


MESSAGES = {
    Status.FINISHED: "reached the requested t1",
    Status.CONVERGED: "converged: the loss criterion holds",
    Status.MAX_STEPS: "stopped: the step budget (max_steps) ran out; raise max_steps or loosen rtol",
    Status.DIVERGED: "stopped: the loss left every bound (non-finite, or past diverge x max(l0, l(W=0)): "
    "attrs['diverge']); a loss "
    "that oscillates or spikes and comes back is not diverged",
    Status.SOLVER_FAILURE: (
        "stopped: the solver failed (every step rejected, steps shrinking to nothing, or steps too small to reach "
        "the next save time within the step budget)"
    ),
    Status.NOT_CONVERGED: "not converged: the horizon was reached while the loss was still above the criterion",
    Status.NO_STEP: "no step could be taken (the initial state or the first step is not finite)",
    Status.INTERRUPTED: "interrupted by the user; the trajectory up to then is kept",
    Status.PENDING: "not run yet",
    Status.UNRESOLVED: (
        "stopped: float64 no longer resolves the flow while the loss is far from converged: the weights move slower "
        "than the round-off of their field, or the steps no longer move a time that large (deep layers from a "
        "small unbalanced init, after an escape); use a larger scale, or init='balanced' with flow='end_to_end'"
    ),
    Status.NORM_RUNAWAY: (
        "stopped: the norm ran away: ||W||_2 passed norm_limit x max(||W*||_2, ||W(0)||_2) (attrs['norm_limit']) "
        "before the loss converged, so the flow may have no finite limit, or reach one only far later; the "
        "trajectory up to then is kept; pass a larger norm_limit (inf: no limit) to integrate further"
    ),
    Status.SUBSPACE_OPTIMUM: (
        "stopped at the best fit inside W(0)'s column space (d_out > d_in) or row space (d_out < d_in), which the "
        "depth-inf flow never leaves: l - l*_S <= loss_tol (min(l0, l(W=0)) - l*_S) with l*_S > l* the lowest loss "
        "inside it (ds['loss_floor']), so l* is out of reach; a finite depth (e.g. 64) leaves that space"
    ),
    Status.UNTRACKED_EDGE: (
        "stopped: the central flow's largest untracked Hessian eigenvalue (the (k+1)-th, ds['untracked_sharpness']) "
        "passed 2/lr, which a flow tracking k = sharpness eigenvalues cannot hold at the edge, so it no longer "
        "follows GD; the trajectory up to then is kept; pass sharpness=k+1"
    ),
    Status.EDGE_REST: (
        "stopped: the central flow came to rest on the edge S = 2/lr above l*: held there, its loss fell by less "
        "than 1e-3 of its distance to l* over the last decade of time (the test that ends an until-converged run at "
        "its horizon), so GD at this lr is predicted to oscillate there for ever; pass t1 to integrate further"
    ),
}


@dataclasses.dataclass(frozen=True)
class Solution:
    """Result of one batch: every array has the batch as its leading axis (times second where present)."""

    ts: np.ndarray
    observed: dict[str, Any]
    final: Any
    status: np.ndarray
    t_final: np.ndarray
    num_steps: np.ndarray
    num_rejected: np.ndarray
    wall_time: float
    compile_time: float
    messages: tuple[str, ...]
    step: np.ndarray | None = None
    checkpoint: Any = None  # an interrupted run's `driver.Checkpoint`: `drive(..., checkpoint=...)` continues it
    floor: np.ndarray | None = None  # each cell's lowest reachable loss above ℓ* (NaN: none), where `drive` had one


@dataclasses.dataclass(frozen=True)
class Controls:
    """Traced run controls: changing any of them reuses the compiled solver."""

    t1: float
    rtol: float
    atol: float
    lr: float
    loss_tol: float  # stop when ℓ − ℓ* ≤ loss_tol·(min(ℓ₀, ℓ(0)) − ℓ*) (`stop_gap`); −inf disables
    diverge: float  # stop (status −2) when ℓ > diverge·max(ℓ₀, loss_scale, tiny) or ℓ is not finite
    max_steps: int
    noise: float = 0.0  # label noise δ of the stochastic methods and their SDEs
    dt: float = float("nan")  # the step of the fixed-step SDE methods
    norm_limit: float = float("inf")  # stop as NORM_RUNAWAY past norm_limit·max(target_norm, ‖W(0)‖₂) (host-side)
    target_norm: float = 0.0  # ‖W*‖₂ of the problem's reference minimiser
    loss_scale: float = 0.0  # ℓ(W = 0): a run started near a minimiser (ℓ₀ ≈ 0) diverges only past diverge·ℓ(0)


def stop_gap(loss0: Any, loss_scale: Any, loss_min: Any, xp: Any = jnp) -> Any:
    """The loss gap the stop rule is a fraction of: min(ℓ₀, ℓ(W = 0)) − ℓ*, the problem's own scale where W(0) starts
    above it (a large init: at depth 3 and per-layer scale 10 on an 8 × 8 completion ℓ₀ is 8·10⁴ ℓ(0), and a rule on
    ℓ₀ alone called a loss of 8e-4 ℓ(0) converged); ℓ₀ − ℓ* where W = 0 is itself a minimiser (ℓ(0) = ℓ*) or ℓ(0) is
    not given (`loss_scale` 0). `xp`: numpy on the host, jax.numpy in compiled code."""
    above = loss_scale > loss_min
    return xp.where(above, xp.minimum(loss0, loss_scale), loss0) - loss_min


def stop_flags(loss: Any, loss0: Any, loss_min: Any, c: dict) -> tuple[Any, Any]:
    """(converged, diverged), the stop rule of every solver: ℓ − ℓ* ≤ loss_tol·(min(ℓ₀, ℓ(0)) − ℓ*) (`stop_gap`) with
    ℓ and ℓ₀ finite (an infinite ℓ₀ would make any loss "converged"); ℓ not finite or > div·max(ℓ₀, ℓ(0))."""
    finite = jnp.isfinite(loss) & jnp.isfinite(loss0)
    loss_scale = c.get("loss_scale", 0.0)  # a controls dict of its own may leave the scale out
    converged = finite & (loss - loss_min <= c["loss_tol"] * stop_gap(loss0, loss_scale, loss_min))
    scale = jnp.maximum(loss0, loss_scale)
    diverged = ~jnp.isfinite(loss) | (loss > c["diverge"] * jnp.maximum(scale, 1e-300))
    return converged, diverged


# --------------------------------------------------------------------------------------------- the method contract
# Save times per window unless a method says otherwise (`Method.window_saves`): each window is one compiled call and
# a host round trip (the driver's checks, Ctrl-C, progress), about half a millisecond.
WINDOW = 16


def repeated(ts: Any) -> Any:
    """Which save times of a window repeat the one before (the driver pads a window by repeating its last): a method
    observes such a time once. Read from `ts` alone, which every cell of a batch shares, so that a branch on it stays
    a branch under vmap."""
    ts = jnp.asarray(ts)
    return jnp.concatenate([jnp.zeros(1, bool), ts[1:] == ts[:-1]])


@dataclasses.dataclass(frozen=True)
class Method:
    """One integration method: what it supports, and how it starts and advances a batch in windows.

    A batch is every (scale, seed) cell of one depth, stacked on a leading axis. `start(flow, y0, arrays, c)`
    returns the method's state for the batch; `advance(flow, state, arrays, ts, c)` integrates every running cell
    towards the save times `ts` (a window, increasing, padded by repeating the last) and returns
    ``(observables at ts, observables at the state reached, new state)``; a window stops early once a cell has
    spent ``c["window_steps"]`` attempts in it, so that progress, Ctrl-C and the horizon are checked between
    windows. `summary(state)` gives host arrays ``t``, ``steps``, ``rejected``, ``status`` (0 while running), and
    optionally ``t_hi``/``t_lo`` (a compensated time) and ``change`` (the largest change of the method's own
    coordinates over the window, for the driver's creep rule: `dlnode.solvers.driver.STATE_CREEP`), and
    `final(flow, state)` the final states. Saves a cell did not reach are detected by time (``ts > t``).
    """

    name: str
    family: str
    stiff: bool  # meant for stiff flows
    max_steps: int  # default budget of attempted steps per run
    window_steps: int  # attempts per window (bounds the time between Ctrl-C checks)
    supports: Any  # (flow) -> None if supported, else the reason
    start: Any
    advance: Any
    summary: Any
    final: Any
    needs_lr: bool = False  # a discrete method: its step is the user's lr (gradient descent), not chosen by control
    window_saves: int = WINDOW  # save times per window (one compiled shape for every window of the method)


# Seconds spent compiling, summed over every `call`: the driver reports compile time apart from run time.
# "seconds" is the whole; "trace", "lower" and "xla" split it into JAX's tracing of the Python code, its lowering
# to StableHLO and XLA's compilation (or the read from JAX's persistent cache), and "cpu" is the process's CPU time
# over the whole (every thread: a measure of the work that a loaded machine stretches less than the wall time).
COMPILE = {"seconds": 0.0, "trace": 0.0, "lower": 0.0, "xla": 0.0, "cpu": 0.0}
# Compiled executables kept in memory. XLA maps each executable's code into memory, and a process that compiles
# without end (a notebook, a sweep worker going through many shapes) would pass the kernel's limit of 65,530
# mappings per process and crash. Past COMPILED_MAX, the least recently used half is dropped, with JAX's own
# caches (`jax.clear_caches`, which hold executables too): a dropped one comes back from JAX's persistent cache when
# it is needed again, and other jitted functions of the process are traced again on their next call.
COMPILED_MAX = 48
# XLA's options for dlnode's compiled solvers: LLVM at optimisation level 1 instead of 2 (XLA's default)
COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}
_COMPILED: collections.OrderedDict = collections.OrderedDict()


def batched(start: Any, window: Any, final: Any) -> tuple[Any, Any, Any]:
    """The jitted, vmapped (start, window, final) of a `Method` from per-cell functions: ``start(y0, arrays, c)``,
    ``window(state, arrays, ts, c)`` and ``final(state)``, the batch on the leading axis of y0 and state."""
    return (
        jax.jit(jax.vmap(start, in_axes=(0, None, None))),
        jax.jit(jax.vmap(window, in_axes=(0, None, None, None))),
        jax.jit(jax.vmap(final)),
    )


def by_cell(run: Callable[[Any], Any], batch: Any, alone: bool) -> Any:
    """``run(batch)``, or with `alone` `run` on each cell of the batch as a batch of one, the results concatenated on
    the leading axis: one compiled function of a batch of one serves every cell, and a cell computes the same bits
    whatever else its batch holds. A vmapped batch steps in lockstep (each loop runs until its slowest cell is done,
    and a choice made for the batch is the costliest cell's); where that costs more than vmapping saves, a method
    runs its cells alone (docs/solvers.md)."""
    cells = jax.tree_util.tree_leaves(batch)[0].shape[0]
    if not alone or cells == 1:
        return run(batch)
    parts = [run(jax.tree_util.tree_map(lambda a, i=i: a[i : i + 1], batch)) for i in range(cells)]
    return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *parts)


def release_compiled(keep: int = 0) -> None:
    """Drop compiled executables but the `keep` most recently used, and JAX's own caches (see `COMPILED_MAX`)."""
    while len(_COMPILED) > keep:
        _COMPILED.popitem(last=False)
    jax.clear_caches()


def call(fn: Any, *args: Any) -> Any:
    """Run the jitted `fn` on `args`, compiling ahead of time once per abstract signature (timed in `COMPILE`)."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    key = (fn, treedef, tuple((np.shape(x), getattr(x, "dtype", type(x))) for x in leaves))  # dtypes hash as they are
    compiled = _COMPILED.get(key)
    if compiled is None:
        start, cpu = time.perf_counter(), time.process_time()
        traced = fn.trace(*args)
        traced_at = time.perf_counter()
        lowered = traced.lower()
        lowered_at = time.perf_counter()
        compiled = lowered.compile(compiler_options=COMPILER_OPTIONS)
        done = time.perf_counter()
        COMPILE["seconds"] += done - start
        COMPILE["trace"] += traced_at - start
        COMPILE["lower"] += lowered_at - traced_at
        COMPILE["xla"] += done - lowered_at
        COMPILE["cpu"] += time.process_time() - cpu
        _COMPILED[key] = compiled
        if len(_COMPILED) > COMPILED_MAX:
            release_compiled(keep=COMPILED_MAX // 2)
    else:
        _COMPILED.move_to_end(key)
    return compiled(*args)
