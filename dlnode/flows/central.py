"""The central flow of gradient descent with step η (Cohen, Damian, Talwalkar, Kolter, Lee 2024; docs/finite-step.md).

GD's time-averaged iterate w follows, on t = kη,

    dw/dt = −∇L(w) − ½ ∇_w⟨Σ, ∇²L(w)⟩,

where Σ ⪰ 0 is the covariance of GD's oscillation about w, supported on the Hessian's top eigenspace U (the k
tracked eigenvectors, X = UᵀΣU). On that space A = 2/η·I − UᵀHU ⪰ 0 must hold (no eigenvalue past 2/η), and Σ
is fixed by the complementarity condition X ⪰ 0, Ȧ-stabilised A ⪰ 0, ⟨X, ·⟩ = 0. dlnode solves the stabilised form

    X ⪰ 0,   C + B[X] ⪰ 0,   ⟨X, C + B[X]⟩ = 0,   C = A + τ a,  B = τ G,

a_ij = ⟨g_ij, ∇L⟩, G_{ij,kl} = ½⟨g_ij, g_kl⟩, g_ij = ∇_w(u_iᵀ ∇²L(w) u_j) (one third-derivative product each): the
tracked block of A then relaxes to the edge as Ȧ = −A/τ instead of overshooting (Baumgarte's stabilisation,
τ = `RELAX_STEPS`·η), and on the edge (A = 0) the condition is the paper's, Ȧ = 0 where X ≠ 0. It is the
minimiser of the convex ½⟨X, B[X]⟩ + ⟨C, X⟩ over X ⪰ 0: in closed form for k = 1, X = max(0, −C/B), else by
accelerated projected gradient (eigenvalue clipping). Below the edge X = 0 and the central flow is the gradient
flow. Saved beside the state: the top eigenvalues, the predicted oscillation size √tr X, the predicted
time-averaged loss L + ½⟨X, UᵀHU⟩ and the number of eigenvalues at the edge (the regime: 0 is gradient flow).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from dlnode.flows.hessian import hvp, top_eigenpairs

__all__ = ["RELAX_STEPS", "central_parts", "complementarity"]

RELAX_STEPS = 1.0  # τ = RELAX_STEPS·η: the tracked eigenvalues relax onto 2/η on the time scale of one GD step
PROJECTED_ITERATIONS = 1000  # at most this many accelerated projected-gradient iterations of the k ≥ 2 solve
PROJECTED_CHECK = 10  # ... whose fixed-point residual is checked every this many iterations
PROJECTED_RTOL = 1e-13  # ... and which stops once that residual is below this fraction of X's scale ‖C‖/‖B‖
ACTIVE_RTOL = 1e-9  # an eigenvalue of X above this fraction of tr X (and of the scale) counts as at the edge


def _psd_part(x: jax.Array) -> jax.Array:
    w, v = jnp.linalg.eigh(0.5 * (x + x.T))
    return (v * jnp.maximum(w, 0.0)) @ v.T


def complementarity(c: jax.Array, b: jax.Array) -> jax.Array:
    """X ⪰ 0 with C + B[X] ⪰ 0 and ⟨X, C + B[X]⟩ = 0, for symmetric C (k, k) and a positive semi-definite B
    (k, k, k, k), B[X]_ij = Σ_kl B_ijkl X_kl: the minimiser of ½⟨X, B[X]⟩ + ⟨C, X⟩ over X ⪰ 0.

    k = 1: X = max(0, −C/B) (0 where B = 0). k ≥ 2: FISTA with step 1/‖B‖ and projection onto the PSD cone, until
    its fixed-point residual is below `PROJECTED_RTOL`·‖C‖/‖B‖ (at most `PROJECTED_ITERATIONS`).
    """
    k = c.shape[0]
    if k == 1:
        bb = b.reshape(())
        return jnp.where(bb > 0, jnp.maximum(0.0, -c[0, 0] / jnp.where(bb > 0, bb, 1.0)), 0.0).reshape(1, 1)
    mat = b.reshape(k * k, k * k)
    mat = 0.5 * (mat + mat.T)
    step = 1.0 / jnp.maximum(jnp.linalg.eigvalsh(mat)[-1], jnp.finfo(c.dtype).tiny)

    def gradient_step(z):
        return z - step * ((mat @ z.reshape(-1)).reshape(k, k) + c)

    def iteration(_, carry):
        x, z, t = carry
        x_new = _psd_part(gradient_step(z))
        t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        return x_new, x_new + ((t - 1.0) / t_new) * (x_new - x), t_new

    # stopped on the projected-gradient fixed point ‖X − P(X − s∇f(X))‖ (zero exactly at the minimiser), not after a
    # fixed count: 70 to 170 iterations reached 1e-13 on the central flows measured, where 1000 every evaluation made a
    # k = 2 field evaluation cost several Lanczos solves; below the edge (X = 0, C ≻ 0) the first check stops it
    tol = PROJECTED_RTOL * jnp.linalg.norm(c) * step

    def block(carry):
        x, z, t, n, _ = carry
        x, z, t = jax.lax.fori_loop(0, PROJECTED_CHECK, iteration, (x, z, t))
        return x, z, t, n + PROJECTED_CHECK, jnp.linalg.norm(x - _psd_part(gradient_step(x)))

    def going(carry):
        return (carry[3] < PROJECTED_ITERATIONS) & (carry[4] > tol)

    zero = jnp.zeros_like(c)
    one = jnp.ones((), c.dtype)
    x, *_ = jax.lax.while_loop(
        going, block, (zero, zero, one, jnp.zeros((), jnp.int32), jnp.full((), jnp.inf, c.dtype))
    )
    return x


def central_parts(gradient: Callable[[Any], Any], y: Any, lr: Any, k: int, start: Any = None,
                  monitor: bool = False) -> dict[str, Any]:  # fmt: skip
    """What the central flow needs at y: the gradient, the field, the top-k eigenvalues θ, X and its summaries.

    `gradient(y)` is ∇L as a pytree of y's structure; `lr` the GD step η (traced); `start` warm-starts the Lanczos
    solve (`dlnode.flows.hessian.top_eigenpairs`; None: the fixed start vector), and ``"start"`` is the next one.
    `monitor`: the solve also finds the (k+1)-th eigenvalue, the largest one not tracked (``"untracked"``; NaN when
    the network has only k parameters): where it passes 2/η, the flow with k tracked no longer holds (a save's
    check, `dlnode.solvers.driver`; the field itself tracks k).
    """
    grads = gradient(y)
    n = ravel_pytree(y)[0].shape[0]
    solved = k + 1 if monitor and k < n else k
    theta, vectors, products = top_eigenpairs(gradient, y, solved, start)
    untracked = theta[k] if solved > k else jnp.full((), jnp.nan, theta.dtype)
    theta, start_next, vectors = theta[:k], sum(ravel_pytree(v)[0] for v in vectors), vectors[:k]
    g_flat, unravel = ravel_pytree(grads)
    flat = jnp.stack([ravel_pytree(v)[0] for v in vectors])  # (k, p)

    def curvature_gradient(u_i: Any, u_j: Any) -> Any:  # g_ij = ∇_w ⟨u_i, ∇²L(w) u_j⟩
        def along(w):
            return ravel_pytree(hvp(gradient, w, unravel(u_j)))[0] @ u_i

        return ravel_pytree(jax.grad(along)(y))[0]

    # the k(k+1)/2 pairs i ≤ j in one vmapped product: traced once, whatever k (one traced product per pair compiled
    # in 6 s at k = 1 and 17 s at k = 8, and for minutes at k = 40)
    upper_i, upper_j = np.triu_indices(k)
    g = jax.vmap(curvature_gradient)(flat[upper_i], flat[upper_j])  # (k(k+1)/2, p)
    pair = np.zeros((k, k), dtype=int)
    pair[upper_i, upper_j] = pair[upper_j, upper_i] = np.arange(len(upper_i))
    gram = g[pair]  # (k, k, p): g_ij = g_ji
    tau = RELAX_STEPS * lr
    edge = 2.0 / lr
    a = jnp.einsum("ijp,p->ij", gram, g_flat)
    c = jnp.diag(edge - theta) + tau * a
    b = tau * 0.5 * jnp.einsum("ijp,klp->ijkl", gram, gram)
    x = complementarity(c, b)
    correction = 0.5 * jnp.einsum("ij,ijp->p", x, gram)
    field = unravel(-(g_flat + correction))
    trace = jnp.trace(x)
    level = jnp.linalg.eigvalsh(0.5 * (x + x.T))
    active = jnp.sum(level > ACTIVE_RTOL * jnp.maximum(trace, jnp.finfo(x.dtype).tiny)) * (trace > 0)
    return {
        "gradient": grads,
        "field": field,
        "sharpness": theta,
        "covariance": x,
        "oscillation": jnp.sqrt(jnp.maximum(trace, 0.0)),
        "loss_shift": 0.5 * jnp.sum(x * jnp.diag(theta)),
        "regime": active.astype(theta.dtype),
        "products": products,
        "start": start_next,
        "untracked": untracked,
    }
