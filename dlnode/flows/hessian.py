"""Top Hessian eigenpairs of the loss in the layer parameters, inside compiled code (docs/finite-step.md).

Lanczos with full reorthogonalisation on exact Hessian-vector products ∇²L·v = d/dε ∇L(y + εv) (the gradient
linearised once at y, so that a product is one tangent pass; no Hessian is formed), from a fixed start vector so
that a run is reproducible, or warm-started from the Ritz vectors of the last solve along a run (their sum, with
`WARM_MIX` of the fixed vector mixed in, so that an eigenvalue rising from a direction the last vectors miss, even
one orthogonal to them by a symmetry, is still found), stopped when the k top Ritz pairs' residuals
‖∇²L x − θ x‖ = β_j |s_{j,i}| fall below `LANCZOS_RTOL` θ₁ (each eigenvalue is then exact to about its residual
squared over the gap) or when the Krylov space is the whole space. The residuals are checked every `CHECK_EVERY`
products by an eigh of the tridiagonal: of its leading 24 × 24 block for the first checks, of the whole (at most
`LANCZOS_MAX` square) after; the last check's Ritz pairs are the result.

References
----------
Lanczos (1950); Golub, Van Loan, "Matrix computations", §10.1 (full reorthogonalisation); Daniel, Gragg, Kaufman,
Stewart (1976), Math. Comp. 30(136) (the second Gram-Schmidt pass only when the first cancelled most of the vector);
Cohen, Kaur, Li, Kolter, Talwalkar (2021), arXiv 2103.00065 (sharpness along GD by Lanczos).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from dlnode.errors import refused

__all__ = [
    "LANCZOS_MAX",
    "LANCZOS_RTOL",
    "POWER_STEPS",
    "hvp",
    "power_iteration",
    "sharpness_lower_bound",
    "top_eigenpairs",
    "top_eigenvalues",
    "tracked_eigenvalues",
]

LANCZOS_RTOL = 1e-7  # residual of each of the top k Ritz pairs, relative to |θ₁|: eigenvalues to ~1e-14 relative
LANCZOS_MAX = 80  # at most this many Lanczos vectors (or the parameter count, when smaller)
CHECK_EVERY = 6  # the Ritz pairs (an eigh of the tridiagonal) are checked every this many products
SMALL_CHECKS = 4  # the first this many checks take the eigh of the leading 24 x 24 block, not of the full m x m one
REORTHOGONALISE = 2**-0.5  # a second Gram-Schmidt pass when the first leaves less than this fraction of the norm
WARM_MIX = 1e-3  # a warm start is the previous Ritz vectors' sum plus this much of the fixed start vector
GROW_BASIS = 1 << 16  # a basis of more entries (m·n) grows by doubling (see `_lanczos`)
_START_KEY = 20210226  # the fixed start vector's PRNG key: a run's curvature is reproducible
POWER_STEPS = 30  # power iterations of `sharpness_lower_bound`


def hvp(gradient: Callable[[Any], Any], y: Any, v: Any) -> Any:
    """∇²L(y)·v as the forward derivative of the gradient along v (same pytree structure as y)."""
    return jax.jvp(gradient, (y,), (v,))[1]


def _lanczos(matvec: Callable, n: int, k: int, dtype: Any, start: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Top-k Ritz values, their Ritz vectors (n, k) and the number of products used."""
    m = min(n, max(LANCZOS_MAX, k + 2))
    v0 = jax.random.normal(jax.random.PRNGKey(_START_KEY), (n,), dtype)
    v0 = v0 / jnp.linalg.norm(v0)
    if start is not None:  # a warm start, with the fixed vector mixed in (a zero start: the fixed vector alone)
        norm = jnp.linalg.norm(start)
        warm = start / jnp.where(norm > 0, norm, 1.0) + WARM_MIX * v0
        v0 = jnp.where(norm > 0, warm / jnp.linalg.norm(warm), v0)
    small = min(m, SMALL_CHECKS * CHECK_EVERY)  # the first checks see at most this many products
    rows = min(m, small + 1)  # ... on a basis of this many rows (the next vector included), grown after
    basis = jnp.zeros((rows, n), dtype).at[0].set(v0)
    alpha, beta = jnp.zeros(rows, dtype), jnp.zeros(rows, dtype)

    def ritz(alpha, beta, j, size=m):
        """Top-k Ritz pairs of the j×j tridiagonal (j ≤ `size`, a static size: the leading size×size block, padded
        rows decoupled far below every real eigenvalue); vectors of length `size`."""
        alpha, beta = alpha[:size], beta[:size]
        active = jnp.arange(size) < j
        bound = jnp.max(jnp.abs(alpha)) + 2 * jnp.max(jnp.abs(beta)) + 1.0
        diag = jnp.where(active, alpha, -4.0 * bound - jnp.arange(size))
        off = jnp.where(jnp.arange(1, size) < j, beta[:-1], 0.0)
        t = jnp.diag(diag) + jnp.diag(off, 1) + jnp.diag(off, -1)
        theta, s = jnp.linalg.eigh(t)
        return theta[::-1][:k], s[:, ::-1][:, :k]

    def step(carry):
        """One Lanczos product and reorthogonalisation; a no-op once the space is exhausted or full. Every update
        is of one row, in place: a product costs O(rows·n), never a copy of the basis."""
        basis, alpha, beta, j, done = carry
        rows = basis.shape[0]
        i, i1 = jnp.minimum(j, rows - 1), jnp.minimum(j + 1, rows - 1)
        v = basis[i]
        w = matvec(v)
        a = jnp.dot(w, v)
        previous = jnp.maximum(j - 1, 0)
        w = w - a * v - jnp.where(j > 0, beta[previous], 0.0) * basis[previous]  # the three-term recurrence
        before = jnp.linalg.norm(w)
        w = w - basis.T @ (basis @ w)  # then full reorthogonalisation (classical Gram-Schmidt) ...
        b = jnp.linalg.norm(w)
        # ... repeated when it cancelled more than 1 − 1/√2 of what the recurrence left (Daniel, Gragg, Kaufman,
        # Stewart 1976; twice is enough): a branch, so that a product reads the basis twice only when it must (under
        # vmap, a batch of cells, both sides run: the cost of always taking two passes)
        w = jax.lax.cond(b < REORTHOGONALISE * before, lambda v: v - basis.T @ (basis @ v), lambda v: v, w)
        b = jnp.linalg.norm(w)
        scale = jnp.maximum(jnp.maximum(jnp.max(jnp.abs(alpha)), jnp.abs(a)), jnp.finfo(dtype).tiny)
        exhausted = b <= 1e3 * jnp.finfo(dtype).eps * scale  # an invariant subspace: the Ritz values are exact
        go = ~done & (j < m)
        alpha = alpha.at[i].set(jnp.where(go, a, alpha[i]))
        beta = beta.at[i].set(jnp.where(go, b, beta[i]))
        nxt = jnp.where(exhausted, 0.0, w / jnp.where(exhausted, 1.0, b))
        basis = basis.at[i1].set(jnp.where(go & (j + 1 < rows), nxt, basis[i1]))
        return basis, alpha, beta, j + go, done | (go & exhausted)

    def cond(carry):
        j, done = carry[0][3], carry[0][4]
        return (j < m) & ~done

    def block(carry, size=m):
        """`CHECK_EVERY` products, then the convergence check on the Ritz pairs (one eigh per block: no eigh per
        product, and no data-dependent branch around the eigh, which vmap would compute on both sides). While j ≤ `size`
        the check needs only the leading size×size block: the eigh that dominates a solve on small networks shrinks
        with it (an 80 × 80 eigh costs several Hessian-vector products there). The last check's Ritz pairs are the
        result (carried, zero-padded to m rows): no eigh after the loop."""
        lanczos = jax.lax.fori_loop(0, CHECK_EVERY, lambda _, c: step(c), carry[0])
        basis, alpha, beta, j, done = lanczos
        theta, s = ritz(alpha, beta, j, size)
        last = s[jnp.clip(j - 1, 0, size - 1)]
        b = beta[jnp.maximum(j - 1, 0)]
        tiny = jnp.finfo(dtype).tiny
        converged = (j >= k) & jnp.all(b * jnp.abs(last) <= LANCZOS_RTOL * jnp.maximum(jnp.abs(theta[0]), tiny))
        s = jnp.zeros((m, s.shape[1]), dtype).at[:size].set(s)
        theta = jnp.full(k, jnp.nan, dtype).at[: theta.shape[0]].set(theta)
        return (basis, alpha, beta, j, done | converged), theta, s

    # Phases: the first checks take `CHECK_EVERY`·`SMALL_CHECKS` products on a basis of that many rows (and the next
    # vector); then, on a network with more than `GROW_BASIS` basis entries, the basis doubles until it has m rows
    # (reorthogonalisation reads only the rows a solve can have used so far: a product there costs O(rows·n) memory
    # traffic, far above the product itself); on a smaller one it takes all m rows at once (one loop less to
    # compile).
    lanczos = (basis, alpha, beta, jnp.zeros((), jnp.int32), jnp.zeros((), bool))
    theta, s = jnp.zeros(k, dtype), jnp.zeros((m, k), dtype)
    size = small
    while True:
        last = size >= m

        def phase_cond(carry, size=size, last=last):
            return cond(carry) & (last | (carry[0][3] + CHECK_EVERY <= size))

        carry = (lanczos, theta, s[:, : min(k, size)])
        lanczos, theta, part = jax.lax.while_loop(phase_cond, lambda c, size=size: block(c, size), carry)
        s = jnp.zeros((m, k), dtype).at[:, : part.shape[1]].set(part)
        if last:
            break
        size = min(m, 2 * size) if m * n > GROW_BASIS else m
        grow = ((0, min(m, size + 1) - lanczos[0].shape[0]),)
        lanczos = (jnp.pad(lanczos[0], grow + ((0, 0),)), jnp.pad(lanczos[1], grow), jnp.pad(lanczos[2], grow),
                   *lanczos[3:])  # fmt: skip
    basis, _, _, j, _ = lanczos
    used = jnp.arange(m)[:, None] < j
    vectors = basis.T @ jnp.where(used, s, 0.0)
    return theta, vectors, j


