"""The stiff path for end-to-end flows: Rosenbrock steps in singular coordinates (U, ln σ, V).

Why. At small initialisation an unlearned mode's end-to-end singular value is tiny (1e-24 for depth 8 at per-layer
scale 1e-3) while a learned one is of order one. In the entries of W — and in the per-layer products — everything
below ε·σ_max ≈ 1e-16 is round-off, so after the first escape the plateau dynamics of the remaining modes (rates
~σ^{1−2/N}) cannot be integrated from W or from the layers: their escape times would come out of round-off. In
singular coordinates σ_i is kept as ln σ_i, as small as it is, and the balanced end-to-end flow (docs/math.md §5) on the
rescaled time τ = N t reads (derived from the SVD perturbation identities; checked against `end_to_end_field`)

    d ln σ_i/dτ = −G_ii σ_i^{1−2/N},   dU/dτ = U Ω_U,   dV/dτ = V Ω_V,   G = Uᵀ ∇ℓ(W) V,
    (Ω_U)_ik = (G_ik σ_k + σ_i G_ki)/D_ik,   (Ω_V)_ik = (σ_i G_ik + G_ki σ_k)/D_ik,   D_ik = N(σ_i^{2/N} − σ_k^{2/N});

at depth ∞, σ^{1−2/N} → σ and D_ik → 2(ln σ_i − ln σ_k). Rectangular W pads σ with zeros (Ω = 0 between two zero
modes, and every zero mode is frozen at depth ∞).

How. Each step works in a chart at the current frames, U = U_n cay(A), V = V_n cay(B) with A, B skew (their strict
upper triangles are the unknowns, beside ln σ) and dA/dτ = Ω + ½[A, Ω] − ¼AΩA (the inverse differential of the
Cayley map, derived). The state has q = m(m−1)/2 + n(n−1)/2 + min(m, n) numbers. Up to `DENSE_MAX_UNKNOWNS` of
them the Jacobian is formed by forward-mode autodiff and each step factors I − hγJ once, its rows equilibrated
before the LU: the rows of the slow modes are ~σ^{1−2/N} small, so after scaling they stay O(1) however large
h·λ_max grows, and the slow modes are not lost to round-off (the per-layer path needs a step ceiling for that; this
one does not). Beyond that the stage systems are solved matrix-free: GMRES on Jacobian-vector products, right-
preconditioned by the part of J that is local to each pair (i, k) of singular vectors and to each ln σ_i
(`local_jacobian`): with ∇²ℓ ≈ p I it is a 2 × 2 block per pair whose p-part is the end-to-end operator's weight
a_ik/N — the operator is diagonal in the singular bases — and whose G-part carries the fast turning of frames with
nearly equal σ. Where that preconditioner is too weak (GMRES falling short on more than a fifth of a window's
attempts) a state of at most `SWITCH_MAX_UNKNOWNS` switches to the dense LU for the rest of the run
(`SingularRosenbrock.end_window`, chosen on the host between windows by `variant`). Tableau, step control,
compensated time and landing on the save times are those of `dlnode.solvers.rosenbrock`. Depth enters only through
c = 2/N (0 at depth ∞: D_ik = 2σ_k^c(e^{c(ln σ_i − ln σ_k)} − 1)/c tends to 2(ln σ_i − ln σ_k)), a traced number in
the state, so one compiled solver serves every depth of a shape.

Ties. ``balanced`` and ``decoupled`` inits start with equal σ, where the frames are not defined; inside each cluster
of equal σ they are taken as the eigenvectors of the symmetric part of G, the limit of the SVD frames as τ → 0⁺.

Error. A step's error is measured in W, pair by pair (`scaled_error`): turning the frames of a pair (i, k) together
by t and shearing them by s change W's entries (i, k) and (k, i) by t(σ_k − σ_i) ± s(σ_i + σ_k), so relative to the
pair's size σ_i + σ_k the turning counts with weight |σ_i − σ_k|/(σ_i + σ_k) and the shear with weight 1. Inside a
cluster of nearly equal σ (the unlearned modes of a small initialisation) the frames are almost a gauge: they turn
fast wherever two σ nearly cross, while W hardly moves, and that turning no longer sets the step.

Cost per step: dense, one LU of q unknowns (~q³/3 flops) and q forward-mode field evaluations; matrix-free, a few
Jacobian-vector products per stage solve (each about a field evaluation, O(d³)): 6–20 on average on the 100 × 100
completion. A 30 × 30 completion at depth ∞ (1068 steps) ran in 9 s matrix-free against 283 s with the dense LU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from dlnode.errors import fail, refused, shown
from dlnode.flows.flow import Flow, end_to_end_observables
from dlnode.solvers.rosenbrock import error_norm, settle, step_factor
from dlnode.solvers.stepping import SteppingMethod, compiled
from dlnode.solvers.tableaus import SHAMPINE

# Shampine's order-4 method, not the layer path's RODAS4: each step here pays an LU (or GMRES solves), and RODAS4's
# six stages and six field evaluations (Shampine's: four and three) cost more than its fewer steps save. Measured on
# the 11 end-to-end cases of the generated gauntlet (`benchmarks/gauntlet.py`, cold, one process each): RODAS4 took
# 0.59–0.92 of the steps and 165 s against 161 s in all (median time ratio 1.11, from 0.71 to 1.38). RODAS3 (order
# 3), on the depth-8 factorisation (σ(0) = 1e-24): 5833 steps and 7.3 s where this takes 2793 and 2.9 s (rtol 1e-7).
TABLEAU = SHAMPINE

__all__ = [
    "depth_power",
    "initial_coordinates",
    "make_batch",
    "operator_weights",
    "scaled_error",
    "singular_field",
    "initial",
    "unknowns",
]

TIE_RTOL = 1e-9  # singular values closer than this (relatively) at t = 0 form one cluster
# Above this many unknowns the stage systems are solved matrix-free (GMRES on Jacobian-vector products with the
# pair-local preconditioner of `local_jacobian`) instead of forming J by q tangents and factoring it.
DENSE_MAX_UNKNOWNS = 300
KRYLOV_TOL = 1e-2  # stage residual allowed, in units of the step's error tolerance (rms)
# GMRES: Krylov space per cycle and cycles (300 products at most); a solve short of KRYLOV_TOL after them fails the
# attempt (the step is retried at a fifth of h). Each cycle stops as soon as the residual is small enough
# ("incremental": Givens rotations give the residual at every iteration); the "batched" variant builds the whole
# space every cycle. Measured on the 100 × 100 completion at depth 4: 6 products per solve on average where every
# cycle had cost 31, and 84 s → 22 s for the run (restart 30 → 10: the orthogonalisation runs over the whole space
# each iteration). The cap: at depth ∞ from scale 1e-2, 90 products failed 473 of 2441 attempts (each failure wastes
# its products and cuts h), 300 fail 3 of 1191 and halve the run (1883 → 1082 steps); from scale 1e-3, 1708 → 1537.
KRYLOV_RESTART, KRYLOV_CYCLES = 10, 30
# GMRES with this preconditioner falls short where ∇²ℓ is far from p·I and the pair couplings are strong: on a 20 × 20
# rank-2 completion (|Ω| = 160, 400 unknowns, balanced init 1e-3) 30 % of the attempts at depth 16 (each then retried
# at a fifth of h: 4092 steps, 68 s) against 4 % at depth 8, where dense LU takes 796 steps. A batch whose attempts
# fall short that often switches to dense LU between windows while dense stays affordable (q³/3 flops a step).
SWITCH_SHORT_FRACTION, SWITCH_MIN_ATTEMPTS, SWITCH_MAX_UNKNOWNS = 0.2, 32, 1000
HUTCHINSON_PROBES = 16  # Rademacher probes for the mean Hessian eigenvalue p = tr(∇²ℓ)/(mn)


class _State(NamedTuple):
    u: Any  # left frame (m × m, orthogonal)
    v: Any  # right frame (n × n, orthogonal)
    ell: Any  # ln σ (r)
    t_hi: Any  # time = t_hi + t_lo (compensated sum)
    t_lo: Any
    h: Any
    steps: Any
    rejected: Any
    fails: Any
    status: Any
    krylov_attempts: Any  # attempts whose stage systems went through GMRES
    krylov_short: Any  # of those, attempts whose GMRES fell short of KRYLOV_TOL (retried at a fifth of h)
    dense: Any  # switched to dense LU stage solves (`SingularRosenbrock.end_window`)
    change: Any  # the largest change of ln σ, U or V over the last window (the driver's creep rule)


def depth_power(depth: float) -> float:
    """c = 2/N, the exponent through which depth enters the flow in singular coordinates (0 at depth ∞). The solver
    carries it as a traced number, so one compiled solver serves every depth of a shape."""
    return 0.0 if math.isinf(depth) else 2.0 / float(depth)


def _exprel(z: Any) -> Any:
    """(e^z − 1)/z, 1 at z = 0, accurate for every z (and differentiable through the small-|z| branch)."""
    small = jnp.abs(z) < 1e-8
    z_safe = jnp.where(small, 1.0, z)
    return jnp.where(small, 1.0 + 0.5 * z, jnp.expm1(z_safe) / z_safe)


def _pair_gaps(lp: Any, valid: Any, c: Any) -> tuple[Any, Any]:
    """(D, keep): D_ik = N(σ_i^{2/N} − σ_k^{2/N}) with c = 2/N (2(ln σ_i − ln σ_k) at c = 0, depth ∞) over the padded
    ln σ `lp`, and the pairs where Ω is nonzero: not both zero modes (at depth ∞: both nonzero), D ≠ 0, i ≠ k.

    Both nonzero: D = 2 σ_k^c (e^{cΔ} − 1)/c, Δ = ln σ_i − ln σ_k, which is 2Δ at c = 0; one zero mode:
    D = ±(2/c) σ^c (unused at depth ∞). One formula for every depth: the selection is on the scalar c only."""
    vi, vk = valid[:, None], valid[None, :]
    both = vi & vk
    at_infinity = c == 0
    inv = jnp.where(at_infinity, 0.0, 1.0 / jnp.where(at_infinity, 1.0, c))
    delta = lp[:, None] - lp[None, :]
    pw = jnp.exp(c * lp)
    d_both = 2.0 * pw[None, :] * (jnp.expm1(c * delta) * inv + at_infinity * delta)
    pv = jnp.where(valid, pw, 0.0)
    d = jnp.where(both, d_both, 2.0 * inv * (pv[:, None] - pv[None, :]))
    keep = (both | ((vi | vk) & ~at_infinity)) & ~jnp.eye(lp.shape[0], dtype=bool) & (d != 0)
    return d, keep


def singular_field(u: Any, v: Any, ell: Any, gradient: Callable[[Any], Any], depth: float) -> tuple:
    """(Ω_U, Ω_V, d ln σ/dτ, W) of the rescaled balanced end-to-end flow at W = U[:, :r] diag(e^ℓ) V[:, :r]ᵀ.

    `gradient(W)` is ∇ℓ(W); `depth` an integer ≥ 2 or inf. Ω_U, Ω_V are skew (m × m, n × n).
    """
    return _field(u, v, ell, gradient, depth_power(depth), gradient(jnp.zeros((u.shape[0], v.shape[0]), ell.dtype)))


def _field(u: Any, v: Any, ell: Any, gradient: Callable[[Any], Any], c: Any, e0: Any) -> tuple:
    """`singular_field` with depth given as c = 2/N (traced) and ∇ℓ(0) = `e0` (see `_rounding_size`)."""
    r = ell.shape[0]
    w = (u[:, :r] * jnp.exp(ell)) @ v[:, :r].T
    e = gradient(w)
    return (*_rotations(u.T @ e @ v, ell, c, _rounding_size(e, e0)), w)


def _rounding_size(e: Any, e0: Any) -> Any:
    """‖∇ℓ(W) − ∇ℓ(0)‖_F + ‖∇ℓ(0)‖_F for e = ∇ℓ(W), e0 = ∇ℓ(0): dlnode's losses are quadratic, ∇ℓ(W) = H[W] − b,
    and these are the sizes of the two terms whose difference the computed gradient is; its rounding scales with
    them, not with ‖∇ℓ(W)‖ (after an escape H[W] is of the size of the learned modes while ∇ℓ(W) may be far
    smaller)."""
    return jnp.linalg.norm(e - e0) + jnp.linalg.norm(e0)


def _without_roundoff(g: Any, size: Any) -> Any:
    """G (m × n) with the entries within its rounding level set to zero in value: |G_ik| ≤ (m + n)·ε·`size`, with
    `size` the scale of what ∇ℓ(W) is computed from (`_rounding_size`, at least ‖∇ℓ(W)‖_F = ‖G‖_F): (m + n)ε is the
    worst-case relative rounding of the inner products of lengths n and m in Uᵀ(∇ℓ V), each entry at most
    ‖|∇ℓ|‖₂ ≤ ‖∇ℓ‖_F in absolute terms (Higham, "Accuracy and stability of numerical algorithms", §3.5: γ_k ≈ kε
    per inner product of length k). Its derivative is G's own, so that a Jacobian keeps every stiff entry.

    Why. After an escape the learned mode's pairs (1, k) sit at their equilibrium, G_1k = G_k1 = 0, but the computed
    entries are round-off (~ε‖G‖), so Ω_1k is too. The chart's bracket ½[A, Ω] carries that round-off, times the
    learned pairs' own round-off angle, into the unlearned block, whose frames are almost free: a drift that grows
    with h and, measured relative to pairs of size ~σ_min, caps the step. On a depth-16 sensing problem after its
    first escape (t = 4.7e34, unlearned σ ~ 1e-41) the computed G_1k, G_k1 were up to 1.4 ε‖G‖_F and the step
    stayed near 6e24 (an error of 0.69 there, 6e2 at 6e27): the run crept for minutes. With those entries zeroed
    the error at the same state is 9e-19 at h = 6e24 and 3e-10 at 6e30. Later escapes leave ‖∇ℓ‖ far below the
    learned modes' H[W], so the level is set by `size`, not by ‖G‖_F alone: on 6 × 7 and 8 × 8 sensing problems at
    depth 16 a floor of (m + n)ε‖G‖_F got through the first escape and stalled after the next."""
    floor = (g.shape[0] + g.shape[1]) * jnp.finfo(g.dtype).eps * jax.lax.stop_gradient(size)
    return g - jax.lax.stop_gradient(jnp.where(jnp.abs(g) > floor, 0.0, g))


def _rotations(g: Any, ell: Any, c: Any, size: Any) -> tuple:
    """(Ω_U, Ω_V, d ln σ/dτ) from G = Uᵀ∇ℓ(W)V (m × n) and ln σ, depth as c = 2/N; G's entries at its rounding
    level, set by `size` (`_rounding_size`), count as zero (`_without_roundoff`)."""
    g = _without_roundoff(g, size)
    m, n, r = g.shape[0], g.shape[1], ell.shape[0]
    p_dim = max(m, n)
    s = jnp.exp(ell)
    gp = jnp.zeros((p_dim, p_dim), g.dtype).at[:m, :n].set(g)
    valid = jnp.arange(p_dim) < r
    sp = jnp.zeros(p_dim, s.dtype).at[:r].set(s)
    lp = jnp.zeros(p_dim, s.dtype).at[:r].set(ell)
    d, keep = _pair_gaps(lp, valid, c)
    rate = jnp.exp((1.0 - c) * ell)
    d_safe = jnp.where(keep, d, 1.0)
    om_u = jnp.where(keep, (gp * sp[None, :] + sp[:, None] * gp.T) / d_safe, 0.0)
    om_v = jnp.where(keep, (sp[:, None] * gp + gp.T * sp[None, :]) / d_safe, 0.0)
    upper = jnp.triu(jnp.ones((p_dim, p_dim), bool), 1)
    om_u, om_v = jnp.where(upper, om_u, 0.0), jnp.where(upper, om_v, 0.0)
    om_u, om_v = om_u - om_u.T, om_v - om_v.T  # skew by construction (D is antisymmetric up to round-off)
    return om_u[:m, :m], om_v[:n, :n], -jnp.diagonal(g)[:r] * rate


def operator_weights(ell: Any, m: int, n: int, c: Any) -> Any:
    """The m × n weights a_ik/N of the end-to-end operator in the singular bases, (U^T A_N(E) V)_ik / N = a_ik G_ik / N
    (docs/math.md §5), from ln σ (length r) and c = 2/N; a^∞ at c = 0.

    Both nonzero: a_ik/N = (σ_i² − σ_k²)/D_ik = σ_max^{2−c} φ(2Δ)/φ(cΔ), φ(z) = (e^z − 1)/z, Δ = −|ln σ_i − ln σ_k|
    (σ_i^{2−c} on the diagonal); one zero mode: σ^{2−c} c/2 (0 at depth ∞); two: 0."""
    r, k = ell.shape[0], max(m, n)
    valid = jnp.arange(k) < r
    lp = jnp.zeros(k, ell.dtype).at[:r].set(ell)
    top = jnp.maximum(lp[:, None], lp[None, :])
    delta = -jnp.abs(lp[:, None] - lp[None, :])
    both = jnp.exp((2.0 - c) * top) * _exprel(2.0 * delta) / _exprel(c * delta)
    one = 0.5 * c * jnp.exp((2.0 - c) * jnp.where(valid, lp, -jnp.inf))
    weights = jnp.where(valid[:, None] & valid[None, :], both, one[:, None] + one[None, :])
    return weights[:m, :n]


def _cayley(a: Any) -> Any:
    eye = jnp.eye(a.shape[0], dtype=a.dtype)
    return jnp.linalg.solve(eye - 0.5 * a, eye + 0.5 * a)


def _chart_velocity(a: Any, om: Any) -> Any:
    """dA/dτ for U = U_n cay(A) when dU/dτ = UΩ: (I + A/2) Ω (I − A/2)."""
    return om + 0.5 * (a @ om - om @ a) - 0.25 * a @ om @ a


def unknowns(m: int, n: int) -> int:
    """Size of the state for an m × n W: the strict upper triangles of the two chart generators, and ln σ."""
    return m * (m - 1) // 2 + n * (n - 1) // 2 + min(m, n)


class _Chart(NamedTuple):
    """Unknowns z = (upper(A), upper(B), ln σ) around the frames (U_n, V_n)."""

    m: int
    n: int
    r: int

    @property
    def sizes(self) -> tuple[int, int]:
        return self.m * (self.m - 1) // 2, self.n * (self.n - 1) // 2

    def skew(self, a: Any, k: int) -> Any:
        iu = np.triu_indices(k, 1)
        mat = jnp.zeros((k, k), a.dtype).at[iu].set(a)
        return mat - mat.T

    def split(self, z: Any) -> tuple[Any, Any, Any]:
        qa, qb = self.sizes
        return self.skew(z[:qa], self.m), self.skew(z[qa : qa + qb], self.n), z[qa + qb :]

    def frames(self, u0: Any, v0: Any, z: Any) -> tuple[Any, Any, Any]:
        a, b, ell = self.split(z)
        return u0 @ _cayley(a), v0 @ _cayley(b), ell

    def field(self, z: Any, u0: Any, v0: Any, gradient: Callable, c: Any, e0: Any, at_origin: bool = False) -> Any:
        """dz/dτ in the chart, depth given as c = 2/N (`depth_power`), e0 = ∇ℓ(0) (`_rounding_size`). `at_origin`: a
        function with the same value and first derivative at A = B = 0 (the Cayley map cay(A) = I + A + O(A²) and
        (I + A/2)Ω(I − A/2) = Ω + ½[A, Ω] + O(A²), the products of W and G to first order), cheaper to
        differentiate: no linear solves and fewer matrix products in each Jacobian-vector product than with the
        frames U₀(I + A), V₀(I + B) and the whole brackets."""
        a, b, ell = self.split(z)
        if at_origin:
            # first order in (A, B), with the factors that vanish at the origin held constant: W = U₀(Σ + AΣ + ΣBᵀ)V₀ᵀ
            # and G = Uᵀ∇ℓV = G₀ + AᵀG₀ + G₀B (G₀ = U₀ᵀ∇ℓ(W)V₀): two products each way per Jacobian-vector product
            r = ell.shape[0]
            s = jnp.exp(ell)
            inner = jnp.zeros((self.m, self.n), z.dtype).at[:r, :r].set(jnp.diag(s))
            inner = inner.at[:, :r].add(a[:, :r] * s).at[:r, :].add((b[:, :r] * s).T)
            e = gradient(u0 @ inner @ v0.T)
            g = u0.T @ e @ v0
            held = jax.lax.stop_gradient(g)
            om_u, om_v, dell = _rotations(g + a.T @ held + held @ b, ell, c, _rounding_size(e, e0))
            # the brackets' derivative at A = 0 is ½[Ȧ, Ω]: Ω held constant there drops the two products A Ω̇ that
            # vanish at the origin from every Jacobian-vector product (same value and Jacobian at the origin)
            hold_u, hold_v = jax.lax.stop_gradient(om_u), jax.lax.stop_gradient(om_v)
            da, db = om_u + 0.5 * (a @ hold_u - hold_u @ a), om_v + 0.5 * (b @ hold_v - hold_v @ b)
        else:
            om_u, om_v, dell, _ = _field(u0 @ _cayley(a), v0 @ _cayley(b), ell, gradient, c, e0)
            da, db = _chart_velocity(a, om_u), _chart_velocity(b, om_v)
        return jnp.concatenate([da[np.triu_indices(self.m, 1)], db[np.triu_indices(self.n, 1)], dell])


def scaled_error(chart: _Chart, ell: Any, e: Any) -> Any:
    """The error vector e = (upper(A), upper(B), ln σ) of a step, as first-order changes of W relative to each
    pair's size: for the pairs (i, k) of the square block, the turning part t = (A_ik + B_ik)/2 is scaled by
    |σ_i − σ_k|/(σ_i + σ_k) = |tanh((ln σ_i − ln σ_k)/2)| and the shear s = (A_ik − B_ik)/2 kept, so that the two
    entries returned for the pair have squares summing to (δW_ik² + δW_ki²)/(σ_i + σ_k)², δW = Uᵀ(W' − W)V. The
    other pairs (a mode and a null direction of a rectangular W) and ln σ (a relative change of σ) are unchanged."""
    qa, qb = chart.sizes
    k, r = min(chart.m, chart.n), ell.shape[0]
    lp = jnp.zeros(k, ell.dtype).at[:r].set(ell[:k])
    weight = jnp.abs(jnp.tanh(0.5 * (lp[:, None] - lp[None, :])))
    ea, eb = chart.skew(e[:qa], chart.m), chart.skew(e[qa : qa + qb], chart.n)
    turn, shear = 0.5 * (ea[:k, :k] + eb[:k, :k]) * weight, 0.5 * (ea[:k, :k] - eb[:k, :k])
    ea, eb = ea.at[:k, :k].set(turn + shear), eb.at[:k, :k].set(turn - shear)
    return jnp.concatenate([ea[np.triu_indices(chart.m, 1)], eb[np.triu_indices(chart.n, 1)], e[qa + qb :]])


def _reorthonormalise(q: Any) -> Any:
    """One Newton–Schulz step towards the nearest orthogonal matrix (keeps ‖QᵀQ − I‖ at round-off over many steps)."""
    return q @ (1.5 * jnp.eye(q.shape[1], dtype=q.dtype) - 0.5 * q.T @ q)


def _attempt(field: Callable, z0: Any, h: Any, sc: Any, origin_field: Callable, chart: _Chart) -> tuple[Any, Any]:
    """One Rosenbrock step of `TABLEAU` (Shampine's) from the chart origin z0: (z₁, error norm). The Jacobian is
    that of `origin_field` (equal to `field` to first order at z0), one LU of the row-equilibrated I − hγJ; the
    stages run in a `lax.fori_loop` (one traced stage body: a small graph, a fast compile)."""
    tab = TABLEAU
    jac = jax.jacfwd(origin_field)(z0)
    mat = jnp.eye(z0.shape[0], dtype=z0.dtype) - h * tab.gamma * jac
    row = jnp.max(jnp.abs(mat), axis=1)
    lu = jsl.lu_factor(mat / row[:, None])
    a, c, stages = jnp.asarray(tab.a), jnp.asarray(tab.c), len(tab.m)
    needs_field = jnp.asarray([i == 0 or not np.array_equal(tab.a[i], tab.a[i - 1]) for i in range(stages)])

    def stage(i, carry):
        us, f = carry
        f = jax.lax.cond(needs_field[i], lambda _: field(z0 + a[i] @ us), lambda _: f, None)
        rhs = h * tab.gamma * f + tab.gamma * (c[i] @ us)
        return us.at[i].set(jsl.lu_solve(lu, rhs / row)), f

    init = (jnp.zeros((stages, *z0.shape), z0.dtype), jnp.zeros_like(z0))
    us, _ = jax.lax.fori_loop(0, stages, stage, init)
    z1 = z0 + jnp.asarray(tab.m) @ us
    return z1, error_norm(scaled_error(chart, chart.split(z0)[2], jnp.asarray(tab.e) @ us) / sc)


def local_jacobian(chart: _Chart, u: Any, v: Any, ell: Any, gradient: Callable, c: Any, p: Any) -> tuple:
    """The part of J = ∂(dz/dτ)/∂z at the chart origin that is local to each pair and to each ln σ_i, for
    ∇²ℓ ≈ p I (p its mean eigenvalue): (λ₊, λ₋, ρ_A, ρ_B, ρ_ℓ).

    Derived from the field: with dU = U dA, dV = V dB and U^T ∇²ℓ[U X V^T] V ≈ p X, a rotation a = dA_ik,
    b = dB_ik of the pair (i, k) changes G_ik by −a G_kk + b G_ii + p(σ_k a − σ_i b) and G_ki by
    a G_ii − b G_kk + p(σ_k b − σ_i a), so (dΩ_U, dΩ_V)_ik is a symmetric 2 × 2 block in (a, b) with eigenvalues
    λ₊ = (σ_i + σ_k)[(G_ii − G_kk) − p(σ_i − σ_k)]/D_ik along a = b (the frames turning together: fast when σ_i ≈ σ_k
    and G_ii ≠ G_kk) and λ₋ = (σ_i − σ_k)[(G_ii + G_kk) − p(σ_i + σ_k)]/D_ik along a = −b (whose p part is the operator
    weight −p a_ik/N of `dlnode.flows.endtoend`: the operator is diagonal in the singular bases). For a square W these
    blocks are used whole; for a rectangular one, only their diagonals ρ_A, ρ_B (A and B have different pairs).
    d ln σ_i/dτ = −G_ii σ_i^{1−2/N} gives ρ_ℓ = −(1 − 2/N) G_ii σ_i^{1−2/N} − p σ_i^{2−2/N}. Left out: the
    off-diagonal G_ik and ∇²ℓ − pI, which couple pairs; GMRES takes care of them."""
    m, n, r = chart.m, chart.n, ell.shape[0]
    k = max(m, n)
    s = jnp.exp(ell)
    w = (u[:, :r] * s) @ v[:, :r].T
    g = u.T @ gradient(w) @ v
    gd = jnp.zeros(k, s.dtype).at[: min(m, n)].set(jnp.diagonal(g))
    sp = jnp.zeros(k, s.dtype).at[:r].set(s)
    lp = jnp.zeros(k, s.dtype).at[:r].set(ell)
    d, keep = _pair_gaps(lp, jnp.arange(k) < r, c)
    d_safe = jnp.where(keep, d, 1.0)
    si, sk, gi, gk = sp[:, None], sp[None, :], gd[:, None], gd[None, :]
    plus = jnp.where(keep, (si + sk) * ((gi - gk) - p * (si - sk)) / d_safe, 0.0)
    minus = jnp.where(keep, (si - sk) * ((gi + gk) - p * (si + sk)) / d_safe, 0.0)
    diag = jnp.where(keep, (si * gi - sk * gk - p * (si**2 - sk**2)) / d_safe, 0.0)
    rho_l = -(1.0 - c) * gd[:r] * jnp.exp((1.0 - c) * ell) - p * jnp.exp((2.0 - c) * ell)
    iu_m, iu_n = np.triu_indices(m, 1), np.triu_indices(n, 1)
    return plus[iu_m], minus[iu_m], diag[iu_m], diag[iu_n], rho_l


def _preconditioner(chart: _Chart, local: tuple, hg: Any) -> Callable:
    """v ↦ (I − hγJ_local)⁻¹ v for the `local_jacobian` parts; a growing part (λ > 0) is left alone, so the factor
    1 − hγλ never nears zero."""
    plus, minus, rho_a, rho_b, rho_l = local
    qa, qb = chart.sizes

    def factor(lam):
        return 1.0 + hg * jnp.maximum(-lam, 0.0)

    f_l = factor(rho_l)
    if chart.m == chart.n:
        f_plus, f_minus = factor(plus), factor(minus)

        def apply(x):
            za, zb, zl = x[:qa], x[qa : qa + qb], x[qa + qb :]
            turn, shear = 0.5 * (za + zb) / f_plus, 0.5 * (za - zb) / f_minus
            return jnp.concatenate([turn + shear, turn - shear, zl / f_l])

        return apply
    scale = jnp.concatenate([factor(rho_a), factor(rho_b), f_l])
    return lambda x: x / scale


def mean_hessian(problem_cls: type, arrays: dict, shape: tuple[int, int]) -> Any:
    """p = tr(∇²ℓ)/(mn) by Hutchinson's estimator (exact for a diagonal ∇²ℓ, e.g. a completion mask)."""
    probes = jax.random.rademacher(jax.random.PRNGKey(0), (HUTCHINSON_PROBES, *shape), dtype=jnp.float64)
    quad = jax.vmap(lambda v: jnp.vdot(v, problem_cls.hessian_op(v, arrays)))(probes)
    return jnp.mean(quad) / (shape[0] * shape[1])


def _attempt_krylov(field: Callable, z0: Any, h: Any, sc: Any, origin_field: Callable, chart: _Chart,
                    local: tuple) -> tuple:  # fmt: skip
    """`_attempt` with matrix-free stage solves: GMRES on v ↦ v − hγJv (J by the linearised `origin_field`),
    preconditioned by the pair-local Jacobian (`local_jacobian`), each solve to `KRYLOV_TOL` of the step's error
    tolerance (checked by one more product: a solve that falls short makes the error infinite, so the step is
    retried smaller)."""
    tab = TABLEAU
    _, jvp = jax.linearize(origin_field, z0)
    hg = h * tab.gamma
    precond = _preconditioner(chart, local, hg)

    def matvec(v):
        return v - hg * jvp(v)

    atol = KRYLOV_TOL * sc * math.sqrt(z0.shape[0])
    a, c, stages = jnp.asarray(tab.a), jnp.asarray(tab.c), len(tab.m)
    needs_field = jnp.asarray([i == 0 or not np.array_equal(tab.a[i], tab.a[i - 1]) for i in range(stages)])

    def stage(i, carry):
        us, aus, f, ok = carry
        f = jax.lax.cond(needs_field[i], lambda _: field(z0 + a[i] @ us), lambda _: f, None)
        rhs = hg * f + tab.gamma * (c[i] @ us)
        # first guess: the least-squares combination of the earlier stage solutions (their products A u_j are
        # known from their residuals), then GMRES on the rest, right-preconditioned (x = x₀ + M⁻¹y, GMRES on
        # y ↦ A M⁻¹ y) so that its residual is the true one
        earlier = jnp.where((jnp.arange(stages) < i)[:, None], aus, 0.0)
        coef = jnp.linalg.lstsq(earlier.T, rhs, rcond=1e-10)[0]
        x0, r0 = coef @ us, rhs - coef @ earlier
        y, _ = jax.scipy.sparse.linalg.gmres(lambda y: matvec(precond(y)), r0, r0, tol=0.0, atol=atol,
                                             restart=KRYLOV_RESTART, maxiter=KRYLOV_CYCLES,
                                             solve_method="incremental")  # fmt: skip
        u = x0 + precond(y)
        au = matvec(u)
        ok = ok & (error_norm((rhs - au) / sc) <= 2.0 * KRYLOV_TOL)
        return us.at[i].set(u), aus.at[i].set(au), f, ok

    zeros = jnp.zeros((stages, *z0.shape), z0.dtype)
    init = (zeros, zeros, jnp.zeros_like(z0), jnp.ones((), bool))
    us, _, _, ok = jax.lax.fori_loop(0, stages, stage, init)
    z1 = z0 + jnp.asarray(tab.m) @ us
    err = error_norm(scaled_error(chart, chart.split(z0)[2], jnp.asarray(tab.e) @ us) / sc)
    return z1, jnp.where(ok, err, jnp.inf)


def check(flow: Flow) -> str | None:
    """None when singular coordinates can integrate `flow`, else why not."""
    if not flow.end_to_end or flow.gradient is None:
        return f"singular coordinates integrate flow='end_to_end' only; got flow={flow.name!r}"
    try:
        check_singular_depths([flow.depth])
    except ValueError as err:
        return str(err)
    return None


def initial_coordinates(flow: Flow, w0: np.ndarray, arrays: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U, ln σ, V) of a batch of end-to-end matrices (B, m, n), frames resolved inside clusters of equal σ.

    Raises
    ------
    ValueError : when some W(0) is rank-deficient (ln σ = −∞; the flow never leaves a zero singular value).
    """
    grad = jax.jit(flow.gradient)
    us, ells, vs = [], [], []
    for w in np.asarray(w0, dtype=np.float64):
        u, s, vt = np.linalg.svd(w, full_matrices=True)
        if not np.all(s > 1e-300):
            raise refused(
                f"method='rosenbrock' on flow='end_to_end' needs W(0) of full rank (ln σ coordinates); "
                f"got singular values down to {s.min():.3g}; use init 'balanced' or 'decoupled' with scale > 0"
            )
        v = vt.T
        g = u.T @ np.asarray(grad(w, arrays)) @ v
        start = 0
        for k in range(1, len(s) + 1):  # clusters of consecutive (sorted) σ within TIE_RTOL
            if k == len(s) or s[k] < s[start] * (1 - TIE_RTOL):
                idx = np.arange(start, k)
                if len(idx) > 1:
                    block = g[np.ix_(idx, idx)]
                    _, rot = np.linalg.eigh(0.5 * (block + block.T))
                    u[:, idx], v[:, idx] = u[:, idx] @ rot, v[:, idx] @ rot
                start = k
        us.append(u)
        ells.append(np.log(s))
        vs.append(v)
    return np.stack(us), np.stack(ells), np.stack(vs)


def make_batch(flow: Flow) -> tuple[Callable, Callable, Callable]:
    """Jitted, vmapped (start, window, final) functions for a batch of (U, ln σ, V) (see `initial_coordinates`):
    Rosenbrock steps in singular coordinates, with the same window contract as `rosenbrock.make_batch` and the
    saved singular values taken from ln σ (exact down to any size) instead of an SVD of W; ``final`` gives W.

    One set serves every depth of a problem class: ``start`` reads the depth as ``c["depth_power"]`` = 2/N (0 at
    depth ∞, see `depth_power`), a traced number that the state carries on; `initial` supplies it.
    """
    reason = check(flow)
    if reason:
        raise refused(reason)
    return compiled(SingularRosenbrock(flow.problem_cls))


def initial(flow: Flow, w0: Any, arrays: dict, c: dict) -> tuple[tuple, dict]:
    """What `make_batch`'s start takes for end-to-end matrices w0 (B, m, n) under `flow`: their coordinates
    (see `initial_coordinates`) and the controls with the flow's depth as ``c["depth_power"]``."""
    coords = initial_coordinates(flow, np.asarray(w0), arrays)
    return coords, {**c, "depth_power": np.float64(depth_power(flow.depth))}


def _product(u: Any, v: Any, ell: Any) -> Any:
    return (u[:, : ell.shape[0]] * jnp.exp(ell)) @ v[:, : ell.shape[0]].T


@dataclass(frozen=True)
class SingularRosenbrock(SteppingMethod):
    """The singular-coordinate path as a `SteppingMethod`: one Rosenbrock attempt in a chart (U, ln σ, V) around
    the current frames. One instance serves every depth of a problem class (the depth is ``st["depth_power"]``)."""

    one_cell_at_a_time: ClassVar[bool] = True  # no lockstep (see `SteppingMethod`)

    problem_cls: type
    dense: bool = False  # dense LU stage solves above DENSE_MAX_UNKNOWNS too: the switch `variant` makes

    def krylov(self, q: int) -> bool:
        """Whether the stage systems of a state of `q` unknowns go through GMRES."""
        return q > DENSE_MAX_UNKNOWNS and not self.dense

    def variant(self, st: dict) -> SingularRosenbrock:
        """The dense-LU variant once a cell of the batch (a batch of one under `integrate`) has switched
        (`end_window`); itself otherwise."""
        return replace(self, dense=True) if not self.dense and bool(np.any(jax.device_get(st["s"].dense))) else self

    def end_window(self, s0: _State, s: _State, st: dict, arrays: dict, c: dict) -> _State:
        """Record the window's change of the coordinates (ln σ, U, V: the driver's creep rule), and switch to dense
        LU stage solves when GMRES fell short on more than `SWITCH_SHORT_FRACTION` of the window's attempts (at
        least `SWITCH_MIN_ATTEMPTS` of them) and the state has at most `SWITCH_MAX_UNKNOWNS` unknowns. The switch is
        kept in the state: it holds for the rest of the run, a resumed one included."""
        change = jnp.maximum(jnp.max(jnp.abs(s.ell - s0.ell)), jnp.maximum(jnp.max(jnp.abs(s.u - s0.u)),
                                                                           jnp.max(jnp.abs(s.v - s0.v))))  # fmt: skip
        s = s._replace(change=change.astype(s.change.dtype))
        q = unknowns(s.u.shape[0], s.v.shape[0])
        if not self.krylov(q) or q > SWITCH_MAX_UNKNOWNS:
            return s
        attempts, short = s.krylov_attempts - s0.krylov_attempts, s.krylov_short - s0.krylov_short
        weak = (attempts >= SWITCH_MIN_ATTEMPTS) & (short > SWITCH_SHORT_FRACTION * attempts)
        return s._replace(dense=s.dense | weak)

    def _parts(self, s: _State, arrays: dict) -> tuple:
        chart = _Chart(s.u.shape[0], s.v.shape[0], s.ell.shape[0])

        def gradient(w):
            return self.problem_cls.grad_fn(w, arrays)

        return chart, gradient

    def _loss(self, w: Any, arrays: dict) -> Any:
        return self.problem_cls.loss_fn(w, arrays)

    def start(self, y0: tuple, arrays: dict, c: dict) -> dict:
        u0, ell0, v0 = y0
        zero, izero = jnp.zeros((), ell0.dtype), jnp.zeros((), jnp.int64)
        state = _State(u0, v0, ell0, zero, zero, zero, izero, izero, izero, izero, izero, izero, jnp.zeros((), bool),
                       zero)  # fmt: skip
        chart, gradient = self._parts(state, arrays)
        power = c["depth_power"]
        qa, qb = chart.sizes
        sc = c["atol"] + c["rtol"]
        z0 = jnp.concatenate([jnp.zeros(qa + qb, ell0.dtype), ell0])
        e0 = gradient(jnp.zeros((chart.m, chart.n), ell0.dtype))  # ∇ℓ(0): G's rounding level (`_rounding_size`)
        f0 = chart.field(z0, u0, v0, gradient, power, e0)
        h0 = jnp.minimum(0.01 / jnp.maximum(error_norm(f0 / sc), 1e-300), c["t1"])
        p = mean_hessian(self.problem_cls, arrays, (u0.shape[0], v0.shape[0]))
        return {"s": state._replace(h=h0), "loss0": self._loss(_product(u0, v0, ell0), arrays), "p": p,
                "depth_power": power, "e0": e0}  # fmt: skip

    def step(self, s: _State, st: dict, target: Any, arrays: dict, c: dict) -> _State:
        chart, gradient = self._parts(s, arrays)
        power, qa, qb = st["depth_power"], *chart.sizes
        sc = c["atol"] + c["rtol"]
        rem = (target - s.t_hi) - s.t_lo
        h = jnp.minimum(s.h, rem)
        land = s.h >= rem

        e0 = st["e0"]

        def field(z):
            return chart.field(z, s.u, s.v, gradient, power, e0)

        def origin_field(z):
            return chart.field(z, s.u, s.v, gradient, power, e0, at_origin=True)

        z0 = jnp.concatenate([jnp.zeros(qa + qb, s.ell.dtype), s.ell])
        krylov = self.krylov(z0.shape[0])
        if krylov:
            local = local_jacobian(chart, s.u, s.v, s.ell, gradient, power, st["p"])
            z1, err = _attempt_krylov(field, z0, h, sc, origin_field, chart, local)
        else:
            z1, err = _attempt(field, z0, h, sc, origin_field, chart)
        u1, v1, ell1 = chart.frames(s.u, s.v, z1)
        u1, v1 = _reorthonormalise(u1), _reorthonormalise(v1)
        finite = jnp.isfinite(err) & jnp.all(jnp.isfinite(z1))
        accept = finite & (err <= 1.0)
        fac = step_factor(err, finite, TABLEAU.order, s.fails)
        h_next = jnp.where(accept & land, jnp.maximum(h * fac, s.h), h * fac)
        loss1 = self._loss(_product(u1, v1, ell1), arrays)
        t_hi, t_lo, fails, status = settle(accept, loss1, st["loss0"], arrays["loss_min"], c, s, h, land, target)

        def pick(new, old):
            return jnp.where(accept, new, old)

        return _State(
            pick(u1, s.u), pick(v1, s.v), pick(ell1, s.ell), pick(t_hi, s.t_hi), pick(t_lo, s.t_lo), h_next,
            s.steps + accept, s.rejected + (1 - accept), fails, status.astype(s.status.dtype),
            s.krylov_attempts + krylov, s.krylov_short + (krylov & (err == jnp.inf)), s.dense, s.change,
        )  # fmt: skip

    def short(self, s: _State, target: Any) -> Any:
        return (target - s.t_hi) - s.t_lo > 0

    def targets(self, ts: Any, st: dict) -> Any:
        return jnp.asarray(ts, st["s"].ell.dtype)

    def observe(self, s: _State, st: dict, arrays: dict) -> dict:
        """The observables of the end-to-end flow (`dlnode.flows.flow`), from the coordinates: σ from ln σ (exact
        down to any size), and the rate −dℓ/dτ = Σ_ik (a_ik/N) G_ik² without an SVD of W."""
        chart, gradient = self._parts(s, arrays)
        w = _product(s.u, s.v, s.ell)
        e = gradient(w)
        g = s.u.T @ e @ s.v
        rate = jnp.sum(operator_weights(s.ell, chart.m, chart.n, st["depth_power"]) * g * g)
        sigma = jnp.sort(jnp.exp(s.ell))[::-1]
        return end_to_end_observables(w, e, self.problem_cls, arrays, sigma, rate)

    def final(self, st: dict) -> Any:
        s = st["s"]
        return _product(s.u, s.v, s.ell)


def summary(st: dict) -> dict[str, np.ndarray]:
    """Host arrays t, steps, rejected, status of a window state (the layer path's too), and the window's change of
    the coordinates for a singular-path state (the driver's creep rule)."""
    s = jax.device_get(st["s"])
    out = {"t": s.t_hi + s.t_lo, "t_hi": s.t_hi, "t_lo": s.t_lo, "steps": s.steps, "rejected": s.rejected,
           "status": s.status}  # fmt: skip
    return dict(out, change=s.change) if isinstance(s, _State) else out


def check_singular_depths(depths: Iterable[float]) -> None:
    """The singular-coordinate path (``rosenbrock`` on ``end_to_end``) integrates ln σ: depth ≥ 2 (or ∞) only."""
    depths = list(depths)
    if any(d < 2 for d in depths):
        fail(
            "depth",
            "must be >= 2 for method='rosenbrock' on flow='end_to_end' (it integrates ln σ, and σ may "
            "cross 0 at depth 1)",
            shown(f"depths {[f'{d:g}' for d in depths]}"),
            "use tsit5 for depth 1",
        )
