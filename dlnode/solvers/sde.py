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
of one residual).

The Brownian path of a path's key is built on the lr grid (a Lévy construction, `brownian_increment`): the increment
over [k·lr, (k+1)·lr] is √lr·Z_k, Z_k drawn from the key's Brownian stream (apart from its minibatch and label
streams) folded with k, and inside that cell each dyadic interval is split at its midpoint by a Brownian bridge draw
keyed by (k, level, index), down to lr·2^−10. A step dt = lr·2^m (m = −10 … 10; the call's rules refuse any other,
see `dt_level`) is a union of whole cells or one dyadic interval, so its increment is exact and costs
2^max(m, 0) + max(−m, 0) normal draws: one at dt = lr. The increment of step n is a pure function of (key, n, dt/lr):
a run in windows, continued from a checkpoint, or run alone sees the same path, and runs of one (path, lr) at every
such dt, or with different solvers, integrate the same Brownian path (their difference is the solvers' error, path
by path). (A tree over the whole horizon, diffrax's VirtualBrownianTree, descends log2(t1/lr) + 10 levels for
every increment: 8× slower at 200 steps.)

Solvers: ``sde_euler`` is Euler–Maruyama on the Itô SDE. ``sde_heun`` is diffrax's Heun method, which solves the
Stratonovich SDE; it is given the Stratonovich drift of the same Itô SDE, b − ½ Σₖ Dσₖ σₖ. Each column σₖ is a
gradient in θ (of c_B(ℓₖ − L), or of a component of rₖ), so Dσₖ is symmetric and ½ Σₖ Dσₖ σₖ = ¼ ∇_θ ‖σ(θ)‖²_F,
one more backward pass through the K column products. (For label noise, ‖σ‖²_F = δ² η n R(θ)/(B n) with R the
implicit regulariser of Blanc et al. 2020.) For a dense network on regression or matrix sensing ‖σ‖²_F has a closed
form, so the correction costs a few products instead of K backward passes (`dense_spread`); for a diagonal network
on either, two adjoints (`diagonal_spread`).

References
----------
Li, Tai, E (2017), arXiv 1511.06251; Li, Tai, E (2019), JMLR 20(40); Li, Malladi, Arora (2021), arXiv 2102.12470;
Blanc, Gupta, Valiant, Valiant (2020), arXiv 1904.09080; Kloeden & Platen (1992), Numerical Solution of Stochastic
Differential Equations, §10–§15.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from dlnode.flows.diagonal import diagonal_backprop
from dlnode.flows.flow import layer_gradients, partial_products
from dlnode.problems.samples import samples_of
from dlnode.solvers.stochastic import BROWNIAN_STREAM

__all__ = [
    "DT_LEVELS",
    "SDE_SOLVERS",
    "brownian_increment",
    "control_size",
    "closed_spread",
    "dense_spread",
    "diagonal_spread",
    "diffusion",
    "dt_level",
    "sde_solver",
    "sde_terms",
]

SDE_SOLVERS = {"sde_euler": "Euler", "sde_heun": "Heun"}  # diffrax's solvers by name: diffrax loads with the first SDE
STRATONOVICH = {"sde_heun"}
DT_LEVELS = 10  # an SDE step is dt = lr·2^m, |m| ≤ this: every such step integrates the same Brownian path
CELL = 0  # a cell's own increment is drawn from its key folded with 0; its bridge levels with 1 … DT_LEVELS


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


def _regression_spread(noise: Any) -> Callable:
    """(layers, arrays, lr, delta) -> ‖σ(θ)‖²_F of `diffusion` for a dense network (a tuple of layers) on a problem
    with regression samples, in closed form.

    With L_j = W_N⋯W_{j+1}, b_i = W_{j−1}⋯W_1 xᵢ and a_i = L_jᵀ rᵢ, layer j's part of a column whose W-space matrix
    is G is L_jᵀ G (W_{j−1}⋯W_1)ᵀ. A label column (sample i, output o) has G = e_o xᵢᵀ, so the label columns add
    ‖L_j‖²_F Σᵢ ‖b_i‖² per layer; the minibatch column k has G = r_k x_kᵀ − ḡ, ḡ = (1/n) Σᵢ rᵢ xᵢᵀ, so those columns
    add Σ_k ‖a_k‖²‖b_k‖² − n ‖(1/n) Σᵢ a_i b_iᵀ‖²_F. Times η and the batch and label constants of `diffusion`.
    """
    samples = samples_of("sparse_regression")
    noisy_batch = minibatch_noisy(noise)
    batch_sq = _batch_factor(noise)
    label_sq = 1.0 / (noise.batch * noise.n)

    def spread(layers: tuple, arrays: dict, lr: Any, delta: Any) -> Any:
        prefixes, suffixes, w = partial_products(layers)
        features = [arrays["inputs"] @ p.T for p in prefixes]  # b_i of every layer, as rows: (n, width_{j−1})
        total = jnp.zeros((), w.dtype)
        if noise.label:
            total = total + delta**2 * label_sq * sum(
                jnp.sum(s * s) * jnp.sum(f * f) for s, f in zip(suffixes, features, strict=True)
            )
        if noisy_batch:
            r = samples.residuals(w, arrays, None)  # (n, d_out)
            for s, f in zip(suffixes, features, strict=True):
                a = r @ s  # a_i as rows
                mean = a.T @ f / noise.n
                total = total + batch_sq * (
                    jnp.sum(jnp.sum(a * a, 1) * jnp.sum(f * f, 1)) - noise.n * jnp.sum(mean * mean)
                )
        return lr * total

    return spread


