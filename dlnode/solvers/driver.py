"""The windowed driver: every method integrates a batch in windows of save times, with one loop around them.

Between windows the driver fills the save times each cell reached, shows progress, checks for Ctrl-C (the cells
still running get status INTERRUPTED and keep what they integrated, and the result carries a `Checkpoint` from
which `drive` continues the run bit for bit), extends the horizon of an until-converged
run while its loss is still falling, stops a cell whose norm runs away (`NORM_RUNAWAY`: ‖W‖₂ past
controls.norm_limit × max(‖W*‖₂, ‖W(0)‖₂) before it converged, checked on the state at each window's end, i.e.
every `Method.window_steps` steps at most; the cell keeps its trajectory and final state from that window), stops a
cell that has a floor of its own above ℓ* once its loss meets the stop rule against that floor
(`SUBSPACE_OPTIMUM`: depth ∞ on a rectangular W, which keeps W(0)'s column or row space), stops a central flow
whose largest untracked Hessian eigenvalue passed 2/lr at a save (`UNTRACKED_EDGE`: it tracks k = `sharpness`
eigenvalues and holds only those at the edge), and
stops as soon as no cell is running. A run is integrated once: the save
grid of an until-converged run is laid out ahead (log-spaced up to the horizon) and cut after the latest time a
cell needed.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dlnode.errors import fail, shown
from dlnode.runtime.interrupts import sigint_flag
from dlnode.solvers.core import COMPILE, MESSAGES, RUNNING, WINDOW, Controls, Method, Solution, Status, stop_gap

__all__ = ["Checkpoint", "HELD", "Horizon", "WINDOW", "drive"]

# statuses of a cell at rest: its saves past its end hold its last values (the others' are NaN)
HELD = (int(Status.CONVERGED), int(Status.SUBSPACE_OPTIMUM))

REACHED_RTOL = 1e-12  # a save time counts as reached when t_cell >= ts·(1 − this)
# A running cell short of its save times whose time moved by less than one float64 ulp of t over a window fails at
# once if nothing moved at all, and after this many such windows in a row if its compensated time still crept in
# its low part or its accepted steps still changed its state (its loss at the window's end). An escape far out on
# the time axis (t ≈ 1e40 after a plateau) can be shorter than the time's resolution there, and the state still
# moves through it; what follows, resolved or not, is then the method's to say (the layer path's `unresolved`
# check).
STALL_WINDOWS = 8
ULP = 2.0**-52
# A method whose summary carries "change" (the largest change of its own coordinates over the window, unitless:
# the singular path's ln σ and frames) tells an escape from a creep by its state, not by its loss: a window that
# changed them by more than this is progress whatever its time did (the escape of a mode far below the loss's last
# digit, over steps below the time's resolution), and a window that changed them by less while its time moved at
# a rate that, over the attempts left in the step budget, would not reach its next save time is a creep (measured:
# escapes change ln σ by 0.3 to 24 a window; the creep after case 42's escape by 1e-11, its time 4e-13 of t).
# More than `CREEP_WINDOWS` such windows in a row stop the cell as a solver failure, rather than spend the budget
# creeping (case 42: about 15.5 s a window, its GMRES solves at their limit, and 780 windows of budget that would move
# its time by 3e-10 of itself). Two in a row: the two conditions together are met by no run that still progresses
# (escapes change ln σ by 0.3 or more a window), and each further window of case 42 cost 15.5 s (98 s → 43 s).
STATE_CREEP, CREEP_WINDOWS = 2.0**-20, 1
# The central flow (a field with a Lanczos solve in it; no measure of its state's change) creeps where its tracked
# eigenspace is ill-defined: on an 8 × 8 completion at depth 3 from Gaussian 0.1 with lr 0.5 (GD diverges there; every
# minimiser is sharper than 2/η) the top eigenvalues rise together through an escape (θ₁ − θ₂ = 4e-7 at t = 2.894),
# X switches on below the edge, the field jumps with the eigenvector (a perturbation of 1e-10 moved it by 4e-4),
# and tsit5's 4000 attempts moved t by 0.002 in 110 s, the default budget then worth 1.5 hours. So its windows
# whose time moves too slowly to reach 2t (or the grid's end, if nearer) on the budget left count as a creep on
# their own, and more than `CREEP_WINDOWS` in a row stop the cell as a solver failure. (A run held at the edge steps
# about 1.7η: to double t it needs t/1.7η steps, so at most t ~ 3e5η is within a budget of 200,000.)
# A batch's state numbers up to which a method's own `window_saves` applies: 128 saves of a state this size and of
# observables about as large hold 2^23 numbers (64 MB) in a window's buffers, next to 8 MB in 16 saves.
WINDOW_STATE_MAX = 2**15


def _window_saves(method: Method, state: Any) -> int:
    """Save times per window: the method's (`Method.window_saves`), but `WINDOW` for a batch of more than
    `WINDOW_STATE_MAX` state numbers, whose steps are no longer cheap next to a window's round trip and whose longer
    windows would hold more memory and delay progress and Ctrl-C (10⁴ noise paths of a small network: about 60 ms a
    step)."""
    size = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(state))
    return method.window_saves if size <= WINDOW_STATE_MAX else min(method.window_saves, WINDOW)


class _Progress(NamedTuple):
    """Each cell as of the window before, for the stall check: its time (`_clock`), accepted steps, loss at the
    window's end, the still (or creeping) windows in a row that still moved something, and its attempts."""

    t_hi: np.ndarray
    t_lo: np.ndarray
    steps: np.ndarray
    loss: np.ndarray
    stalled: np.ndarray
    attempts: np.ndarray


