"""Deep linear networks: layer shapes, initialisations, the end-to-end product and balancedness.

A depth-N network maps R^{d_0} to R^{d_N} through W = W_N ⋯ W_1 with W_j of shape (d_j, d_{j−1}),
d_0 = d_in, d_N = d_out and every hidden width d_1 = … = d_{N−1} = `width`.

`scale` is the per-layer scale: the end-to-end product starts near scale^N.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dlnode.checks import call_init, check_positive, check_seed
from dlnode.errors import fail, refused
from dlnode.problems.kinds import Problem

__all__ = ["INITS", "balancedness", "init_end_to_end", "init_layers", "layer_shapes", "product"]

Shapes = list[tuple[int, int]]


def layer_shapes(depth: int, d_in: int, d_out: int, width: int | None = None) -> Shapes:
    """Shapes (d_j, d_{j−1}) of W_1 … W_N; `width` defaults to max(d_in, d_out)."""
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise refused(f"depth must be a positive integer (or 'inf' for the end-to-end flow); got {depth!r}")
    width = max(d_in, d_out) if width is None else width
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise refused(f"width must be a positive integer or None (= max(d_in, d_out)); got {width!r}")
    dims = [d_in] + [int(width)] * (depth - 1) + [d_out]
    return [(dims[j + 1], dims[j]) for j in range(depth)]


def product(layers: Sequence[Any]) -> Any:
    """End-to-end matrix W = W_N ⋯ W_1 (NumPy or JAX arrays)."""
    w = layers[0]
    for layer in layers[1:]:
        w = layer @ w
    return w


def balancedness(layers: Sequence[Any]) -> list[Any]:
    """D_j = W_{j+1}ᵀW_{j+1} − W_jW_jᵀ for j = 1 … N−1, conserved by gradient flow (Arora, Cohen, Hazan 2018)."""
    return [layers[j + 1].T @ layers[j + 1] - layers[j] @ layers[j].T for j in range(len(layers) - 1)]


def _semi_orthogonal(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-distributed matrix with orthonormal rows or columns (whichever is fewer)."""
    g = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diag(r))
    return q if rows >= cols else q.T


def _gaussian(shapes: Shapes, scale: float, rng: np.random.Generator, problem: Problem) -> list[np.ndarray]:
    return [scale * rng.standard_normal(s) / np.sqrt(s[1]) for s in shapes]


def _orthogonal(shapes: Shapes, scale: float, rng: np.random.Generator, problem: Problem) -> list[np.ndarray]:
    return [scale * _semi_orthogonal(*s, rng) for s in shapes]


def _chain(frames: list[np.ndarray], scale: float) -> list[np.ndarray]:
    """W_j = scale·Q_j Q_{j−1}ᵀ for frames Q_j (d_j × r, orthonormal columns): every D_j is exactly 0."""
    return [scale * frames[j + 1] @ frames[j].T for j in range(len(frames) - 1)]


def _balanced(shapes: Shapes, scale: float, rng: np.random.Generator, problem: Problem) -> list[np.ndarray]:
    """The outer frames are drawn first, so W(0) = scale^N Q_out Q_inᵀ is the same draw at every depth."""
    dims = [shapes[0][1]] + [s[0] for s in shapes]
    r = min(dims)
    outer = [_semi_orthogonal(dims[0], r, rng), _semi_orthogonal(dims[-1], r, rng)]
    hidden = [_semi_orthogonal(d, r, rng) for d in dims[1:-1]]
    return _chain([outer[0], *hidden, outer[1]], scale)


def _decoupled(shapes: Shapes, scale: float, rng: np.random.Generator, problem: Problem) -> list[np.ndarray]:
    """Aligned to the SVD of the problem's target, U S Vᵀ: W = scale^N Σ_α u_α v_αᵀ (Saxe et al. 2014)."""
    dims = [shapes[0][1]] + [s[0] for s in shapes]
    r = min(dims)
    u, _, vt = np.linalg.svd(problem.target())
    # A sign convention that makes a 1×1 network start at W_j = +scale for a positive target.
    signs = np.sign(vt[:r].sum(axis=1) + (vt[:r].sum(axis=1) == 0))
    u, v = u[:, :r] * signs, vt[:r].T * signs
    hidden = [np.eye(d, r) for d in dims[1:-1]]
    return _chain([v, *hidden, u], scale)


def _residual(shapes: Shapes, scale: float, rng: np.random.Generator, problem: Problem) -> list[np.ndarray]:
    """W_j = I + scale·G/√(N·d) (Marion & Chizat 2024); rectangular layers use the rectangular identity."""
    depth = len(shapes)
    return [np.eye(*s) + scale * rng.standard_normal(s) / np.sqrt(depth * s[1]) for s in shapes]


INITS: dict[str, Callable[..., list[np.ndarray]]] = {
    "gaussian": _gaussian,
    "orthogonal": _orthogonal,
    "balanced": _balanced,
    "residual": _residual,
    "decoupled": _decoupled,
}


def check_init(init: Any) -> None:
    """Raise a one-line ValueError unless `init` is a registered name or a callable."""
    if not callable(init) and not (isinstance(init, str) and init in INITS):
        fail("init", "must be a known name or a callable", None, "pass e.g. init='gaussian'",
             text=f"unknown init {init!r}; expected one of {sorted(INITS)} or a callable")  # fmt: skip


def init_layers(
    problem: Problem,
    depth: int,
    init: str | Callable[..., Sequence[Any]] = "gaussian",
    scale: float = 1e-1,
    seed: int = 0,
    width: int | None = None,
) -> list[np.ndarray]:
    """Initial layers W_1 … W_N (float64 NumPy arrays).

    Parameters
    ----------
    problem : the problem (its d_in/d_out, and its target for ``init="decoupled"``).
    depth, width : network shape, see `layer_shapes`.
    init : ``gaussian`` (scale·G/√fan_in), ``orthogonal`` (scale·O_j), ``balanced`` (scale·orthogonal chain with
        every D_j = 0), ``residual`` (I + scale·G/√(N·d)), ``decoupled`` (aligned to the target's SVD, every mode
        at exactly scale^N), or a callable ``init(shapes, scale, rng) -> layers``.
    scale : per-layer scale (positive).
    seed : seed of the NumPy generator.
    """
    check_init(init)
    scale = check_positive("scale", scale)
    shapes = layer_shapes(depth, problem.d_in, problem.d_out, width)
    rng = np.random.default_rng(check_seed(seed))
    if callable(init):
        return call_init(init, shapes, scale, rng)  # the rules for what a callable returns live in validation
    return INITS[init](shapes, float(scale), rng, problem)


def init_end_to_end(problem: Problem, init: str, scale: float, seed: int) -> np.ndarray:
    """Initial end-to-end matrix of a balanced network, independent of depth: W(0) = scale·Q_out Q_inᵀ.

    ``balanced``: Haar-distributed frames Q_in (d_in × r), Q_out (d_out × r), r = min(d_in, d_out); ``decoupled``:
    the target's singular vectors, so every mode starts at exactly `scale`. Its balanced layers at depth N are
    the ones `init_layers` builds with per-layer scale scale^{1/N} (up to the hidden frames).
    """
    if init not in ("balanced", "decoupled"):
        raise refused(f"init for the end-to-end flow must be 'balanced' or 'decoupled'; got {init!r}")
    if not np.isfinite(scale) or scale <= 0:
        raise refused(f"scale must be a positive finite number; got {scale!r}")
    shapes = layer_shapes(1, problem.d_in, problem.d_out)
    rng = np.random.default_rng(seed)
    return INITS[init](shapes, float(scale), rng, problem)[0]
