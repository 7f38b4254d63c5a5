"""Matrix-free linear algebra on flat float64 vectors for the stiff solver: conjugate gradients (power iteration
is `dlnode.flows.hessian.power_iteration`, shared with the sharpness bounds).

It acts through a matrix-vector product only, so the Hessian −J = ∇²L of a gradient flow enters as a
Hessian-vector product (one ``jax.linearize`` tangent of the field, about the cost of one gradient) and nothing
of size n² is ever formed.

References
----------
Hestenes, Stiefel (1952), "Methods of conjugate gradients for solving linear systems", J. Res. NBS 49(6).
Saad (2003), *Iterative Methods for Sparse Linear Systems*, 2nd ed., SIAM, §6.7 (CG).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["cg"]


def cg(
    matvec: Callable[[Any], Any], b: Any, small: Callable[[Any], Any], max_iter: int, x0: Any = None, r0: Any = None
) -> tuple[Any, Any, Any, Any]:
    """Solve A x = b for symmetric positive definite A by conjugate gradients from x₀ (default 0).

    x_{k+1} = x_k + α_k p_k, r_{k+1} = r_k − α_k A p_k, p_{k+1} = r_{k+1} + β_k p_k with
    α_k = r_kᵀr_k / p_kᵀAp_k and β_k = r_{k+1}ᵀr_{k+1} / r_kᵀr_k.

    Parameters
    ----------
    matvec : v ↦ A v on flat vectors.
    b : right-hand side (flat).
    small : r ↦ bool, the stopping test on the residual (the caller's error norm).
    max_iter : iteration cap (static).
    x0, r0 : an initial guess and its residual b − A x₀, which the caller supplies (it often knows A x₀ without a
        product); both or neither.

    Returns
    -------
    (x, final residual b − A x as recurred, iterations, ok): ok is False when the cap was hit or A showed a
    non-positive curvature pᵀAp ≤ 0 (an indefinite system), in which case the step that asked for the solve should
    be retried smaller.
    """

    def cond(state):
        _, r, _, _, k, ok = state
        return ok & (k < max_iter) & ~small(r)

    def body(state):
        x, r, p, rr, k, _ = state
        ap = matvec(p)
        pap = jnp.vdot(p, ap)
        positive = pap > 0
        alpha = jnp.where(positive, rr / jnp.where(positive, pap, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = jnp.vdot(r, r)
        p = r + (rr_new / jnp.maximum(rr, jnp.finfo(rr.dtype).tiny)) * p
        return x, r, p, rr_new, k + 1, positive

    if x0 is None:
        x0, r0 = jnp.zeros_like(b), b
    state = (x0, r0, r0, jnp.vdot(r0, r0), jnp.zeros((), jnp.int32), jnp.ones((), bool))
    x, r, _, _, k, ok = jax.lax.while_loop(cond, body, state)
    return x, r, k, ok & small(r)