@dataclasses.dataclass(frozen=True)
class Horizon:
    """How an until-converged run may extend its save grid past the planned end.

    After the planned grid, while some cell is still running and its loss fell over the last `decades` by more than
    `falling` of its distance to ℓ*, `decades` more decades of save times (at the grid's density) are appended,
    at most `extensions` times.
    """

    decades: float = 2.0
    falling: float = 1e-3
    extensions: int = 3


# Method families whose loss is not monotone by construction: gradient descent past 2/S oscillates (with no stable
# minimum in reach, for ever), SGD and the SDEs are noisy. Such a loss compared save against save falls half of the
# time by chance, and each extension of an until-converged run multiplies its steps by 10^decades (measured: GD at
# lr 0.1 on a 6 × 6 completion, depth 3, whose minimisers are all sharper than 2/lr, extended at its planned
# horizon, 1.9e5 steps, and ran to its budget of 10^7 steps, status max_steps). They count as falling only where at
# least `TREND` of the pairs (one save of the last quarter, one of the quarter before) fell: 1 for a falling
# sequence, about 0.5 ± 0.06 for 50 saves of a stationary one.
NON_MONOTONE, TREND = ("gd", "sde"), 0.75
UNTRACKED_SLACK = 1e-3  # a central flow's (k+1)-th eigenvalue past (1 + this)·2/lr stops it (`Status.UNTRACKED_EDGE`)
# An until-converged central flow held at the edge for this many decades of time, its loss falling by less than
# `Horizon.falling` of its distance to ℓ* over them, stops (`Status.EDGE_REST`) instead of running to its horizon:
# measured on a whitened 6 × 6 regression (singular values 4, 2, 1; depth 4, Gaussian 0.4, lr 0.1), at rest on the
# edge from t ≈ 13 with ℓ = 0.2524 against ℓ* = 0, its loss falling by 1e-5 a decade, the run to its horizon
# t = 8088 took 97,240 steps and 250 s (the flow is stiff on the edge: tracking 2 or 3 eigenvalues took 90,526 and
# 44,542 steps).
REST_DECADES = 1.0


@dataclasses.dataclass
class _Saved:
    """Per-cell save slots, filled window by window (time is the second axis)."""

    values: Any  # pytree of (batch, time, ...) arrays
    filled: np.ndarray  # (batch, time) bool

    def grow(self, extra: int) -> None:
        def pad(a):
            return np.concatenate([a, np.full((a.shape[0], extra, *a.shape[2:]), np.nan)], axis=1)

        self.values = jax.tree_util.tree_map(pad, self.values)
        self.filled = np.concatenate([self.filled, np.zeros((self.filled.shape[0], extra), bool)], axis=1)


