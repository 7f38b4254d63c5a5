"""The dynamics dlnode integrates, each as a `Flow`: vector field f(t, y, args), loss, and saved observables.

- ``layers``: per-layer gradient flow (docs/math.md §1), y = (W_1, …, W_N),
  dW_j/dt = −∂L/∂W_j = −(W_N⋯W_{j+1})ᵀ E (W_{j−1}⋯W_1)ᵀ with E = ∇ℓ(W).
- ``modified``: the gradient flow of L̃ = L + (η/4)‖∇L‖² (Barrett & Dherin 2021, arXiv 2009.11162), which gradient
  descent with step η follows to O(η²): dW_j/dt = −(∇L + (η/2)∇²L ∇L)_j, the Hessian term by one jvp.
- ``central``: the central flow of GD with step η (Cohen, Damian et al. 2024, arXiv 2410.24206): the gradient flow
  while the sharpness is below 2/η, constrained to it on the edge; see `dlnode.flows.central`.
- ``end_to_end``: for balanced layers, W alone, dW/dτ = −A_N(E)/N on the rescaled time τ = N t (or −A_∞(E) at
  depth ∞); see `dlnode.flows.endtoend`.

`args` is a dict: "problem" (the problem's arrays, see `Problem.arrays`), "d0" (initial balancedness, per-layer
flows) and "lr" (the modified flow's η, a traced value). Flows are cached per (kind, problem class, options), so
one compiled solver serves every problem of one kind and shape.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import cache, partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dlnode.flows.central import central_parts
from dlnode.flows.endtoend import end_to_end_field
from dlnode.flows.hessian import sharpness_lower_bound, tracked_eigenvalues
from dlnode.problems.network import product

__all__ = [
    "FLOWS",
    "FLOW_KINDS",
    "Flow",
    "FlowKind",
    "Stacked",
    "end_to_end_observables",
    "get_flow",
    "layer_gradients",
    "pack_layers",
    "partial_products",
    "sharpness_floors",
    "unpack_layers",
]


@dataclasses.dataclass(frozen=True)
class FlowKind:
    """What a kind of flow asks of a call, whatever the problem: the rules of `dlnode.run.rules` read these."""

    name: str
    needs_lr: bool = False  # defined by a step size (the modified flow is GD's to second order in lr)
    end_to_end: bool = False  # the state is W of balanced layers: a balanced init, and depth inf allowed


FLOW_KINDS = {
    "layers": FlowKind("layers"),
    "modified": FlowKind("modified", needs_lr=True),
    "central": FlowKind("central", needs_lr=True),
    "end_to_end": FlowKind("end_to_end", end_to_end=True),
}
FLOWS = tuple(FLOW_KINDS)


@dataclasses.dataclass(frozen=True)
class Flow:
    """What a solver needs of a dynamics: the field, the loss of a state, and the observables saved along it."""

    name: str
    field: Callable[[Any, Any, dict], Any]
    loss: Callable[[Any, dict], Any]
    observe: Callable[[Any, dict], dict[str, Any]]
    prepare: Callable[[Any, dict, dict], dict]  # (y0, problem arrays, controls) -> args
    depth: float = math.nan  # end_to_end: N (or inf); diagonal: D; NaN for the dense layers (the state has N)
    gradient: Callable[[Any, dict], Any] | None = None  # end_to_end only: E = ∇ℓ(W) from (W, problem arrays)
    # capabilities that methods ask for (instead of comparing names)
    symmetric_jacobian: bool = True  # the Jacobian is −∇²L (a gradient flow of the state): CG stage solves apply
    end_to_end: bool = False  # the state is the end-to-end matrix W of balanced layers (no per-layer weights)
    rescaled_time: bool = False  # the time axis is τ = N t
    problem_cls: type | None = None
    backprop: Callable | None = None  # (y, grad_fn, arrays) -> (∂L/∂y, W, E); None: the dense `layer_gradients`
    network: str = "dense"  # dense layers, or a diagonal network (see `dlnode.flows.diagonal`)
    noise: Any = None  # the stochastic methods' `Noise` (minibatch, labels): what the SDE methods diffuse
    # where the flow saves the curvature: observe(y, args) with its Lanczos warm-started, (y, args, start) ->
    # (observables, the next start); start is a flat vector of the state's size (zeros: the fixed start). A method
    # that carries the start from save to save (`FixedStep`) calls this instead of `observe`.
    observe_warm: Callable[[Any, dict, Any], tuple[dict[str, Any], Any]] | None = None


SCAN_DEPTH = 6  # from this depth on, equal square hidden layers are held as one stacked array and run through
# lax.scan: the graph (and the compile time) stops growing with N (measured at depth 64: see `Stacked`)


class Stacked(NamedTuple):
    """The state of a deep network whose hidden layers W_2 … W_{N−1} share one square shape: W_1, the hidden layers
    stacked on a leading axis, and W_N. Three leaves instead of N, so every solver's graph (the ravel of the state,
    the per-leaf Runge–Kutta updates, the stage loops) has the same size at any depth (depth 64, rosenbrock, CPU:
    15.7 s of compilation with N leaves, half that stacked)."""

    first: Any
    hidden: Any
    last: Any


def stackable(shapes: list[tuple[int, int]]) -> bool:
    """Whether layers of these (out, in) shapes are held as `Stacked`: at least `SCAN_DEPTH` layers whose hidden ones
    share one square shape."""
    hidden = shapes[1:-1]
    return len(shapes) >= SCAN_DEPTH and len(set(hidden)) == 1 and hidden[0][0] == hidden[0][1]


def pack_layers(layers: tuple, batch: bool = True) -> Any:
    """The state the solvers integrate: `layers` as given, or `Stacked` when `stackable`. With `batch`, every layer
    has the batch of cells as its leading axis (host arrays)."""
    layers = tuple(layers)
    if not stackable([tuple(np.shape(w)[-2:]) for w in layers]):
        return layers
    xp = np if all(isinstance(w, np.ndarray) for w in layers) else jnp
    return Stacked(layers[0], xp.stack(layers[1:-1], axis=1 if batch else 0), layers[-1])


def unpack_layers(state: Any, batch: bool = True) -> tuple:
    """The tuple (W_1, …, W_N) of a state from `pack_layers` (the inverse)."""
    if not isinstance(state, Stacked):
        return tuple(state)
    n = state.hidden.shape[1 if batch else 0]
    hidden = [state.hidden[:, k] if batch else state.hidden[k] for k in range(n)]
    return (state.first, *hidden, state.last)


def sharpness_floors(problem_cls: type, layers: tuple, arrays: dict) -> np.ndarray:
    """A lower bound on the sharpness λ_max(∇²L) of each cell (`hessian.sharpness_lower_bound`), from layers with
    the batch of cells as their leading axis; NaN for a cell whose layers are not finite."""
    values = np.asarray(_floors(problem_cls, tuple(jnp.asarray(w) for w in layers), arrays))
    finite = np.all([np.all(np.isfinite(np.asarray(w)), axis=tuple(range(1, np.ndim(w)))) for w in layers], axis=0)
    return np.where(finite, values, np.nan)


@partial(jax.jit, static_argnums=0)
def _floors(problem_cls: type, layers: tuple, arrays: dict) -> Any:
    def one(y: tuple) -> Any:
        safe = tuple(jnp.where(jnp.isfinite(w), w, 0.0) for w in y)
        return sharpness_lower_bound(lambda z: layer_gradients(z, problem_cls.grad_fn, arrays)[0], safe)

    return jax.vmap(one)(layers)


def layer_gradients(layers: Any, grad_fn: Callable, arrays: dict) -> tuple[Any, Any, Any]:
    """Gradients G_j = ∂L/∂W_j of L = ℓ(W_N⋯W_1) from prefix and suffix products: 3(N−1) matmuls.

    The forward pass stores the prefixes P_j = W_{j−1}⋯W_1 (N−1 matmuls); the backward pass carries
    B_j = (W_N⋯W_{j+1})ᵀ E down the network (N−1 matmuls); G_j = B_j P_jᵀ (N−1 matmuls, none for j = 1).
    A `Stacked` state runs both passes as `lax.scan` over its hidden stack.

    Returns
    -------
    The gradients in the structure of `layers` (a tuple (G_1, …, G_N), or `Stacked`), the end-to-end matrix W and
    E = ∇ℓ(W).
    """
    if isinstance(layers, Stacked):
        return _scanned_gradients(layers, grad_fn, arrays)
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


def partial_products(layers: tuple) -> tuple[list, list, Any]:
    """The prefixes P_j = W_{j−1}⋯W_1 (P_1 = I), the suffixes L_j = W_N⋯W_{j+1} (L_N = I) and W = W_N⋯W_1 of a
    tuple of layers, so that ∂W/∂W_j [X] = L_j X P_j: 2(N−1) matmuls."""
    prefixes = [jnp.eye(layers[0].shape[1], dtype=layers[0].dtype)]
    for layer in layers[:-1]:
        prefixes.append(layer @ prefixes[-1])
    suffixes = [jnp.eye(layers[-1].shape[0], dtype=layers[-1].dtype)]
    for layer in layers[:0:-1]:
        suffixes.insert(0, suffixes[0] @ layer)
    return prefixes, suffixes, layers[-1] @ prefixes[-1]


def _stacked_product(layers: Stacked) -> tuple[Any, Any]:
    """(W, the prefixes W_{j−1}⋯W_1 at each hidden layer W_j, and W_{N−1}⋯W_1)."""

    def forward(p, h):  # p = W_{j−1}⋯W_1 before hidden layer h = W_j
        return h @ p, p

    p_last, prefixes = jax.lax.scan(forward, layers.first, layers.hidden)
    return layers.last @ p_last, (prefixes, p_last)


def _scanned_gradients(layers: Stacked, grad_fn: Callable, arrays: dict) -> tuple[Stacked, Any, Any]:
    w, (prefixes, p_last) = _stacked_product(layers)
    e = grad_fn(w, arrays)
    g_last = e @ p_last.T
    back = layers.last.T @ e

    def backward(b, xs):  # b = (W_N⋯W_{j+1})ᵀ E at hidden layer h = W_j with prefix p
        h, p = xs
        return h.T @ b, b @ p.T

    back, hidden_grads = jax.lax.scan(backward, back, (layers.hidden, prefixes), reverse=True)
    return Stacked(back, hidden_grads, g_last), w, e


def _balancedness_drift(layers: tuple, d0: tuple) -> Any:
    """max_j ‖D_j(t) − D_j(0)‖_F with D_j = W_{j+1}ᵀW_{j+1} − W_jW_jᵀ (0 at depth 1)."""
    drifts = [jnp.max(jnp.sqrt(jnp.sum((d - d0[j]) ** 2, axis=(-2, -1)))) for j, d in
              enumerate(initial_balancedness(layers))]  # fmt: skip
    return jnp.max(jnp.stack(drifts)) if drifts else jnp.zeros(())


def initial_balancedness(layers: Any) -> tuple:
    """D_j for every adjacent pair (empty for depth 1); the hidden pairs of a `Stacked` state vectorised."""
    if not isinstance(layers, Stacked):
        return tuple(layers[j + 1].T @ layers[j + 1] - layers[j] @ layers[j].T for j in range(len(layers) - 1))
    stack = layers.hidden
    inner = jnp.einsum("kji,kjl->kil", stack[1:], stack[1:]) - jnp.einsum("kij,klj->kil", stack[:-1], stack[:-1])
    head = stack[0].T @ stack[0] - layers.first @ layers.first.T
    tail = layers.last.T @ layers.last - stack[-1] @ stack[-1].T
    return (head, inner, tail)


def singular_values_of(w: Any) -> Any:
    """σ(W) by an SVD; NaN where W is not finite (a diverged run), whose SVD LAPACK refuses with a line on stderr
    at every save."""
    finite = jnp.all(jnp.isfinite(w))
    return jnp.where(finite, jnp.linalg.svd(jnp.where(finite, w, 0.0), compute_uv=False), jnp.nan)


def _summary(w: Any, e: Any, problem_cls: type, arrays: dict, singular_values: Any = None) -> dict[str, Any]:
    """Loss, W and its singular values (by an SVD of W unless given)."""
    sv = singular_values_of(w) if singular_values is None else singular_values
    return {"loss": problem_cls.loss_from_grad(w, e, arrays), "product": w, "singular_values": sv}


def end_to_end_observables(w: Any, e: Any, problem_cls: type, arrays: dict, singular_values: Any, rate: Any) -> dict:
    """What an end-to-end run saves at W (E = ∇ℓ(W)), given its singular values (None: an SVD of W) and the rate
    −dℓ/dτ: the one set of observables for every method (the singular-coordinate path passes σ and the rate from
    its coordinates)."""
    return {
        **_summary(w, e, problem_cls, arrays, singular_values),
        "grad_norm": jnp.sqrt(jnp.maximum(rate, 0.0)),
        "balancedness": jnp.full((), jnp.nan, w.dtype),  # balanced by construction: nothing is integrated to drift
    }


@cache
def _layer_flow(problem_cls: type, save_weights: bool, name: str, sharpness: int = 0) -> Flow:
    """The per-layer flows (``layers``, ``modified``, ``central``); `sharpness` = k > 0 also saves the top k Hessian
    eigenvalues at every save time (the central flow always tracks max(k, 1) of them)."""
    grad_fn = problem_cls.grad_fn
    modified, central = name == "modified", name == "central"

    def gradient(y: tuple, arrays: dict) -> tuple:
        return layer_gradients(y, grad_fn, arrays)[0]

    def central_at(y: Any, args: dict, start: Any = None, monitor: bool = False) -> dict:
        return central_parts(lambda z: gradient(z, args["problem"]), y, args["lr"], max(sharpness, 1), start,
                             monitor)  # fmt: skip

    def field(t: Any, y: Any, args: dict) -> Any:
        if central:
            return central_at(y, args)["field"]
        grads = gradient(y, args["problem"])
        if modified:  # ∇L̃ = ∇L + (η/2)∇²L ∇L
            hvp = jax.jvp(lambda v: gradient(v, args["problem"]), (y,), (grads,))[1]
            return jax.tree_util.tree_map(lambda g, h: -(g + 0.5 * args["lr"] * h), grads, hvp)
        return jax.tree_util.tree_map(jnp.negative, grads)

    def loss(y: Any, args: dict) -> Any:  # the forward product only: no layer gradients
        w = _stacked_product(y)[0] if isinstance(y, Stacked) else product(y)
        return problem_cls.loss_fn(w, args["problem"])

    def observe_warm(y: tuple, args: dict, start: Any) -> tuple[dict[str, Any], Any]:
        grads, w, e = layer_gradients(y, grad_fn, args["problem"])
        out = _summary(w, e, problem_cls, args["problem"])
        out["grad_norm"] = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(grads)))
        out["balancedness"] = _balancedness_drift(y, args["d0"])
        if central:  # the top eigenvalues, the predicted oscillation and time-averaged loss, the regime
            parts = central_at(y, args, start, monitor=True)  # a save's Lanczos warm-started (the field's are not: §3)
            start = parts["start"]
            out.update({k: parts[k] for k in ("sharpness", "oscillation", "regime")})
            out["untracked_sharpness"] = parts["untracked"]
            out["loss_averaged"] = out["loss"] + parts["loss_shift"]
        elif sharpness:
            out["sharpness"], start = tracked_eigenvalues(lambda z: gradient(z, args["problem"]), y, sharpness, start)
        if save_weights:
            out["weights"] = unpack_layers(y, batch=False)
        return out, start

    def observe(y: tuple, args: dict) -> dict[str, Any]:
        return observe_warm(y, args, None)[0]

    def prepare(y0: Any, arrays: dict, c: dict) -> dict:
        return {"problem": arrays, "d0": initial_balancedness(y0), "lr": c["lr"]}

    return Flow(name, field, loss, observe, prepare, symmetric_jacobian=not central, problem_cls=problem_cls,
                observe_warm=observe_warm if sharpness or central else None)  # fmt: skip


@cache
def _end_to_end_flow(problem_cls: type, depth: float) -> Flow:
    def field(t: Any, w: Any, args: dict) -> Any:
        return end_to_end_field(w, problem_cls.grad_fn(w, args["problem"]), depth, rescale=True)

    def loss(w: Any, args: dict) -> Any:
        return problem_cls.loss_fn(w, args["problem"])

    def observe(w: Any, args: dict) -> dict[str, Any]:
        e = problem_cls.grad_fn(w, args["problem"])
        # −dℓ/dτ = ⟨E, A_N(E)⟩/N = Σ_j ‖G_j‖²/N for the balanced layers: finite at N = ∞
        rate = -jnp.sum(e * end_to_end_field(w, e, depth, rescale=True))
        return end_to_end_observables(w, e, problem_cls, args["problem"], None, rate)

    def prepare(y0: Any, arrays: dict, c: dict) -> dict:
        return {"problem": arrays, "lr": c["lr"]}

    return Flow("end_to_end", field, loss, observe, prepare, float(depth), problem_cls.grad_fn,
                symmetric_jacobian=False, end_to_end=True, rescaled_time=True, problem_cls=problem_cls)  # fmt: skip


def get_flow(name: str, problem_cls: type, depth: float, save_weights: bool = False, sharpness: int = 0) -> Flow:
    """The Flow of a kind for a problem class; `depth` matters only for ``end_to_end``, `sharpness` (the number of
    top Hessian eigenvalues saved along time) only for the per-layer flows. Cached on what matters, normalised
    (depth 2 and 2.0 are one flow, and every depth one layer flow), so that equal flows share their compiled
    solvers."""
    if name == "end_to_end":
        return _end_to_end_flow(problem_cls, math.inf if math.isinf(depth) else int(depth))
    return _layer_flow(problem_cls, bool(save_weights), name, int(sharpness))


def flat_problem(problem_cls: type) -> tuple[Callable, Callable]:
    """Loss L(W_1, …, W_N) = ℓ(W_N⋯W_1) and its autodiff gradient (for Hessians and tests)."""

    def loss(layers: tuple, arrays: dict) -> Any:
        return problem_cls.loss_fn(product(layers), arrays)

    return loss, jax.grad(loss)
