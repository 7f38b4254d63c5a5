"""The balanced end-to-end flow of a deep linear network and its infinite-depth limit.

For balanced layers (every D_j = W_{j+1}ᵀW_{j+1} − W_jW_jᵀ = 0) the product W = W_N ⋯ W_1 of a depth-N network
trained by gradient flow on ℓ(W) follows, with E = ∇ℓ(W), the end-to-end flow (Arora, Cohen, Hazan 2018)

    dW/dt = −A_N(E),   A_N(Z) = Σ_{j=1}^{N} (WWᵀ)^{(N−j)/N} Z (WᵀW)^{(j−1)/N}.

In the full SVD W = U diag(σ) Vᵀ (U of size m×m, V of size n×n, σ padded with zeros to length m on the row side
and n on the column side) the operator is diagonal: (Uᵀ A_N(Z) V)_ik = a_ik (UᵀZV)_ik with the divided difference

    a_ik = (σ_i² − σ_k²)/(σ_i^{2/N} − σ_k^{2/N}) = Σ_{m=0}^{N−1} σ_i^{2(N−1−m)/N} σ_k^{2m/N},   a_ii = N σ_i^{2−2/N},

(0⁰ = 1, so a_ik = 1 at depth 1 and a_ik = σ_i^{2−2/N} when σ_k = 0). As N → ∞, a_ik/N tends to the logarithmic
mean a^∞_ik = (σ_i² − σ_k²)/(ln σ_i² − ln σ_k²), a^∞_ii = σ_i² (and a^∞_ik = 0 when σ_i or σ_k is 0), i.e.

    A_∞(Z) = lim_{N→∞} A_N(Z)/N = ∫_0^1 (WWᵀ)^{1−s} Z (WᵀW)^{s} ds,

with an O(1/N) error. The flow is the Riemannian gradient flow of ℓ for the metric g_N(Z, Z) = tr(Zᵀ A_N^{-1}(Z))
(Bah, Rauhut, Terstiege, Westdickenberg 2022; Cohen, Menon, Veraszto 2023).

Normalisation and time axis
---------------------------
What was confirmed, and from where:

- The finite-depth operator A_N with no 1/N factor, by the identity that defines it: for balanced layers from
  `recover_layers`, the product's velocity under the per-layer gradient flow equals −A_N(E) (tested for depths
  1–5, square and rectangular, in tests/test_endtoend_math.py). A public restatement of Menon's survey
  (arXiv 2411.09004, in the issue lionellevine/MAIS#32) writes the same pair weight in layer singular values
  λ = σ^{1/N} as (λ_i^{2N} − λ_k^{2N})/(λ_i² − λ_k²), which is a_ik above, again without 1/N.
- Not confirmed: the exact time normalisation of the infinite-depth limit in Cohen, Menon, Veraszto (2023). Their
  text was not available to check (only abstracts); the convention here is the one of docs/math.md §5.

Convention: with ``rescale=True`` (the default) finite depths run on the rescaled time τ = N t, so that
dW/dτ = −A_N(E)/N, the metric is N·g_N and depth ∞ (dW/dτ = −A_∞(E), metric g_∞) is their limit on the same time
axis; ``rescale=False`` gives the plain per-layer gradient-flow time t (the flow −A_N(E) and the metric g_N).
Depth ∞ has no unscaled form: it is always the rescaled one. Store the choice with any trajectory (the
`time_rescaling` attribute of a dataset).

Numerics
--------
The weights are evaluated as a_ik = σ_max^{2−2/N} · expm1(u)/expm1(u/N) and a^∞_ik = σ_max² · expm1(u)/u with
u = 2 ln(σ_min/σ_max) = 2 log1p((σ_min − σ_max)/σ_max) ≤ 0: no cancellation at near-ties, exact limits at ties
(u = 0) and zeros (u = −∞), and O(1) cost in N. Everything is float64 `jax.numpy` and jit-compatible with `depth`
static (a Python int or ``math.inf``); gradients are not meant to flow through the weights.

References
----------
Arora, Cohen, Hazan (2018), "On the optimization of deep networks: implicit acceleration by overparameterization",
ICML, arXiv 1802.06509. Bah, Rauhut, Terstiege, Westdickenberg (2022), "Learning deep linear neural networks:
Riemannian gradient flows and convergence to global minimizers", Inf. Inference, arXiv 1910.05505. Cohen, Menon,
Veraszto (2023), "Deep linear networks for matrix completion — an infinite depth limit", SIAM J. Appl. Dyn. Syst.,
arXiv 2210.12497. Menon (2024), "The geometry of the deep linear network", arXiv 2411.09004.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlnode.errors import refused

__all__ = ["apply_operator", "end_to_end_field", "log_volume", "metric", "operator_weights", "recover_layers"]


def check_depth(depth: Any, allow_inf: bool = True) -> int | float:
    """Return `depth` as a positive int or ``math.inf``; raise a one-line ValueError otherwise."""
    if allow_inf and (depth == "inf" or (isinstance(depth, (float, np.floating)) and depth == math.inf)):
        return math.inf
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        allowed = "a positive integer or inf (math.inf or 'inf')" if allow_inf else "a positive integer"
        raise refused(f"depth must be {allowed}; got {depth!r}")
    return int(depth)


def _as_matrix(name: str, value: Any) -> jax.Array:
    arr = jnp.asarray(value, dtype=jnp.float64)
    if arr.ndim != 2:
        raise refused(f"{name} must be a 2-dimensional array (a matrix); got shape {arr.shape}")
    return arr


def _log_ratio(s_i: jax.Array, s_k: jax.Array) -> tuple[jax.Array, jax.Array]:
    """σ_max and u = 2 ln(σ_min/σ_max) ∈ [−∞, 0], relatively accurate near ties (u = −∞ when σ_max = 0)."""
    s_max, s_min = jnp.maximum(s_i, s_k), jnp.minimum(s_i, s_k)
    safe = jnp.where(s_max > 0, s_max, 1.0)
    return s_max, 2.0 * jnp.log1p((s_min - safe) / safe)


@functools.partial(jax.jit, static_argnames="depth")
def _weights(s_i: jax.Array, s_k: jax.Array, depth: int | float) -> jax.Array:
    s_max, u = _log_ratio(s_i, s_k)
    tie = u == 0.0
    u_safe = jnp.where(tie, -1.0, u)
    if depth == math.inf:
        ratio = jnp.where(tie, 1.0, jnp.expm1(u_safe) / u_safe)  # u = −∞ gives 0: the log-mean with a zero
        return jnp.where(s_max > 0, s_max**2 * ratio, 0.0)
    # (1 − q²)/(1 − q^{2/N}) with q = σ_min/σ_max: the sum of N powers of q^{2/N}, written without cancellation
    ratio = jnp.where(tie, float(depth), jnp.expm1(u_safe) / jnp.expm1(u_safe / depth))
    return jnp.where(s_max > 0, s_max ** (2.0 - 2.0 / depth) * ratio, 1.0 if depth == 1 else 0.0)


def operator_weights(s_i: Any, s_k: Any, depth: int | float) -> jax.Array:
    r"""Divided-difference weights a_ik of the end-to-end operator A_N, or the logarithmic mean for depth ∞.

    .. math::

        a_{ik} = \frac{σ_i^2 − σ_k^2}{σ_i^{2/N} − σ_k^{2/N}},\quad a_{ii} = N σ_i^{2−2/N};\qquad
        a^∞_{ik} = \frac{σ_i^2 − σ_k^2}{\ln σ_i^2 − \ln σ_k^2},\quad a^∞_{ii} = σ_i^2.

    Finite and accurate to a few ulps (times |ln σ|) everywhere, including exact ties and zeros:
    a_ik = σ_i^{2−2/N} when σ_k = 0 (N ≥ 2), a_ik = 1 at depth 1, a^∞_ik = 0 when either σ is 0.

    Parameters
    ----------
    s_i, s_k : non-negative singular values, broadcast against each other (values are not checked, so the
        function stays jit-compatible).
    depth : a positive integer N, or ``math.inf`` / ``"inf"`` for the logarithmic mean.

    Returns
    -------
    jax.Array of float64, the broadcast shape of `s_i` and `s_k`.

    Raises
    ------
    ValueError : when `depth` is neither a positive integer nor inf.

    References
    ----------
    Arora, Cohen, Hazan (2018), arXiv 1802.06509; Cohen, Menon, Veraszto (2023), arXiv 2210.12497.
    """
    depth = check_depth(depth)
    return _weights(jnp.asarray(s_i, dtype=jnp.float64), jnp.asarray(s_k, dtype=jnp.float64), depth)


def _svd_weights(w: jax.Array, depth: int | float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Full SVD W = U diag(σ) Vᵀ and the weight matrix a (m×n) of σ padded with zeros on both sides."""
    u, s, vt = jnp.linalg.svd(w, full_matrices=True)
    m, n = w.shape
    s_row = jnp.pad(s, (0, m - s.shape[0]))
    s_col = jnp.pad(s, (0, n - s.shape[0]))
    return u, _weights(s_row[:, None], s_col[None, :], depth), vt


