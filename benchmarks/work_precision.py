"""Work-precision: wall time against accuracy for dlnode's methods and its peers, on one problem at a time.

Accuracy is the largest relative error of the end-to-end matrix over the saved times,
max_t ‖W(t) − W_ref(t)‖_F / ‖W_ref(t)‖_F, against a tight reference of the same flow (cached as netCDF under
``benchmarks/results/``), so a fast but wrong run cannot win. Every wall time excludes compilation and is the
median of three repeats when a run takes under a second.

Gradient-descent peers are the flow's O(lr) approximation: the JAX loop runs at lr₀ = 2^⌊log₂(1/S)⌋ (S the
sharpness where the run ends) and a few halvings of it on a shorter horizon, the fit err ≈ C·lr^p gives the lr that
would meet `TARGET` on the full horizon, and each loop's cost per step gives its wall time; such rows say
"extrapolated".

A dlnode method joins the comparison by being listed in `DLNODE_METHODS`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import cache, partial
from pathlib import Path

import numpy as np
import xarray as xr

import dlnode as dln
from dlnode.analysis.curvature import sharpness
from dlnode.flows.endtoend import recover_layers

from .peers import TORCH_INSTALL, Run, flow_run, jax_gd, torch_gd

__all__ = ["CASES", "DLNODE_METHODS", "TARGET", "Case", "Row", "reference", "rel_error", "run_case", "table", "timed"]

# The dlnode methods in the comparison, each at every tolerance of a case: list a new registry name here.
DLNODE_METHODS: tuple[str, ...] = (
    "rosenbrock", "tsit5", "dopri5", "dopri8", "kvaerno5", "scipy:RK45", "scipy:LSODA", "scipy:BDF", "scipy:Radau",
)  # fmt: skip
PEER_NOTES = {
    "rosenbrock": "dlnode's stiff path (explicit/Rosenbrock switching, matrix-free CG)",
    "tsit5": "= diffrax Tsit5, default settings",
    "kvaerno5": "= diffrax Kvaerno5, default settings (dense LU)",
    "scipy:LSODA": "= scipy LSODA, JAX Jacobian",
    "scipy:BDF": "= scipy BDF, JAX Jacobian",
    "scipy:Radau": "= scipy Radau, JAX Jacobian",
}
DENSE_JACOBIAN = {"kvaerno5", "scipy:LSODA", "scipy:BDF", "scipy:Radau"}
DENSE_JACOBIAN_LIMIT = 2**30  # bytes: a larger dense Jacobian (and its LU) is not attempted
GEMM_SIZES = (2000, 3000)  # a method not attempted is bounded below by one LU at the GEMM rate of these n
TARGET = 1e-4  # the stated accuracy: max relative error of W over the saved times
REPEAT_BELOW_S = 1.0  # runs faster than this are repeated three times (median)
PROBE_STEPS = 4  # a budgeted run first takes this many steps to measure its cost per step
DEFAULT_RTOL_TO_ATOL = 1e-3  # atol of the contestants' runs, relative to their rtol
FAR_HORIZON = 1e12  # time units: the reference runs until its loss criterion, this is only a bound


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark problem: matrix completion M (shape, rank, observed entries, seed 0), one network and init.

    The horizon is the reference's time to reach ℓ − ℓ* ≤ loss_tol·(ℓ₀ − ℓ*). `budget_s` caps every contestant's
    wall time (None: no cap); `gd_horizon` (a fraction of the horizon) and `gd_max_steps` (at the smallest lr)
    bound the gradient-descent runs behind an extrapolation.
    """

    name: str
    shape: tuple[int, int]
    rank: int
    observed: int
    depth: int
    scale: float
    loss_tol: float
    init: str = "gaussian"
    seed: int = 0
    rtols: tuple[float, ...] = (1e-6,)
    per_decade: int = 16
    gd_lrs: int = 4
    gd_horizon: float = 1.0
    gd_max_steps: int = 200_000
    gd_cost_steps: int = 20_000
    budget_s: float | None = None
    ref_budget_s: float | None = None
    reference: tuple[str, float, float] = ("dopri8", 1e-10, 1e-12)

    def problem(self) -> dln.MatrixCompletion:
        return dln.MatrixCompletion.random(shape=self.shape, rank=self.rank, observed=self.observed, seed=0)

    def settings(self) -> dict:
        return {"depth": self.depth, "init": self.init, "scale": self.scale, "seed": self.seed}

    def describe(self) -> str:
        rows, cols = self.shape
        return (f"matrix completion {rows}x{cols}, rank {self.rank}, {self.observed} observed; depth {self.depth}, "
                f"{self.init} init, per-layer scale {self.scale:g}; to loss <= {self.loss_tol:g} L0")  # fmt: skip

    def key(self) -> str:
        """A hash of what the reference depends on (the cache key)."""
        fields = ("shape", "rank", "observed", "depth", "scale", "loss_tol", "init", "seed", "per_decade",
                  "ref_budget_s", "reference")  # fmt: skip
        return hashlib.sha1(json.dumps([getattr(self, f) for f in fields]).encode()).hexdigest()[:10]


