"""Whether a per-layer run still resolves its flow in float64: the velocity of the weights against the round-off
of the field that drives them.

After an escape, the learned layers of a deep network have entries of order one while the modes still on their
plateau move at a speed of order scale^{N−1}. Every matrix product of the field rounds at ε times its order-one
terms, so the field's slow part carries an absolute error of about ε‖E‖Π‖W_i‖ whatever the integrator, and once
the true slow speed falls below that the computed trajectory is the round-off's, not the flow's. Measured on a
10×10 rank-3 completion (60 observed entries) at depth 8 from per-layer Gaussian 1e-3, just after the first
escape: the slow part of the field (on the eigenvectors of ∇²L with |λ| < 1e-8) is 2.9e-21 in exact rational
arithmetic and its float64 error 1.9e-16; the Rosenbrock path then leaves the weights bitwise unchanged (rtol 1e-6)
or moves them at 1e-3 of the round-off scale below (rtol 1e-9), at every step of the stiffness ceiling. At depth 6
from 1e-3 on a 16×16 completion the same plateau moves at 0.9 of that scale, a speed that grows window by window
as the next mode escapes: resolved, if slowly.

A cell whose weights moved, over a window of at least `MIN_STEPS` accepted steps ending with a long step
(h·λ_max ≥ `LONG_STEP`, the stiff regime), at less than `RESOLVE` times the round-off scale, while
ℓ − ℓ* > `FAR`·(min(ℓ₀, ℓ(0)) − ℓ*) (the stop rule's gap, `core.stop_gap`), stops as `Status.UNRESOLVED` instead
of spending its step budget on round-off. (Steps that are short for another reason — rejections against a field
that breaks, say — leave increments below an ulp of the weights that say nothing of the flow's speed: those runs
keep their other statuses. At a minimum the field is at round-off too, but the stable directions damp it: the loss
guard keeps a converged cell that runs on to a requested t1 out of this.)
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from dlnode.flows.flow import Flow, layer_gradients, unpack_layers
from dlnode.solvers.core import RUNNING, Status, stop_gap

__all__ = ["FAR", "LONG_STEP", "MIN_STEPS", "RESOLVE", "roundoff_scale", "unresolved"]

RESOLVE, MIN_STEPS, FAR, LONG_STEP = 1e-2, 32, 1e-6, 30.0


def roundoff_scale(flow: Flow, layers: Any, args: dict) -> Any:
    """ρ = ε‖E‖_F (Σ_j Π_{i≠j} ‖W_i‖²_F)^{1/2}: the size of the float64 round-off of the layer field
    −(W_N⋯W_{j+1})ᵀ E (W_{j−1}⋯W_1)ᵀ at `layers` (a tuple or `Stacked`, one cell). A scale, not a bound: the
    measured error on the plateau above was 1/60 of it in the slow directions and 1/3 of it in all. For a diagonal
    network (β = u^D − v^D, the field −D u^{D−1} ⊙ E and +D v^{D−1} ⊙ E) the same scale is ε‖E‖_F times the norm of
    the pair (D|u|^{D−1}, D|v|^{D−1})."""
    if flow.network == "diagonal":
        _, _, e = flow.backprop(layers, flow.problem_cls.grad_fn, args["problem"])
        factor = jnp.sqrt(sum(jnp.sum((flow.depth * jnp.abs(x) ** (flow.depth - 1)) ** 2) for x in layers))
        return jnp.finfo(e.dtype).eps * jnp.linalg.norm(e) * factor
    _, _, e = layer_gradients(layers, flow.problem_cls.grad_fn, args["problem"])
    logs = jnp.concatenate([0.5 * jnp.log(jnp.sum(w * w, axis=(-2, -1))).reshape(-1) for w in
                            unpack_layers(layers, batch=False)])  # fmt: skip
    others = jnp.sum(logs) - logs  # log Π_{i≠j} ‖W_i‖
    return jnp.finfo(e.dtype).eps * jnp.linalg.norm(e) * jnp.sqrt(jnp.sum(jnp.exp(2 * others)))


def unresolved(status: Any, moved: Any, elapsed: Any, accepted: Any, step: Any, rho: Any, loss: Any, loss0: Any,
               loss_min: Any, loss_scale: Any = 0.0) -> Any:  # fmt: skip
    """`status`, or `Status.UNRESOLVED` for a running cell whose weights moved by `moved` (2-norm) in `elapsed`
    time over `accepted` steps, the last of size `step`·λ_max ≥ `LONG_STEP`, at less than `RESOLVE`·`rho` while its
    loss is above `FAR` of the stop rule's gap (`stop_gap` of ℓ₀ and ℓ(0) = `loss_scale`: a large init's ℓ₀ far
    above ℓ(0) would call a loss still 1e-3 ℓ(0) above ℓ* near enough)."""
    # elapsed = 0: accepted stiff steps that no longer move the (compensated) time, far out on the axis
    slow = (accepted >= MIN_STEPS) & (step >= LONG_STEP) & ((elapsed <= 0) | (moved < RESOLVE * rho * elapsed))
    far = loss - loss_min > FAR * stop_gap(loss0, loss_scale, loss_min)
    return jnp.where((status == RUNNING) & slow & far, int(Status.UNRESOLVED), status).astype(status.dtype)
