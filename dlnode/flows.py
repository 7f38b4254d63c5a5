"""Vector fields f(t, y, args) of the training dynamics, and the observables saved along them.

`y` is the tuple of layer matrices (W_1, …, W_N); `args` is a dict holding the problem's arrays under
"problem" (see `Problem.arrays`) and the problem's class under the static key of the closure that builds
the field, so that one compiled field serves every problem of one kind and shape.

Per-layer gradient flow (MATH.md §1): dW_j/dt = −∂L/∂W_j = −(W_N⋯W_{j+1})ᵀ E (W_{j−1}⋯W_1)ᵀ, E = ∇ℓ(W).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .network import product

__all__ = ["FLOWS", "layer_gradients", "make_layer_field", "observables"]


def layer_gradients(layers: tuple, grad_fn: Callable, arrays: dict) -> tuple[tuple, Any, Any]:
    """Gradients G_j = ∂L/∂W_j of L = ℓ(W_N⋯W_1) from prefix and suffix products: 3(N−1) matmuls.

    The forward pass stores the prefixes P_j = W_{j−1}⋯W_1 (N−1 matmuls); the backward pass carries
    B_j = (W_N⋯W_{j+1})ᵀ E down the network (N−1 matmuls); G_j = B_j P_jᵀ (N−1 matmuls, none for j = 1).

    Returns
    -------
    (G_1, …, G_N), the end-to-end matrix W and E = ∇ℓ(W).
    """
    prefixes = [None]
    w = layers[0]
    for layer in layers[1:]:
        prefixes.append(w)
        w = layer @ w
    e = grad_fn(w, arrays)
    grads = [None] * len(layers)
    back = e
    for j in range(len(layers) - 1, -1, -1):
        grads[j] = back if prefixes[j] is None else back @ prefixes[j].T
        if j > 0:
            back = layers[j].T @ back
    return tuple(grads), w, e


def make_layer_field(grad_fn: Callable) -> Callable:
    """The per-layer gradient-flow field f(t, y, args) = (−G_1, …, −G_N) for a problem's `grad_fn`."""

    def field(t: Any, y: tuple, args: dict) -> tuple:
        grads, _, _ = layer_gradients(y, grad_fn, args["problem"])
        return tuple(-g for g in grads)

    return field


FLOWS = ("layers",)


def observables(layers: tuple, args: dict, problem_cls: type, save_weights: bool) -> dict[str, Any]:
    """What a dataset stores at every saved time: loss, product, singular values, ‖∇L‖, balancedness drift.

    Balancedness drift is max_j ‖D_j(t) − D_j(0)‖_F with D_j = W_{j+1}ᵀW_{j+1} − W_jW_jᵀ (args["d0"]).
    """
    arrays = args["problem"]
    grads, w, e = layer_gradients(layers, problem_cls.grad_fn, arrays)
    out = {
        "loss": problem_cls.loss_from_grad(w, e, arrays),
        "product": w,
        "singular_values": jnp.linalg.svd(w, compute_uv=False),
        "grad_norm": jnp.sqrt(sum(jnp.sum(g * g) for g in grads)),
        "balancedness": _balancedness_drift(layers, args["d0"]),
    }
    if save_weights:
        out["weights"] = layers
    return out


def _balancedness_drift(layers: tuple, d0: tuple) -> Any:
    drifts = [
        jnp.linalg.norm(layers[j + 1].T @ layers[j + 1] - layers[j] @ layers[j].T - d0[j])
        for j in range(len(layers) - 1)
    ]
    return jnp.max(jnp.stack(drifts)) if drifts else jnp.zeros(())


def initial_balancedness(layers: tuple) -> tuple:
    """D_j(0) for every adjacent pair (empty for depth 1)."""
    return tuple(layers[j + 1].T @ layers[j + 1] - layers[j] @ layers[j].T for j in range(len(layers) - 1))


def flat_problem(problem_cls: type) -> tuple[Callable, Callable]:
    """Loss and gradient of L as functions of the layers (for Hessians and tests), via `product`."""

    def loss(layers: tuple, arrays: dict) -> Any:
        return problem_cls.loss_fn(product(layers), arrays)

    return loss, jax.grad(loss)
