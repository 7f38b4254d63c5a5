"""The plan of a call: its arguments validated once, and the save times, tolerances and methods they resolve to.

`Plan.build` takes exactly the arguments of `dlnode.integrate`; `integrate` runs the plan it builds, and a sweep
builds one per task from its config, so every entry point enforces the same rules with the same messages. The
problem's scales (gradient at the origin, curvature, plateau stiffness) come from `dlnode.flows.scales`, computed
once per problem.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from dlnode.checks import (
    as_depths,
    as_scales,
    as_seeds,
    check_max_steps,
    check_positive,
    check_tolerances,
    check_width,
)
from dlnode.errors import fail, warn
from dlnode.flows.flow import FLOWS
from dlnode.flows.scales import (
    _fingerprint,
    derived,
    escape_estimate,
    plateau_scales,
    predicted_stiffness,
    problem_scales,
    time_unit,
)
from dlnode.problems.kinds import Problem
from dlnode.run.noise_rules import NoisePlan, plan_noise
from dlnode.run.rules import (
    check_arguments,
    check_call,
    check_inits,
    check_memory,
    check_norm_limit,
    check_sharpness,
)
from dlnode.run.saveat import SaveAt
from dlnode.solvers import METHODS, Controls
from dlnode.solvers.auto import choose_diagonal, choose_methods
from dlnode.solvers.gd import SDE_METHODS

__all__ = [
    "DEFAULT_LOSS_TOL",
    "DEFAULT_RTOL",
    "GRID_DECADES",
    "HORIZON_FACTOR",
    "MAX_DEFAULT_RTOL_LAYERS",
    "MIN_DEFAULT_RTOL_END_TO_END",
    "PUBLIC_METHODS",
    "STIFFNESS_FREE",
    "Plan",
    "default_rtol",
    "log_times",
    "planned_times",
]

PUBLIC_METHODS = ("auto", *METHODS)
DEFAULT_LOSS_TOL = 1e-8  # stop when ℓ − ℓ* ≤ 1e-8 (min(ℓ₀, ℓ(0)) − ℓ*) if t1 is None
DIVERGENCE_FACTOR = 1e12  # a run whose loss grows past 1e12·ℓ₀ is marked diverged
NORM_LIMIT = 1e3  # a run whose ‖W‖₂ passes 1e3·max(‖W*‖₂, ‖W(0)‖₂) before it converges is marked norm_runaway
HORIZON_FACTOR = 1e4  # an until-converged run's planned horizon: this many times the slowest escape estimate
GRID_DECADES = 4.0  # `saveat` log-spaced times span this many decades, ending 10× past the slowest escape estimate


DEFAULT_RTOL = 1e-6
STIFFNESS_FREE = 1e3  # below this predicted plateau stiffness an end-to-end flow's default rtol is not tightened
# singular coordinates carry ln σ: a tiny σ keeps its relative accuracy. Re-measured on the gauntlet's tightened
# end-to-end cases: at 1e-6 they are 2.5e-5 … 9.8e-5 off their 1e-7 runs (docs/solvers.md, "Default tolerances")
MIN_DEFAULT_RTOL_END_TO_END = 1e-7


# Per-layer flows of depth ≥ 2 conserve the balancedness D_j = W_{j+1}ᵀW_{j+1} − W_jW_jᵀ, and its drift is the
# integration error the steps accumulate: measured ≈ 3.5–4·rtol·max_j‖W_j‖² at rtol 1e-6 … 1e-7 (a 6×6 depth-3
# completion from per-layer 1e-2, grown over its last escape), so their default rtol is 1e-6/5: the drift stays below
# 1e-6·max_j‖W_j‖² with a margin of about 1.2. It is not tightened on long plateaus (it was, to 1e-6·(r/1e3)^{−1/2}
# down to 1e-9, r the predicted plateau stiffness): on this solver the runs so tightened are as accurate at 2e-7 —
# the 10×10 depth-4 completion from per-layer 1e-3 (r ≈ 2.6e6) 8.2e-7 off rtol 1e-10, the gauntlet's tightened cases
# 2e-10 … 5.3e-5 off their tightened runs — in a fifth to two thirds of the steps (docs/solvers.md, "Default
# tolerances").
MAX_DEFAULT_RTOL_LAYERS = 2e-7
# Depth ∞ escapes the sharpest (dσ/dτ ∝ σ², a finite-time blow-up in the small-σ limit), and a time error made on the
# plateau shows as a W error 100–300× the tolerance during the escape: the gauntlet's four depth-∞ cases were 8.1e-6
# to 2.0e-4 off rtol-1e-10 runs at their plateau-tightened rtol (1e-7 to 7.2e-7); the two above 1e-4's reach, at
# 2e-7: 6.2e-5 (2.0e-4 at 7.2e-7; 567 steps against 541) and 2.0e-6 (9.2e-5 at 3.8e-7; 914 against 834).
MAX_DEFAULT_RTOL_INFINITE = 2e-7


def default_rtol(problem: Problem, depths: Sequence[float], scales: Sequence[float], flow: str = "layers",
                 scale_of: str = "layer") -> float:  # fmt: skip
    """`MAX_DEFAULT_RTOL_LAYERS` (2e-7) for per-layer flows (layers, modified, central) of depth ≥ 2, 1e-6 at depth 1;
    for end-to-end flows 1e-6 tightened by the square root of the largest predicted plateau stiffness beyond 1e3, never
    below 1e-7, and at most `MAX_DEFAULT_RTOL_INFINITE` (2e-7) where depth ∞ is among the depths."""
    if flow != "end_to_end":
        # a balancedness to keep (depth 1 has none); the modified and central flows take the same tolerance, so that
        # where they equal the gradient flow (lr → 0, below the edge) they do on the same tolerance
        return MAX_DEFAULT_RTOL_LAYERS if max(depths) >= 2 else DEFAULT_RTOL
    worst = max(predicted_stiffness(problem, d, s, flow, scale_of) for d in depths for s in scales)
    tightened = DEFAULT_RTOL * max(worst / STIFFNESS_FREE, 1.0) ** -0.5
    most = MAX_DEFAULT_RTOL_INFINITE if any(math.isinf(d) for d in depths) else DEFAULT_RTOL
    return float(min(most, max(MIN_DEFAULT_RTOL_END_TO_END, tightened)))


def warn_frozen_subspace(problem: Problem) -> None:
    """Warn that depth ∞ keeps a rectangular W's column space (d_out > d_in) or row space (d_out < d_in): the
    logarithmic mean a^∞_ik of docs/math.md §5 is 0 between a singular value and a padded zero, so no part of the
    flow leaves that subspace, and the loss stops at the best fit inside it wherever the target does not lie in it
    (status subspace_optimum, `Problem.loss_min_in_span`)."""
    m, n = problem.d_out, problem.d_in
    if m != n:
        space = f"column space (d_out {m} > d_in {n})" if m > n else f"row space (d_out {m} < d_in {n})"
        warn(f"dlnode: at depth inf the end-to-end flow keeps W(0)'s {space}: it fits only inside it, so the loss "
             "may stop above its minimum, at the best fit inside (ds['loss_floor']; a run until converged stops "
             "there as subspace_optimum); a finite depth (e.g. 64) leaves it")  # fmt: skip


def narrow_width(problem: Problem, depths: Sequence[float], width: int | None, flow: str) -> int | None:
    """The rank of the problem's minimiser W* where a hidden width below it caps the rank of the layers' product
    W_N⋯W_1 (per-layer flows of depth ≥ 2), else None."""
    if width is None or flow == "end_to_end" or not any(d >= 2 for d in depths):
        return None
    rank = problem.minimiser_rank
    return rank if width < rank else None


def warn_narrow_width(problem: Problem, depths: Sequence[float], width: int | None, flow: str) -> None:
    """Warn that a hidden width below the rank of the problem's minimiser W* caps the rank of the layers' product
    W_N⋯W_1 (per-layer flows of depth ≥ 2) below it: ℓ* is out of reach (where W* is ℓ's only minimiser; where there
    are others, unless one of rank ≤ width exists), and a run until converged ends at its horizon, not_converged,
    at best at the fit of rank ≤ width. An 8 × 8 rank-2 completion at depth 3, width 1, ran to its horizon without a
    word but the status."""
    rank = narrow_width(problem, depths, width, flow)
    if rank is None:
        return
    only = derived(problem, "unique_minimiser", lambda: problem.unique_minimiser)
    reach = "out of reach" if only else "out of reach unless a minimiser of rank <= width exists (W* is one of several)"
    warn(f"dlnode: width {width} is below the rank {rank} of the problem's minimiser W*: the product of the layers "
         f"has rank at most {width}, so l* is {reach}; a run until converged ends at its horizon as not_converged "
         f"(at best the fit of rank <= {width}); pass width >= {rank} or width=None")  # fmt: skip


def log_times(count: int, t1: float, unit: float) -> np.ndarray:
    """t = 0 plus `count` log-spaced times ending at t1, starting at min(10⁻² unit, 10⁻³ t1)."""
    start = min(1e-2 * unit, 1e-3 * t1)
    ts = np.concatenate([[0.0], np.logspace(np.log10(start), np.log10(t1), count)])
    ts[-1] = t1  # exactly: 10**log10(t1) may round past the end of the integration interval
    return ts


def planned_times(count: int, escape: float, horizon: float, fastest: float | None = None) -> np.ndarray:
    """The save grid of an until-converged run: t = 0, then log-spaced times at `count` per `GRID_DECADES` decades,
    from 10⁻⁴ of the end (10× past the slowest escape estimate) or 10⁻² of the fastest cell's escape estimate,
    whichever is earlier, up to the horizon: every cell's escape falls inside the grid at the same density."""
    end = 10.0 * escape
    start = end * 10.0**-GRID_DECADES
    if fastest is not None:
        start = min(start, 1e-2 * fastest)
    ratio = 10.0 ** (GRID_DECADES / max(count - 1, 1))
    total = max(count, int(math.ceil(math.log(max(horizon / start, 1.0)) / math.log(ratio))) + 1)
    return np.concatenate([[0.0], start * ratio ** np.arange(total)])


