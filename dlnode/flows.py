"""The dynamics dlnode integrates, each as a `Flow`: vector field f(t, y, args), loss, and saved observables.

- ``layers``: per-layer gradient flow (docs/math.md §1), y = (W_1, …, W_N),
  dW_j/dt = −∂L/∂W_j = −(W_N⋯W_{j+1})ᵀ E (W_{j−1}⋯W_1)ᵀ with E = ∇ℓ(W).
- ``modified``: the gradient flow of L̃ = L + (η/4)‖∇L‖² (Barrett & Dherin 2021, arXiv 2009.11162), which gradient
  descent with step η follows to O(η²): dW_j/dt = −(∇L + (η/2)∇²L ∇L)_j, the Hessian term by one jvp.
- ``end_to_end``: for balanced layers, W alone, dW/dτ = −A_N(E)/N on the rescaled time τ = N t (or −A_∞(E) at
  depth ∞); see `dlnode.endtoend`.

`args` is a dict: "problem" (the problem's arrays, see `Problem.arrays`), "d0" (initial balancedness, per-layer
flows) and "lr" (the modified flow's η, a traced value). Flows are cached per (kind, problem class, options), so
one compiled solver serves every problem of one kind and shape.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import cache
from typing import Any

import jax
import jax.numpy as jnp

from .endtoend import end_to_end_field
from .network import product

__all__ = ["FLOWS", "Flow", "get_flow", "layer_gradients"]

FLOWS = ("layers", "modified", "end_to_end")


@dataclasses.dataclass(frozen=True)
class Flow:
    """What a solver needs of a dynamics: the field, the loss of a state, and the observables saved along it."""

    name: str
    field: Callable[[Any, Any, dict], Any]
    loss: Callable[[Any, dict], Any]
    observe: Callable[[Any, dict], dict[str, Any]]
    prepare: Callable[[Any, dict, dict], dict]  # (y0, problem arrays, controls) -> args
    depth: float = math.nan  # end_to_end only: N (or inf)
    gradient: Callable[[Any, dict], Any] | None = None  # end_to_end only: E = ∇ℓ(W) from (W, problem arrays)
    # capabilities that methods ask for (instead of comparing names)
    symmetric_jacobian: bool = True  # the Jacobian is −∇²L (a gradient flow of the state): CG stage solves apply
    end_to_end: bool = False  # the state is the end-to-end matrix W of balanced layers (no per-layer weights)
    rescaled_time: bool = False  # the time axis is τ = N t
    problem_cls: type | None = None


SCAN_DEPTH = 6  # from this depth on, equal hidden layers go through lax.scan: the graph (and compile time) stops
# growing with N (measured: depth 64 compiled ~3× faster than with the layers unrolled)


def _hidden_stack(layers: tuple) -> Any:
    """The hidden layers W_2 … W_{N−1} stacked, when there are enough of one square shape to scan; else None."""
    hidden = layers[1:-1]
    if len(layers) < SCAN_DEPTH or len({tuple(h.shape) for h in hidden}) != 1:
        return None
    if hidden[0].shape[0] != hidden[0].shape[1]:
        return None
    return jnp.stack(hidden)


def layer_gradients(layers: tuple, grad_fn: Callable, arrays: dict) -> tuple[tuple, Any, Any]:
    """Gradients G_j = ∂L/∂W_j of L = ℓ(W_N⋯W_1) from prefix and suffix products: 3(N−1) matmuls.

    The forward pass stores the prefixes P_j = W_{j−1}⋯W_1 (N−1 matmuls); the backward pass carries
    B_j = (W_N⋯W_{j+1})ᵀ E down the network (N−1 matmuls); G_j = B_j P_jᵀ (N−1 matmuls, none for j = 1).
    Deep networks with equal square hidden layers run both passes as `lax.scan` over the hidden stack.

    Returns
    -------
    (G_1, …, G_N), the end-to-end matrix W and E = ∇ℓ(W).
    """
    stack = _hidden_stack(layers)
    if stack is not None:
        return _scanned_gradients(layers, stack, grad_fn, arrays)
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


def _scanned_gradients(layers: tuple, stack: Any, grad_fn: Callable, arrays: dict) -> tuple[tuple, Any, Any]:
    first, last = layers[0], layers[-1]

    def forward(p, h):  # p = W_{j−1}⋯W_1 before hidden layer h = W_j
        return h @ p, p

    p_last, prefixes = jax.lax.scan(forward, first, stack)  # p_last = W_{N−1}⋯W_1
    w = last @ p_last
    e = grad_fn(w, arrays)
    g_last = e @ p_last.T
    back = last.T @ e

    def backward(b, xs):  # b = (W_N⋯W_{j+1})ᵀ E at hidden layer h = W_j with prefix p
        h, p = xs
        return h.T @ b, b @ p.T

    back, hidden_grads = jax.lax.scan(backward, back, (stack, prefixes), reverse=True)
    grads = (back, *(hidden_grads[k] for k in range(stack.shape[0])), g_last)
    return grads, w, e


def _balancedness_drift(layers: tuple, d0: tuple) -> Any:
    """max_j ‖D_j(t) − D_j(0)‖_F with D_j = W_{j+1}ᵀW_{j+1} − W_jW_jᵀ (0 at depth 1)."""
    drifts = [jnp.max(jnp.sqrt(jnp.sum((d - d0[j]) ** 2, axis=(-2, -1)))) for j, d in
              enumerate(initial_balancedness(layers))]  # fmt: skip
    return jnp.max(jnp.stack(drifts)) if drifts else jnp.zeros(())


def initial_balancedness(layers: tuple) -> tuple:
    """D_j for every adjacent pair (empty for depth 1); the hidden pairs of deep networks vectorised."""
    stack = _hidden_stack(layers)
    if stack is None:
        return tuple(layers[j + 1].T @ layers[j + 1] - layers[j] @ layers[j].T for j in range(len(layers) - 1))
    inner = jnp.einsum("kji,kjl->kil", stack[1:], stack[1:]) - jnp.einsum("kij,klj->kil", stack[:-1], stack[:-1])
    head = stack[0].T @ stack[0] - layers[0] @ layers[0].T
    tail = layers[-1].T @ layers[-1] - stack[-1] @ stack[-1].T
    return (head, inner, tail)


def _summary(w: Any, e: Any, problem_cls: type, arrays: dict) -> dict[str, Any]:
    return {
        "loss": problem_cls.loss_from_grad(w, e, arrays),
        "product": w,
        "singular_values": jnp.linalg.svd(w, compute_uv=False),
    }


def _layer_flow(problem_cls: type, save_weights: bool, modified: bool) -> Flow:
    grad_fn = problem_cls.grad_fn

    def gradient(y: tuple, arrays: dict) -> tuple:
        return layer_gradients(y, grad_fn, arrays)[0]

    def field(t: Any, y: tuple, args: dict) -> tuple:
        grads = gradient(y, args["problem"])
        if modified:  # ∇L̃ = ∇L + (η/2)∇²L ∇L
            hvp = jax.jvp(lambda v: gradient(v, args["problem"]), (y,), (grads,))[1]
            return tuple(-(g + 0.5 * args["lr"] * h) for g, h in zip(grads, hvp, strict=True))
        return tuple(-g for g in grads)

    def loss(y: tuple, args: dict) -> Any:  # the forward product only: no layer gradients
        stack = _hidden_stack(y)
        if stack is None:
            w = product(y)
        else:
            w = y[-1] @ jax.lax.scan(lambda p, h: (h @ p, None), y[0], stack)[0]
        return problem_cls.loss_fn(w, args["problem"])

    def observe(y: tuple, args: dict) -> dict[str, Any]:
        grads, w, e = layer_gradients(y, grad_fn, args["problem"])
        out = _summary(w, e, problem_cls, args["problem"])
        out["grad_norm"] = jnp.sqrt(sum(jnp.sum(g * g) for g in grads))
        out["balancedness"] = _balancedness_drift(y, args["d0"])
        if save_weights:
            out["weights"] = y
        return out

    def prepare(y0: tuple, arrays: dict, c: dict) -> dict:
        return {"problem": arrays, "d0": initial_balancedness(y0), "lr": c["lr"]}

    return Flow("modified" if modified else "layers", field, loss, observe, prepare, problem_cls=problem_cls)


def _end_to_end_flow(problem_cls: type, depth: float) -> Flow:
    depth = math.inf if math.isinf(depth) else int(depth)

    def field(t: Any, w: Any, args: dict) -> Any:
        return end_to_end_field(w, problem_cls.grad_fn(w, args["problem"]), depth, rescale=True)

    def loss(w: Any, args: dict) -> Any:
        return problem_cls.loss_fn(w, args["problem"])

    def observe(w: Any, args: dict) -> dict[str, Any]:
        e = problem_cls.grad_fn(w, args["problem"])
        out = _summary(w, e, problem_cls, args["problem"])
        # −dℓ/dτ = ⟨E, A_N(E)⟩/N = Σ_j ‖G_j‖²/N for the balanced layers: finite at N = ∞
        rate = -jnp.sum(e * end_to_end_field(w, e, depth, rescale=True))
        out["grad_norm"] = jnp.sqrt(jnp.maximum(rate, 0.0))
        out["balancedness"] = jnp.full((), jnp.nan)  # balanced by construction: nothing is integrated to drift
        return out

    def prepare(y0: Any, arrays: dict, c: dict) -> dict:
        return {"problem": arrays, "lr": c["lr"]}

    return Flow("end_to_end", field, loss, observe, prepare, float(depth), problem_cls.grad_fn,
                symmetric_jacobian=False, end_to_end=True, rescaled_time=True, problem_cls=problem_cls)  # fmt: skip


@cache
def get_flow(name: str, problem_cls: type, depth: float, save_weights: bool = False) -> Flow:
    """The (cached) Flow of a kind for a problem class; `depth` matters only for ``end_to_end``."""
    if name == "end_to_end":
        return _end_to_end_flow(problem_cls, depth)
    return _layer_flow(problem_cls, save_weights, modified=name == "modified")


def flat_problem(problem_cls: type) -> tuple[Callable, Callable]:
    """Loss L(W_1, …, W_N) = ℓ(W_N⋯W_1) and its autodiff gradient (for Hessians and tests)."""

    def loss(layers: tuple, arrays: dict) -> Any:
        return problem_cls.loss_fn(product(layers), arrays)

    return loss, jax.grad(loss)
