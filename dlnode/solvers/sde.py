"""The SDEs of minibatch SGD and of label noise, as diffrax terms: drift, exact low-rank diffusion, Brownian path.

SGD with step η is modelled by dθ = b(θ) dt + σ(θ) dB (Li, Tai & E 2017, 2019), b the gradient flow −∇L (or the
modified flow, ``flow="modified"``), σ(θ) σ(θ)ᵀ = η Σ(θ), Σ the covariance of one step's gradient noise. For the
problems with samples, every per-sample gradient is exact, so σ is an explicit factor with one column per sample
(no Cholesky, nothing approximated beyond the SDE itself). With gᵢ = ∇_θ ℓᵢ, ḡ their mean, and G(θ)[E] the
gradient in θ that a gradient E in W gives through the network (the backward pass):

- minibatch noise, batch B of n: σ(θ) = c_B [g₁ − ḡ, …, gₙ − ḡ], c_B = (η/(B n))^{1/2} with replacement, times
  ((n − B)/(n − 1))^{1/2} without (a full batch without replacement has no noise);
  σ(θ) b = c_B G(θ)[Σᵢ (bᵢ − b̄) 𝒜ᵢ*(rᵢ)]: one backward pass.
- label noise δ, batch B: σ(θ) = δ (η/(B n))^{1/2} [∇_θ r₁, …, ∇_θ rₙ] (per-sample Jacobian; δ√η/n at B = n);
  σ(θ) b = δ (η/(B n))^{1/2} G(θ)[Σᵢ 𝒜ᵢ*(bᵢ)].

Both together (label-noise SGD) drive independent Brownian motions: the control has n + n·k entries (k: the size
of one residual). The Brownian path is a `diffrax.VirtualBrownianTree` per path over [0, t1], resolved to
lr·2^−10: it is re-queried at any time, so a run in windows or continued from a checkpoint sees the same path, and
runs of one (path, lr, t1) at different steps dt (down to that resolution) or with different solvers integrate the
same Brownian path (their difference is the solvers' error, path by path).

Solvers: ``sde_euler`` is Euler–Maruyama on the Itô SDE. ``sde_heun`` is diffrax's Heun method, which solves the
Stratonovich SDE; it is given the Stratonovich drift of the same Itô SDE, b − ½ Σₖ Dσₖ σₖ. Each column σₖ is a
gradient in θ (of c_B(ℓₖ − L), or of a component of rₖ), so Dσₖ is symmetric and ½ Σₖ Dσₖ σₖ = ¼ ∇_θ ‖σ(θ)‖²_F,
one more backward pass through the K column products. (For label noise, ‖σ‖²_F = δ² η n R(θ)/(B n) with R the
implicit regulariser of Blanc et al. 2020.)

References
----------
Li, Tai, E (2017), arXiv 1511.06251; Li, Tai, E (2019), JMLR 20(40); Li, Malladi, Arora (2021), arXiv 2102.12470;
Blanc, Gupta, Valiant, Valiant (2020), arXiv 1904.09080; Kloeden & Platen (1992), Numerical Solution of Stochastic
Differential Equations, §10–§15.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import lineax

from dlnode.flows.flow import layer_gradients
from dlnode.problems.samples import samples_of

__all__ = ["SDE_SOLVERS", "control_size", "diffusion", "sde_terms"]

SDE_SOLVERS = {"sde_euler": diffrax.Euler, "sde_heun": diffrax.Heun}
STRATONOVICH = {"sde_heun"}
TREE_LEVELS = 10  # the Brownian tree resolves time to lr·2^−10: the same path at every dt ≥ that (for one lr, t1)


def minibatch_noisy(noise: Any) -> bool:
    """Whether the minibatch has noise of its own (not every sample once per step)."""
    return not noise.full


def control_size(noise: Any, width: int) -> int:
    """K, the number of Brownian motions: n for the minibatch, n·width for the labels."""
    return noise.n * (int(minibatch_noisy(noise)) + (width if noise.label else 0))


def _batch_factor(noise: Any) -> float:
    """B/n-dependent part of c_B² / η: 1/(B n), times (n − B)/(n − 1) without replacement."""
    base = 1.0 / (noise.batch * noise.n)
    if noise.sampling == "with_replacement":
        return base
    return base * (noise.n - noise.batch) / max(noise.n - 1, 1)


def diffusion(noise: Any, problem_cls: type, backprop: Callable) -> Callable:
    """(y, b, arrays, lr, delta) -> σ(y) b, matrix-free (one backward pass), b of length `control_size`."""
    samples = samples_of(problem_cls.kind)
    noisy_batch = minibatch_noisy(noise)
    c_batch = math.sqrt(_batch_factor(noise))
    c_label = math.sqrt(1.0 / (noise.batch * noise.n))

    def apply(y: Any, b: Any, arrays: dict, lr: Any, delta: Any) -> Any:
        width = samples.width(arrays)

        def gradient(w: Any, arrays: dict) -> Any:
            e = jnp.zeros_like(w)
            start = 0
            if noisy_batch:
                part = b[: noise.n]
                r = samples.residuals(w, arrays, None)
                e = e + c_batch * samples.adjoint(r * (part - jnp.mean(part))[:, None], arrays, None)
                start = noise.n
            if noise.label:
                part = b[start : start + noise.n * width].reshape(noise.n, width)
                e = e + (delta * c_label) * samples.adjoint(part, arrays, None)
            return jnp.sqrt(lr) * e

        return backprop(y, gradient, arrays)[0]

    return apply


def sde_terms(name: str, flow: Any, key: Any, t1: Any, arrays: dict, lr: Any, delta: Any, width: int) -> Any:
    """The diffrax terms of one path: drift (Stratonovich-corrected for `STRATONOVICH` solvers) and the
    diffusion as a lineax operator on the increments of a VirtualBrownianTree over [0, t1]."""
    apply = diffusion(flow.noise, flow.problem_cls, flow.backprop or layer_gradients)
    size = control_size(flow.noise, width)
    structure = jax.ShapeDtypeStruct((size,), jnp.float64)
    basis = jnp.eye(size)

    def drift(t: Any, y: Any, args: dict) -> Any:
        b = flow.field(t, y, args)
        if name not in STRATONOVICH:
            return b

        def spread(state: Any) -> Any:  # ‖σ(θ)‖²_F, column by column
            cols = jax.vmap(lambda e: apply(state, e, arrays, lr, delta))(basis)
            return sum(jnp.sum(c * c) for c in jax.tree_util.tree_leaves(cols))

        correction = jax.grad(spread)(y)
        return jax.tree_util.tree_map(lambda a, g: a - 0.25 * g, b, correction)

    def sigma(t: Any, y: Any, args: dict) -> Any:
        return lineax.FunctionLinearOperator(lambda b: apply(y, b, arrays, lr, delta), structure)

    brownian = diffrax.VirtualBrownianTree(0.0, t1, tol=lr * 2.0**-TREE_LEVELS, shape=structure, key=key)
    return diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(sigma, brownian))
