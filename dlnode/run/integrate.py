"""`integrate`: the grid depth × scale × seed of one problem, integrated and returned as a Dataset."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import functools
import importlib.metadata
import json
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from dlnode._version import __version__
from dlnode.data.schema import METHOD_CODES, METHOD_USED_ATTRS, to_dataset, unpad_layers, with_problem
from dlnode.errors import warn
from dlnode.flows.diagonal import diagonal_flow
from dlnode.flows.endtoend import recover_layers
from dlnode.flows.flow import get_flow, pack_layers, sharpness_floors, unpack_layers
from dlnode.problems.kinds import Problem
from dlnode.problems.network import init_layers, product
from dlnode.run import sde_step
from dlnode.run.noise_rules import diagonal_states, with_paths
from dlnode.run.plan import NORM_LIMIT, Plan
from dlnode.run.resuming import remember
from dlnode.run.saveat import SaveAt
from dlnode.runtime.interrupts import sigint_flag, stop_requested
from dlnode.solvers import METHODS, Solution, Status, solve
from dlnode.solvers.auto import PER_DEPTH
from dlnode.solvers.core import RUNNING, stop_gap
from dlnode.solvers.driver import HELD, Horizon

__all__ = ["dataset_attrs", "integrate", "run_plan"]


def integrate(
    problem: Problem,
    depth: int | str | Iterable[int | str] = (1, 2, 3),
    width: int | None = None,
    init: str | Callable = "gaussian",
    scale: float | Sequence[float] = 1e-1,
    seed: int | Iterable[int] = 0,
    flow: str = "layers",
    method: str = "auto",
    lr: float | None = None,
    t1: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    saveat: SaveAt | int | Sequence[float] = 200,
    save_weights: bool = False,
    progress: bool = True,
    loss_tol: float | None = None,
    max_steps: int | None = None,
    scale_of: str = "layer",
    sharpness: int = 0,
    network: str = "dense",
    batch: int | None = None,
    noise: float | None = None,
    sampling: str = "epochs",
    paths: int | Iterable[int] | None = None,
    dt: float | None = None,
    norm_limit: float = NORM_LIMIT,
) -> Any:
    """Integrate the training dynamics of deep linear networks on `problem` over depth × scale × seed.

    Per-layer gradient flow dW_j/dt = −∂L/∂W_j (``flow="layers"``), or gradient descent W_j ← W_j − lr·∂L/∂W_j
    (``method="gd"``: its explicit-Euler step, exactly; step k at time t = k·lr).

    Parameters
    ----------
    problem : a dlnode problem.
    depth : int, ``"inf"`` (end-to-end flow only) or a list of them.
    width : hidden width (default max(d_in, d_out)).
    init, scale, seed : initialisation (see `dlnode.init_layers`); lists of scales and seeds make a grid.
    scale_of : ``"layer"`` (default): `scale` is each layer's scale, so W(0) ~ scale^N; ``"product"``: `scale` is
        the end-to-end scale, each layer gets scale^{1/N} (needed for depth ``"inf"``). Under either, a balanced
        run from the same (init, scale, seed) starts from the same W(0) with ``flow="layers"`` and
        ``flow="end_to_end"``, and with ``scale_of="product"`` from the same W(0) at every depth.
    flow : ``layers`` (per-layer gradient flow), ``modified`` (the flow of L + (lr/4)‖∇L‖² that GD with step lr
        follows to second order), or ``end_to_end`` (the balanced end-to-end flow of W alone, depths may include
        ``"inf"``; needs init ``balanced`` or ``decoupled``; runs on the rescaled time τ = N t, the dataset's
        ``time``, with the plain time t = τ/N as the coordinate ``t``; per-layer weights are rebuilt from the SVD of
        W); or ``central`` (the central flow of GD with step lr: gradient flow while the sharpness is below 2/lr,
        held at 2/lr on the edge; saves ``sharpness``, the predicted ``oscillation`` and ``loss_averaged`` and the
        ``regime``; explicit methods only; see `dlnode.flows.central`).
    method : ``auto`` (tsit5, or rosenbrock when a stiffness probe says so; see `dlnode.solvers.auto`), ``tsit5``,
        ``dopri5``, ``dopri8``, ``kvaerno5``, ``rosenbrock`` (stiff path: matrix-free CG on the layers, or
        singular coordinates U, ln σ, V for ``end_to_end`` flows, see `dlnode.solvers.singular`), ``scipy:RK45``,
        ``scipy:LSODA``, ``scipy:BDF``, ``scipy:Radau``, or ``gd``.
    lr : step size, required for ``gd``, ``flow="modified"`` and ``flow="central"``.
    t1 : end time. None: run until ℓ − ℓ* ≤ loss_tol·(min(ℓ₀, ℓ(0)) − ℓ*) (CONVERGED; ℓ(0) the loss at W = 0, the
        problem's own scale where a large init starts above it), in one pass, on a log-spaced save
        grid laid out from the problem's own time scale (1/‖∇ℓ(0)‖) and the slowest escape estimate, up to a
        horizon of `HORIZON_FACTOR` times that estimate, extended while the loss is still falling; a run that
        gets there without converging says NOT_CONVERGED. The grid is cut after the latest time a run needed, and
        a run that converged earlier holds its final state after its `t_final`.
    rtol, atol : tolerances of the adaptive methods. Default rtol: `MAX_DEFAULT_RTOL_LAYERS` (2e-7) for per-layer
        flows of depth ≥ 2, so the balancedness drifts by less than 1e-6·max_j‖W_j‖² (on long plateaus too: runs
        tightened further were no more accurate, docs/solvers.md); `DEFAULT_RTOL` (1e-6) at depth 1 and for
        end-to-end flows, whose rtol is tightened on long plateaus (predicted plateau stiffness r above
        `STIFFNESS_FREE` = 1e3) to 1e-6·(r/1e3)^{−1/2}, at least 1e-7. atol: 1e-3·rtol
        times the smallest per-layer init scale below 1 (at scale 1e-8, atol 1e-9 shifted escapes by 3e-3).
    saveat : a `dlnode.SaveAt` (what is saved, and when), or its short forms: a number of log-spaced save times
        (plus t = 0; with t1=None, their density: `saveat` per `GRID_DECADES` decades), or an explicit increasing
        array of times.
    save_weights : also store the per-layer weights at every saved time (with a short form of `saveat`; a SaveAt
        says it as ``weights=True``).
    progress : show a progress bar for runs longer than a second.
    loss_tol : convergence threshold (default 1e-8 when t1 is None, off otherwise).
    max_steps : budget of attempted steps per run (MAX_STEPS when exhausted; default: the method's own).
    sharpness : k > 0 saves the k largest eigenvalues of the Hessian of L in the layer parameters at every saved
        time (variable ``sharpness``, dims (depth, scale, seed, time, eig)), by Lanczos on exact Hessian-vector
        products (`dlnode.flows.hessian`); under ``gd`` each is the value at that step's iterate, so
        ``saveat=np.arange(n + 1) * lr`` gives it at every step. Under ``flow="central"``, the number of
        eigenvalues the flow tracks (default 1).
    network : ``dense`` (layers W_N⋯W_1) or ``diagonal`` (β = u^D − v^D entrywise, D the depth; init ``uniform``
        u = v = scale, ``positive`` u = scale, v = 0, or ``gaussian``; see `dlnode.flows.diagonal`).
    batch, noise, sampling, paths, dt : the stochastic methods ``sgd`` (minibatch SGD, `batch` samples a step),
        ``label_noise`` (labels perturbed by N(0, noise²) afresh each step; full batch unless `batch`) and the SDE
        methods ``sde_euler``, ``sde_heun`` (the SDE of that noise, step `dt`, default lr), on problems that keep
        their samples; `sampling` ``epochs`` (shuffled each epoch), ``without_replacement`` or
        ``with_replacement``; `paths` the noise seeds (a count P: 0 … P−1), a dataset dim ``path``. See
        docs/noise.md.
    norm_limit : a run whose ‖W‖₂ passes norm_limit × max(‖W*‖₂, ‖W(0)‖₂) (W* the problem's reference
        minimiser, its target) before its loss converges stops with status ``norm_runaway``, its trajectory kept:
        the flow may have no finite limit. Checked at each window's end; math.inf turns it off.

    Ctrl-C stops the run between windows: the dataset up to then is returned, the runs still going marked
    INTERRUPTED (a second Ctrl-C gives up waiting for the window in progress); `dlnode.resume` continues it to
    the result of an uninterrupted call.

    Returns
    -------
    xarray.Dataset with the schema of docs/schema.md; ``status`` holds `dlnode.Status` codes.
    """
    given = dict(locals())  # the arguments of this call, exactly: Plan.build takes the same
    if stop_requested():  # Ctrl-C came before this call, inside a block that stops there (a study): do not start
        raise KeyboardInterrupt
    with sigint_flag():  # a Ctrl-C anywhere in the call (between depths too) stops it and keeps what ran
        # the call runs on its own copy of the problem: a later change to the caller's arrays changes neither the
        # dataset nor what `resume` continues (which refuses a changed problem instead)
        plan = Plan.build(**(given | {"problem": copy.deepcopy(problem)}))
        ds = run_plan(plan, problem)
        check = sde_step.check_call(given, plan, ds)
        if check is None:
            return ds
        try:  # a check that fails (memory, say) must not lose the complete run
            with warnings.catch_warnings():  # the check's own plan and stop warnings are the run's, said above
                warnings.simplefilter("ignore")
                fine = run_plan(Plan.build(**(check | {"problem": copy.deepcopy(problem)})), problem,
                                warn_stops=False)  # fmt: skip
        except Exception as err:  # noqa: BLE001 - any failure of the check leaves the run as it is
            warn(f"dlnode: the check of the default SDE step failed ({type(err).__name__}: {err}); the run is "
                 "complete, its step unchecked (no dt_check)")  # fmt: skip
            return ds
        return sde_step.checked(ds, fine, plan)


def run_plan(plan: Plan, given: Problem | None = None, warn_stops: bool = True) -> Any:
    """Run a validated `Plan` (what `integrate` does with the plan of its arguments) and return its Dataset;
    `given` is the problem object the caller holds (default: the plan's own). `warn_stops=False` leaves out the
    warning that names the runs that did not converge or reach t1 (a sweep's task: the sweep counts statuses)."""
    with sigint_flag():
        return _assemble(plan, _run_grid(plan), plan.problem if given is None else given, warn_stops)


def _assemble(plan: Plan, raw: dict[float, Solution], given: Problem, warn_stops: bool = True) -> Any:
    """The dataset of the runs of `plan` (one Solution per depth run so far; the depths not begun are there with
    status PENDING); an interrupted one is remembered for `resume`, with the problem object `given`."""
    cut = plan.until_converged and not isinstance(plan.saveat, np.ndarray)
    runs = _common_grid(raw, cut, plan.step)
    ds = to_dataset(runs, plan.scales, plan.seeds, dataset_attrs(plan, runs), plan.save_weights,
                    plan.noise.paths)  # fmt: skip
    if plan.method == PER_DEPTH:  # as in a sweep store: the method each cell ran
        codes = np.array([METHOD_CODES[plan.methods[d]] for d in runs], dtype=np.int8)
        shape = (len(runs), len(plan.scales), len(plan.seeds))
        ds["method_used"] = (("depth", "scale", "seed"), np.broadcast_to(codes[:, None, None], shape).copy(),
                             METHOD_USED_ATTRS)  # fmt: skip
    pending = [d for d in plan.depths if d not in runs]
    if pending:  # Ctrl-C: the depths not begun are in the dataset, marked PENDING, NaN (-1 for counts)
        fill = {name: value for name, value in PENDING_FILL.items() if name in ds}
        ds = ds.reindex(depth=plan.depths, fill_value=fill)
    if plan.flow == "end_to_end":
        ds = _with_plain_time(ds)
    floors = {d: sol.floor for d, sol in runs.items() if sol.floor is not None}
    if floors:  # depth ∞ on a rectangular W: each cell's lowest reachable loss (ℓ* at the other depths)
        values = np.full((len(ds["depth"]), len(plan.scales), len(plan.seeds)), plan.problem.loss_min)
        for i, d in enumerate(ds["depth"].values):
            if float(d) in floors:
                values[i] = np.where(np.isnan(floors[float(d)]), plan.problem.loss_min,
                                     floors[float(d)]).reshape(values[i].shape)  # fmt: skip
        ds["loss_floor"] = (("depth", "scale", "seed"), values, LOSS_FLOOR_ATTRS)
    if warn_stops:
        _warn_stops(ds, plan.problem, plan.until_converged)
        past = past_edge(ds, plan)
        if past:
            finished = int(np.isin(ds["status"].values, [int(Status.INTERRUPTED), int(Status.PENDING)],
                                   invert=True).sum())  # fmt: skip
            warn(past_edge_message(past, finished, "runs", "sharpness" in ds))
    ds = with_problem(ds, plan.problem)
    stopped = [d for d, sol in raw.items() if sol.checkpoint is not None]
    if stopped or pending:  # Ctrl-C: `dlnode.resume(ds)` runs the rest
        done = {d: sol for d, sol in raw.items() if sol.checkpoint is None}
        depth, checkpoint = (stopped[0], raw[stopped[0]].checkpoint) if stopped else (None, None)
        remember(ds, functools.partial(_continue, plan, done, depth, checkpoint, given), given)
        cells = len(plan.scales) * len(plan.seeds)
        names = ", ".join(f"{d:g}" for d in pending) or "none"
        warn(f"dlnode: interrupted (Ctrl-C): {len(stopped) * cells} runs stopped early (status interrupted), "
             f"{len(pending)} depths not begun (status pending: {names}); dlnode.resume(ds) continues the call to "
             "the result it would have had")  # fmt: skip
    return ds


LOSS_FLOOR_ATTRS = {"long_name": "lowest loss the run can reach: l* inside W(0)'s column/row space at depth inf on a "
                    "rectangular W, l* elsewhere", "units": "1"}  # fmt: skip
PENDING_FILL = {"status": int(Status.PENDING), "num_steps": -1, "num_rejected": -1, "method_used": -1}


def _continue(plan: Plan, done: dict, depth: float | None, checkpoint: Any, given: Problem,
              progress: bool | None) -> Any:  # fmt: skip
    """The rest of an interrupted call: the depth it stopped in from its checkpoint, then the depths not begun."""
    plan = plan if progress is None else dataclasses.replace(plan, progress=progress)
    with sigint_flag():
        return _assemble(plan, _run_grid(plan, done, depth, checkpoint), given)


def _cells(da: Any, mask: np.ndarray, limit: int) -> list[dict]:
    """The first `limit` cells of a run variable where `mask` (of its shape) holds: one dict of coordinates each
    (depth, scale, seed, and path where there is one)."""
    names = list(da.dims)
    axes = [da[n].values for n in names]
    return [{n: axis[i].item() for n, axis, i in zip(names, axes, index, strict=True)}
            for index in np.argwhere(mask)[:limit]]  # fmt: skip


SHOWN = 3  # the runs a stop warning describes one by one; the rest it counts


# σ₁ above this many times the minimiser's and its own at t = 0 (a large init starts far above W*'s: GD from
# per-layer scale 10 at depth 3 ended at 47× the minimiser's, far below its start), still growing at the end: say
# the norm runs away
RUNAWAY_NOTE = 3.0


def running_away(sv: np.ndarray, s_star: float) -> bool:
    """Whether a run's σ₁ at its saves (`sv`, NaN-free, the first at t = 0 by default) says its norm runs away: at
    the end above `RUNAWAY_NOTE` times both the minimiser's ‖W*‖₂ and σ₁ at the first save, and still growing."""
    return len(sv) >= 2 and sv[-1] > RUNAWAY_NOTE * max(s_star, sv[0]) and sv[-1] > sv[-2]


def _warn_stops(ds: Any, problem: Problem, until_converged: bool = True) -> None:
    """One warning line for the runs of a call that did not converge (until converged) or did not reach t1 (a
    horizon given), with why (and whether the norm is running away: a flow whose minimiser is at infinity converges
    in loss only, never in W)."""
    status = ds["status"]
    s_star = float(np.linalg.norm(problem.w_star, 2))
    # Ctrl-C (interrupted, pending) has its own message
    quiet = [int(Status.CONVERGED), int(Status.FINISHED), int(Status.INTERRUPTED), int(Status.PENDING)]
    stopped = ~np.isin(status.values, quiet)
    parts = []
    for where in _cells(status, stopped, SHOWN):  # a select per cell shown, not per cell: paths can be thousands
        code = int(status.sel(where))
        sv = ds["singular_values"].sel(where).isel(k=0).dropna("time").values
        note = ""
        if code == int(Status.SUBSPACE_OPTIMUM):
            note = f" (the best fit inside W(0)'s subspace, loss_floor {float(ds['loss_floor'].sel(where)):.6g})"
        elif code != int(Status.DIVERGED) and running_away(sv, s_star):
            note = f" (σ₁ = {sv[-1]:.3g}, {sv[-1] / s_star:.3g}× the minimiser's and growing: the norm runs away)"
        elif code == int(Status.NOT_CONVERGED) and ds.attrs.get("method") == "gd" and _oscillates(ds, where):
            see = "S is ds.sharpness" if int(ds.attrs.get("sharpness", 0)) else "pass sharpness=1 to see S"
            note = (f" (its loss still rises and falls between saves: lr = {ds.attrs['lr']:g} may be past 2/S at "
                    f"every minimum within reach; {see})")  # fmt: skip
        elif code == int(Status.SOLVER_FAILURE) and ds.attrs.get("flow") == "central":
            t, theta = float(ds["t_final"].sel(where)), ds["sharpness"].sel(where).dropna("time", how="all")
            after = ds["untracked_sharpness"].sel(where).dropna("time").values  # none: as many as parameters
            nxt = f"{float(after[-1]):.6g}" if after.size else "none"
            note = (f" (the central flow crept at t = {t:.4g}: at its last save the tracked eigenvalue "
                    f"{float(theta.values[-1][-1]):.6g} and the next one {nxt}, 2/lr = "
                    f"{2 / float(ds.attrs['lr']):.6g}; where eigenvalues rise together the eigenspace it holds is "
                    "ill-defined; GD itself (method='gd') says whether this lr stays at the edge)")  # fmt: skip
        elif code == int(Status.UNTRACKED_EDGE):
            k, t = int(ds["sharpness"].sizes["eig"]), float(ds["t_final"].sel(where))
            note = (f" (eigenvalue {k + 1}, which it does not track, passed 2/lr = {2 / float(ds.attrs['lr']):.6g} "
                    f"by t = {t:.4g}: pass sharpness={k + 1})")  # fmt: skip
        elif code == int(Status.EDGE_REST):
            lr, t = float(ds.attrs["lr"]), float(ds["t_final"].sel(where))
            loss = float(ds["loss"].sel(where).dropna("time").values[-1])
            note = (f" (it came to rest on the edge S = 2/lr = {2 / lr:.6g} with loss {loss:.6g}: its loss fell by "
                    f"less than 1e-3 of its gap to l* over the decade of time to t = {t:.4g}, so GD at lr = {lr:g} "
                    "is predicted to keep oscillating there; t1= integrates further)")  # fmt: skip
        elif code == int(Status.NOT_CONVERGED) and ds.attrs.get("flow") == "central" and _held_at_edge(ds, where):
            lr = float(ds.attrs["lr"])
            loss = float(ds["loss"].sel(where).dropna("time").values[-1])
            note = (f" (it ends held at the edge S = 2/lr = {2 / lr:.6g} with loss {loss:.6g}: the central flow may "
                    f"come to rest on the edge above the least loss, where GD at lr = {lr:g} keeps oscillating; a "
                    f"horizon of your own, t1=, bounds the cost)")  # fmt: skip
        path = f", path {where['path']}" if "path" in where else ""
        stop = "" if until_converged else f" at t = {float(ds['t_final'].sel(where)):.4g}"
        parts.append(f"depth {where['depth']:g}, scale {where['scale']:g}, seed {where['seed']}{path}: "
                     f"{Status(code).meaning}{stop}{note}")  # fmt: skip
    count = int(stopped.sum())
    if count:
        shown = "; ".join(parts) + (f"; and {count - len(parts)} more" if count > len(parts) else "")
        what = "did not converge" if until_converged else f"stopped before t1 = {float(ds.attrs['t1']):.6g}"
        warn(f"dlnode: {count} of {status.size} runs {what}: {shown}")


def past_edge(ds: Any, plan: Plan, cells: np.ndarray | None = None) -> list[dict[str, Any]]:
    """The modified-flow runs of `plan` (its dataset `ds`) that end where GD at the plan's lr cannot stay: the
    modified flow is GD's to O(lr²) only while lr·S < 2, and a minimum with S > 2/lr is unstable under GD (it
    oscillates away or diverges) though the flow settles there. S at each run's end (``weights_final``) is bounded
    below by power iteration (`flows.flow.sharpness_floors`: a Rayleigh quotient, so never a false alarm). One dict
    per such run: depth, scale, seed, lr, ``bound`` (S ≥ bound) and ``since`` (the first save with S ≥ 2/lr where
    ``sharpness=k`` saved S, else NaN); [] for the other flows, noise paths and diagonal networks, whose layers are
    not the modified flow's. `cells` (a mask of ``ds.status``'s shape) limits the check to those runs: a sweep task
    reports the cells it computes for the store, not those already there."""
    if plan.flow != "modified" or plan.noise.paths is not None or plan.noise.network == "diagonal":
        return []
    lr = float(plan.controls.lr)
    edge, past = 2.0 / lr, []
    for k, depth in enumerate(ds["depth"].values):
        status = ds["status"].isel(depth=k).values
        weights = ds["weights_final"].isel(depth=k).values
        wanted = np.ones(status.shape, bool) if cells is None else np.asarray(cells, bool)[k]
        finals = [(i, j, unpad_layers(weights[i, j], float(depth), plan.problem.d_in))
                  for i, j in np.ndindex(*status.shape)
                  if wanted[i, j] and status[i, j] not in (int(Status.INTERRUPTED), int(Status.PENDING))]  # fmt: skip
        finals = [(i, j, layers) for i, j, layers in finals if layers is not None]
        if not finals:
            continue
        batch = tuple(np.stack([layers[n] for _, _, layers in finals]) for n in range(int(depth)))
        floors = sharpness_floors(type(plan.problem), batch, plan.problem.arrays())
        for (i, j, _), bound in zip(finals, floors, strict=True):
            if not bound >= edge:
                continue
            since = math.nan
            if "sharpness" in ds:
                s = ds["sharpness"].isel(depth=k, scale=i, seed=j, eig=0)
                reached = s.where(s >= edge, drop=True)
                since = float(reached["time"][0]) if reached.sizes["time"] else math.nan
            past.append({"depth": float(depth), "scale": plan.scales[i], "seed": plan.seeds[j], "lr": lr,
                         "bound": float(bound), "since": since})  # fmt: skip
    return past


def past_edge_message(past: list[dict[str, Any]], total: int, what: str, sharpness_saved: bool) -> str:
    """The one-line warning for the runs `past_edge` found, of `total` modified-flow runs (`what`: "runs" for a call,
    "cells of this sweep" for a sweep, whose cells may differ in lr)."""
    lrs = sorted({p["lr"] for p in past})
    parts = []
    for p in past[:SHOWN]:
        digits = 10.0 ** (math.floor(math.log10(p["bound"])) - 3)  # 4 digits, rounded down: "S ≥" stays true
        lr = f"lr {p['lr']:g}, " if len(lrs) > 1 else ""
        since = f", past 2/lr from t = {p['since']:.4g}" if math.isfinite(p["since"]) else ""
        parts.append(f"{lr}depth {p['depth']:g}, scale {p['scale']:g}, seed {p['seed']}: "
                     f"S ≥ {math.floor(p['bound'] / digits) * digits:.4g}{since}")  # fmt: skip
    more = f"; and {len(past) - SHOWN} more" if len(past) > SHOWN else ""
    edge = f"2/lr = {2.0 / lrs[0]:.6g}" if len(lrs) == 1 else "2/lr"
    at = f"lr = {lrs[0]:g}" if len(lrs) == 1 else "lr"
    return (f"dlnode: {len(past)} of {total} modified-flow {what} end where the sharpness S is above {edge} "
            f"({'; '.join(parts)}{more}): the modified flow follows GD at {at} only while lr·S < 2, and GD cannot "
            "settle at such a minimum (it oscillates away or diverges); flow='central' follows GD on the edge"
            f"{'' if sharpness_saved else ', sharpness=1 saves S along the run'}")  # fmt: skip


def _oscillates(ds: Any, where: dict) -> bool:
    """Whether the loss of one run rose between consecutive saves over the last quarter of its saves."""
    loss = ds["loss"].sel(where).dropna("time").values
    return bool(np.any(np.diff(loss[-max(2, len(loss) // 4) :]) > 0))


def _held_at_edge(ds: Any, where: dict) -> bool:
    """Whether a central-flow run ended with some eigenvalue held at the edge (`regime` ≥ 1 at its last save)."""
    regime = ds["regime"].sel(where).dropna("time").values if "regime" in ds else np.zeros(0)
    return bool(len(regime) and regime[-1] >= 1)


def _run_grid(plan: Plan, done: dict[float, Solution] | None = None, depth: float | None = None,
              checkpoint: Any = None) -> dict[float, Solution]:  # fmt: skip
    """Run the depths of `plan` not in `done`, the one at `depth` from `checkpoint`; stop at an interrupt."""
    runs = dict(done or {})
    bar = tqdm(total=len(plan.depths), desc=f"dlnode ({_memory(plan.memory)} in memory)", unit="depth", delay=1.0,
               disable=not plan.progress, leave=False)  # fmt: skip
    with bar, sigint_flag() as flag:
        bar.update(len(runs))
        for d in plan.depths:
            if d in runs:
                continue

            def show(t: float, summ: dict, d: float = d) -> None:
                counts = np.unique(summ["status"], return_counts=True)  # 0 while a run is going: "running"
                text = ", ".join(f"{'running' if int(k) == RUNNING else Status(int(k)).meaning} {n}"
                                 for k, n in zip(*counts, strict=True))  # fmt: skip
                end = "horizon" if plan.until_converged else "t1"
                clock = "tau = N t" if plan.flow == "end_to_end" else "t"  # end-to-end flows run on tau
                bar.set_postfix_str(f"depth {d:g}, {plan.methods[d]}, {clock} {t:.3g} of {end} "
                                    f"{plan.controls.t1:.3g}: {text}", refresh=True)  # fmt: skip

            resumed = checkpoint if d == depth else None
            y0 = None if resumed is not None else _initial_states(plan, d)
            if flag["hit"] and runs:
                break  # Ctrl-C before this depth began (while its initial states were drawn): it stays pending
            runs[d] = _run_depth(plan, d, show, y0, resumed)
            bar.update()
            if runs[d].checkpoint is not None or flag["hit"]:
                break  # Ctrl-C (in this depth's last window too): no further depth is started
    return runs


def _memory(nbytes: int) -> str:
    """The peak memory estimate as the progress bar says it: '3.2 MiB', '1.1 GiB'."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes / 2**10:.0f} KiB"


def _common_grid(runs: dict[float, Solution], cut: bool, lr: float) -> dict[float, Solution]:
    """Every depth on the longest save grid (an extended horizon appends times; held or NaN past a run's end),
    cut after the latest time a run needed when the grid was planned (until converged)."""
    longest = max(runs.values(), key=lambda s: len(s.ts)).ts
    keep = len(longest)
    if cut:
        needed = max(float(np.max(s.t_final)) for s in runs.values())
        keep = min(keep, int(np.searchsorted(longest, needed * (1 - 1e-12), side="left")) + 1)

    def resize(sol: Solution) -> Solution:
        extra = len(longest) - len(sol.ts)
        held = np.isin(sol.status, HELD)

        def pad(a):
            if extra:
                tail = np.where(held.reshape((-1,) + (1,) * (a.ndim - 1)), a[:, -1:], np.nan)
                a = np.concatenate([a, np.repeat(tail, extra, axis=1)], axis=1)
            return a[:, :keep]

        observed = jax.tree_util.tree_map(pad, sol.observed)
        step = None if sol.step is None else np.rint(longest[:keep] / lr).astype(np.int64)
        return dataclasses.replace(sol, ts=longest[:keep], observed=observed, step=step)

    return {d: resize(sol) for d, sol in runs.items()}


def _initial_states(plan: Plan, depth: float) -> Any:
    """The batch of initial states of one depth: layer tuples, or W(0) = the product of those layers."""
    problem, cells = plan.problem, [(s, seed) for s in plan.scales for seed in plan.seeds]
    if plan.noise.network == "diagonal":
        return diagonal_states(problem, int(depth), plan.init, cells)
    if math.isinf(depth):  # the end-to-end limit: the depth-1 draw of the same balanced frames
        return np.stack([init_layers(problem, 1, plan.init, s, seed, plan.width)[0] for s, seed in cells])
    n = int(depth)
    per_layer = [s ** (1.0 / n) if plan.scale_of == "product" else s for s, _ in cells]
    layers = [init_layers(problem, n, plan.init, p, seed, plan.width) for p, (_, seed) in zip(per_layer, cells,
              strict=True)]  # fmt: skip
    if plan.flow == "end_to_end":
        return np.stack([product(c) for c in layers])
    return tuple(np.stack([c[j] for c in layers]) for j in range(n))


def _run_depth(plan: Plan, depth: float, show: Callable, y0: Any, checkpoint: Any = None) -> Solution:
    """One batch: every (scale, seed) cell of one depth (vmapped, or cell after cell where the method runs them
    alone, `core.by_cell`) from the initial states `y0` (or continued from `checkpoint`)."""
    flow = _flow_of(plan, depth)
    horizon = Horizon() if plan.until_converged and not isinstance(plan.saveat, np.ndarray) else None
    if not flow.end_to_end and checkpoint is None:
        y0 = pack_layers(y0)
        if plan.noise.paths is not None:
            y0 = with_paths(y0, plan.noise.paths)
    floor = _floors(plan, depth, y0) if checkpoint is None else None  # a resumed run keeps its own
    sol = solve(plan.methods[depth], flow, plan.problem.arrays(), y0, plan.times, plan.controls_at(depth),
                until_converged=plan.until_converged, horizon=horizon, on_window=show,
                checkpoint=checkpoint, floor=floor)  # fmt: skip
    if not flow.end_to_end:
        sol = dataclasses.replace(sol, final=unpack_layers(sol.final))
    if plan.method in METHODS and METHODS[plan.method].needs_lr:  # fixed steps: step k at t = k·lr (or k·dt)
        sol = dataclasses.replace(sol, step=np.rint(sol.ts / plan.step).astype(np.int64))
    if plan.flow != "end_to_end":
        return sol
    return _with_recovered_layers(sol, depth, plan.width, plan.save_weights)


def _floors(plan: Plan, depth: float, y0: Any) -> np.ndarray | None:
    """Each cell's lowest reachable loss where it lies above ℓ* (NaN elsewhere), or None: depth ∞ end to end on a
    rectangular W keeps W(0)'s column or row space (docs/math.md §5), so an until-converged run stops at the best
    fit inside it, ℓ*_S (`Problem.loss_min_in_span`), when that is above ℓ* by more than the stop rule allows."""
    problem = plan.problem
    if not (plan.until_converged and plan.flow == "end_to_end" and math.isinf(depth)
            and problem.d_out != problem.d_in):  # fmt: skip
        return None
    floors = np.full(len(y0), np.nan)
    for b, w0 in enumerate(np.asarray(y0)):
        inside, loss0 = problem.loss_min_in_span(w0), float(problem.loss(w0))
        gap = stop_gap(loss0, plan.controls.loss_scale, problem.loss_min, np)
        if inside - problem.loss_min > plan.controls.loss_tol * gap:
            floors[b] = inside
    return floors


def _flow_of(plan: Plan, depth: float) -> Any:
    """The flow of one depth: dense or diagonal, carrying the call's noise (what the stochastic methods sample)."""
    weights = plan.save_weights and plan.flow != "end_to_end"
    if plan.noise.network == "diagonal":
        flow = diagonal_flow(type(plan.problem), int(depth), weights, plan.flow == "modified", plan.sharpness)
    else:
        flow = get_flow(plan.flow, type(plan.problem), depth, weights, plan.sharpness)
    return flow if plan.noise.noise is None else dataclasses.replace(flow, noise=plan.noise.noise)


def _with_plain_time(ds: Any) -> Any:
    """End-to-end datasets run on τ = N t: add the plain time t = τ/N per depth (NaN at depth ∞)."""
    depth = ds["depth"].values
    with np.errstate(invalid="ignore"):
        t = np.where(np.isinf(depth)[:, None], np.nan, ds["time"].values[None, :] / depth[:, None])
    ds = ds.assign_coords(t=(("depth", "time"), t, {"long_name": "per-layer gradient-flow time t = tau / N",
                                                   "units": "time"}))  # fmt: skip
    ds["time"].attrs.update(long_name="rescaled time tau = N t")
    return ds


def _with_recovered_layers(sol: Solution, depth: float, width: int | None, save_weights: bool) -> Solution:
    """End-to-end runs carry W only: rebuild balanced layers from its SVD (none exist at depth ∞)."""
    if math.isinf(depth):
        final: tuple = ()
    else:
        cells = [recover_layers(w, int(depth), width) for w in sol.final]
        final = tuple(np.stack([c[j] for c in cells]) for j in range(int(depth)))
    observed = dict(sol.observed)
    if save_weights and not math.isinf(depth):
        products = sol.observed["product"]  # (batch, time, m, n), NaN after a failure
        per = [[_recover_or_nan(w, int(depth), width) for w in cell] for cell in products]
        observed["weights"] = tuple(
            np.stack([np.stack([t[j] for t in cell]) for cell in per]) for j in range(int(depth))
        )
    elif save_weights:
        observed["weights"] = ()
    return dataclasses.replace(sol, final=final, observed=observed)


def _recover_or_nan(w: np.ndarray, depth: int, width: int | None) -> list[np.ndarray]:
    if np.all(np.isfinite(w)):
        return recover_layers(w, depth, width)
    return [np.full_like(a, np.nan) for a in recover_layers(np.zeros_like(w), depth, width)]


def dataset_attrs(plan: Plan, runs: dict) -> dict[str, Any]:
    controls = plan.controls
    problem, init = plan.problem, plan.init
    init_name = init if isinstance(init, str) else f"callable:{getattr(init, '__name__', type(init).__name__)}"
    e2e = plan.flow == "end_to_end"
    return plan.noise.attrs() | {
        "dlnode_version": __version__,
        "problem": problem.to_json(),
        "flow": plan.flow,
        "method": plan.method,
        "method_requested": plan.requested,
        "method_reason": plan.reason,
        "rtol": controls.rtol,
        "atol": controls.atol,
        "lr": controls.lr,
        "t1": controls.t1 if not plan.until_converged else float(max(s.ts[-1] for s in runs.values())),
        "until_converged": int(plan.until_converged),
        "loss_tol": controls.loss_tol,
        "stop_rule": "l - l* <= loss_tol * (min(l0, l(W=0)) - l*)  (status 1); "
        "l > diverge * max(l0, l(W=0)) or non-finite (status -2); "
        "||W||_2 > norm_limit * max(||W*||_2, ||W(0)||_2) before converging (status -9)",
        "diverge": controls.diverge,
        "norm_limit": controls.norm_limit,
        "max_steps": int(controls.max_steps)
        if plan.max_steps_given or plan.method != PER_DEPTH
        else "per depth: the default of the method that ran",
        "saveat": plan.saveat if isinstance(plan.saveat, int) else "explicit",
        "init": init_name,
        "scale_of": plan.scale_of,
        "scale_meaning": "end to end: W(0) ~ scale, each layer scale^(1/N)"
        if plan.scale_of == "product"
        else "per layer: each layer scale, W(0) ~ scale^N",
        "width": int(plan.width) if plan.width is not None else max(problem.d_in, problem.d_out),
        "time_rescaling": "tau = N t: finite depths integrate dW/dtau = -A_N(E)/N, depth inf dW/dtau = -A_inf(E)"
        if e2e
        else "none",
        "compile_time": float(sum(s.compile_time for s in runs.values())),
        "run_time": float(sum(s.wall_time for s in runs.values())),
        "jax_version": jax.__version__,
        "diffrax_version": importlib.metadata.version("diffrax"),
        "x64": int(jax.config.jax_enable_x64),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "Conventions": "CF-1.8",
        "loss_convention": problem.convention,
        "sharpness": int(plan.sharpness),
        "config": json.dumps({"depth": [str(d) for d in runs], "method": plan.method, "flow": plan.flow}),
    }
