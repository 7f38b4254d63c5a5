"""The noise of the discrete stochastic methods: which samples a step uses, and its perturbed labels.

Step k of a path draws from the path's key (`jax.random.key(path)`), through two streams: the minibatch stream
(folded with k, or with the epoch for shuffled epochs) and the label stream (folded with k); a third, the
Brownian stream, is the SDE methods' (`dlnode.solvers.sde`). A step is thereby
a pure function of (path, k): a run continued from a checkpoint, or a path run alone, draws exactly the same.

- ``sgd`` with `batch` B < n: E_B = (1/B) Σ_{i∈B} 𝒜ᵢ*(rᵢ(W)), B drawn by `sampling`: ``epochs`` (the samples
  shuffled afresh each epoch of ⌊n/B⌋ steps, the last n mod B samples of an epoch left out), ``without_replacement``
  (a fresh subset of B distinct samples each step) or ``with_replacement`` (B independent uniform draws).
- A full batch (B = n) under ``epochs`` or ``without_replacement`` is every sample once: the step is gradient
  descent's, computed by the same code (bitwise equal).
- ``label_noise`` δ: the labels of the samples used are yᵢ + δ ξᵢ, ξᵢ ~ N(0, 1) afresh each step; with every sample,
  E = ∇ℓ(W) − (δ/n) Σᵢ 𝒜ᵢ*(ξᵢ), which at δ = 0 is gradient descent's E bitwise.

References
----------
Blanc, Gupta, Valiant, Valiant (2020), arXiv 1904.09080; HaoChen, Wei, Lee, Ma (2021), arXiv 2006.08680.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from dlnode.problems.samples import samples_of

__all__ = ["SAMPLING", "Noise", "step_gradient"]

SAMPLING = ("epochs", "without_replacement", "with_replacement")
BATCH_STREAM, LABEL_STREAM, BROWNIAN_STREAM = 0, 1, 2  # a path's key, folded: independent noises


@dataclasses.dataclass(frozen=True)
class Noise:
    """What makes a discrete step stochastic (static: it fixes the compiled shapes). δ itself is a traced control.

    batch : samples per step (n: the full batch); sampling : one of `SAMPLING`; label : labels perturbed by
    N(0, δ²); n : the problem's sample count.
    """

    batch: int
    sampling: str
    label: bool
    n: int

    @property
    def full(self) -> bool:
        """Every sample once per step: the minibatch gradient is the full gradient."""
        return self.batch == self.n and self.sampling != "with_replacement"


def path_key(path: Any) -> Any:
    """The key of a path's noise (a raw uint32 key, so that it vmaps and stores like any array)."""
    return jax.random.PRNGKey(path)


def _indices(noise: Noise, key: Any, step: Any) -> Any:
    stream = jax.random.fold_in(key, BATCH_STREAM)
    if noise.sampling == "with_replacement":
        return jax.random.randint(jax.random.fold_in(stream, step), (noise.batch,), 0, noise.n)
    if noise.sampling == "without_replacement":
        return jax.random.permutation(jax.random.fold_in(stream, step), noise.n)[: noise.batch]
    per_epoch = noise.n // noise.batch
    order = jax.random.permutation(jax.random.fold_in(stream, step // per_epoch), noise.n)
    return jax.lax.dynamic_slice(order, ((step % per_epoch) * noise.batch,), (noise.batch,))


def step_gradient(noise: Noise, problem_cls: type, key: Any, step: Any, delta: Any) -> Callable[[Any, dict], Any]:
    """E(W) = the gradient in W that step `step` of the path with `key` uses, as a function (W, arrays) -> E,
    for `layer_gradients` (or a diagonal network's chain rule) to take through the network."""
    samples = samples_of(problem_cls.kind)
    labels = jax.random.fold_in(jax.random.fold_in(key, LABEL_STREAM), step)

    def gradient(w: Any, arrays: dict) -> Any:
        if noise.full:
            e = problem_cls.grad_fn(w, arrays)
            if noise.label:
                xi = jax.random.normal(labels, (noise.n, samples.width(arrays)), dtype=w.dtype)
                e = e - (delta / noise.n) * samples.adjoint(xi, arrays, None)
            return e
        idx = _indices(noise, key, step)
        r = samples.residuals(w, arrays, idx)
        if noise.label:
            r = r - delta * jax.random.normal(labels, r.shape, dtype=w.dtype)
        return samples.adjoint(r, arrays, idx) / noise.batch

    return gradient


def noise_of(problem: Any, batch: int | None, sampling: str, label: bool) -> Noise:
    """The static `Noise` of a call (batch None: the full batch)."""
    n = samples_of(problem.kind).count(problem.arrays())
    return Noise(int(n if batch is None else batch), sampling, bool(label), int(n))


def zeros_like_key() -> Any:
    return jnp.zeros((2,), jnp.uint32)