def _sensing_spread(noise: Any) -> Callable:
    """(layers, arrays, lr, delta) -> ‖σ(θ)‖²_F of `diffusion` for a dense network on matrix sensing, in closed form.

    A column whose W-space matrix is G has layer j's part L_jᵀ G P_jᵀ (P_j = W_{j−1}⋯W_1), of squared norm
    ⟨L_jL_jᵀ G, G P_jᵀP_j⟩. A label column (sample i) has G = Aᵢ: tᵢ = ⟨L_jL_jᵀAᵢ, AᵢP_jᵀP_j⟩ each; the minibatch
    column k has G = r_k A_k − ḡ, ḡ = (1/n) Σᵢ rᵢAᵢ: Σ_k r_k² t_k − n ‖L_jᵀ ḡ P_jᵀ‖²_F.
    """
    samples = samples_of("matrix_sensing")
    noisy_batch = minibatch_noisy(noise)
    batch_sq = _batch_factor(noise)
    label_sq = 1.0 / (noise.batch * noise.n)

    def spread(layers: tuple, arrays: dict, lr: Any, delta: Any) -> Any:
        a = arrays["sensing"]  # (n, d_out, d_in)
        prefixes, suffixes, w = partial_products(layers)
        r = samples.residuals(w, arrays, None)[:, 0] if noisy_batch else None
        total = jnp.zeros((), w.dtype)
        for left, right in zip(suffixes, prefixes, strict=True):
            t = jnp.einsum("iab,iab->i", jnp.einsum("ab,ibc->iac", left @ left.T, a), a @ (right.T @ right))
            if noise.label:
                total = total + delta**2 * label_sq * jnp.sum(t)
            if noisy_batch:
                mean = left.T @ jnp.einsum("i,iab->ab", r, a) @ right.T / noise.n
                total = total + batch_sq * (jnp.sum(r * r * t) - noise.n * jnp.sum(mean * mean))
        return lr * total

    return spread


def dense_spread(noise: Any, kind: str) -> Callable | None:
    """The closed form of ‖σ(θ)‖²_F for a dense network on problems of `kind`, or None where there is none."""
    closed_form = {"sparse_regression": _regression_spread, "matrix_sensing": _sensing_spread}.get(kind)
    return None if closed_form is None else closed_form(noise)


def diagonal_spread(noise: Any, kind: str, depth: int) -> Callable:
    """(state, arrays, lr, delta) -> ‖σ(θ)‖²_F of `diffusion` for a depth-D diagonal network, in closed form.

    A column whose W-space matrix is G has the θ-part (D u^{D−1}⊙G, −D v^{D−1}⊙G) (`diagonal_backprop`), so
    ‖σ‖²_F = ⟨s, C⟩ with s = D²(u^{2D−2} + v^{2D−2}) and C = Σ_columns G⊙G, entrywise. The label columns
    (δ c √η 𝒜ᵢ*(e_o), c² = 1/(B n)) add δ² c² η Σᵢ 𝒜ᵢ*(1)⊙𝒜ᵢ*(1); the minibatch columns (c_B √η (𝒜_k*(r_k) − ḡ),
    ḡ = (1/n) Σᵢ 𝒜ᵢ*(rᵢ)) add c_B² η (Σ_k 𝒜_k*(r_k)⊙𝒜_k*(r_k) − n ḡ⊙ḡ): two adjoints instead of K backward passes.
    """
    samples = samples_of(kind)
    noisy_batch = minibatch_noisy(noise)
    batch_sq = _batch_factor(noise)
    label_sq = 1.0 / (noise.batch * noise.n)

    def spread(state: tuple, arrays: dict, lr: Any, delta: Any) -> Any:
        # the chain rule of `diagonal_backprop` on a gradient of ones: (D u^{D−1}, −D v^{D−1}), squared is s
        (du, dv), w, _ = diagonal_backprop(state, lambda w, _: jnp.ones_like(w), arrays, depth)
        s = du * du + dv * dv
        energy = jnp.zeros_like(w)
        if noise.label:
            ones = jnp.ones((noise.n, samples.width(arrays)), w.dtype)
            energy = energy + delta**2 * label_sq * samples.adjoint_squares(ones, arrays)
        if noisy_batch:
            r = samples.residuals(w, arrays, None)
            mean = samples.adjoint(r, arrays, None) / noise.n
            energy = energy + batch_sq * (samples.adjoint_squares(r, arrays) - noise.n * mean * mean)
        return lr * jnp.sum(s * energy)

    return spread


