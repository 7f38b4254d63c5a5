"""Analyses over noise paths and of the implicit biases that noise and initialisation select.

- `path_summary`: mean, standard deviation and quantiles over ``path``.
- `weak_error`: |E φ(a) − E φ(b)| between two ensembles of paths, with its Monte Carlo standard error
  (var_a/P_a + var_b/P_b)^{1/2}.
- `implicit_regulariser`: R(θ) = (1/n) Σᵢ ‖∇_θ rᵢ(θ)‖² (Blanc, Gupta, Valiant & Valiant 2020; for a k-dimensional
  residual, the sum over its components), which drives label-noise SGD along the manifold of minimisers;
  `hessian_trace`: tr ∇²L(θ), equal to R(θ) at an interpolating minimiser (the residual term vanishes).
- `interpolators`, `interpolator_distance`, `sparsity`: the minimum-ℓ₂ and minimum-ℓ₁ interpolators of a regression,
  the distance of the end-to-end β to each, and how sparse β is.

References
----------
Blanc, Gupta, Valiant, Valiant (2020), "Implicit regularization for deep neural networks driven by an
Ornstein-Uhlenbeck like process", arXiv 1904.09080; Woodworth et al. (2020), arXiv 2002.09277.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import xarray as xr
from jax.flatten_util import ravel_pytree

from dlnode.errors import fail, shown
from dlnode.flows.diagonal import diagonal_backprop
from dlnode.flows.flow import layer_gradients
from dlnode.problems.samples import samples_of

__all__ = ["hessian_trace", "implicit_regulariser", "interpolator_distance", "interpolators", "path_summary",
           "sparsity", "weak_error"]  # fmt: skip

QUANTILES = (0.05, 0.5, 0.95)
SPARSE_TOL = 1e-3  # an entry counts as nonzero when |βᵢ| > this fraction of max |β|


def _check_path(da: xr.DataArray, name: str) -> None:
    if not isinstance(da, xr.DataArray):
        got = f"a Dataset of {sorted(map(str, da.data_vars))}" if isinstance(da, xr.Dataset) else type(da).__name__
        fail(name, "must be one variable (an xarray DataArray) with a 'path' dim", shown(got),
             "pass one variable of a stochastic run, e.g. ds['loss']")  # fmt: skip
    if "path" not in da.dims:
        fail(name, "must have a 'path' dim (a run of a stochastic method)", shown(str(tuple(da.dims))),
             "pass a variable of a run with method='sgd', 'label_noise' or an SDE method")  # fmt: skip


def path_summary(da: xr.DataArray, quantiles: Sequence[float] = QUANTILES) -> xr.Dataset:
    """Mean, standard deviation, Monte Carlo standard error of the mean and quantiles of `da` over ``path``."""
    _check_path(da, "da")
    count = da.count("path")
    return xr.Dataset({
        "mean": da.mean("path"), "std": da.std("path", ddof=1),
        "mc_error": da.std("path", ddof=1) / np.sqrt(count), "quantiles": da.quantile(list(quantiles), dim="path"),
        "paths": count,
    })  # fmt: skip


def weak_error(a: xr.DataArray, b: xr.DataArray) -> xr.Dataset:
    """``error`` = |mean_path a − mean_path b| and ``mc_error`` = (var a/P_a + var b/P_b)^{1/2}, its Monte Carlo
    standard error (two independent ensembles of P_a and P_b paths); aligned on their other coordinates."""
    _check_path(a, "a")
    _check_path(b, "b")
    a, b = xr.align(a, b, join="inner", exclude=["path"])
    var = a.var("path", ddof=1) / a.count("path") + b.var("path", ddof=1) / b.count("path")
    return xr.Dataset({"error": np.abs(a.mean("path") - b.mean("path")), "mc_error": np.sqrt(var)})


# ------------------------------------------------------------------------------------------- R(θ) and tr ∇²L(θ)
def _backprop(network: str, depth: int) -> Any:
    if network == "diagonal":
        return functools.partial(diagonal_backprop, depth=depth)
    return layer_gradients


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _regulariser(problem_cls: type, network: str, depth: int, state: Any, arrays: dict) -> Any:
    samples = samples_of(problem_cls.kind)
    n, width = samples.count(arrays), samples.width(arrays)
    backprop = _backprop(network, depth)

    def column(unit: Any) -> Any:  # ∇_θ of one residual component: the backward pass of 𝒜ᵢ*(e_c)
        grads = backprop(state, lambda w, a: samples.adjoint(unit, a, None), arrays)[0]
        return sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(grads))

    units = jnp.eye(n * width).reshape(n * width, n, width)
    return jnp.sum(jax.vmap(column)(units)) / n


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _trace(problem_cls: type, network: str, depth: int, state: Any, arrays: dict) -> Any:
    flat, unravel = ravel_pytree(state)
    backprop = _backprop(network, depth)

    def grad(x: Any) -> Any:
        return ravel_pytree(backprop(unravel(x), problem_cls.grad_fn, arrays)[0])[0]

    def diag(e: Any) -> Any:
        return e @ jax.jvp(grad, (flat,), (e,))[1]

    return jnp.sum(jax.vmap(diag)(jnp.eye(flat.size)))


def _states(ds: xr.Dataset, which: str) -> tuple[str, xr.DataArray]:
    network = ds.attrs.get("network", "dense")
    if which not in ("weights", "final"):
        fail("which", "must be 'weights' (every saved state) or 'final' (the run's end)", shown(repr(which)),
             "pass which='final', or which='weights' with a run saved with save_weights=True")  # fmt: skip
    if which == "weights" and "weights" not in ds:
        fail("ds", "lacks 'weights' (the layers along time)", None, "integrate with save_weights=True, or pass "
             "which='final'")  # fmt: skip
    return network, ds[which if which == "weights" else "weights_final"]


def _along(ds: xr.Dataset, problem: Any, fn: Any, which: str, name: str, long_name: str) -> xr.DataArray:
    """fn(problem class, network, depth, state, arrays) at every saved state (or the final one) of every cell."""
    network, weights = _states(ds, which)
    if samples_of(problem.kind) is None:
        fail("problem", "must keep its samples (a per-sample Jacobian is needed)", problem.kind,
             "use a SparseRegression or a MatrixSensing problem")  # fmt: skip
    arrays = jax.tree_util.tree_map(jnp.asarray, problem.arrays())
    cls = type(problem)

    def one(stack: np.ndarray, depth: float) -> float:
        layers = _unpad(stack, network, int(depth), problem)
        if not all(np.all(np.isfinite(w)) for w in layers):  # a save the run did not reach, or a diverged one
            return np.nan
        return float(fn(cls, network, int(depth), layers, arrays))

    out = xr.apply_ufunc(np.vectorize(one, signature="(l,o,i),()->()"), weights, weights["depth"],
                         input_core_dims=[["layer", "out", "in"], []])  # fmt: skip
    return out.rename(name).assign_attrs(long_name=long_name, units="1")


def _unpad(stack: np.ndarray, network: str, depth: int, problem: Any) -> tuple:
    """The layers of one cell from the (layer, out, in) stack padded with NaN (hidden widths read off the padding)."""
    if network == "diagonal":
        return tuple(jnp.asarray(stack[j, : problem.d_out, : problem.d_in]) for j in range(2))
    dims = [problem.d_in] + [None] * (depth - 1) + [problem.d_out]
    layers = []
    for j in range(depth):
        w = stack[j]
        rows = int(np.sum(~np.isnan(w).all(axis=1))) if dims[j + 1] is None else dims[j + 1]
        cols = problem.d_in if j == 0 else layers[-1].shape[0]
        layers.append(jnp.asarray(w[:rows, :cols]))
    return tuple(layers)


def implicit_regulariser(ds: xr.Dataset, problem: Any, which: str = "weights") -> xr.DataArray:
    """R(θ) = (1/n) Σᵢ ‖∇_θ rᵢ(θ)‖² along a run (``which="weights"``, needs save_weights=True) or at its end
    (``which="final"``), for a problem that keeps its samples (Blanc et al. 2020, with the ½-loss of dlnode)."""
    return _along(ds, problem, _regulariser, which, "implicit_regulariser",
                  "R(theta) = (1/n) sum_i ||grad_theta r_i||^2 (Blanc et al. 2020)")  # fmt: skip


def hessian_trace(ds: xr.Dataset, problem: Any, which: str = "weights") -> xr.DataArray:
    """tr ∇²L(θ), exactly (one Hessian-vector product per parameter), along a run or at its end."""
    return _along(ds, problem, _trace, which, "hessian_trace", "trace of the Hessian of the training loss")


# ------------------------------------------------------------------------------- interpolators and sparsity
def interpolators(problem: Any) -> dict[str, np.ndarray]:
    """The minimum-ℓ₂ and minimum-ℓ₁ solutions of Xᵀβ = y of a regression with samples (n ≤ d), as (1, d) rows:
    the pseudo-inverse solution, and a linear program (β = p − q, p, q ≥ 0, min Σ p + q) solved by HiGHS."""
    if not (hasattr(problem, "inputs") and hasattr(problem, "labels")):
        fail("problem", "must be a regression with samples (dlnode.SparseRegression)", shown(type(problem).__name__),
             "pass the SparseRegression the runs were made on, e.g. dln.problem_from(ds)")  # fmt: skip
    outputs = np.shape(problem.labels)[0]
    if outputs != 1:
        fail("problem", "must have one output (interpolators of y = Xᵀβ are rows β)", shown(f"{outputs} outputs"),
             "pass a SparseRegression with y of shape (n,)")  # fmt: skip
    x, y = np.asarray(problem.inputs), np.asarray(problem.labels).ravel()
    l2 = np.linalg.lstsq(x.T, y, rcond=None)[0]
    d = x.shape[0]
    res = scipy.optimize.linprog(np.ones(2 * d), A_eq=np.hstack([x.T, -x.T]), b_eq=y, bounds=(0, None),
                                 method="highs")  # fmt: skip
    if res.status != 0:
        fail("problem", "must have an interpolating solution for the minimum-l1 program", shown(res.message),
             "use n <= d samples of a noiseless or interpolable regression")  # fmt: skip
    return {"l2": l2[None, :], "l1": (res.x[:d] - res.x[d:])[None, :]}


def interpolator_distance(ds: xr.Dataset, problem: Any) -> xr.Dataset:
    """‖β(t) − β_ℓ₂‖₂ and ‖β(t) − β_ℓ₁‖₂ along every run (β the saved end-to-end ``product``)."""
    refs = interpolators(problem)
    beta = ds["product"]
    return xr.Dataset({
        f"distance_{k}": np.sqrt(((beta - xr.DataArray(v, dims=("row", "col"))) ** 2).sum(("row", "col")))
        .assign_attrs(long_name=f"distance to the minimum-{k} interpolator", units="1")
        for k, v in refs.items()
    })  # fmt: skip


def sparsity(ds: xr.Dataset, tol: float = SPARSE_TOL) -> xr.Dataset:
    """``nonzero``: entries of β with |βᵢ| > tol·max|β|; ``effective``: (‖β‖₁/‖β‖₂)², a smooth count (s for an
    s-sparse β with equal entries, d for a flat one)."""
    beta = np.abs(ds["product"])
    top = beta.max(("row", "col"))
    l1, l2 = beta.sum(("row", "col")), np.sqrt((beta**2).sum(("row", "col")))
    return xr.Dataset({
        "nonzero": (beta > tol * top).sum(("row", "col")).where(np.isfinite(top)),
        "effective": (l1 / l2) ** 2,
    })  # fmt: skip