@functools.partial(jax.jit, static_argnames="depth")
def _apply(w: jax.Array, z: jax.Array, depth: int | float) -> jax.Array:
    u, a, vt = _svd_weights(w, depth)
    return u @ (a * (u.T @ z @ vt.T)) @ vt


def _check_pair(w: Any, z: Any, z_name: str) -> tuple[jax.Array, jax.Array]:
    w, z = _as_matrix("W", w), _as_matrix(z_name, z)
    if z.shape != w.shape:
        raise refused(f"{z_name} must have W's shape {w.shape}; got {z.shape}")
    return w, z


def apply_operator(W: Any, Z: Any, depth: int | float) -> jax.Array:
    r"""The end-to-end operator A_N(Z) at W, or A_∞(Z) for depth ∞.

    .. math::

        A_N(Z) = \sum_{j=1}^{N} (WW^T)^{(N−j)/N} Z (W^TW)^{(j−1)/N},\qquad
        A_∞(Z) = \int_0^1 (WW^T)^{1−s} Z (W^TW)^{s}\, ds = \lim_{N→∞} A_N(Z)/N,

    computed as U[a ∘ (UᵀZV)]Vᵀ from the full SVD of W (rectangular W: σ padded with zeros).

    Parameters
    ----------
    W : end-to-end matrix, shape (d_out, d_in).
    Z : matrix of W's shape (typically E = ∇ℓ(W)).
    depth : a positive integer N, or ``math.inf`` / ``"inf"``.

    Returns
    -------
    jax.Array of float64, shape of W. A_N is symmetric positive semi-definite for the Frobenius inner product.

    Raises
    ------
    ValueError : for a non-matrix W, a Z of another shape, or an invalid depth.

    References
    ----------
    Arora, Cohen, Hazan (2018), arXiv 1802.06509, Theorem 1; Cohen, Menon, Veraszto (2023), arXiv 2210.12497.
    """
    depth = check_depth(depth)
    w, z = _check_pair(W, Z, "Z")
    return _apply(w, z, depth)