@dataclasses.dataclass
class _Halted:
    """Cells the driver stopped itself (the method's state runs them on with the others): their status, their
    summary fields and their final state as of the window that stopped them, which stand for them from then on."""

    mask: np.ndarray  # (batch,) bool
    summary: dict  # status, t, steps, rejected (and any other summary field) at the halt
    final: Any  # the method's final state at the halt (pytree, batch first)

    def hold(self, summ: dict) -> dict:
        """`summ` with the halted cells' fields as they were when they stopped."""
        return _where_cells(self.mask, self.summary, summ)

    def add(self, cells: np.ndarray, summ: dict, final: Any) -> None:
        """Halt `cells` as they are now: their summary fields `summ` and final state `final`."""
        self.summary = _where_cells(cells, summ, self.summary)
        self.final = _where_cells(cells, final, self.final)
        self.mask = self.mask | cells


def _norm(obs: Any) -> np.ndarray:
    """‖W‖₂ of each cell from an observation: its largest singular value (or |β|_∞ of a diagonal network)."""
    if "singular_values" in obs:
        return np.max(np.abs(np.asarray(obs["singular_values"])), axis=-1)
    product = np.asarray(obs["product"])
    return np.max(np.abs(product.reshape(product.shape[0], -1)), axis=-1)


def _at_floor(last: Any, saved: _Saved, running: np.ndarray, controls: Controls,
              floor: np.ndarray | None) -> np.ndarray:  # fmt: skip
    """Running cells with a floor of their own whose loss at the window's end meets the stop rule against it:
    ℓ − floor ≤ loss_tol·(min(ℓ₀, ℓ(0)) − floor), ℓ₀ the loss at t = 0 (`stop_gap`)."""
    if floor is None:
        return np.zeros_like(running)
    loss, loss0 = np.asarray(last["loss"]), saved.values["loss"][:, 0]
    with np.errstate(invalid="ignore"):
        gap = stop_gap(loss0, controls.loss_scale, floor, np)
        return running & np.isfinite(floor) & (loss - floor <= controls.loss_tol * gap)


def _runaway(last: Any, saved: _Saved, running: np.ndarray, controls: Controls, floor: Any = None) -> np.ndarray:
    """Running cells whose ‖W‖₂ at the window's end is past norm_limit × max(‖W*‖₂, ‖W(0)‖₂) (NaN-safe); `floor`
    is not used (the driver's stop rules share one signature)."""
    if not np.isfinite(controls.norm_limit):
        return np.zeros_like(running)
    initial = _norm(jax.tree_util.tree_map(lambda a: a[:, 0], saved.values))
    bound = controls.norm_limit * np.fmax(controls.target_norm, np.nan_to_num(initial))
    return running & (_norm(last) > bound)


def _untracked_edge(last: Any, saved: _Saved, running: np.ndarray, controls: Controls, floor: Any = None) -> np.ndarray:
    """Running central-flow cells whose largest untracked eigenvalue (saved as ``untracked_sharpness``) passed
    (1 + `UNTRACKED_SLACK`)·2/lr at a save so far or at the window's end (NaN: not monitored); `floor` is not used."""
    if "untracked_sharpness" not in saved.values:
        return np.zeros_like(running)
    bound = (1.0 + UNTRACKED_SLACK) * 2.0 / controls.lr
    values = np.nan_to_num(np.where(saved.filled, saved.values["untracked_sharpness"], -np.inf), nan=-np.inf)
    end = np.nan_to_num(np.asarray(last["untracked_sharpness"]), nan=-np.inf)
    return running & ((values > bound).any(axis=1) | (end > bound))


def _edge_rest(last: Any, saved: _Saved, running: np.ndarray, controls: Controls, floor: Any = None, *,
               ts: np.ndarray, arrays: dict, falling: float) -> np.ndarray:  # fmt: skip
    """Running central-flow cells (those that save ``regime``) held at the edge at every save of the last
    `REST_DECADES` of time whose loss fell over that span by less than `falling` of its distance to ℓ*: the test
    that ends an until-converged run at its horizon (`_falling`), applied as soon as a decade at the edge has
    passed; `last`, `controls` and `floor` are not used."""
    out = np.zeros_like(running)
    if "regime" not in saved.values:
        return out
    loss_min = float(np.asarray(arrays["loss_min"]))
    for b in np.flatnonzero(running):
        filled = saved.filled[b]
        t, loss, regime = ts[filled], saved.values["loss"][b][filled], saved.values["regime"][b][filled]
        # the last save at or before t_end/10^REST_DECADES, counting positive times only: t = 0 starts no decade (a
        # flow started on the edge would otherwise stop after its first saves, over a sliver of time)
        before = np.flatnonzero((t > 0) & (t <= t[-1] / 10**REST_DECADES))
        if not len(before):
            continue  # not yet a decade of saves
        start = int(before[-1])
        if np.all(regime[start:] >= 1) and not _fell(loss[start], loss[-1], loss_min, falling):
            out[b] = True
    return out