def top_eigenpairs(
    gradient: Callable[[Any], Any], y: Any, k: int = 1, start: Any = None
) -> tuple[jax.Array, Any, jax.Array]:
    """The k largest eigenvalues of ∇²L at y, descending, their unit eigenvectors (a list of k pytrees like y),
    and the number of Hessian-vector products spent. `gradient(y)` is ∇L as a pytree of y's structure; `start`, a
    flat vector of y's size, warm-starts the solve (None or zeros: the fixed start vector)."""
    flat, unravel = ravel_pytree(y)
    n = flat.shape[0]
    if not 1 <= k <= n:
        raise refused(f"k must be in [1, {n}] (the number of parameters); got {k}; pass a smaller k")

    # linearised once: every product reuses the gradient's forward pass instead of recomputing it
    _, tangent = jax.linearize(lambda x: ravel_pytree(gradient(unravel(x)))[0], flat)

    def matvec(v):
        return tangent(v)

    theta, vectors, used = _lanczos(matvec, n, k, flat.dtype, start)
    return theta, [unravel(vectors[:, i]) for i in range(k)], used


def top_eigenvalues(gradient: Callable[[Any], Any], y: Any, k: int = 1) -> jax.Array:
    """The k largest eigenvalues of ∇²L at y, descending (see `top_eigenpairs`)."""
    return top_eigenpairs(gradient, y, k)[0]