def end_to_end_field(W: Any, E: Any, depth: int | float, rescale: bool = True) -> jax.Array:
    r"""Velocity dW/dt of the balanced end-to-end flow at W, given the loss gradient E = ∇ℓ(W).

    .. math::

        \frac{dW}{dτ} = −\frac{1}{N} A_N(E)\ \text{(rescale, τ = N t)},\qquad
        \frac{dW}{dt} = −A_N(E)\ \text{(not rescaled)},\qquad \frac{dW}{dτ} = −A_∞(E)\ \text{(depth ∞)}.

    Parameters
    ----------
    W : end-to-end matrix, shape (d_out, d_in).
    E : the loss gradient ∇ℓ(W), shape of W.
    depth : a positive integer N, or ``math.inf`` / ``"inf"``.
    rescale : measure time in τ = N t (default), the axis that finite depths share with depth ∞; depth ∞ is
        always on that axis.

    Returns
    -------
    jax.Array of float64, shape of W.

    References
    ----------
    Arora, Cohen, Hazan (2018), arXiv 1802.06509; Cohen, Menon, Veraszto (2023), arXiv 2210.12497.
    """
    depth = check_depth(depth)
    w, e = _check_pair(W, E, "E")
    velocity = -_apply(w, e, depth)
    return velocity / depth if rescale and depth != math.inf else velocity


@functools.partial(jax.jit, static_argnames=("depth", "rescale"))
def _metric(w: jax.Array, z: jax.Array, depth: int | float, rescale: bool) -> jax.Array:
    u, a, vt = _svd_weights(w, depth)
    if rescale and depth != math.inf:
        a = a / depth
    inverse = jnp.where(a > 0, 1.0 / jnp.where(a > 0, a, 1.0), 0.0)  # pseudo-inverse: 0 off the range
    return jnp.sum((u.T @ z @ vt.T) ** 2 * inverse)


