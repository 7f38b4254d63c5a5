"""`method="auto"`: explicit (tsit5) or stiff (rosenbrock), chosen by a stiffness probe, with the reason recorded.

Small-initialisation flows are not stiff at t = 0 — every Hessian eigenvalue is tiny near W = 0 — but become
stiff after the first escape: a learned mode of strength s has curvature N s^{2−2/N} (MATH.md §3) while an
unlearned mode still at u₀ = scale^N grows at the rate N u₀^{1−2/N} s. Their ratio (s/u₀)^{1−2/N} predicts the
stiffness of the later plateaus before any integration; `dlnode.stiff.probe` measures it at the initial state
(top Hessian eigenvalue by power iteration against the growth rate ‖f‖/‖y‖). Either one above `STIFF_RATIO`
selects the stiff path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import stiff
from .flows import get_flow
from .network import init_layers
from .problems import Problem

__all__ = ["STIFF_RATIO", "choose_method", "predicted_stiffness"]

STIFF_RATIO = stiff.STIFF_RATIO
EXPLICIT, STIFF = "tsit5", "rosenbrock"


def predicted_stiffness(problem: Problem, depth: float, scale: float) -> float:
    """(s_max/u₀)^{1−2/N}: sharpness of a learned top mode over the growth rate of a mode still at u₀ = scale^N."""
    s_max = float(np.linalg.norm(problem.target(), 2))
    if depth <= 2:
        return 1.0 if depth == 2 else scale / max(s_max, 1e-300)
    return (s_max / scale**depth) ** (1.0 - 2.0 / depth)


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
    if flow == "end_to_end":
        return EXPLICIT, "auto: end_to_end flows take tsit5 (their Jacobian is not symmetric, as rosenbrock needs)"
    worst, where = 0.0, ""
    for depth in depths:
        for scale in scales:
            ratio = predicted_stiffness(problem, depth, scale)
            if ratio > worst:
                worst, where = ratio, f"depth {depth:g}, scale {scale:g}"
    if worst > STIFF_RATIO:
        return STIFF, f"auto: predicted plateau stiffness {worst:.3g} > {STIFF_RATIO:g} at {where} -> {STIFF}"
    for depth in depths:
        stiff_now, reason = _probe_initial(problem, int(depth), scales[0], init, width, flow, lr)
        if stiff_now:
            return STIFF, f"auto: at depth {depth:g}, t = 0, {reason}"
    return EXPLICIT, f"auto: predicted stiffness {worst:.3g} <= {STIFF_RATIO:g} and not stiff at t = 0 -> {EXPLICIT}"


def _probe_initial(problem: Problem, depth: int, scale: float, init: Any, width: int | None, flow: str, lr: float):  # noqa: ANN202
    layers = tuple(init_layers(problem, depth, init, scale, 0, width))
    return stiff.probe(get_flow(flow, type(problem), float(depth)), layers, problem.arrays(), lr)
