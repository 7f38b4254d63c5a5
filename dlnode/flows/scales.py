"""The problem's scales: the gradient at the origin, the target's norm, the loss curvature, and what they predict.

They depend on the problem alone, so each is computed once per problem (`problem_scales`, cached on the
problem's arrays: an array changed in place is a new problem) and shared by the planning of every call on it: the
time unit 1/‖∇ℓ(0)‖, the escape estimates that lay out the save grid, and the plateau stiffness that picks the
default method and tolerance (docs/math.md §3).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from dlnode.problems.kinds import Problem

__all__ = [
    "ProblemScales",
    "derived",
    "escape_estimate",
    "gradient_scale",
    "hessian_scale",
    "learned_curvature",
    "plateau_scales",
    "predicted_stiffness",
    "problem_scales",
    "time_unit",
]


@dataclasses.dataclass(frozen=True)
class ProblemScales:
    """‖∇ℓ(0)‖₂ (`gradient`), ‖W*‖₂ (`target`), λ_max of the loss Hessian (`curvature`) and ℓ(0) (`loss`) of one
    problem (at W = 0)."""

    gradient: float
    target: float
    curvature: float
    loss: float


_KNOWN: dict[int, tuple[weakref.ref, bytes, ProblemScales]] = {}


def _fingerprint(problem: Problem) -> bytes:
    digest = hashlib.blake2b(type(problem).__name__.encode(), digest_size=16)
    for name, value in sorted(problem.arrays().items()):
        array = np.ascontiguousarray(value)
        digest.update(f"{name}{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.digest()


def problem_scales(problem: Problem) -> ProblemScales:
    """The scales of `problem`, computed once per problem (50 power iterations for the curvature)."""
    key, fingerprint = id(problem), _fingerprint(problem)
    known = _KNOWN.get(key)
    if known is not None and known[0]() is problem and known[1] == fingerprint:
        return known[2]
    scales = ProblemScales(
        gradient=gradient_scale(problem),
        target=float(np.linalg.norm(problem.w_star, 2)),
        curvature=hessian_scale(problem),
        loss=float(problem.loss(np.zeros_like(problem.w_star))),
    )
    _KNOWN[key] = (weakref.ref(problem, lambda _, key=key: _KNOWN.pop(key, None)), fingerprint, scales)
    return scales


_DERIVED: dict[int, tuple[weakref.ref, bytes, dict[str, Any]]] = {}


def derived(problem: Problem, name: str, compute: Any) -> Any:
    """`compute()` once per problem and `name` (kept as `problem_scales` keeps its scales: by the problem object
    and a fingerprint of its arrays), for what planning reads at every call and costs a factorisation."""
    key, fingerprint = id(problem), _fingerprint(problem)
    entry = _DERIVED.get(key)
    if entry is None or entry[0]() is not problem or entry[1] != fingerprint:
        entry = (weakref.ref(problem, lambda _, key=key: _DERIVED.pop(key, None)), fingerprint, {})
        _DERIVED[key] = entry
    if name not in entry[2]:
        entry[2][name] = compute()
    return entry[2][name]


def gradient_scale(problem: Problem) -> float:
    """‖∇ℓ(0)‖₂: the strength of the top mode as the flow sees it from small init (it carries the loss's
    normalisation and, for completion, the mask), the s of the mode equations."""
    return float(np.linalg.norm(problem.grad(np.zeros((problem.d_out, problem.d_in))), 2))


def hessian_scale(problem: Problem, iterations: int = 50) -> float:
    """λ_max of the loss Hessian H (ℓ is quadratic: ∇ℓ(W) = H(W − W*)), by power iteration on the problem's own
    operator: 1 for completion and factorisation (1/|Ω| normalised), λ_max(Σ_xx) for regression."""
    arrays = problem.arrays()
    v = np.random.default_rng(0).standard_normal(problem.w_star.shape)
    lam = 0.0
    for _ in range(iterations):
        hv = np.asarray(type(problem).hessian_op(v, arrays))
        lam = float(np.linalg.norm(hv))
        if lam == 0.0:
            return 0.0
        v = hv / lam
    return lam


def learned_curvature(problem: Problem, depth: float, flow: str = "layers", lr: float = math.nan) -> float:
    """The curvature of the top mode once it is learned: N s*^{2−2/N}·h (s* = ‖W*‖₂, h = λ_max of the loss Hessian;
    docs/math.md §3), the sharpness at a balanced minimiser, times the modified flow's 1 + lr·S/2 (``lr``) — what
    bounds an explicit step from the first escape on (finite depth; at depth 1 it is h)."""
    known = problem_scales(problem)
    s_star, h = (max(x, 1e-300) for x in (known.target, known.curvature))
    curvature = math.exp(min(math.log(depth) + (2.0 - 2.0 / depth) * math.log(s_star) + math.log(h), 700.0))
    return curvature * (1.0 + 0.5 * lr * curvature if flow == "modified" and math.isfinite(lr) else 1.0)


def predicted_stiffness(problem: Problem, depth: float, scale: float, flow: str = "layers",
                        scale_of: str = "layer", lr: float = math.nan) -> float:  # fmt: skip
    """The sharpness once the top mode is learned over the growth rate of a mode still at u₀, in logarithms.

    Learned: curvature N s*^{2−2/N}·h (s* = ‖W*‖₂, h = λ_max of the loss Hessian); unlearned: growth rate
    N u₀^{1−2/N}·g (g = ‖∇ℓ(0)‖₂); u₀ = scale^N (per-layer scale) or scale (``scale_of="product"``, depth ∞).
    For whitened regression (s* = g, h = 1) this is (s/u₀)^{1−2/N}; at depth ∞ s*²h/(u₀ g). The modified flow
    (``lr``) stiffens the learned modes by 1 + lr·S/2, its Jacobian at a minimum being −(∇²L + (lr/2)(∇²L)²).
    """
    known = problem_scales(problem)
    g, s_star, h = (max(x, 1e-300) for x in (known.gradient, known.target, known.curvature))
    log_u0 = math.log(scale) * (1.0 if scale_of == "product" or math.isinf(depth) else depth)
    if math.isinf(depth):
        return math.exp(min(2 * math.log(s_star) + math.log(h) - log_u0 - math.log(g), 700.0))
    c = 1.0 - 2.0 / depth
    learned = learned_curvature(problem, depth)
    modified = learned_curvature(problem, depth, flow, lr) / learned
    if depth <= 2:
        return modified * (1.0 if depth == 2 else scale / g)
    return modified * math.exp(min(math.log(learned / depth) - c * log_u0 - math.log(g), 700.0))


ZERO_GRADIENT = 1e-12  # ‖∇ℓ(0)‖ below this fraction of the curvature λ_max(H): the target is zero at working precision


def time_unit(problem: Problem) -> float:
    """1/‖∇ℓ(0)‖₂: the time a mode of the strength the problem's own gradient has needs to grow by e at depth 1.

    The gradient at W = 0 (the small-init limit) carries the problem's normalisation and mask: for a completion
    normalised by |Ω| it is |Ω| times smaller than the target, and so is every rate of the flow.

    A target that is zero (or below `ZERO_GRADIENT` of the curvature, a denormal one) has no mode to learn: the
    flow only decays towards W = 0, at rates set by the curvature, so the unit is 1/λ_max(H) instead (the decay
    time of the depth-1 flow W' = −H W). Without that rule the unit would be infinite and the planned horizon
    degenerate (a time axis of two points, [0, 1e297]).
    """
    scales = problem_scales(problem)
    if not scales.gradient > ZERO_GRADIENT * scales.curvature and scales.curvature > 0:
        return 1.0 / scales.curvature
    return 1.0 / max(scales.gradient, 1e-300)


def plateau_scales(init: Any, scales: Sequence[float], scale_of: str) -> tuple[list[float], str]:
    """(scales, scale_of) as the plateau estimates (`escape_estimate`, `predicted_stiffness`) read a call's init.

    A ``residual`` init, W_j = I + s·G/√(N·d), starts the product near the identity whatever s: a product of size 1,
    with no plateau to escape (its escape estimate is the time unit). Every other init starts the product at its
    scale (s^N per layer, or s). Without this a residual run at depth 8 and s = 3e-3 was planned as if its product
    were 1e-20: its first save came at t = 1.6e10, long after it converged (t = 408), and `auto` read a plateau
    stiffness of 8e15 from it.
    """
    if isinstance(init, str) and init == "residual":
        return [1.0], "product"
    return list(scales), scale_of


def escape_estimate(problem: Problem, depths: Sequence[float], scales: Sequence[float], flow: str = "layers",
                    scale_of: str = "layer", slowest: bool = True) -> float:  # fmt: skip
    """The slowest cell's escape time from its initial scale (the closed forms of docs/math.md §3), in flow time.

    A mode starting at u₀ (per-layer scale s: u₀ = s^N; ``scale_of="product"``: u₀ = s) escapes after
    ln(1/u₀)/2 (N ≤ 2) or u₀^{−(1−2/N)}/(N−2) time units; the end-to-end flow runs on τ = N t, where that is N
    times longer (1/u₀ at N = ∞). Computed in logarithms, so no depth or scale overflows. `slowest=False` gives
    the fastest cell's.
    """
    logs = []  # log of each cell's escape time in time units
    for n in depths:
        for s in scales:
            log_u0 = math.log(s) * (1.0 if scale_of == "product" or math.isinf(n) else n)
            log_u0 = min(log_u0, 0.0)
            rescale = 0.0 if flow != "end_to_end" or math.isinf(n) else math.log(n)
            if math.isinf(n):
                log_t = -log_u0
            elif n <= 2:
                log_t = math.log(max(-log_u0, 1.0)) + rescale
            else:
                log_t = -(1 - 2 / n) * log_u0 - math.log(n - 2) + rescale
            logs.append(max(log_t, 0.0))
    return time_unit(problem) * math.exp(min(max(logs) if slowest else min(logs), 600.0))
