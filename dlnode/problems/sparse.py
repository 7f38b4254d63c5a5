"""Sparse linear regression with its samples kept: the test bed of diagonal linear networks and of label noise.

ℓ(β) = (1/2n) Σᵢ (⟨β, xᵢ⟩ − yᵢ)² on inputs X (d, n) and labels y (1, n) (β a 1 × d row, so dense networks apply too);
with k outputs, Y (k, n), ℓ(W) = (1/2n) Σᵢ ‖W xᵢ − yᵢ‖² (a multi-output regression that keeps its samples, for SGD).
A random instance (`SparseRegression.random`) has a Gaussian design xᵢ ~ N(0, I_d), an s-sparse truth β* and
yᵢ = ⟨β*, xᵢ⟩ + σ εᵢ. With n < d the minimisers form an affine space: W* is the minimum-ℓ₂-norm one (ℓ* = 0), and
which interpolator training ends at is the implicit bias the studies measure.

References
----------
Woodworth, Gunasekar, Lee, Moroshko, Savarese, Golan, Soudry, Srebro (2020), "Kernel and rich regimes in
overparametrized models", arXiv 2002.09277; HaoChen, Wei, Lee, Ma (2021), "Shape matters: understanding the implicit
bias of the noise covariance", arXiv 2006.08680.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from dlnode.checks import as_array, check_positive_int, check_seed
from dlnode.errors import fail, shown
from dlnode.problems.kinds import KINDS, Problem, positive_definite

__all__ = ["SparseRegression"]


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class SparseRegression(Problem):
    """Linear regression that keeps its samples (for minibatches and label noise), with an optional known truth.

    Parameters
    ----------
    X : inputs, (d, n).
    y : labels, (n,) or (1, n); or (k, n) for k outputs (a dense network's W is then k × d).
    truth : the β* that generated the labels, (d,) or (1, d) (k × d for k outputs), if known (test error ‖β − β*‖²
        and recovery).
    noise, sparsity, seed : labels of a random instance (recorded in the dataset's problem description).
    """

    inputs: np.ndarray
    labels: np.ndarray
    truth: np.ndarray | None = None
    noise: float = 0.0
    sparsity: int | None = None
    seed: int | None = None

    kind: ClassVar[str] = "sparse_regression"

    def __init__(self, X: Any, y: Any, truth: Any = None, *, noise: float = 0.0, sparsity: int | None = None,
                 seed: int | None = None) -> None:  # fmt: skip
        x = as_array("X", X, ndim=2)
        labels = as_array("y", y, ndim=None)
        if labels.ndim > 2:
            fail("y", "must be (n,) labels or (k, n) for k outputs", shown(f"shape {labels.shape}"),
                 "pass X as (d, n) and y as (n,) or (k, n)")  # fmt: skip
        labels = labels.reshape(1, -1) if labels.ndim < 2 else labels
        if labels.shape[1] != x.shape[1]:
            fail("y", f"must hold one label per column of X ({x.shape[1]})", shown(f"{labels.shape[1]} labels"),
                 "pass X as (d, n) and y as (n,) or (k, n)")  # fmt: skip
        if truth is not None:
            truth = as_array("truth", truth, ndim=None)
            truth = truth.reshape(1, -1) if truth.ndim < 2 else truth
            if truth.shape != (labels.shape[0], x.shape[0]):
                fail("truth", f"must have k × d = {labels.shape[0]} × {x.shape[0]} entries (one row per output)",
                     shown(f"{np.size(truth)} entries"), "pass beta* as (d,), or (k, d) for k outputs")  # fmt: skip
        if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not 0 <= noise < np.inf:
            fail("noise", "must be a finite number >= 0 (the label noise of the instance)", noise, "pass e.g. 0.0")
        seed = None if seed is None else check_seed(seed)
        if sparsity is not None:
            sparsity = check_positive_int("sparsity", sparsity)
        for name, value in zip(("inputs", "labels", "truth", "noise", "sparsity", "seed"),
                               (x, labels, truth, float(noise), sparsity, seed), strict=True):  # fmt: skip
            object.__setattr__(self, name, value)
        w_star = np.linalg.lstsq(x.T, labels.T, rcond=None)[0].T  # the minimum-ℓ₂-norm least-squares solution
        offsets = labels - w_star @ x
        object.__setattr__(self, "_w_star", w_star)
        object.__setattr__(self, "_offsets", offsets.T.copy())
        object.__setattr__(self, "_minimum", 0.5 * float(np.sum(offsets**2)) / x.shape[1])

    @classmethod
    def random(cls, d: int = 100, n: int = 40, sparsity: int = 5, noise: float = 0.0, seed: int = 0,
               signed: bool = False, outputs: int = 1) -> SparseRegression:  # fmt: skip
        """Gaussian design X (d, n) with N(0, 1) entries, β* = 1 on `sparsity` coordinates (random signs when
        `signed`), the rest 0, and labels ⟨β*, xᵢ⟩ + noise·N(0, 1). The support is the first `sparsity`
        coordinates (the design is exchangeable, so this loses nothing; HaoChen et al. 2021 use the same).
        `outputs` = k > 1: β* is k × d with that support in every row and labels (k, n); each row draws its own
        signs when `signed` (W* of rank min(k, sparsity) at most), and unsigned rows are equal (rank one)."""
        d, n = check_positive_int("d", d), check_positive_int("n", n)
        sparsity = check_positive_int("sparsity", sparsity)
        outputs = check_positive_int("outputs", outputs)
        if sparsity > d:
            fail("sparsity", f"must be at most d = {d}", sparsity, "pass fewer nonzero coordinates")
        rng = np.random.default_rng(check_seed(seed))
        x = rng.standard_normal((d, n))
        shape = (d,) if outputs == 1 else (outputs, d)  # one output: the draws of a (d,) β*, as before outputs
        beta = np.zeros(shape)
        beta[..., :sparsity] = rng.choice([-1.0, 1.0], shape[:-1] + (sparsity,)) if signed else 1.0
        y = beta @ x + noise * rng.standard_normal(shape[:-1] + (n,))
        return cls(x, y, beta, noise=float(noise), sparsity=sparsity, seed=int(seed))

    @classmethod
    def _rebuild(cls, fields: dict[str, Any]) -> SparseRegression:
        return cls(fields["inputs"], fields["labels"], fields["truth"], noise=fields["noise"],
                   sparsity=fields["sparsity"], seed=fields["seed"])  # fmt: skip

    @property
    def n(self) -> int:
        return int(self.inputs.shape[1])

    @property
    def sigma_xx(self) -> np.ndarray:
        """Σ_xx = XXᵀ/n: ℓ's Hessian is Δ ↦ ΔΣ_xx, as a `Regression`'s."""
        return self.inputs @ self.inputs.T / self.n

    @property
    def unique_minimiser(self) -> bool:
        return positive_definite(self.sigma_xx)

    @property
    def convention(self) -> str:  # type: ignore[override]
        return ("(1/2n) sum_i (<beta, x_i> - y_i)^2" if self.labels.shape[0] == 1
                else "(1/2n) sum_i ||W x_i - y_i||^2")  # fmt: skip

    @property
    def w_star(self) -> np.ndarray:
        return self._w_star

    @property
    def loss_min(self) -> float:
        return self._minimum

    def _operator(self) -> dict[str, np.ndarray]:
        return {"sigma_xx": self.sigma_xx, "inputs": self.inputs.T.copy(),
                "offsets": self._offsets}  # fmt: skip

    @staticmethod
    def hessian_op(delta: Any, arrays: dict) -> Any:
        return delta @ arrays["sigma_xx"]

    def target(self) -> np.ndarray:
        return self.labels @ self.inputs.T / self.n

    def _extra_description(self) -> dict[str, Any]:
        return {"n": self.n, "noise": self.noise, "sparsity": self.sparsity, "seed": self.seed}


KINDS[SparseRegression.kind] = SparseRegression  # rebuilt from a stored dataset like every kind
