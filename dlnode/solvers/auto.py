"""`method="auto"`: explicit (tsit5) or stiff (rosenbrock), chosen by a stiffness probe, with the reason recorded.

Small-initialisation flows are not stiff at t = 0 — every Hessian eigenvalue is tiny near W = 0 — but become
stiff after the first escape: a learned mode of strength s has curvature N s^{2−2/N} (MATH.md §3) while an
unlearned mode still at u₀ = scale^N grows at the rate N u₀^{1−2/N} s. Their ratio (s/u₀)^{1−2/N} predicts the
stiffness of the later plateaus before any integration; `rosenbrock.probe` measures it at the initial state
(top Hessian eigenvalue by power iteration against the growth rate ‖f‖/‖y‖). Either one above `STIFF_RATIO`
selects the stiff path.

End-to-end flows start at σ = scale (no per-layer product), so their prediction is (s_max/scale)^{1−2/N} (s_max/scale
at depth ∞); their stiff path works in singular coordinates with a dense Jacobian (`dlnode.solvers.singular`), so it is
chosen only while that state is small (at most `SINGULAR_MAX_UNKNOWNS` numbers) and every depth is ≥ 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..flows import get_flow
from ..network import init_layers
from ..problems import Problem
from . import rosenbrock as stiff
from . import singular

__all__ = ["STIFF_RATIO", "choose_method", "predicted_stiffness"]

STIFF_RATIO = stiff.STIFF_RATIO
EXPLICIT, STIFF = "tsit5", "rosenbrock"
SINGULAR_MAX_UNKNOWNS = 2500  # m(m−1)/2 + n(n−1)/2 + min(m, n): a dense LU of this size per step (d ≈ 50)


def predicted_stiffness(problem: Problem, depth: float, scale: float, flow: str = "layers") -> float:
    """(s_max/u₀)^{1−2/N}: sharpness of a learned top mode over the growth rate of a mode still at u₀ = scale^N
    (u₀ = scale for the end-to-end flow, whose scale is the end-to-end one; s_max/u₀ at depth ∞)."""
    s_max = float(np.linalg.norm(problem.target(), 2))
    u0 = scale if flow == "end_to_end" else scale**depth
    if math.isinf(depth):
        return s_max / u0
    if depth <= 2:
        return 1.0 if depth == 2 else scale / max(s_max, 1e-300)
    return (s_max / u0) ** (1.0 - 2.0 / depth)


def choose_method(
    problem: Problem,
    depths: Sequence[float],
    scales: Sequence[float],
    init: str | Callable,
    width: int | None,
    flow: str,
    lr: float = math.nan,
) -> tuple[str, str]:
    """(method, reason) for one `integrate` call: the stiff path if any (depth, scale) cell needs it."""
    worst, where = 0.0, ""
    for depth in depths:
        for scale in scales:
            ratio = predicted_stiffness(problem, depth, scale, flow)
            if ratio > worst:
                worst, where = ratio, f"depth {depth:g}, scale {scale:g}"
    stiff_reason = f"auto: predicted plateau stiffness {worst:.3g} > {STIFF_RATIO:g} at {where}"
    if flow == "end_to_end":
        if worst <= STIFF_RATIO:
            return EXPLICIT, f"auto: predicted stiffness {worst:.3g} <= {STIFF_RATIO:g} -> {EXPLICIT}"
        if min(depths) < 2:
            return EXPLICIT, f"{stiff_reason}, but depth 1 has no singular-coordinate path -> {EXPLICIT}"
        q = singular.unknowns(problem.d_out, problem.d_in)
        if q > SINGULAR_MAX_UNKNOWNS:
            return EXPLICIT, (f"{stiff_reason}, but singular coordinates would need a dense {q}-unknown LU per step "
                              f"(> {SINGULAR_MAX_UNKNOWNS}) -> {EXPLICIT}")  # fmt: skip
        return STIFF, f"{stiff_reason} -> {STIFF} in singular coordinates ({q} unknowns)"
    if worst > STIFF_RATIO:
        return STIFF, f"{stiff_reason} -> {STIFF}"
    for depth in depths:
        stiff_now, reason = _probe_initial(problem, int(depth), scales[0], init, width, flow, lr)
        if stiff_now:
            return STIFF, f"auto: at depth {depth:g}, t = 0, {reason}"
    return EXPLICIT, f"auto: predicted stiffness {worst:.3g} <= {STIFF_RATIO:g} and not stiff at t = 0 -> {EXPLICIT}"


def _probe_initial(problem: Problem, depth: int, scale: float, init: Any, width: int | None, flow: str, lr: float):  # noqa: ANN202
    layers = tuple(init_layers(problem, depth, init, scale, 0, width))
    return stiff.probe(get_flow(flow, type(problem), float(depth)), layers, problem.arrays(), lr)