def metric(W: Any, Z: Any, depth: int | float, rescale: bool = True) -> jax.Array:
    r"""Squared length g(Z, Z) of a tangent vector Z at W in the metric whose gradient flow is the end-to-end flow.

    .. math::

        g_N(Z, Z) = \operatorname{tr}(Z^T A_N^{-1}(Z)) = \sum_{ik} \frac{(U^TZV)_{ik}^2}{a_{ik}},

    and N·g_N when `rescale` (the metric of dW/dτ = −A_N(E)/N), g_∞ with a^∞ for depth ∞. The energy identity
    reads g(F, F) = ⟨E, −F⟩ = −dℓ/dt for the field F of `end_to_end_field` with the same `rescale`.

    Where a_ik = 0 (σ_i = σ_k = 0 at depth N ≥ 2; σ_i = 0 or σ_k = 0 at depth ∞) A_N is singular and the metric is
    taken on its range: A_N^{-1} is the Moore–Penrose pseudo-inverse, so components of Z along those directions
    (which the flow can never take) are ignored rather than given infinite length.

    Parameters
    ----------
    W : end-to-end matrix, shape (d_out, d_in).
    Z : tangent vector, shape of W.
    depth : a positive integer N, or ``math.inf`` / ``"inf"``.
    rescale : N·g_N (default, matching ``end_to_end_field(..., rescale=True)``) or g_N.

    Returns
    -------
    jax.Array, a float64 scalar.

    References
    ----------
    Bah, Rauhut, Terstiege, Westdickenberg (2022), arXiv 1910.05505; Cohen, Menon, Veraszto (2023),
    arXiv 2210.12497.
    """
    depth = check_depth(depth)
    w, z = _check_pair(W, Z, "Z")
    return _metric(w, z, depth, bool(rescale))


@functools.partial(jax.jit, static_argnames=("depth", "rescale"))
def _log_volume(sigma: jax.Array, depth: int | float, rescale: bool) -> jax.Array:
    k = sigma.shape[-1]
    s_max, u = _log_ratio(sigma[..., :, None], sigma[..., None, :])
    if depth == math.inf:
        pair = jnp.log(-u)  # |ln σ_i² − ln σ_k²| = −u, relatively accurate near ties
        diagonal = -jnp.log(sigma)
    else:
        # |σ_i^{2/N} − σ_k^{2/N}| = σ_max^{2/N} · (−expm1(u/N)), exact also near ties
        pair = (2.0 / depth) * jnp.log(s_max) + jnp.log(-jnp.expm1(u / depth))
        pair = pair + math.log(depth) if rescale else pair
        diagonal = (1.0 / depth - 1.0) * jnp.log(sigma)
        diagonal = diagonal if rescale else diagonal - 0.5 * math.log(depth)
    upper = jnp.triu(jnp.ones((k, k), dtype=bool), 1)
    return jnp.sum(jnp.where(upper, pair, 0.0), axis=(-2, -1)) + jnp.sum(diagonal, axis=-1)


def log_volume(sigma: Any, depth: int | float, rescale: bool = True) -> jax.Array:
    r"""Log-density of the Riemannian volume of the end-to-end metric, in singular-value coordinates.

    .. math::

        \ln \mathrm{vol}_N = \sum_{i<k} \ln\bigl(N\,|σ_i^{2/N} − σ_k^{2/N}|\bigr) + \Bigl(\frac1N − 1\Bigr)
            \sum_i \ln σ_i,\qquad
        \ln \mathrm{vol}_∞ = \sum_{i<k} \ln|\ln σ_i^2 − \ln σ_k^2| − \sum_i \ln σ_i.

    Derivation (for an n×n W with n = k singular values): the metric tensor in the entries of W has determinant
    Π_ik a_ik^{-1}, and the SVD W = U diag(σ) Vᵀ has Jacobian Π_{i<k} |σ_i² − σ_k²| against dσ dU dV; their
    product is the density above. With `rescale` (default) it is the density of the time-rescaled metric N·g_N,
    which tends to vol_∞ as N → ∞ with an O(1/N) error, so finite depths and depth ∞ are comparable on one
    scale. Without `rescale` it is the density of g_N itself, which is the first formula less
    (k(k−1)/2 + k/2) ln N = (k²/2) ln N, i.e. Π_{i<k}|σ_i^{2/N} − σ_k^{2/N}| Π_i σ_i^{1/N−1} times N^{−k/2}.
    Against docs/math.md §5, which states the densities up to a constant, the additive constants are: none at depth ∞,
    (k(k−1)/2) ln N with `rescale` and −(k/2) ln N without. The constant of the SVD Jacobian (the normalisation
    of the Haar measures of U and V) is dropped throughout, identically at every depth.

    The formula is the square case; for a rectangular m×n W (k = min(m, n)) the finite-depth density has an extra
    factor Π_i σ_i^{|m−n|/N} (times a constant) and the depth-∞ metric is degenerate, so compare log-volumes only
    between matrices of one shape.

    Parameters
    ----------
    sigma : positive singular values on the trailing axis, shape (..., k); leading axes are kept (e.g. stored
        depth, seed, time). A zero σ gives +inf, a tie −inf (zero volume), both at once NaN.
    depth : a positive integer N, or ``math.inf`` / ``"inf"``.
    rescale : density of N·g_N (default) or of g_N; ignored at depth ∞.

    Returns
    -------
    jax.Array of float64, shape sigma.shape[:-1].

    References
    ----------
    Cohen, Menon, Veraszto (2023), arXiv 2210.12497 (volume forms at finite and infinite depth).
    """
    depth = check_depth(depth)
    s = jnp.asarray(sigma, dtype=jnp.float64)
    if s.ndim < 1 or s.shape[-1] < 1:
        raise refused(f"sigma must have the singular values on a non-empty trailing axis; got shape {s.shape}")
    return _log_volume(s, depth, bool(rescale))