def _gd_grid(ts: np.ndarray, lr: float) -> np.ndarray:
    """Save times rounded to whole steps (t = k·lr), duplicates removed."""
    return np.unique(np.rint(ts / lr)) * lr


@dataclasses.dataclass(frozen=True)
class Plan:
    """One call of `integrate`, validated once: its arguments, normalised, and what they resolve to.

    Built by `Plan.build` from the arguments `dlnode.integrate` takes, by `integrate` and by a sweep's cells
    alike, so a rule and its message exist once. Resolved at build time: the method of each depth (``auto``'s
    choice, with the reason), the tolerances, the save times and the run controls. Two plans are equal when they
    run the same problem (its arrays) with the same resolved arguments (`key`); the progress bar is not part of it.
    """

    problem: Problem
    depths: list[float]
    scales: list[float]
    seeds: list[int]
    init: Any
    width: int | None
    flow: str
    scale_of: str
    method: str
    requested: str
    reason: str
    saveat: int | np.ndarray
    times: np.ndarray
    save_weights: bool
    progress: bool
    until_converged: bool
    controls: Controls
    methods: dict[float, str]  # the method each depth runs (`method` is that one method, or "per depth")
    max_steps_given: bool
    noise: NoisePlan = NoisePlan()  # the network kind and the noise of a stochastic method (see `noise_rules`)
    sharpness: int = 0  # top Hessian eigenvalues saved along time (0: none)
    memory: int = 0  # bytes the call is estimated to hold at its peak (`rules.check_memory`): said before the run

    def key(self) -> tuple:
        """What makes two plans run the same computation (the progress bar aside)."""
        init = self.init if isinstance(self.init, str) else id(self.init)
        saveat = self.saveat if isinstance(self.saveat, int) else tuple(np.asarray(self.saveat).tolist())
        return (type(self.problem).__name__, _fingerprint(self.problem), tuple(self.depths), tuple(self.scales),
                tuple(self.seeds), init, self.width, self.flow, self.scale_of, self.method, self.requested,
                self.reason, saveat, tuple(self.times.tolist()), self.save_weights, self.until_converged,
                self.controls, tuple(sorted(self.methods.items())), self.max_steps_given,
                dataclasses.replace(self.noise, paths=tuple(self.noise.paths or ())), self.sharpness)  # fmt: skip

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self.key() == other.key()

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def build(
        cls,
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
    ) -> Plan:
        """The plan of ``dlnode.integrate(problem, ...)`` with these arguments (see its docstring); every rule
        checked, before any work. Raises `dlnode.DlnodeError` (one line) on the first argument that breaks one."""
        # a diagonal network's inits are its own (`plan_noise` checks them, and the noise arguments)
        check_call(problem, init if network == "dense" else "gaussian", flow, method, PUBLIC_METHODS, FLOWS)
        depths, scales, seeds = as_depths(depth), as_scales(scale), as_seeds(seed)
        noisy = plan_noise(problem, method, flow, network, init, depths, lr, t1, batch, noise, sampling, paths, dt,
                           width)  # fmt: skip
        requested_t1 = t1
        wanted = SaveAt.of(saveat, save_weights)
        saveat, save_weights = wanted.saveat, wanted.weights
        lr, t1 = check_arguments(depths, init, flow, method, lr, t1, saveat, scale_of, type(problem))
        check_width(width)
        sharpness = check_sharpness(sharpness, problem, depths, width, flow, noisy.network)
        if noisy.network == "dense":
            check_inits(problem, depths, init, scales, seeds, width)
        rtol, atol = check_tolerances(rtol, atol)  # None: the defaults below
        if loss_tol is not None:
            check_positive("loss_tol", loss_tol)
            if loss_tol >= 1:
                fail("loss_tol", "must be below 1 (a fraction of the loss gap min(l0, l(W=0)) - l*: 1 stops at t = 0)",
                     loss_tol, "pass e.g. loss_tol=1e-8")  # fmt: skip
        if not isinstance(progress, (bool, np.bool_)):
            fail("progress", "must be True or False", progress, "pass progress=False to hide the progress bar")
        if max_steps is not None:
            check_max_steps(max_steps)
        check_norm_limit(norm_limit)
        cells = len(scales) * len(seeds) * len(noisy.paths or [0])
        memory = check_memory(problem, depths, width, cells, saveat, save_weights, t1 is None,
                              paths=len(noisy.paths or [0]))  # fmt: skip
        if method == "auto" and noisy.network == "diagonal":
            methods, chosen, reason = choose_diagonal(depths)
        elif method == "auto" and flow == "central":  # its field holds a Lanczos solve: no Jacobian, no probe
            methods, chosen = dict.fromkeys(depths, "tsit5"), "tsit5"
            reason = "auto: the central flow needs an explicit method -> tsit5"
        elif method == "auto":
            tol = (loss_tol or DEFAULT_LOSS_TOL) if requested_t1 is None else math.nan  # the tail rule: until converged
            horizon = float(t1) if requested_t1 is not None else math.nan  # a given t1: the run goes on to it
            # the horizon a run goes to: a given t1, or the planned one where ℓ* is out of reach (a narrow width)
            planned = horizon
            if requested_t1 is None and narrow_width(problem, depths, width, flow) is not None:
                plateau, plateau_of = plateau_scales(init, scales, scale_of)
                planned = float(_save_grid(problem, depths, plateau, flow, plateau_of, saveat, t1)[1][-1])
            methods, chosen, reason = choose_methods(problem, depths, scales, init, width, flow,
                                                     float(lr or math.nan), scale_of, tol, horizon,
                                                     planned)  # fmt: skip
        else:
            methods, chosen, reason = dict.fromkeys(depths, method), method, "given"
        if flow == "end_to_end" and any(math.isinf(d) for d in depths):
            warn_frozen_subspace(problem)
        if noisy.network == "dense":
            warn_narrow_width(problem, depths, width, flow)
        plateau, plateau_of = plateau_scales(init, scales, scale_of)  # the product's starting size, for the estimates
        if rtol is None:
            rtol = default_rtol(problem, depths, plateau, flow, plateau_of)
        if atol is None:  # 1e-3·rtol of the smallest initial weights: a tiny init keeps its relative accuracy
            per_layer = [s ** (1.0 / d) if scale_of == "product" and not math.isinf(d) else s for d in depths
                         for s in scales]  # fmt: skip
            atol = 1e-3 * rtol * min(1.0, min(per_layer))
        until_converged = t1 is None
        t1, times = _save_grid(problem, depths, plateau, flow, plateau_of, saveat, t1)
        if chosen in METHODS and METHODS[chosen].needs_lr:  # a discrete method saves at whole steps
            times = _gd_grid(times, noisy.dt if chosen in SDE_METHODS else lr)
        controls = Controls(
            t1=float(times[-1]) if until_converged else t1, rtol=rtol, atol=atol, lr=float(lr or math.nan),
            loss_tol=loss_tol or (DEFAULT_LOSS_TOL if requested_t1 is None else -math.inf), diverge=DIVERGENCE_FACTOR,
            max_steps=max_steps or max(METHODS[m].max_steps for m in methods.values()), noise=noisy.delta,
            dt=noisy.dt, norm_limit=float(norm_limit), target_norm=problem_scales(problem).target,
            loss_scale=problem_scales(problem).loss,
        )  # fmt: skip
        return cls(problem, depths, scales, seeds, init, width, flow, scale_of, chosen, method, reason, saveat,
                     times, bool(save_weights), bool(progress), until_converged, controls, methods,
                     max_steps is not None, noisy, sharpness, memory)  # fmt: skip

    @property
    def step(self) -> float:
        """The time step of a fixed-step method: dt for the SDE methods, lr for the discrete ones."""
        return self.noise.dt if self.method in SDE_METHODS else self.controls.lr

    def controls_at(self, depth: float) -> Controls:
        """The controls of one depth's run: the default step budget is that of the method it runs."""
        if self.max_steps_given:
            return self.controls
        return dataclasses.replace(self.controls, max_steps=METHODS[self.methods[depth]].max_steps)


def _save_grid(problem: Problem, depths: list[float], scales: list[float], flow: str, scale_of: str,
               saveat: int | np.ndarray, t1: float | None) -> tuple[float, np.ndarray]:  # fmt: skip
    """(t1, save times): explicit times; or, until converged (t1 None), the planned grid up to the horizon of the
    slowest escape estimate; or `saveat` log-spaced times ending at t1."""
    if isinstance(saveat, np.ndarray):
        t1 = float(saveat[-1]) if t1 is None else t1
        return t1, saveat if saveat[0] == 0 else np.concatenate([[0.0], saveat])
    if t1 is None:
        escape = escape_estimate(problem, depths, scales, flow, scale_of)
        t1 = HORIZON_FACTOR * escape
        fastest = escape_estimate(problem, depths, scales, flow, scale_of, slowest=False)
        return t1, planned_times(saveat, escape, t1, fastest)
    return t1, log_times(saveat, t1, time_unit(problem))