def _controls_tree(c: Controls, window_steps: int) -> dict[str, Any]:
    tree = {k: np.float64(v) for k, v in dataclasses.asdict(c).items()}
    tree["window_steps"] = np.float64(window_steps)
    return tree


@dataclasses.dataclass
class Checkpoint:
    """Where an interrupted `drive` stopped: the carried solver state and the driver's bookkeeping at a window
    boundary, in memory. `drive(..., checkpoint=...)` continues from it to exactly (bitwise) the result of a run
    that was never interrupted. It resumes once (the state of some methods, scipy's solvers, is changed in place).
    """

    method: str
    controls: dict  # the traced controls the run was started with; a resume must pass the same
    until_converged: bool
    horizon: Horizon | None
    state: Any
    saved: _Saved
    end_obs: Any
    ts: np.ndarray
    k: int  # first save time of the next window
    extensions: int
    previous: _Progress | None  # each cell as of the window before (the stall check)
    wall: float  # run and compile seconds spent before the interrupt
    compile_time: float
    halted: _Halted | None = None  # cells stopped by the driver itself (norm runaway), frozen as they stopped
    spent: bool = False
    floor: np.ndarray | None = None  # each cell's lowest reachable loss the run was started with (`drive`)


def _clock(summ: dict) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's time as (high, low) parts: the compensated sum of the Rosenbrock paths (whose steps can be far
    below the resolution of t itself on long plateaus), or (t, 0)."""
    if "t_lo" in summ:
        return np.asarray(summ["t_hi"]), np.asarray(summ["t_lo"])
    return np.asarray(summ["t"]), np.zeros_like(np.asarray(summ["t"]))


def _interrupt_requested(flag: dict) -> bool:
    """Whether Ctrl-C was pressed; checked once between windows (tests replace it to interrupt after k windows)."""
    return bool(flag["hit"])


def drive(
    method: Method,
    flow: Any,
    arrays: dict,
    y0: Any,
    ts: np.ndarray,
    controls: Controls,
    *,
    until_converged: bool = False,
    horizon: Horizon | None = None,
    on_window: Callable[[float, dict], None] | None = None,
    window_steps: int | None = None,
    checkpoint: Checkpoint | None = None,
    floor: np.ndarray | None = None,
) -> Solution:
    """Integrate the batch `y0` with `method` over the save times `ts` (ts[0] = 0), window by window.

    With `until_converged`, a cell that reaches the end of the grid (after any extension by `horizon`: more
    decades while the loss is still falling) without converging gets NOT_CONVERGED, and the loss criterion in
    `controls` decides CONVERGED. Otherwise a cell that reaches ts[-1] gets FINISHED. Integration stops as soon as
    no cell is running; the saves after that are held (converged cells) or NaN.

    Ctrl-C is checked between windows: the cells still running get INTERRUPTED and the Solution carries a
    `Checkpoint`; passing it back as `checkpoint` (with the same method, flow, arrays and controls; `y0` and `ts`
    are then taken from it) continues the run, and the Solution returned is the whole run's, equal bit for bit to
    one never interrupted.

    `floor` (until converged): each cell's lowest reachable loss where it is above ℓ* (NaN elsewhere), e.g.
    `Problem.loss_min_in_span` for depth ∞ on a rectangular W. A cell whose loss meets the stop rule against its
    floor, ℓ − floor ≤ loss_tol·(min(ℓ₀, ℓ(0)) − floor), at a window's end stops there as SUBSPACE_OPTIMUM (its
    saves after that are held, as a converged cell's), and the horizon is extended while a cell's loss still falls
    towards its floor. A resumed run keeps the floor it was started with.
    """
    c = _controls_tree(controls, window_steps or method.window_steps)
    arrays_j = jax.tree_util.tree_map(jnp.asarray, arrays)
    compiled_before, start = COMPILE["seconds"], time.perf_counter()
    if checkpoint is None:
        ts = np.asarray(ts, dtype=np.float64)
        state = method.start(flow, y0, arrays_j, c)
        saved, end_obs, extensions, k, previous, halted = None, None, 0, 0, None, None
        wall_before = compile_before_ck = 0.0
    else:
        _check_checkpoint(checkpoint, method, c, until_converged, horizon)
        checkpoint.spent = True
        ts, state, k, extensions, previous = checkpoint.ts, checkpoint.state, checkpoint.k, checkpoint.extensions, (
            checkpoint.previous)  # fmt: skip
        saved, end_obs, halted = copy.deepcopy(checkpoint.saved), checkpoint.end_obs, copy.deepcopy(checkpoint.halted)
        wall_before, compile_before_ck = checkpoint.wall, checkpoint.compile_time
        floor = checkpoint.floor
    floor = None if floor is None or not until_converged else np.asarray(floor, dtype=np.float64)
    stopped = None
    saves = _window_saves(method, state)
    with sigint_flag() as flag:
        while True:
            window = ts[k : k + saves]
            padded = np.concatenate([window, np.full(saves - len(window), window[-1])])
            obs, last, state = method.advance(flow, state, arrays_j, padded, c)
            obs, last = jax.device_get((obs, last))
            summ = method.summary(state)
            if halted is not None:
                summ = halted.hold(summ)
            if saved is None:
                saved = _empty(obs, len(ts))
            _fill(saved, obs, window, k, summ)
            running = summ["status"] == RUNNING
            end_obs = last if end_obs is None else _where_cells(running | (summ["status"] == 1), last, end_obs)
            # cells the driver stops itself, frozen here (the method runs them on with the others, unseen): a norm
            # running away, a loss at the floor of its own (held like a converged cell's), a central flow whose
            # untracked eigenvalue passed the edge, and (until converged) one at rest on the edge
            rest = functools.partial(_edge_rest, ts=ts, arrays=arrays, falling=(horizon or Horizon()).falling)
            for code, rule in ((Status.NORM_RUNAWAY, _runaway), (Status.SUBSPACE_OPTIMUM, _at_floor),
                               (Status.UNTRACKED_EDGE, _untracked_edge),
                               *(((Status.EDGE_REST, rest),) if until_converged else ())):  # fmt: skip
                cells = rule(last, saved, running, controls, floor)
                if cells.any():
                    now = dict(summ, status=np.where(cells, int(code), summ["status"]))
                    final_now = method.final(flow, state)
                    halted = halted or _Halted(np.zeros_like(cells), now, final_now)
                    halted.add(cells, now, final_now)
                    summ = halted.hold(summ)
                    running = summ["status"] == RUNNING
            if on_window is not None:
                on_window(float(np.max(summ["t"])), summ)
            # a running cell short of its save times whose time did not move (by an ulp of t) cannot go on: the
            # solver failed, whatever budget is left — at once when the time stood still and every attempt was
            # rejected or the accepted ones left the state as it was (steps shrunk to nothing, e.g. towards a state
            # the field cannot pass), after `STALL_WINDOWS` such windows in a row when the compensated time still
            # crept or steps below what it resolves still changed the state; for a method that measures its state's
            # change (`STATE_CREEP`), a window that changed the state counts as progress and one that neither changed
            # it nor moved the time fast enough to reach its next save time on the budget left counts as a creep
            pending_here = ~saved.filled[:, k : k + len(window)]
            behind = pending_here.any(axis=1)
            clock = _clock(summ)
            steps, loss = np.asarray(summ["steps"]), np.asarray(last["loss"])
            attempts = summ["steps"] + np.maximum(summ["rejected"], 0)  # -1: a method that does not count them
            zero = np.zeros_like(clock[0])
            prev = previous or _Progress(zero, zero, np.zeros_like(steps), zero + np.nan, np.zeros(len(zero), int),
                                         np.zeros_like(attempts))  # fmt: skip
            moved = (clock[0] - prev.t_hi) + (clock[1] - prev.t_lo)
            still = running & behind & (moved <= ULP * np.abs(clock[0]))
            # the time still creeping, or accepted steps that still change the state
            changed = loss != prev.loss
            slow, windows = still, STALL_WINDOWS
            if "change" in summ or "regime" in last:
                upcoming = window[np.argmax(pending_here, axis=1)]
                left = np.maximum(controls.max_steps - attempts, 0) / np.maximum(attempts - prev.attempts, 1)
                creeping = moved * left < (upcoming - clock[0]) - clock[1]
            if "change" in summ:  # the state's own change tells an escape from a creep (`STATE_CREEP`)
                change = np.asarray(summ["change"])
                changed = changed | (change > 0)
                slow, windows = running & behind & (change <= STATE_CREEP) & creeping, CREEP_WINDOWS
            elif "regime" in last:  # the central flow: its time's rate alone (see `CREEP_WINDOWS`)
                reach = np.minimum(ts[-1] - clock[0], clock[0])  # not even to 2t (or its end) on the budget left
                slow, windows = running & behind & (moved * left < reach), CREEP_WINDOWS
            through = (moved > 0) | ((steps > prev.steps) & changed)
            stalled = np.where(slow & through, prev.stalled + 1, 0)
            stuck = (still & ~through) | (slow & through & (stalled > windows))
            summ = dict(summ, status=np.where(stuck, int(Status.SOLVER_FAILURE), summ["status"]))
            out_of_budget = (summ["status"] == RUNNING) & (attempts >= controls.max_steps)
            summ = dict(summ, status=np.where(out_of_budget, int(Status.MAX_STEPS), summ["status"]))
            previous = _Progress(*clock, steps, loss, stalled, attempts)
            running = summ["status"] == RUNNING
            if not running.any():
                break
            pending = ~saved.filled & running[:, None]
            if pending.any():
                k = int(np.argmax(pending.any(axis=0)))
            elif (
                until_converged
                and horizon is not None
                and extensions < horizon.extensions
                and _falling(saved, running, arrays, horizon, floor, method.family not in NON_MONOTONE)
            ):
                extra = _extend(ts, horizon.decades)
                ts = np.concatenate([ts, extra])
                saved.grow(len(extra))
                extensions += 1
                k = len(ts) - len(extra)
            else:
                break
            if _interrupt_requested(flag):  # at a window boundary: everything the next window needs is known
                stopped = Checkpoint(method.name, c, until_converged, horizon, state, copy.deepcopy(saved),
                                     end_obs, ts, k, extensions, previous, 0.0, 0.0, copy.deepcopy(halted),
                                     floor=floor)  # fmt: skip
                summ = dict(summ, status=np.where(running, int(Status.INTERRUPTED), summ["status"]))
                break
    final_state = method.final(flow, state)
    if halted is not None:
        final_state = _where_cells(halted.mask, halted.final, final_state)
    compile_time = COMPILE["seconds"] - compiled_before
    wall = time.perf_counter() - start - compile_time
    if stopped is not None:
        stopped.wall, stopped.compile_time = wall_before + wall, compile_before_ck + compile_time
    sol = _finish(saved, end_obs, ts, summ, final_state, until_converged, wall + wall_before,
                  compile_time + compile_before_ck)  # fmt: skip
    return dataclasses.replace(sol, checkpoint=stopped, floor=floor)


def _check_checkpoint(ck: Checkpoint, method: Method, c: dict, until_converged: bool, horizon: Horizon | None) -> None:
    """A checkpoint continues only the run it came from, once."""
    if not isinstance(ck, Checkpoint):
        fail("checkpoint", "must be the checkpoint of an interrupted run (Solution.checkpoint)", type(ck).__name__,
             "pass the checkpoint an interrupted run returned")  # fmt: skip
    if ck.spent:
        fail("checkpoint", "was already resumed (a checkpoint continues its run once)", shown("a spent checkpoint"),
             "resume from the checkpoint of the latest interrupted result")  # fmt: skip
    same = {"method": (ck.method, method.name), "until_converged": (ck.until_converged, until_converged),
            "horizon": (ck.horizon, horizon)}  # fmt: skip
    same.update({f"controls {k}": (ck.controls[k], c[k]) for k in ck.controls})
    for name, (was, now) in same.items():
        if not (was == now or (isinstance(was, float) and np.isnan(was) and np.isnan(now))):
            fail("checkpoint", f"continues a run with {name} {was!r} only", now,
                 f"resume with the arguments of the interrupted run ({name} {was!r})")  # fmt: skip


def _empty(obs: Any, count: int) -> _Saved:
    values = jax.tree_util.tree_map(lambda a: np.full((a.shape[0], count, *a.shape[2:]), np.nan), obs)
    batch = jax.tree_util.tree_leaves(obs)[0].shape[0]
    return _Saved(values, np.zeros((batch, count), bool))


def _where_cells(mask: np.ndarray, new: Any, old: Any) -> Any:
    def pick(a, b):
        m = mask.reshape(mask.shape + (1,) * (np.ndim(a) - 1))
        return np.where(m, a, b)

    return jax.tree_util.tree_map(pick, new, old)


def _fill(saved: _Saved, obs: Any, window: np.ndarray, k: int, summ: dict) -> None:
    """Take the window's saves that each cell reached and had not filled before."""
    n = len(window)
    reached = window[None, :] <= summ["t"][:, None] * (1 + REACHED_RTOL) + 1e-300
    take = reached & ~saved.filled[:, k : k + n]

    def put(dst, src):
        m = take.reshape(take.shape + (1,) * (dst.ndim - 2))
        dst[:, k : k + n] = np.where(m, np.asarray(src)[:, :n], dst[:, k : k + n])
        return dst

    saved.values = jax.tree_util.tree_map(put, saved.values, obs)
    saved.filled[:, k : k + n] |= take