def tracked_eigenvalues(gradient: Callable[[Any], Any], y: Any, k: int, start: Any) -> tuple[jax.Array, jax.Array]:
    """The k largest eigenvalues of ∇²L at y from the warm start `start` (a flat vector of y's size; zeros: the fixed
    start vector), and the start of the next solve along a run: the sum of the k Ritz vectors."""
    theta, vectors, _ = top_eigenpairs(gradient, y, k, start)
    return theta, sum(ravel_pytree(v)[0] for v in vectors)


def power_iteration(matvec: Callable[[Any], Any], v: Any, iterations: int) -> tuple[Any, Any]:
    """`iterations` steps of v ← Av/‖Av‖ on a flat vector; returns (the Rayleigh quotient vᵀAv of the last unit
    iterate, the iterate). For a symmetric A the quotient lies in [λ_min, λ_max] whatever the steps, and its size
    converges to the spectral radius (linearly, at the ratio of the two largest |eigenvalues|)."""

    def body(_, carry):
        v, _ = carry
        w = matvec(v)
        return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(w.dtype).tiny), jnp.vdot(v, w)

    v = v / jnp.maximum(jnp.linalg.norm(v), jnp.finfo(v.dtype).tiny)
    v, quotient = jax.lax.fori_loop(0, iterations, body, (v, jnp.zeros((), v.dtype)))
    return quotient, v


def sharpness_lower_bound(gradient: Callable[[Any], Any], y: Any, steps: int = POWER_STEPS) -> jax.Array:
    """A lower bound on λ_max(∇²L) at y: the Rayleigh quotient vᵀ∇²L v (‖v‖ = 1) after `steps` power iterations
    from v ∝ y (for a network's layers, the direction that scales every layer). Whatever the steps, a Rayleigh
    quotient never exceeds λ_max, so a bound above 2/η proves the sharpness is; a fixed loop of products, cheaper to
    compile than `top_eigenpairs` (about 0.2–0.3 s against 2–3 s)."""
    flat, unravel = ravel_pytree(y)
    _, tangent = jax.linearize(lambda x: ravel_pytree(gradient(unravel(x)))[0], flat)
    return power_iteration(tangent, flat, steps)[0]
