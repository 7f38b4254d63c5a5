"""The stiff path: a linearly implicit Rosenbrock–Wanner method with matrix-free conjugate-gradient stage solves.

Small-initialisation gradient flows of deep linear networks are stiff after the first escape: learned modes relax
at the rate λ_max(∇²L) while the next plateau creeps for a time ~ scale^{−(N−2)} (docs/math.md §3–4). An explicit
step is capped at ~2.6/λ_max; a linearly implicit step is not. The Jacobian of a gradient flow is J = −∇²L,
symmetric, so every stage system (I + hγ∇²L) u = b is solved by conjugate gradients on Hessian-vector products
(the tangent of ``jax.linearize`` of the field), and the n × n Jacobian is never formed.

Method ``rosenbrock``: RODAS4 (Hairer & Wanner 1996), a 6-stage Rosenbrock method of order 4 with an embedded
order-3 estimate, L-stable and stiffly accurate (R(∞) = 0, and the estimate vanishes on infinitely stiff
components); 6 field evaluations (the one at y included) and 6 CG solves per step, each CG started from the Galerkin
projection on the earlier stage solutions. While accuracy, not stability, limits the step (h·λ_max ≤ `SWITCH`),
steps are explicit (Dormand–Prince 5(4)), as in LSODA. Time is carried as a compensated two-float sum (t_hi, t_lo),
never fed to the (autonomous) field, so plateaus of 10¹⁸ time units still resolve steps of order one; steps land
exactly on the save times; step growth is capped per step and by h·γ·λ_max ≤ `STIFF_CEILING` (a larger h·λ_max loses
the slow subspace to round-off).

Why RODAS4: the per-layer default rtol (2e-7) is tight, and at a tight tolerance an order-4 method takes far fewer
steps than an order-3 one. Measured against RODAS3 (Sandu et al. 1997; 4 stages, order 3 with an order-2
estimate, also L-stable), cold, one process per case, on the 33 per-layer cases of the generated gauntlet that
`auto` sends to this path (`benchmarks/gauntlet.py`): on the 25 that converge, 0.42–1.0 of the steps (median
0.64) and 229 s in all against 287 s (median time ratio 0.88; the slowest three 49.8 → 35.5 s, 60.0 → 42.3 s and
20.9 → 13.7 s; at worst 3.2 → 4.1 s, where the compile varied); against references at rtol 1e-10, errors of
1.1e-8 to 1.1e-5 on 13 of them (the same to two digits as RODAS3's where those were measured: cases 5, 8, 19, 57);
the 8 cases that stop as `unresolved` take the same steps at 1.5× their cost (15.7 → 24.4 s at worst). The
balancedness drift is about twice RODAS3's (at most 5.6e-8 of max‖W_j‖² on the 25), and where the stiffness ceiling,
not accuracy, sets the steps (case 9: RODAS4's γ = 0.25 doubles the ceiling's h, half the steps) 3.5e-6 against
1.27e-6.
Shampine's order-4 method (`SHAMPINE`, kept for the singular path of `dlnode.solvers.singular`) keeps a third of a
stiff deviation per step (R(∞) = 1/3) and its estimate counts two thirds of it as error; on the Arora et al.
completion (rtol 1e-4 / 1e-6 / 1e-8) it took 7.3 / 14.2 / 42.3 s against RODAS3's 6.1 / 13.4 / 31.1 s.

References
----------
Hairer, Wanner (1996), *Solving ODEs II*, §IV.7 (the transformed stage equations and order conditions) and the
coefficients of RODAS (their code rodas.f, METH = 1); Sandu, Verwer, Blom, Spee, Carmichael, Potra (1997),
"Benchmarking stiff ODE solvers for atmospheric chemistry problems II: Rosenbrock solvers", Atmos. Environ. 31(20),
3459–3472 (RODAS3, the method before);
Shampine (1982), "Implementation of Rosenbrock methods", ACM TOMS 8(2), 93–113; Kaps, Rentrop (1979),
"Generalized Runge–Kutta methods of order four with stepsize control for stiff ODEs", Numer. Math. 33, 55–68.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from dlnode.errors import refused
from dlnode.flows.flow import Flow, pack_layers
from dlnode.flows.hessian import power_iteration
from dlnode.solvers.core import RUNNING, Status, stop_flags
from dlnode.solvers.krylov import cg
from dlnode.solvers.resolution import roundoff_scale, unresolved
from dlnode.solvers.stepping import BATCH_AXIS, SteppingMethod, compiled, lanczos_start, warm_observed
from dlnode.solvers.tableaus import DOPRI5, RODAS4, SHAMPINE, ExplicitTableau, Tableau

__all__ = [
    "RODAS4", "SHAMPINE", "TABLEAU", "Tableau", "error_norm", "make_batch", "probe", "settle", "step_factor",
]  # fmt: skip


TABLEAU = RODAS4

SAFETY, FAC_MIN, FAC_MAX = 0.9, 0.2, 5.0  # step controller: h ← h·clip(0.9 err^{−1/(order+1)}, 0.2, 5)
# Switching (after LSODA, Petzold 1983): an explicit DOPRI5 step (7 field evaluations and one power step) costs
# about a twentieth of a RODAS3 step with its CG solves (a RODAS4 step, by its stages, about a thirtieth), and its
# stability bound is h·λ_max ≈ 3.3. Steps are explicit, at h ≤ EXPLICIT_STABLE/λ_max, while every run of the batch
# has an accuracy step h·λ_max ≤ SWITCH; a capped explicit step lets the accuracy step grow by at most
# CAPPED_GROWTH. A run that took Rosenbrock steps goes back only below SWITCH_BACK (hysteresis: the first Rosenbrock
# attempt is often rejected, and without it the solver would alternate). Rosenbrock pays only where accuracy allows
# h·λ_max of some tens (measured with RODAS3 on the Arora completion: its cost per unit time falls below the
# explicit one near h·λ_max ≈ 30–50; thresholds of 20/7 and 50/20 instead of 30/10 gained nothing beyond noise).
# With RODAS4, on 13 per-layer gauntlet cases (cold, one process each): 60/20 took 1.11× the time of 30/10 (median),
# 20/7 1.02×.
EXPLICIT_STABLE, SWITCH, SWITCH_BACK, CAPPED_GROWTH = 3.0, 30.0, 10.0, 1.5
STIFF_CEILING = 1e8  # h·γ·λ_max cap: CG and the update keep ~ε·1e8 relative accuracy in the slow subspace
# stage residual, in units of the local error tolerance atol + rtol·|y|. Measured on the Arora completion (RODAS3,
# rtol 1e-4 / 1e-6): 1e-3 → 3e-2 cuts the CG work ~35 % and moves the error after the first escape by 1 % / 9 %
# (1e-1: 4 % / 44 %); the step counts do not change. With RODAS4, 1e-1 against 3e-2 (one cold run each): run time
# 0.87–0.93 on the defaults' d10, d50, c50 and gauntlet cases 44 and 48 (case 30: 63 s against 76 s), but 2–9 % more
# steps, the balancedness drift 2–6× larger and c50's error against rtol 1e-10 1.8e-5 instead of 2.9e-6 (d10's and
# d50's the same): kept at 3e-2.
CG_TOL = 3e-2
BASIS_DROP = 1e-12  # a stage solution whose A-orthogonal part has relative A-norm² below this adds no direction
CG_MAX_ITER = 400  # a solve that needs more is treated as a failed step (retried with h/5)
MAX_REJECTS = 40  # consecutive rejections before status −3
POWER_START = 10  # power iterations for the initial λ_max estimate (then one per step attempt)
STIFF_RATIO = 100.0  # probe: stiff when λ_max > STIFF_RATIO · ‖f‖/‖y‖
PROBE_ITERATIONS = 30


class _State(NamedTuple):
    x: Any  # flat state
    t_hi: Any  # time = t_hi + t_lo (compensated sum)
    t_lo: Any
    h: Any  # proposed next step
    v: Any  # power-iteration vector for λ_max(∇²L)
    lam: Any
    steps: Any
    rejected: Any
    fails: Any  # consecutive rejections
    status: Any
    basis: Any  # the last attempt's stage basis (A-orthonormal rows, their A-products, its h): CG's first guess
    explicit: Any  # accepted explicit steps (of `steps`)
    implicit: Any  # the last step was a Rosenbrock step (hysteresis of the switch)
    start: Any  # the next save's Lanczos start (`stepping.lanczos_start`)


def _two_sum_add(hi: Any, lo: Any, h: Any) -> tuple[Any, Any]:
    """(hi, lo) + h as a renormalised two-float sum (Knuth's TwoSum): no step is lost to t + h == t."""
    s = hi + h
    bp = s - hi
    lo = lo + ((hi - (s - bp)) + (h - bp))
    new_hi = s + lo
    return new_hi, lo - (new_hi - s)


def error_norm(v: Any) -> Any:
    """Root mean square of a scaled error vector: the norm every step of both stiff paths is accepted by."""
    return jnp.sqrt(jnp.mean(v * v))


def _a_orthonormal(u: Any, au: Any, basis: Any, abasis: Any) -> tuple[Any, Any]:
    """u made A-orthogonal to the rows of `basis` (A-orthonormal, zero rows unused) and A-normalised, with A u;
    zero when u lies (to round-off) in their span. Classical Gram–Schmidt, twice (Giraud et al. 2005)."""
    p, ap = u, au
    for _ in range(2):
        coef = abasis @ p
        p, ap = p - coef @ basis, ap - coef @ abasis
    norm2 = jnp.vdot(p, ap)
    keep = norm2 > BASIS_DROP * jnp.maximum(jnp.vdot(u, au), jnp.finfo(u.dtype).tiny)
    scale = jnp.where(keep, jax.lax.rsqrt(jnp.where(keep, norm2, 1.0)), 0.0)
    return p * scale, ap * scale


def _attempt(field: Callable, x: Any, h: Any, sc: Any, v: Any, prev: tuple, tab: Tableau = TABLEAU) -> tuple:
    """One Rosenbrock step of size h from x: (y₁, error norm, all solves converged, λ estimate, next v, CG count,
    the step's stage basis).

    The stage matrix A = I − hγJ with J = ∂f/∂x applied by the linearised field (a Hessian-vector product); one
    more product advances the power iteration that tracks λ_max(−J) for the step ceiling. Every stage solve starts
    from the Galerkin projection of its right-hand side on the earlier stage solutions, kept A-orthonormal with
    their products A u (known from the final CG residual, so free); the first stage starts from the previous
    attempt's basis, whose A-products are carried over to the new h and checked by one product.
    """
    f0, jvp = jax.linearize(field, x)
    hg = h * tab.gamma

    def matvec(p):
        return p - hg * jvp(p)

    def small(r):
        return error_norm(r / sc) <= CG_TOL

    a, c, stages = jnp.asarray(tab.a), jnp.asarray(tab.c), len(tab.m)
    reuse = [i > 0 and np.array_equal(tab.a[i], tab.a[i - 1]) for i in range(stages)]
    needs_field = jnp.asarray([i > 0 and not reuse[i] for i in range(stages)])

    def first_guess(b):
        """x₀ from the previous basis P (A_old-orthonormal): with A_new ≈ I + ρ(A_old − I), ρ = h/h_old, solve the
        small Galerkin system, then take x₀ only if its true residual (one product) is below ‖b‖."""
        pb, apb, h_old = prev
        rho = h / jnp.maximum(h_old, jnp.finfo(h.dtype).tiny)
        used = jnp.sum(pb * pb, axis=1) > 0
        gram = (1 - rho) * (pb @ pb.T) + rho * jnp.eye(stages, dtype=x.dtype)
        gram = jnp.where(used[:, None] & used[None, :], gram, jnp.eye(stages, dtype=x.dtype))
        coef = jnp.where(used, jnp.linalg.solve(gram, pb @ b), 0.0)
        x0 = coef @ pb
        r0 = b - matvec(x0)
        good = jnp.all(jnp.isfinite(r0)) & (jnp.vdot(r0, r0) < jnp.vdot(b, b))
        return jnp.where(good, x0, 0.0), jnp.where(good, r0, b)

    def stage(i, carry):  # one traced stage body (a small graph, so a fast compile), looped over i
        us, f_prev, pb, apb, ok, iters = carry
        xi = x + a[i] @ us
        fi = jax.lax.cond(needs_field[i], field, lambda _: jnp.where(i == 0, f0, f_prev), xi)
        b = hg * (fi + (c[i] / h) @ us)
        coef = pb @ b
        x0, r0 = jax.lax.cond(i == 0, first_guess, lambda b: (coef @ pb, b - coef @ apb), b)
        u, r, k, ok_i = cg(matvec, b, small, CG_MAX_ITER, x0, r0)
        p, ap = _a_orthonormal(u, b - r, pb, apb)
        return us.at[i].set(u), fi, pb.at[i].set(p), apb.at[i].set(ap), ok & ok_i, iters + k

    zeros = jnp.zeros((stages, *x.shape), x.dtype)
    init = (zeros, f0, zeros, zeros, jnp.ones((), bool), jnp.zeros((), jnp.int32))
    us, _, pb, apb, ok, iters = jax.lax.fori_loop(0, stages, stage, init)
    x1 = x + jnp.asarray(tab.m) @ us
    err = error_norm((jnp.asarray(tab.e) @ us) / sc)
    hv = -jvp(v)
    lam = jnp.abs(jnp.vdot(v, hv))
    v = hv / jnp.maximum(jnp.linalg.norm(hv), jnp.finfo(hv.dtype).tiny)
    return x1, err, ok, lam, v, iters, (pb, apb, h)


def step_factor(err: Any, ok: Any, order: Any, fails: Any) -> Any:
    """h_next/h from the error norm of an embedded estimate of order `order`: 0.9 err^{−1/(order+1)} within
    [FAC_MIN, FAC_MAX]; FAC_MIN after a failed attempt, no growth right after a rejection."""
    fac = jnp.clip(SAFETY * jnp.where(err > 0, err, 1e-10) ** (-1.0 / (order + 1)), FAC_MIN, FAC_MAX)
    fac = jnp.where(ok & jnp.isfinite(err), fac, FAC_MIN)
    return jnp.where(fails > 0, jnp.minimum(fac, 1.0), fac)


def settle(
    accept: Any, loss1: Any, loss0: Any, loss_min: Any, c: dict, s: Any, h: Any, land: Any, target: Any
) -> tuple[Any, Any, Any, Any]:
    """(t_hi, t_lo, fails, status) after an attempt of size h from state `s` (fields t_hi, t_lo, fails): the
    compensated time (exactly `target` on landing), the rejection count and the stop rule of `dlnode.solvers.core`."""
    t_hi, t_lo = _two_sum_add(s.t_hi, s.t_lo, h)
    t_hi, t_lo = jnp.where(land, target, t_hi), jnp.where(land, 0.0, t_lo)
    converged, diverged = stop_flags(loss1, loss0, loss_min, c)
    fails = jnp.where(accept, 0, s.fails + 1)
    rejected = Status.where(fails > MAX_REJECTS, Status.SOLVER_FAILURE, jnp.int64(RUNNING))
    status = jnp.where(accept, Status.of_stop(converged, diverged), rejected)
    return t_hi, t_lo, fails, status


def _explicit_attempt(field: Callable, x: Any, h: Any, sc: Any, v: Any, tab: ExplicitTableau = DOPRI5) -> tuple:
    """One explicit step of size h from x: (y₁, error norm, λ estimate, next v); the power step shares the
    linearisation that gives the first stage."""
    f0, jvp = jax.linearize(field, x)
    a = jnp.asarray(tab.a)

    def stage(i, ks):
        return ks.at[i].set(field(x + h * (a[i] @ ks)))

    ks = jax.lax.fori_loop(1, len(tab.b), stage, jnp.zeros((len(tab.b), *x.shape), x.dtype).at[0].set(f0))
    x1 = x + h * (jnp.asarray(tab.b) @ ks)
    err = error_norm(h * (jnp.asarray(tab.e) @ ks) / sc)
    hv = -jvp(v)
    lam = jnp.abs(jnp.vdot(v, hv))
    return x1, err, lam, hv / jnp.maximum(jnp.linalg.norm(hv), jnp.finfo(hv.dtype).tiny)


def _step(
    field: Callable, loss: Callable, loss0: Any, loss_min: Any, c: dict, target: Any, s: _State,
    batch_max: Callable = lambda v: v,
) -> _State:  # fmt: skip
    """Attempt one step towards `target` (explicit or Rosenbrock, see `SWITCH`), accept or reject it, and propose
    the next step size. `batch_max` reduces over the vmapped batch, so all its runs take the same kind of step (a batch
    of one under `integrate`: `LayerRosenbrock.one_cell_at_a_time`)."""
    rem = (target - s.t_hi) - s.t_lo
    lam_safe = jnp.maximum(s.lam, 1e-300)
    wants_implicit = s.h * s.lam > jnp.where(s.implicit, SWITCH_BACK, SWITCH)
    explicit = batch_max(jnp.where((s.status == RUNNING) & (rem > 0) & wants_implicit, 1.0, 0.0)) == 0
    h_acc = jnp.minimum(s.h, rem)  # the accuracy step, landing on the target when it reaches it
    h = jnp.where(explicit, jnp.minimum(h_acc, EXPLICIT_STABLE / lam_safe), h_acc)
    capped = h < h_acc
    land = (s.h >= rem) & ~capped
    sc = c["atol"] + c["rtol"] * jnp.abs(s.x)

    def explicit_branch(_):
        x1, err, lam, v = _explicit_attempt(field, s.x, h, sc, s.v)
        return x1, err, jnp.ones((), bool), lam, v, s.basis

    def rosenbrock_branch(_):
        x1, err, ok, lam, v, _, basis = _attempt(field, s.x, h, sc, s.v, s.basis)
        return x1, err, ok, lam, v, basis

    x1, err, ok, lam, v, basis = jax.lax.cond(explicit, explicit_branch, rosenbrock_branch, None)
    accept = ok & jnp.isfinite(err) & (err <= 1.0) & jnp.all(jnp.isfinite(x1))
    order = jnp.where(explicit, DOPRI5.order, TABLEAU.order)
    fac = step_factor(err, ok, order, s.fails)
    # a stability-capped explicit step says little about the accuracy step: let that grow slowly
    grown = jnp.where(capped, jnp.where(fac >= 1, h_acc * jnp.minimum(fac, CAPPED_GROWTH), h * fac), h * fac)
    h_next = jnp.where(accept & land, jnp.maximum(grown, s.h), grown)
    h_next = jnp.minimum(h_next, STIFF_CEILING / (TABLEAU.gamma * jnp.maximum(lam, 1e-300)))
    t_hi, t_lo, fails, status = settle(accept, loss(x1), loss0, loss_min, c, s, h, land, target)

    def pick(new, old):
        return jnp.where(accept, new, old)

    return _State(
        pick(x1, s.x), pick(t_hi, s.t_hi), pick(t_lo, s.t_lo), h_next, v, lam,
        s.steps + accept, s.rejected + (1 - accept), fails, status.astype(s.status.dtype), basis,
        s.explicit + (accept & explicit), jnp.where(s.status == RUNNING, ~explicit, s.implicit), s.start,
    )  # fmt: skip


def _initial_state(field: Callable, x0: Any, c: dict, start: Any) -> _State:
    """h₀ = 0.01‖y₀‖/‖f(y₀)‖ in the error norm (Hairer, Nørsett, Wanner I, §II.4), capped at t1; λ₀ by power steps."""
    f0, jvp = jax.linearize(field, x0)
    sc = c["atol"] + c["rtol"] * jnp.abs(x0)
    d0, d1 = error_norm(x0 / sc), error_norm(f0 / sc)
    h0 = jnp.where((d0 > 1e-5) & (d1 > 1e-5), 0.01 * d0 / jnp.maximum(d1, 1e-300), 1e-6)
    v0 = jax.random.normal(jax.random.PRNGKey(0), x0.shape, x0.dtype)
    lam, v = power_iteration(lambda p: -jvp(p), v0, POWER_START)
    lam = jnp.abs(lam)  # the spectral radius of −J = ∇²L
    h0 = jnp.minimum(jnp.minimum(h0, c["t1"]), STIFF_CEILING / (TABLEAU.gamma * jnp.maximum(lam, 1e-300)))
    zero, izero = jnp.zeros((), x0.dtype), jnp.zeros((), jnp.int64)
    basis = (jnp.zeros((len(TABLEAU.m), *x0.shape), x0.dtype),) * 2 + (h0,)
    return _State(x0, zero, zero, h0, v, lam, izero, izero, izero, izero, basis, izero, jnp.zeros((), bool), start)


def _check_flow(flow: Flow) -> str | None:
    """None when the CG path can integrate `flow`, else why not."""
    if not flow.symmetric_jacobian:
        return (
            f"method='rosenbrock' on layers needs a symmetric Jacobian (a gradient flow of the layers); "
            f"got flow={flow.name!r}"
        )
    return None


def make_batch(flow: Flow, switching: bool = True) -> tuple[Callable, Callable, Callable]:
    """Jitted, vmapped (start, window, final) functions of the stiff layer path for a batch of initial states.

    ``start(y0, arrays, c) -> state``; ``window(state, arrays, ts, c) -> (observables at ts, observables at the
    state reached, state)``: Rosenbrock (`TABLEAU`) steps, and explicit (`DOPRI5`) steps while the batch is not
    stiff (`SWITCH`), landing on every save time, until each cell is done, reached ts[-1], or spent
    ``c["window_steps"]`` attempts in the window (or ``c["max_steps"]`` in all); ``final(state) -> layers``.
    `switching=False` takes Rosenbrock steps only. The state counts accepted explicit steps (`summary`).

    Raises
    ------
    ValueError : for a flow without a symmetric Jacobian (the end-to-end flow).
    """
    reason = _check_flow(flow)
    if reason:
        raise refused(reason)
    return compiled(LayerRosenbrock(flow, switching))


@dataclass(frozen=True)
class LayerRosenbrock(SteppingMethod):
    """The stiff layer path as a `SteppingMethod`: one attempt is `_step` on the flat layers."""

    one_cell_at_a_time: ClassVar[bool] = True  # no lockstep (see `SteppingMethod`)

    flow: Flow
    switching: bool = True

    def _closures(self, st: dict) -> tuple[Callable, Callable, Callable]:
        y_like, args = st["y_like"], st["args"]
        _, unravel = ravel_pytree(y_like)

        def field(x):
            return ravel_pytree(self.flow.field(0.0, unravel(x), args))[0]

        def loss(x):
            return self.flow.loss(unravel(x), args)

        return field, loss, unravel

    def start(self, y0: Any, arrays: dict, c: dict) -> dict:
        st = {"args": self.flow.prepare(y0, arrays, c), "y_like": y0}
        field, loss, _ = self._closures(st)
        x0 = ravel_pytree(y0)[0]
        return {"s": _initial_state(field, x0, c, lanczos_start(self.flow, x0)), "loss0": loss(x0), **st}

    def step(self, s: _State, st: dict, target: Any, arrays: dict, c: dict) -> _State:
        field, loss, _ = self._closures(st)
        return _step(field, loss, st["loss0"], arrays["loss_min"], c, target, s, self._batch_max)

    def _batch_max(self, v: Any) -> Any:
        return jax.lax.pmax(v, BATCH_AXIS) if self.switching else jnp.ones_like(v)

    def short(self, s: _State, target: Any) -> Any:
        return (target - s.t_hi) - s.t_lo > 0

    def targets(self, ts: Any, st: dict) -> Any:
        return jnp.asarray(ts, st["s"].x.dtype)

    def observe(self, s: _State, st: dict, arrays: dict) -> dict:
        return self.flow.observe(self._closures(st)[2](s.x), st["args"])

    def observed(self, s: _State, st: dict, arrays: dict) -> tuple[_State, dict]:
        return warm_observed(self.flow, self._closures(st)[2](s.x), st["args"], s)

    def end_window(self, s0: _State, s: _State, st: dict, arrays: dict, c: dict) -> _State:
        """A cell whose weights move slower than the round-off of their field stops (see `resolution`)."""
        _, loss, unravel = self._closures(st)
        elapsed = (s.t_hi - s0.t_hi) + (s.t_lo - s0.t_lo)
        rho = roundoff_scale(self.flow, unravel(s.x), st["args"])
        status = unresolved(s.status, jnp.linalg.norm(s.x - s0.x), elapsed, s.steps - s0.steps, s.h * s.lam, rho,
                            loss(s.x), st["loss0"], arrays["loss_min"], c.get("loss_scale", 0.0))  # fmt: skip
        return s._replace(status=status)

    def final(self, st: dict) -> Any:
        return ravel_pytree(st["y_like"])[1](st["s"].x)


def summary(st: dict) -> dict[str, np.ndarray]:
    """Host arrays t, steps, rejected, status of a window state (explicit: accepted explicit steps)."""
    s = jax.device_get(st["s"])
    return {"t": s.t_hi + s.t_lo, "t_hi": s.t_hi, "t_lo": s.t_lo, "steps": s.steps, "rejected": s.rejected,
            "status": s.status, "explicit": s.explicit}  # fmt: skip


@cache
def _probe_numbers(flow: Flow) -> Callable:
    def numbers(y0: Any, args: dict) -> tuple[Any, Any]:
        x0, unravel = ravel_pytree(y0)
        f0, jvp = jax.linearize(lambda x: ravel_pytree(flow.field(0.0, unravel(x), args))[0], x0)
        v0 = jax.random.normal(jax.random.PRNGKey(0), x0.shape, x0.dtype)
        lam, _ = power_iteration(lambda p: -jvp(p), v0, PROBE_ITERATIONS)
        lam = jnp.abs(lam)
        return lam, jnp.linalg.norm(f0) / jnp.maximum(jnp.linalg.norm(x0), 1e-300)

    return jax.jit(numbers)


def probe(flow: Flow, y0: Any, arrays: dict, lr: float = math.nan) -> tuple[bool, str]:
    """Is the flow stiff at y0? Compare λ_max(∇²L) (power iteration on Hessian-vector products) with ‖f‖/‖y‖.

    An explicit step is stable for h ≲ 2.6/λ_max, while the state changes on the time scale ‖y‖/‖f‖; when
    λ_max·‖y‖/‖f‖ > `STIFF_RATIO` the stability cap, not accuracy, would set the explicit step.

    Parameters
    ----------
    flow : a per-layer `Flow`.
    y0 : one state (a tuple of layer matrices, no batch axis).
    arrays : the problem's arrays (`Problem.arrays()`).
    lr : the modified flow's η (ignored by ``layers``).

    Returns
    -------
    (stiff, reason): whether to take the stiff path, and a one-line reason with the numbers.
    """
    if not flow.symmetric_jacobian:
        raise refused(f"probe needs a per-layer flow (symmetric Jacobian −∇²L); got flow={flow.name!r}")
    if not isinstance(y0, (tuple, list)) or not y0 or any(np.ndim(w) != 2 for w in y0):
        raise refused("y0 must be a non-empty tuple of 2-d layer matrices (one state, no batch axis)")
    y0 = pack_layers(tuple(jnp.asarray(w, jnp.float64) for w in y0), batch=False)
    arrays = jax.tree_util.tree_map(jnp.asarray, arrays)
    args = flow.prepare(y0, arrays, {"lr": jnp.float64(lr)})
    lam, rate = (float(v) for v in _probe_numbers(flow)(y0, args))
    ratio = lam / max(rate, 1e-300)
    stiff = ratio > STIFF_RATIO
    verdict = "stiff: use 'rosenbrock'" if stiff else "not stiff: use an explicit method"
    return stiff, f"{verdict} (lambda_max {lam:.3g} vs growth rate |f|/|y| {rate:.3g}, ratio {ratio:.3g})"