def _numerical_rank(s: np.ndarray, shape: tuple[int, ...]) -> int:
    """Number of singular values above max(shape)·eps·σ_max, LAPACK's default threshold for rank."""
    return int(np.sum(s > max(shape) * np.finfo(np.float64).eps * (s[0] if s.size else 0.0)))


def recover_layers(W: Any, depth: int, width: int | None = None) -> list[np.ndarray]:
    r"""Balanced layers [W_1, …, W_N] whose product is W (every D_j = W_{j+1}ᵀW_{j+1} − W_jW_jᵀ = 0).

    .. math::

        W_1 = Q_1 Σ^{1/N} V^T,\quad W_j = Q_j Σ^{1/N} Q_{j−1}^T,\quad W_N = U Σ^{1/N} Q_{N−1}^T,

    from the thin SVD W = U Σ Vᵀ truncated to r = min(d_in, d_out, width) singular values, with the frames
    Q_j = the first r columns of the width×width identity. Then W_jW_jᵀ = W_{j+1}ᵀW_{j+1} = Q_j Σ^{2/N} Q_jᵀ, and
    every layer has singular values σ^{1/N}: the point of the balanced manifold over W that the end-to-end flow
    describes, up to the orthogonal symmetries of the hidden layers.

    Parameters
    ----------
    W : end-to-end matrix, shape (d_out, d_in).
    depth : number of layers N (a positive integer; depth 1 returns [W]).
    width : hidden width, default max(d_in, d_out). It may be below min(d_in, d_out) if it is at least the
        numerical rank of W (only rounding-level σ are dropped); below rank(W) it cannot represent W and raises.

    Returns
    -------
    list of float64 NumPy arrays of shapes (width, d_in), (width, width), …, (d_out, width).

    Raises
    ------
    ValueError : for a non-finite or non-matrix W, a depth or width that is not a positive integer, a width
        below rank(W).

    References
    ----------
    Arora, Cohen, Hazan (2018), arXiv 1802.06509 (balancedness); Cohen, Menon, Veraszto (2023), arXiv 2210.12497.
    """
    depth = check_depth(depth, allow_inf=False)
    w = np.asarray(_as_matrix("W", W))
    if not np.all(np.isfinite(w)):
        raise refused(f"W must be finite; got {int(np.sum(~np.isfinite(w)))} NaN/inf entries")
    d_out, d_in = w.shape
    width = max(d_in, d_out) if width is None else width
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise refused(f"width must be a positive integer or None (= max(d_in, d_out)); got {width!r}")
    if depth == 1:
        return [w.copy()]
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    rank = _numerical_rank(s, w.shape)
    if rank > width:
        raise refused(f"width must be at least rank(W) = {rank} to represent W; got width={width}; widen it")
    r = min(d_in, d_out, int(width))
    root = s[:r] ** (1.0 / depth)
    frames = [vt[:r].T] + [np.eye(int(width), r)] * (depth - 1) + [u[:, :r]]
    return [(frames[j + 1] * root) @ frames[j].T for j in range(depth)]