def closed_spread(flow: Any) -> Callable | None:
    """The closed form of ‖σ(θ)‖²_F for the network and problem of `flow`, or None where there is none."""
    if flow.network == "diagonal":
        return diagonal_spread(flow.noise, flow.problem_cls.kind, int(flow.depth))
    return dense_spread(flow.noise, flow.problem_cls.kind) if flow.backprop is None else None


def dt_level(lr: float, dt: float) -> int | None:
    """m with dt = lr·2^m exactly (|m| ≤ `DT_LEVELS`), or None when dt is not such a step."""
    m = math.log2(dt / lr) if dt > 0 and lr > 0 else math.nan
    if not math.isfinite(m) or abs(m) > DT_LEVELS or m != round(m) or lr * 2.0 ** round(m) != dt:
        return None
    return int(round(m))


def brownian_increment(key: Any, n: Any, level: Any, lr: Any, size: int) -> Any:
    """W((n + 1)·dt) − W(n·dt), dt = lr·2^level, of the path of `key` (see the module's docstring), drawn from its
    own stream of the key: independent of the minibatch and label draws of the discrete methods with the same key."""
    key = jax.random.fold_in(key, BROWNIAN_STREAM)

    def cell(k: Any) -> Any:
        return jnp.sqrt(lr) * jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, k), CELL), (size,))

    coarse = jnp.maximum(level, 0)
    fine = jnp.maximum(-level, 0)
    first = (n << coarse) >> fine  # the first (or only) cell of the step
    whole = jax.lax.fori_loop(0, 1 << coarse, lambda i, acc: acc + cell(first + i), jnp.zeros((size,)))
    index = n & ((1 << fine) - 1)  # the step's dyadic interval inside its cell, at level `fine`
    cell_key = jax.random.fold_in(key, first)

    def split(ell: Any, inc: Any) -> Any:  # halve the interval holding the step, from level ell − 1 to ell
        parent = index >> (fine - ell + 1)
        xi = jax.random.normal(jax.random.fold_in(jax.random.fold_in(cell_key, ell), parent), (size,))
        left = 0.5 * inc + 0.5 * jnp.sqrt(lr * 2.0 ** (1 - ell)) * xi
        return jnp.where((index >> (fine - ell)) & 1 == 0, left, inc - left)

    return jax.lax.fori_loop(1, fine + 1, split, whole)


def sde_solver(name: str) -> Any:
    """A new instance of diffrax's solver for the SDE method `name` (a key of `SDE_SOLVERS`)."""
    import diffrax

    return getattr(diffrax, SDE_SOLVERS[name])()


@functools.cache
def _increment_path() -> type:
    """The diffrax path of one step's control (defined on first use, so that diffrax loads with the first SDE)."""
    import diffrax

    class Increment(diffrax.AbstractPath):
        """The control of one step: its Brownian increment, whatever interval the solver asks for (it asks once,
        for the step's own [t0, t1])."""

        dw: Any
        t0: Any = None
        t1: Any = None

        def evaluate(self, t0: Any, t1: Any = None, left: bool = True) -> Any:
            return self.dw

    return Increment


def sde_terms(name: str, flow: Any, dw: Any, arrays: dict, lr: Any, delta: Any, width: int) -> Any:
    """The diffrax terms of one step of one path: drift (Stratonovich-corrected for `STRATONOVICH` solvers) and the
    diffusion as a lineax operator on the step's Brownian increment `dw` (`brownian_increment`)."""
    import diffrax
    import lineax

    apply = diffusion(flow.noise, flow.problem_cls, flow.backprop or layer_gradients)
    size = control_size(flow.noise, width)
    structure = jax.ShapeDtypeStruct((size,), jnp.float64)
    basis = jnp.eye(size)
    closed = closed_spread(flow)

    def drift(t: Any, y: Any, args: dict) -> Any:
        b = flow.field(t, y, args)
        if name not in STRATONOVICH:
            return b

        def spread(state: Any) -> Any:  # ‖σ(θ)‖²_F: in closed form where it has one, else column by column
            if closed is not None and isinstance(state, tuple):
                return closed(state, arrays, lr, delta)
            cols = jax.vmap(lambda e: apply(state, e, arrays, lr, delta))(basis)
            return sum(jnp.sum(c * c) for c in jax.tree_util.tree_leaves(cols))

        correction = jax.grad(spread)(y)
        return jax.tree_util.tree_map(lambda a, g: a - 0.25 * g, b, correction)

    def sigma(t: Any, y: Any, args: dict) -> Any:
        return lineax.FunctionLinearOperator(lambda b: apply(y, b, arrays, lr, delta), structure)

    return diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(sigma, _increment_path()(dw)))
