"""`method="auto"`: explicit (tsit5) or stiff (rosenbrock), chosen by a stiffness probe, with the reason recorded.

Small-initialisation flows are not stiff at t = 0 — every Hessian eigenvalue is tiny near W = 0 — but become
stiff after the first escape: a learned mode of strength s has curvature N s^{2−2/N} (docs/math.md §3) while an
unlearned mode still at u₀ = scale^N grows at the rate N u₀^{1−2/N} s. Their ratio (s/u₀)^{1−2/N} predicts the
stiffness of the later plateaus before any integration; `rosenbrock.probe` measures it at the initial state
(top Hessian eigenvalue by power iteration against the growth rate ‖f‖/‖y‖). Either one above `STIFF_RATIO`
selects the stiff path.

End-to-end flows start at σ = scale (no per-layer product), so their prediction is (s_max/scale)^{1−2/N} (s_max/scale
at depth ∞); their stiff path works in singular coordinates (`dlnode.solvers.singular`: a dense Jacobian for small
states, GMRES with a preconditioner diagonal in the singular bases for large ones), chosen when every depth is ≥ 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dlnode.flows.flow import get_flow
from dlnode.flows.scales import (
    derived,
    escape_estimate,
    learned_curvature,
    plateau_scales,
    predicted_stiffness,
    problem_scales,
)
from dlnode.problems.kinds import Problem
from dlnode.problems.network import balancedness, init_layers, layer_shapes, product
from dlnode.solvers import rosenbrock as stiff
from dlnode.solvers import singular
from dlnode.solvers.core import stop_gap

__all__ = [
    "EXPLICIT_REACH",
    "HORIZON_STEPS",
    "STIFF_RATIO",
    "TAIL_RATIO",
    "TAIL_RATIO_END_TO_END",
    "choose_diagonal",
    "choose_method",
    "horizon_steps",
    "imbalance_steps",
    "predicted_stiffness",
    "slow_fraction",
    "tail_ratio",
]

STIFF_RATIO = stiff.STIFF_RATIO
EXPLICIT, STIFF = "tsit5", "rosenbrock"
# At this many unknowns an explicit run that turns stiff after an escape costs minutes, while `rosenbrock` takes
# the same explicit (DOPRI5) steps until h·λ_max says otherwise: its overhead is one Hessian-vector product a step.
# (Arora et al.'s completion, 30,000 unknowns, is predicted mild from t = 0 yet takes tsit5 ~50× longer.)
# The same holds for the end-to-end flow at depth ≥ 3 (every such depth has plateaus; depth 2 has none), where the
# singular path replaces it: a 53 × 55 completion at depth 3 from a balanced product of 4.2e-3, predicted mild
# (26), took tsit5 17,673 steps without converging in 51 s and the singular path 530 steps, 8.4 s; where the flow
# stays mild the two are even (60 × 60 and 100 × 100 at depth 3, 50 × 50 at depth 4, from 0.1–0.3: 0.8–1.2×).
LARGE_STATE = 2000


def choose_method(
    problem: Problem,
    depths: Sequence[float],
    scales: Sequence[float],
    init: str | Callable,
    width: int | None,
    flow: str,
    lr: float = math.nan,
    scale_of: str = "layer",
    loss_tol: float = math.nan,
    horizon: float = math.nan,
    planned: float = math.nan,
) -> tuple[str, str]:
    """(method, reason) for one `integrate` call: the stiff path if any (depth, scale) cell needs it. `loss_tol`
    (a run until converged: the stop rule's fraction of ℓ₀ − ℓ*) turns on the rules for the end of such a run, on a
    problem with one minimiser: an ill-conditioned loss (`slow_fraction`) and a stiff tail (`tail_ratio`).
    `horizon` (a t1 the caller gave: the run goes on to it, converged or not) turns on the rule for a long horizon
    (`horizon_steps`); `planned` (the horizon a run goes to: a given t1, or the planned one of a run that cannot
    converge, its width below the minimiser's rank) the rule for a large unbalanced init (`imbalance_steps`)."""
    worst, where = 0.0, ""
    plateau, plateau_of = plateau_scales(init, scales, scale_of)  # the product's starting size
    for depth in depths:
        for scale in plateau:
            ratio = predicted_stiffness(problem, depth, scale, flow, plateau_of, lr)
            if ratio > worst:
                worst, where = ratio, f"depth {depth:g}, scale {scale:g}"
    stiff_reason = f"auto: predicted plateau stiffness {worst:.3g} > {STIFF_RATIO:g} at {where}"
    if flow == "end_to_end":
        size = problem.d_out * problem.d_in
        if worst > STIFF_RATIO:
            why = stiff_reason
        elif min(depths) >= 3 and size >= LARGE_STATE:  # a large W past its plateaus: see LARGE_STATE
            why = f"auto: a W of {size} entries at depth >= 3 (>= {LARGE_STATE})"
        else:
            why = _end_of_run(
                problem, depths, scales, init, width, scale_of, loss_tol, TAIL_RATIO_END_TO_END
            ) or _long_horizon(problem, depths, plateau, plateau_of, flow, lr, horizon)
        if why is None:
            return EXPLICIT, f"auto: predicted stiffness {worst:.3g} <= {STIFF_RATIO:g} -> {EXPLICIT}"
        if min(depths) < 2:
            return EXPLICIT, f"{why}, but depth 1 has no singular-coordinate path -> {EXPLICIT}"
        q = singular.unknowns(problem.d_out, problem.d_in)
        solves = (
            "dense LU"
            if q <= singular.DENSE_MAX_UNKNOWNS
            else "matrix-free GMRES, dense LU once GMRES falls short"
            if q <= singular.SWITCH_MAX_UNKNOWNS
            else "matrix-free GMRES"
        )
        return STIFF, f"{why} -> {STIFF} in singular coordinates ({q} unknowns; stage solves by {solves})"
    if worst > STIFF_RATIO:
        return STIFF, f"{stiff_reason} -> {STIFF}"
    deep = [d for d in depths if d >= 2]
    if flow in ("layers", "modified"):
        why = (
            _end_of_run(problem, depths, scales, init, width, scale_of, loss_tol, TAIL_RATIO)
            or _long_horizon(problem, depths, plateau, plateau_of, flow, lr, horizon)
            or _unbalanced(problem, depths, scales, init, width, scale_of, planned)
        )
        if why is not None:
            return STIFF, f"{why} -> {STIFF}"
    if deep:
        shapes = layer_shapes(int(max(deep)), problem.d_in, problem.d_out, width)
        size = sum(a * b for a, b in shapes)
        if size >= LARGE_STATE:
            return STIFF, (f"auto: a state of {size} unknowns at depth {max(deep):g} (>= {LARGE_STATE}): {STIFF}, "
                           "which steps explicitly until the steps are stability-limited")  # fmt: skip
    for depth in depths:
        first = scales[0] ** (1.0 / depth) if scale_of == "product" else scales[0]
        stiff_now, reason = _probe_initial(problem, int(depth), first, init, width, flow, lr)
        if stiff_now:
            return STIFF, f"auto: at depth {depth:g}, t = 0, {reason}"
    return EXPLICIT, f"auto: predicted stiffness {worst:.3g} <= {STIFF_RATIO:g} and not stiff at t = 0 -> {EXPLICIT}"


# A run to a t1 the caller gave goes on after it converges. From the first escape on, the learned mode's curvature
# S* = N s*^{2−2/N}·h (`scales.learned_curvature`) bounds an explicit step Δt (Δt·S* ≤ EXPLICIT_REACH, about the
# real stability interval of tsit5's and DOPRI5's tableaux), while `rosenbrock`'s steps grow once the flow settles.
# Above HORIZON_STEPS such steps the stiff path is chosen. On a 6 × 6 rank-2 sensing problem (40 measurements), depth 3
# from Gaussian 0.1: to t1 = 1e3 tsit5 took 11,351 steps against rosenbrock's 442 (predicted 3.2e4: S* is the
# curvature at a balanced minimiser, above what this run meets); to 1e5 tsit5 ran out of steps at t = 1.4e4,
# where rosenbrock took 461.
EXPLICIT_REACH, HORIZON_STEPS = 3.5, 2000


def horizon_steps(problem: Problem, depth: float, scales: Sequence[float], scale_of: str, flow: str, lr: float,
                  horizon: float) -> float:  # fmt: skip
    """The explicit steps a run to `horizon` takes after its first escape (the fastest cell's, `escape_estimate`)
    at the step the learned curvature allows: S*·(horizon − escape)/EXPLICIT_REACH."""
    escape = escape_estimate(problem, [depth], scales, flow, scale_of, slowest=False)
    if flow == "end_to_end":  # its time is τ = N t, in which the learned curvature is S*/N (s*² h at depth ∞)
        known = problem_scales(problem)
        infinite = known.target**2 * known.curvature
        curvature = infinite if math.isinf(depth) else learned_curvature(problem, depth) / depth
    else:
        curvature = learned_curvature(problem, depth, flow, lr)
    return curvature * max(horizon - escape, 0.0) / EXPLICIT_REACH


def _long_horizon(problem: Problem, depths: Sequence[float], scales: Sequence[float], scale_of: str, flow: str,
                  lr: float, horizon: float) -> str | None:  # fmt: skip
    """Why a run to the given t1 `horizon` is stiff by `horizon_steps`, or None (or no horizon was given)."""
    if not math.isfinite(horizon):
        return None
    for depth in depths:
        steps = horizon_steps(problem, depth, scales, scale_of, flow, lr, horizon)
        if steps > HORIZON_STEPS:
            return (
                f"auto: at depth {depth:g}, t1 = {horizon:g} lies {steps:.3g} explicit steps past the first "
                f"escape, where the learned mode's curvature bounds the step (> {HORIZON_STEPS})"
            )
    return None


def imbalance_steps(problem: Problem, layers: Sequence[Any], horizon: float) -> float:
    """About the explicit steps a per-layer run to `horizon` takes at least, from the imbalance of its `layers`:
    D_j = W_{j+1}ᵀW_{j+1} − W_jW_jᵀ is conserved by the flow, so some layer keeps a singular value² ≥ ‖D_j‖₂ for
    the whole run, and the curvature along the layers it multiplies stays about ‖D‖₂·h (h = λ_max of the loss
    Hessian; measured at the end of six runs from Gaussian inits of scale 1 to 10: 0.9 to 27 times ‖D‖₂·h): an
    explicit step is at most EXPLICIT_REACH over that, a bound small inits (‖D‖ ~ scale²) never meet."""
    mats = [np.asarray(w, dtype=np.float64) for w in layers]
    imbalance = max((np.linalg.norm(d, 2) for d in balancedness(mats)), default=0.0)
    return imbalance * problem_scales(problem).curvature * max(horizon, 0.0) / EXPLICIT_REACH


def _unbalanced(problem: Problem, depths: Sequence[float], scales: Sequence[float], init: Any, width: int | None,
                scale_of: str, horizon: float) -> str | None:  # fmt: skip
    """Why a per-layer run to `horizon` (a given t1, or the planned horizon of a run that cannot converge) is stiff
    by `imbalance_steps` from seed 0's layers at the largest scale, or None. A run until converged may stop long
    before its planned horizon, so the bound does not apply to it. (Width 1 on an 8 × 8 rank-2 completion, depth 2
    from Gaussian 10: ‖D‖₂ = 960; tsit5 spent its 200,000 attempts (157,685 accepted) by t = 611 of its planned
    2429, creeping to the rank-one fit (the bound to there: 1.7e5 steps); rosenbrock ends at its horizon in 715.)"""
    if not math.isfinite(horizon):
        return None
    top = max(scales)
    for depth in [d for d in depths if 2 <= d < math.inf]:
        first = top ** (1.0 / depth) if scale_of == "product" else top
        steps = imbalance_steps(problem, init_layers(problem, int(depth), init, first, 0, width), horizon)
        if steps > HORIZON_STEPS:
            return (
                f"auto: at depth {depth:g}, scale {top:g}, the layers' conserved imbalance keeps the curvature "
                f"up: a run to t = {horizon:.3g} takes about {steps:.3g} explicit steps or more (> {HORIZON_STEPS})"
            )
    return None


def _end_of_run(problem: Problem, depths: Sequence[float], scales: Sequence[float], init: Any, width: int | None,
                scale_of: str, loss_tol: float, tail_limit: float) -> str | None:  # fmt: skip
    """Why a run until converged (`loss_tol` finite) on a problem with one minimiser ends stiff — an ill-conditioned
    loss (`slow_fraction`) or a stiff tail (`tail_ratio`, depth ≥ 2, ∞ included: there σ' ∝ −σ³ in τ) — from W(0)
    of seed 0 at the largest scale, built once per depth (at depth ∞ the depth-1 draw of the product's scale, as
    `integrate` starts it); None when neither rule holds (or they do not apply). `tail_limit`: the tail ratio
    above which the tail is stiff. (A whitened 4 × 4 regression at depth ∞ from a balanced product of 10 ran
    tsit5 out of its steps at ℓ = 6e-7 ℓ(0) while the rule, which read finite depths only, kept it there.)"""
    unique = (depths and math.isfinite(loss_tol) and _spectrum_affordable(problem)
              and derived(problem, "unique_minimiser", lambda: problem.unique_minimiser))  # fmt: skip
    if not unique:
        return None
    top = max(scales)
    firsts = {d: top ** (1.0 / d) if scale_of == "product" else top for d in depths if math.isfinite(d)}
    w0 = {d: np.asarray(product(init_layers(problem, int(d), init, firsts[d], 0, width)), dtype=np.float64)
          if math.isfinite(d) else np.asarray(init_layers(problem, 1, init, top, 0, width)[0], dtype=np.float64)
          for d in depths}  # fmt: skip
    for depth in depths:
        slow, kappa = slow_fraction(problem, w0[depth], 1.0 / STIFF_RATIO)
        if slow > loss_tol:
            return (f"auto: the loss's curvature spans {kappa:.3g}x, and at depth {depth:g}, scale {top:g}, "
                    f"{slow:.3g} of the loss gap lies where the curvature is below 1/{STIFF_RATIO:g} of its top, more "
                    f"than the stop rule leaves ({loss_tol:g})")  # fmt: skip
    for depth in [d for d in depths if d >= 2]:
        tail = tail_ratio(problem, w0[depth], loss_tol)
        if tail > tail_limit:
            return (f"auto: at depth {depth:g}, scale {top:g}, W(0)'s part outside W*'s singular spaces holds "
                    f"{tail:.3g}x the loss the stop rule leaves, which a deep net sheds at an algebraic rate (a stiff "
                    "tail)")  # fmt: skip
    return None


PER_DEPTH = "per depth"  # `integrate`'s ``method`` attribute when auto chose different methods for its depths


def choose_diagonal(depths: Sequence[float]) -> tuple[dict[float, str], str, str]:
    """(method of each depth, the call's method, reason) for a diagonal network β = u^D − v^D: tsit5 at D ≤ 2,
    rosenbrock at D ≥ 3.

    An entry of size α grows like du/dt ∝ D u^{D−1}|E|, so at D ≥ 3 the first escape waits ~ α^{−(D−2)} time units,
    while an entry already learned relaxes at a rate of order D²|β|^{2−2/D} times the data's curvature: the flow is
    stiff from its first escape on, at every init scale. At D = 2 the wait is ~ log(1/α), and tsit5 is the cheaper
    run. Measured on `SparseRegression.random()` (d = 100, n = 40, uniform init 0.1, 1e-2, 1e-3; docs/noise.md):
    tsit5 ran out of steps at D = 3 from 1e-2 and 1e-3 and at D = 4 from every scale, where rosenbrock converged in
    1.3k–9.2k steps; at D = 2 both converge, in under 0.5 s each (`python -m benchmarks.diagonal_depth`)."""
    methods = {d: EXPLICIT if d <= 2 else STIFF for d in depths}
    why = {EXPLICIT: f"depth <= 2 has no long plateau -> {EXPLICIT}",
           STIFF: f"depth >= 3 is stiff after its first escape (a plateau ~ scale^-(D-2)) -> {STIFF}"}  # fmt: skip
    if len(set(methods.values())) == 1:
        chosen = next(iter(methods.values()))
        return methods, chosen, f"auto: a diagonal network of {why[chosen]}"
    reason = "; ".join(f"depth {d:g}: {why[m]}" for d, m in methods.items())
    return methods, PER_DEPTH, f"auto, per depth (diagonal network): {reason}"


def choose_methods(problem: Problem, depths: Sequence[float], *rest: Any) -> tuple[dict[float, str], str, str]:
    """(method of each depth, the call's method, reason): `choose_method` for each depth on its own, so that a depth
    that is not stiff is not handed the stiff path because another depth of the call is (the balanced end-to-end
    flow at depth 2 has no plateau: on a 100 × 100 completion tsit5 converges in 5 s where the singular path, which
    depths 4 and ∞ need, takes 14 s). The call's method is the one every depth runs, or `PER_DEPTH`. `rest`: the
    other arguments of `choose_method`, in its order."""
    per = {d: choose_method(problem, [d], *rest) for d in depths}
    methods = {d: m for d, (m, _) in per.items()}
    if len(set(methods.values())) == 1:
        return methods, *choose_method(problem, depths, *rest)
    reason = "; ".join(f"depth {d:g}: {r.removeprefix('auto: ')}" for d, (_, r) in per.items())
    return methods, PER_DEPTH, f"auto, per depth: {reason}"


# A run until converged on a problem whose only minimiser is W* (`Problem.unique_minimiser`: where there are others,
# a run fits them instead: a residual init on a 6 × 5 completion, 80 % observed, converges in a few tsit5 steps)
# whose W(0) puts more than this multiple of the loss its stop rule leaves (loss_tol·(ℓ₀ − ℓ*)) outside W*'s singular
# spaces must shed it: at depth N ≥ 2 such a part σ decays as σ' ∝ −σ^{3−2/N}, algebraically, while the learned
# modes keep the sharpness up, so the tail is stiff. On a 6 × 6 rank-2 factorisation (Hessian I: the tail alone),
# tsit5 against rosenbrock: depth 2 from 0.1 1,013 against 466 steps (tail ratio 227), from 0.3 1,855 against 493
# (1.8e4); depth 3 from 0.3 9,177 against 526 (1.8e3); from 0.01 at depth 2 (0.023) tsit5 87 against 220.
TAIL_RATIO = 1.0
# The end-to-end flow's stiff path (singular coordinates) costs more to compile: there the tail rule asks for this
# multiple (gauntlet case 18, a 51 × 13 regression at depth 3 from a balanced product, tail ratio 1.08: tsit5
# converged in 445 steps, 5.2 s, the singular path in 12.6 s, 8.9 s of it compiling)
TAIL_RATIO_END_TO_END = 100.0


def tail_ratio(problem: Problem, w0: np.ndarray, loss_tol: float) -> float:
    """The loss that W(0)'s part outside W*'s column and row spaces adds at W*, ℓ(W* + P⊥ W(0) Q⊥) − ℓ*, over the loss
    the stop rule leaves, loss_tol·(min(ℓ₀, ℓ(0)) − ℓ*) (`stop_gap`): above `TAIL_RATIO` (`TAIL_RATIO_END_TO_END`
    for the end-to-end flow), a run from the product W(0) of a net of depth ≥ 2 ends in a stiff tail."""
    w_star = np.asarray(problem.w_star, dtype=np.float64)
    u, _, vt = np.linalg.svd(w_star)
    rank = problem.minimiser_rank
    left = w0 - u[:, :rank] @ (u[:, :rank].T @ w0)
    outside = left - (left @ vt[:rank].T) @ vt[:rank]
    gap = float(stop_gap(float(problem.loss(w0)), problem_scales(problem).loss, problem.loss_min, np))
    added = float(problem.loss(w_star + outside)) - problem.loss_min
    return added / (loss_tol * gap) if gap > 0 else 0.0


def slow_fraction(problem: Problem, w0: np.ndarray, below: float) -> tuple[float, float]:
    """(the part of ℓ(W(0)) − ℓ* in the loss Hessian's eigendirections of curvature below `below`·λ_max over the
    gap the stop rule is a fraction of, min(ℓ₀, ℓ(0)) − ℓ* (`stop_gap`: above 1 for a large init), the Hessian's
    condition number) for a regression, samples kept or not (H: Δ ↦ ΔΣ_xx), or a matrix sensing problem
    (H = AᵀA/m on vec W); (0, 1) for the others, whose Hessian is a multiple of the identity where it is not zero.
    A run until converged must resolve that part at its slow rates while the top curvature bounds an explicit step:
    a stiff run when the fraction is above the stop rule's loss_tol (depth 1 is the linear flow W' = −H(W − W*),
    whose stiffness this is)."""
    spectrum = derived(problem, "hessian_spectrum", lambda: _hessian_spectrum(problem))
    if spectrum is None:
        return 0.0, 1.0
    lam, vectors = spectrum
    error = w0 - np.asarray(problem.w_star, dtype=np.float64)
    if problem.kind in ROW_HESSIAN:  # H acts on the rows of W: its eigenvalue λ_i on every row's i-th coordinate
        coords = np.sum((error @ vectors) ** 2, axis=0)
    else:
        coords = (vectors.T @ error.ravel()) ** 2
    parts = 0.5 * np.maximum(lam, 0.0) * coords
    gap, top = float(parts.sum()), float(lam[-1])
    if not gap > 0 or not top > 0:
        return 0.0, 1.0
    low = float(np.min(lam[lam > 0])) if np.any(lam > 0) else top
    reference = float(stop_gap(gap, problem_scales(problem).loss - problem.loss_min, 0.0, np))
    return float(parts[lam < below * top].sum()) / reference, top / low


# The end-of-run rules factorise the loss Hessian once per problem: Σ_xx (d_in × d_in) for a regression, AᵀA/m
# (d_out·d_in square) for sensing, an eigh of O(size³); above this size (about 0.3 s on one core) they are skipped
SPECTRUM_MAX = 1000


# the kinds whose loss Hessian is Δ ↦ ΔΣ_xx (a regression, with its samples kept or not)
ROW_HESSIAN = ("regression", "sparse_regression")


def _spectrum_affordable(problem: Problem) -> bool:
    size = problem.d_in if problem.kind in ROW_HESSIAN else problem.d_in * problem.d_out
    return size <= SPECTRUM_MAX if problem.kind in (*ROW_HESSIAN, "matrix_sensing") else True


def _hessian_spectrum(problem: Problem) -> tuple[np.ndarray, np.ndarray] | None:
    """The loss Hessian's eigenpairs: of Σ_xx for a regression (H: Δ ↦ ΔΣ_xx), of AᵀA/m on vec W for sensing;
    None for the other kinds."""
    if problem.kind in ROW_HESSIAN:
        return np.linalg.eigh(np.asarray(problem.sigma_xx, dtype=np.float64))
    if problem.kind == "matrix_sensing":
        flat = np.asarray(problem.sensing, dtype=np.float64).reshape(problem.sensing.shape[0], -1)
        return np.linalg.eigh(flat.T @ flat / flat.shape[0])
    return None


def _probe_initial(problem: Problem, depth: int, scale: float, init: Any, width: int | None, flow: str, lr: float):  # noqa: ANN202
    layers = tuple(init_layers(problem, depth, init, scale, 0, width))
    return stiff.probe(get_flow(flow, type(problem), float(depth)), layers, problem.arrays(), lr)