def _deep(name: str, d: int, reference: tuple[str, float, float], gd_max_steps: float, rtols: tuple) -> Case:
    """Depth 4, per-layer init 1e-3 (MatrixCompletion.random((d, d), 2, 0.6 d², seed 0)) to ℓ ≤ 1e-6 ℓ₀: long
    plateaus, and explicit steps capped by the sharpness of the learned modes; every contestant gets a budget."""
    budgets = {"budget_s": 300.0, "ref_budget_s": 2400.0, "rtols": rtols}
    gd = {"gd_lrs": 3, "gd_horizon": 0.25, "gd_max_steps": int(gd_max_steps)}
    return Case(name, (d, d), 2, int(0.6 * d * d), 4, 1e-3, 1e-6, reference=reference, **budgets, **gd)


_QUICK = {"rtols": (1e-6, 1e-8), "gd_lrs": 5, "gd_cost_steps": 5_000}
_ARORA = {"rtols": (1e-4, 1e-6, 1e-8), "gd_lrs": 3, "gd_max_steps": 100_000, "gd_cost_steps": 10_000}
CASES = {
    "quick": Case("quick", (10, 10), 2, 60, depth=3, scale=0.1, loss_tol=1e-7, **_QUICK),
    "arora": Case("arora", (100, 100), 5, 2000, depth=3, scale=0.1, loss_tol=1e-7, **_ARORA),
    # references: Radau where its dense Jacobian is small (400² at d = 10), dopri8 within its budget at d = 50
    "deep10": _deep("deep10", 10, ("scipy:Radau", 1e-10, 1e-12), 5e7, (1e-6, 1e-8)),
    "deep50": _deep("deep50", 50, ("dopri8", 1e-10, 1e-12), 1e6, (1e-6,)),
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table; `curve` holds the measured (wall, error) points behind an extrapolated row."""

    name: str
    wall: float
    steps: float
    error: float
    note: str = ""
    dlnode: bool = False
    extrapolated: bool = False
    finished: bool = True
    compile_time: float = math.nan
    curve: tuple = ()


@dataclasses.dataclass(frozen=True)
class Reference:
    times: np.ndarray
    products: np.ndarray
    horizon: float
    lr0: float
    sharpness: float
    note: str


def rel_error(products: np.ndarray, ref: np.ndarray) -> float:
    """max over saved times (where both are finite) of ‖W − W_ref‖_F/‖W_ref‖_F; NaN if none is."""
    diff = np.linalg.norm(products - ref, axis=(1, 2))
    size = np.linalg.norm(ref, axis=(1, 2))
    ok = np.isfinite(diff) & (size > 0)
    return float(np.max(diff[ok] / size[ok])) if ok.any() else math.nan


def save_grid(lr0: float, per_decade: int, problem: dln.Problem) -> np.ndarray:
    """t = 0 and log-spaced times from 10⁻² time units to `FAR_HORIZON`, rounded to whole multiples of lr₀ (so
    that every lr₀/2^j lands on them exactly), duplicates removed. The unit is 1/‖∇ℓ(0)‖₂."""
    unit = 1.0 / float(np.linalg.norm(problem.target(), 2))
    start, stop = math.log10(1e-2 * unit), math.log10(FAR_HORIZON * unit)
    ts = np.logspace(start, stop, int((stop - start) * per_decade) + 1)
    return np.unique(np.concatenate([[0.0], np.rint(ts / lr0)])) * lr0


def _budgeted(run: Callable[[int | None], Run], budget_s: float | None) -> Run:
    """run(max_steps) within a wall-time budget: from a short probe, each rerun gets the steps the budget buys at
    the last run's cost per step (≤ 64× more; fixed costs make this approach from below), until one finishes or
    spends half the budget."""
    if budget_s is None:
        return run(None)
    steps = PROBE_STEPS
    while True:
        result = run(steps)
        if result.status != -1 or result.wall >= budget_s / 2:
            return result
        steps = max(steps + 1, int(steps * min(budget_s / max(result.wall, 1e-9), 64.0)))


def timed(run: Callable[[], Run]) -> Run:
    """The run, with the median wall time of three when it is cheap."""
    first = run()
    if first.wall >= REPEAT_BELOW_S:
        return first
    walls = [first.wall, *(run().wall for _ in range(2))]
    return dataclasses.replace(first, wall=statistics.median(walls))


def _status_note(run: Run, budget_s: float | None) -> str:
    if run.status in (0, 1):
        return ""
    why = {-1: f"did not finish within its {budget_s:g} s budget" if budget_s else "ran out of steps", -2: "diverged"}
    return f"{why.get(run.status, 'solver failure')} (reached t={run.t_reached:.3g}, loss ratio {run.loss_ratio:.2g})"


def reference(case: Case, cache_dir: Path) -> Reference:
    """The tight reference of `case`, cached in ``cache_dir/ref_<name>_<key>.nc``.

    lr₀ = 2^⌊log₂(1/S)⌋ with S the sharpness at the balanced factorisation of W* (where a small-init run ends), so
    the save grid (multiples of lr₀) is known before the run; one run to the loss criterion gives the horizon
    (its convergence time, a last saved time) and W_ref(t). With a budget, a reference that does not converge
    sets the horizon where it stopped, and says so.
    """
    path = Path(cache_dir) / f"ref_{case.name}_{case.key()}.nc"
    if path.exists():
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            a, times, products = ds.attrs, ds.time.values, ds["product"].values
        return Reference(times, products, a["horizon"], a["lr0"], a["sharpness"], a["note"])
    problem, (method, rtol, atol) = case.problem(), case.reference
    # λ_max at the balanced factorisation of W*, where small-init runs end
    lam = sharpness(problem, recover_layers(problem.w_star, case.depth))
    lr0 = 2.0 ** math.floor(math.log2(1.0 / lam))
    grid = save_grid(lr0, case.per_decade, problem)
    kwargs = {"rtol": rtol, "atol": atol, "loss_tol": case.loss_tol, **case.settings()}
    ref = _budgeted(lambda n: flow_run(problem, method, grid, n, **kwargs), case.ref_budget_s)
    before = grid < ref.t_reached
    times, products = grid[before], ref.products[before]
    if ref.status == 1:  # the held final state after convergence is W_ref(t_final)
        times, products = np.append(times, ref.t_reached), np.concatenate([products, ref.products[~before][:1]])
    lam_end = sharpness(problem, ref.layers)
    note = (f"{method} rtol={rtol:g} atol={atol:g}: {ref.steps} steps, {ref.wall:.1f} s; loss ratio at the horizon "
            f"{ref.loss_ratio:.2g}; sharpness at its end {lam_end:.4g}")  # fmt: skip
    if ref.status != 1:
        note += "; " + _status_note(ref, case.ref_budget_s) + ": the horizon is where the reference stopped"
    out = xr.Dataset(
        {"product": (("time", "row", "col"), products)},
        coords={"time": times},
        attrs={"horizon": float(times[-1]), "lr0": lr0, "sharpness": lam, "note": note, "case": case.describe()},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_netcdf(path, engine="h5netcdf")
    return Reference(times, products, float(times[-1]), lr0, lam, note)


def _dense_jacobian_bytes(case: Case) -> int:
    """float64 bytes of the n × n Jacobian, n = number of weights."""
    return 8 * sum(r * c for r, c in dln.layer_shapes(case.depth, case.shape[1], case.shape[0])) ** 2


@cache
def lu_seconds(n: int) -> tuple[float, str]:
    """A lower bound on the seconds of one dense LU of an n × n float64 matrix, and how it was found: its (2/3)n³
    flops at the fastest matrix-product rate measured here (float64 GEMM at `GEMM_SIZES`, best of three). LU runs
    below GEMM's rate (scipy lu_factor: 14.3 s at n = 9000 where this bound gives 12.2 s), so it stays a bound."""
    rng, rates = np.random.default_rng(0), []
    for k in GEMM_SIZES:
        a, b = rng.standard_normal((k, k)), rng.standard_normal((k, k))
        walls = []
        for _ in range(3):
            start = time.perf_counter()
            a @ b
            walls.append(time.perf_counter() - start)
        rates.append(2.0 * k**3 / min(walls))
    rate = max(rates)
    how = f"(2/3)n³ flops at the float64 GEMM rate measured here ({rate / 1e9:.3g} GFLOP/s)"
    return 2.0 / 3.0 * n**3 / rate, how


def _dense_lower_bound(case: Case, name: str, note: str) -> Row:
    """A dense-Jacobian method too large to run, as the lower bound of its cost: one LU of its Jacobian (every
    such run factors it at least once: BDF and LSODA per Jacobian update, Radau a real and a complex one)."""
    n = sum(r * c for r, c in dln.layer_shapes(case.depth, case.shape[1], case.shape[0]))
    wall, how = lu_seconds(n)
    gib = _dense_jacobian_bytes(case) / 2**30
    why = (
        f"not run: its dense Jacobian would take {gib:.1f} GiB; lower bound: one LU of it (n = {n}), "
        f"at least {wall:.3g} s: {how}"
    )
    return Row(name, wall, math.nan, math.nan, "; ".join(x for x in (note, why) if x), True, extrapolated=True,
               finished=False)  # fmt: skip


def flow_rows(case: Case, ref: Reference, methods: Sequence[str] = DLNODE_METHODS) -> list[Row]:
    """Every method at every tolerance of the case, timed to the reference's horizon on its grid."""
    problem, rows = case.problem(), []
    for method in methods:
        for rtol in case.rtols:
            name = f"{method} rtol={rtol:g}"
            note = PEER_NOTES.get(method, "") if rtol == 1e-6 else ""
            if method in DENSE_JACOBIAN and _dense_jacobian_bytes(case) > DENSE_JACOBIAN_LIMIT:
                rows.append(_dense_lower_bound(case, name, note))
                continue
            kwargs = {"rtol": rtol, "atol": rtol * DEFAULT_RTOL_TO_ATOL, **case.settings()}
            run = timed(lambda m=method, kw=kwargs: _budgeted(
                lambda n: flow_run(problem, m, ref.times, n, **kw), case.budget_s))  # fmt: skip
            status = _status_note(run, case.budget_s)
            rows.append(Row(name, run.wall, run.steps, rel_error(run.products, ref.products),
                            "; ".join(x for x in (note, status) if x), dlnode=True, finished=not status,
                            compile_time=run.compile_time))  # fmt: skip
            print(f"  {case.name}: {name}: {run.wall:.3g} s, error {rows[-1].error:.2g} {status}", file=sys.stderr)
    return rows


def _dlnode_gd(problem: dln.Problem, layers: list, lr: float, times: np.ndarray, case: Case) -> Run:
    return flow_run(problem, "gd", times, lr=lr, **case.settings())


def _on_lr0(ref: Reference) -> np.ndarray:
    """Saved times that are whole multiples of lr₀ (all but a horizon set by convergence)."""
    return np.rint(ref.times / ref.lr0) * ref.lr0 == ref.times


def gd_peers(case: Case) -> dict[str, Callable[..., Run]]:
    """The gradient-descent contestants: (problem, layers, lr, times) → Run."""
    return {"torch GD (autograd)": torch_gd, "JAX GD (jit loop)": jax_gd, "dlnode gd": partial(_dlnode_gd, case=case)}


@dataclasses.dataclass(frozen=True)
class _Fit:
    """err ≈ C·lr^p from the JAX loop at lr₀/2^j, and the lr and step count that meet TARGET on the horizon."""

    lrs: list
    errors: list
    curve: tuple
    slope: float
    lr_star: float
    steps: int
    span: str


def _fit_gd(case: Case, ref: Reference, problem: dln.Problem, layers: list) -> _Fit:
    """Errors of GD at lr₀/2^j on the shorter horizon; the extrapolation uses slope max(p, 1) through the smallest
    lr's error: GD's global error is first order, and a fitted p < 1 only means the largest lrs saturate, so this
    is the choice that favours GD."""
    lrs = [ref.lr0 / 2**j for j in range(case.gd_lrs)]
    horizon = min(case.gd_horizon * ref.horizon, case.gd_max_steps * lrs[-1])
    keep = (ref.times <= horizon * (1 + 1e-12)) & _on_lr0(ref)
    times = ref.times[keep]
    runs = [timed(partial(jax_gd, problem, layers, lr, times)) for lr in lrs]
    errors = [rel_error(r.products, ref.products[keep]) for r in runs]
    good = [(lr, e) for lr, e in zip(lrs, errors, strict=True) if np.isfinite(e) and e > 0]
    fit = np.polyfit(np.log([g[0] for g in good]), np.log([g[1] for g in good]), 1) if len(good) > 1 else [math.nan]
    slope = float(fit[0])
    lr_star = good[-1][0] * (TARGET / good[-1][1]) ** (1.0 / (slope if slope > 1.0 else 1.0)) if good else math.nan
    span = "the full horizon" if horizon >= ref.horizon else (
        f"t <= {times[-1]:.3g} ({times[-1] / ref.horizon:.0%} of the horizon)")  # fmt: skip
    steps = math.ceil(ref.horizon / lr_star) if good else 0
    return _Fit(lrs, errors, tuple((r.wall, e) for r, e in zip(runs, errors, strict=True)), slope, lr_star, steps, span)


def gd_rows(case: Case, ref: Reference) -> list[Row]:
    """The GD peers at the lr that would meet TARGET on the full horizon: the step count from the JAX loop's error
    fit (every loop computes the same iterates, see `check_gd_equality`), the wall time from each loop's own cost
    per step, measured over at most `gd_cost_steps` steps at lr₀."""
    problem = case.problem()
    layers = dln.init_layers(problem, case.depth, case.init, case.scale, case.seed)
    fit = _fit_gd(case, ref, problem, layers)
    times = ref.times[(ref.times <= case.gd_cost_steps * ref.lr0 * (1 + 1e-12)) & _on_lr0(ref)]
    rows = []
    for name, peer in gd_peers(case).items():
        try:
            run = timed(partial(peer, problem, layers, ref.lr0, times))
        except ImportError:
            rows.append(Row(name, math.nan, math.nan, math.nan, f"not run: torch missing ({TORCH_INSTALL})"))
            continue
        per_step = run.wall / max(run.steps, 1)
        note = (f"extrapolated: err ~ lr^{fit.slope:.2f} (fit at lr0/2^j, j < {len(fit.lrs)}, on {fit.span}; err "
                f"{fit.errors[0]:.2g} at lr0, {fit.errors[-1]:.2g} at lr0/{2 ** (len(fit.lrs) - 1)}) -> lr = "
                f"{fit.lr_star:.2g}; {per_step * 1e6:.3g} us/step over {run.steps} steps")  # fmt: skip
        curve = fit.curve if peer is jax_gd else ()
        rows.append(Row(name, fit.steps * per_step, fit.steps, TARGET, note, extrapolated=True, curve=curve,
                        compile_time=run.compile_time))  # fmt: skip
    return rows


def run_case(case: Case, cache_dir: Path, methods: Sequence[str] = DLNODE_METHODS) -> tuple[Reference, list[Row]]:
    """Reference, the dlnode methods (`methods`, each at the case's tolerances) and the GD peers, in one run."""
    ref = reference(case, cache_dir)
    return ref, flow_rows(case, ref, methods) + gd_rows(case, ref)


def _fastest(rows: list[Row]) -> Row | None:
    """dlnode's fastest finished run within TARGET (or, if none meets it, its most accurate one)."""
    ran = [r for r in rows if r.dlnode and r.finished and np.isfinite(r.wall)]
    ok = [r for r in ran if r.error <= TARGET]
    if ok:
        return min(ok, key=lambda r: r.wall)
    return min(ran, key=lambda r: r.error) if ran else None


def table(case: Case, ref: Reference, rows: list[Row]) -> str:
    """The Markdown table of one case: contestant, wall s, steps, max rel. error, ratio to dlnode's fastest, notes."""
    best = _fastest(rows)
    lines = [
        f"### {case.name}: {case.describe()}",
        "",
        f"Horizon t = {ref.horizon:.4g}; reference {ref.note}; sharpness at balanced W* {ref.sharpness:.4g}, "
        f"GD lr0 = {ref.lr0:.4g}; {len(ref.times)} saved times; accuracy target {TARGET:g}. Ratio: wall time over "
        + (f"`{best.name}` ({best.wall:.3g} s)" if best else "n/a (no dlnode run finished)")
        + ("." if best is None or best.error <= TARGET else ", the most accurate finished run: none met the target."),
        "",
        "| contestant | wall s | compile s | steps | max rel. error | ratio to dlnode's fastest | notes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        ratio = "" if best is None or not np.isfinite(r.wall) else f"{r.wall / best.wall:.3g}"
        if ratio and not r.finished:
            ratio = "> " + ratio
        wall = "" if not np.isfinite(r.wall) else f"{r.wall:.3g}"
        compile_s = "" if not np.isfinite(r.compile_time) else f"{r.compile_time:.2g}"
        steps = "" if not np.isfinite(r.steps) else f"{r.steps:.3g}" if r.steps >= 1e6 else f"{int(r.steps)}"
        error = "" if not np.isfinite(r.error) else f"{r.error:.2g}"
        lines.append(f"| {r.name} | {wall} | {compile_s} | {steps} | {error} | {ratio} | {r.note} |")
    return "\n".join(lines)
