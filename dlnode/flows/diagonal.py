"""Diagonal linear networks: β = u^D − v^D entrywise (depth-D Hadamard products; D = 2 is u⊙u − v⊙v), as a `Flow`.

The state is the pair (u, v), each shaped like the end-to-end matrix (a 1 × d row for a regression), and the
network computes β = u^{⊙D} − v^{⊙D}. With E = ∇ℓ(β), the gradient flow is

    du/dt = −D u^{D−1} ⊙ E,    dv/dt = +D v^{D−1} ⊙ E,

and it conserves, entrywise, q = u⊙v at D = 2 (d(uv)/dt = −2uvE + 2uvE = 0) and q = u^{2−D} + v^{2−D} at D > 2
(d(u^{2−D})/dt = −(2−D)D E = −d(v^{2−D})/dt). `balancedness` is the drift max |q(t) − q(0)| of that invariant (NaN
where q is not finite: a zero entry at D > 2). From u = v = α·1 at D = 2 the flow's limit is the interpolator of
least Q_α (Woodworth et al. 2020, Theorem 1):

    Q_α(β) = α² Σᵢ q(βᵢ/α²),   q(z) = 2 − √(4 + z²) + z·arcsinh(z/2),

which tends to ‖β‖₁ (up to scale) as α → 0 (rich regime) and to ‖β‖₂² as α → ∞ (kernel regime).

References
----------
Woodworth, Gunasekar, Lee, Moroshko, Savarese, Golan, Soudry, Srebro (2020), arXiv 2002.09277;
Pesme, Pillaud-Vivien, Flammarion (2021), arXiv 2106.09524; HaoChen, Wei, Lee, Ma (2021), arXiv 2006.08680.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlnode.flows.flow import Flow, singular_values_of
from dlnode.flows.hessian import tracked_eigenvalues

__all__ = ["DIAGONAL_INITS", "diagonal_backprop", "diagonal_flow", "diagonal_init", "diagonal_product", "hypentropy"]

DIAGONAL_INITS = ("uniform", "positive", "gaussian")


def diagonal_product(state: Any, depth: int) -> Any:
    """β = u^D − v^D."""
    u, v = state
    return u**depth - v**depth


def diagonal_backprop(state: Any, grad_fn: Any, arrays: dict, depth: int) -> tuple[Any, Any, Any]:
    """(∂L/∂u, ∂L/∂v), β and E = grad_fn(β): the chain rule through β = u^D − v^D."""
    u, v = state
    w = diagonal_product(state, depth)
    e = grad_fn(w, arrays)
    return (depth * u ** (depth - 1) * e, -depth * v ** (depth - 1) * e), w, e


def invariant(state: Any, depth: int) -> Any:
    """q = u⊙v (D = 2) or u^{2−D} + v^{2−D} (D > 2), conserved by the flow; 0 at D = 1 (nothing to conserve)."""
    u, v = state
    if depth == 1:
        return jnp.zeros_like(u)
    if depth == 2:
        return u * v
    with jax.numpy_dtype_promotion("standard"):
        return u ** (2.0 - depth) + v ** (2.0 - depth)


def diagonal_init(shape: tuple[int, int], init: str, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) at t = 0: ``uniform`` u = v = scale·1 (β(0) = 0, Woodworth et al.'s α); ``positive`` u = scale·1,
    v = 0 (β = u^D ≥ 0 throughout: HaoChen et al.'s β = v⊙v); ``gaussian`` u, v = scale·|g| with g ~ N(0, 1)."""
    if init == "uniform":
        return np.full(shape, float(scale)), np.full(shape, float(scale))
    if init == "positive":
        return np.full(shape, float(scale)), np.zeros(shape)
    rng = np.random.default_rng(seed)
    return scale * np.abs(rng.standard_normal(shape)), scale * np.abs(rng.standard_normal(shape))


@cache
def diagonal_flow(problem_cls: type, depth: int, save_weights: bool = False, modified: bool = False,
                  sharpness: int = 0) -> Flow:  # fmt: skip
    """The gradient flow (or the modified flow of L + (η/4)‖∇L‖²) of a depth-`depth` diagonal network;
    `sharpness` = k > 0 also saves the top k eigenvalues of the Hessian in (u, v) at every save time."""
    grad_fn = problem_cls.grad_fn

    def backprop(y: Any, fn: Any, arrays: dict) -> tuple[Any, Any, Any]:
        return diagonal_backprop(y, fn, arrays, depth)

    def gradient(y: Any, arrays: dict) -> Any:
        return backprop(y, grad_fn, arrays)[0]

    def field(t: Any, y: Any, args: dict) -> Any:
        grads = gradient(y, args["problem"])
        if modified:
            hvp = jax.jvp(lambda s: gradient(s, args["problem"]), (y,), (grads,))[1]
            return jax.tree_util.tree_map(lambda g, h: -(g + 0.5 * args["lr"] * h), grads, hvp)
        return jax.tree_util.tree_map(jnp.negative, grads)

    def loss(y: Any, args: dict) -> Any:
        return problem_cls.loss_fn(diagonal_product(y, depth), args["problem"])

    def observe_warm(y: Any, args: dict, start: Any) -> tuple[dict[str, Any], Any]:
        grads, w, e = backprop(y, grad_fn, args["problem"])
        drift = jnp.abs(invariant(y, depth) - args["d0"])
        out = {
            "loss": problem_cls.loss_from_grad(w, e, args["problem"]),
            "product": w,
            "singular_values": singular_values_of(w),
            "grad_norm": jnp.sqrt(sum(jnp.sum(g * g) for g in grads)),
            "balancedness": jnp.max(jnp.where(jnp.isfinite(drift), drift, jnp.nan)),
        }
        if sharpness:
            out["sharpness"], start = tracked_eigenvalues(lambda z: gradient(z, args["problem"]), y, sharpness, start)
        if save_weights:
            out["weights"] = tuple(y)
        return out, start

    def observe(y: Any, args: dict) -> dict[str, Any]:
        return observe_warm(y, args, None)[0]

    def prepare(y0: Any, arrays: dict, c: dict) -> dict:
        return {"problem": arrays, "d0": invariant(y0, depth), "lr": c["lr"]}

    return Flow("modified" if modified else "layers", field, loss, observe, prepare, problem_cls=problem_cls,
                depth=depth, backprop=backprop, network="diagonal",
                observe_warm=observe_warm if sharpness else None)  # fmt: skip


def hypentropy(beta: np.ndarray, alpha: float) -> float:
    """Q_α(β) = α² Σᵢ q(βᵢ/α²), q(z) = 2 − √(4 + z²) + z·arcsinh(z/2) (Woodworth et al. 2020, Theorem 1)."""
    z = np.asarray(beta, dtype=float).ravel() / alpha**2
    return float(alpha**2 * np.sum(2 - np.sqrt(4 + z**2) + z * np.arcsinh(z / 2)))