def _falling(saved: _Saved, running: np.ndarray, arrays: dict, horizon: Horizon,
             floor: np.ndarray | None = None, monotone: bool = True) -> bool:  # fmt: skip
    """Whether some running cell's loss fell, over the last quarter of its saves, by more than `horizon.falling` of
    its distance to ℓ* (to its own floor, where `floor` gives one). Not `monotone` (a method in `NON_MONOTONE`):
    the median of that quarter against the quarter's before, and only where the saves trend down (`TREND`)."""
    loss = saved.values["loss"]
    for b in np.flatnonzero(running):
        loss_min = float(np.asarray(arrays["loss_min"])) if floor is None or np.isnan(floor[b]) else float(floor[b])
        values = loss[b][saved.filled[b]]
        if len(values) < 2:
            continue
        back = max(1, len(values) // 4)
        if monotone:
            before, now = values[-1 - back], values[-1]
        else:
            last, earlier = values[-back:], values[-2 * back : -back]
            if np.mean(last[:, None] < earlier[None, :]) < TREND:
                continue
            before, now = np.median(earlier), np.median(last)
        if _fell(before, now, loss_min, horizon.falling):
            return True
    return False


def _fell(before: float, now: float, loss_min: float, falling: float) -> bool:
    """Whether a loss fell from `before` to `now` by more than `falling` of its distance to ℓ* (`loss_min`): the
    horizon's test (`_falling`) and the edge-rest rule's (`_edge_rest`)."""
    return bool(before - now > falling * max(now - loss_min, 1e-300))


def _extend(ts: np.ndarray, decades: float) -> np.ndarray:
    """More save times after ts[-1], log-spaced at the density of the grid's last points."""
    positive = ts[ts > 0]
    ratio = positive[-1] / positive[-2] if len(positive) >= 2 else 10.0 ** (1 / 20)
    count = max(1, int(np.ceil(decades / np.log10(ratio))))
    return positive[-1] * ratio ** np.arange(1, count + 1)


def _finish(
    saved: _Saved, end_obs: Any, ts: np.ndarray, summ: dict, final: Any, until_converged: bool, wall: float,
    compile_time: float,
) -> Solution:  # fmt: skip
    """Statuses made final; unreached saves held (converged) or NaN."""
    status = np.asarray(summ["status"], dtype=np.int64).copy()
    t_final = np.asarray(summ["t"], dtype=np.float64)
    steps = np.asarray(summ["steps"], dtype=np.int64)
    running = status == RUNNING
    status[running] = int(Status.NOT_CONVERGED if until_converged else Status.FINISHED)
    status[(steps == 0) & (t_final <= 0) & (status != Status.CONVERGED) & (status != Status.INTERRUPTED)] = int(
        Status.NO_STEP
    )
    keep = len(ts)
    held = np.isin(status, HELD)

    def fill(values, end):
        values = values[:, :keep].copy()
        for b in range(values.shape[0]):
            missing = ~saved.filled[b, :keep]
            values[b, missing] = np.asarray(end)[b] if held[b] else np.nan
        return values

    observed = jax.tree_util.tree_map(fill, saved.values, end_obs)
    return Solution(
        ts=ts[:keep], observed=observed, final=jax.tree_util.tree_map(np.asarray, final), status=status,
        t_final=t_final, num_steps=steps, num_rejected=np.asarray(summ["rejected"], dtype=np.int64),
        wall_time=wall, compile_time=compile_time, messages=tuple(MESSAGES[Status(int(v))] for v in status),
    )  # fmt: skip
