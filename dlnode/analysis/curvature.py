"""Curvature of the loss landscape: sharpness, its bounds at minimisers, and layer alignment (docs/math.md §6).

The sharpness S = λ_max(∇²L), L(W_1, …, W_N) = ℓ(W_N⋯W_1) with ℓ the problem's own loss (dlnode's regression
loss is (1/2n)‖WX − Y‖²_F, with a ½), is the stiffness of the flow and sets the largest stable GD step, 2/S.
Below it, GD follows the flow with a global error O(lr) (see `dlnode.analysis.discrete`). Marion and Chizat's levels of
S at minimisers and the alignment of consecutive layers describe the flat, aligned minimisers that small
initialisation finds.

References
----------
Marion, Chizat (2024), "Deep linear networks for regression are implicitly regularized towards flat minima",
arXiv 2405.13456; Ji, Telgarsky (2019), arXiv 1810.02032.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from dlnode.data.schema import unpad_layers
from dlnode.errors import refused
from dlnode.flows.hessian import top_eigenvalues
from dlnode.problems.kinds import Problem, Regression
from dlnode.problems.network import product

__all__ = ["layer_alignment", "sharpness", "sharpness_bounds", "sharpness_of"]

Shapes = tuple[tuple[int, int], ...]


def _unflatten(x: jax.Array, shapes: Shapes) -> list[jax.Array]:
    sizes = np.cumsum([0] + [r * c for r, c in shapes])
    return [x[sizes[j] : sizes[j + 1]].reshape(shape) for j, shape in enumerate(shapes)]


def _network_loss(kind: type[Problem], shapes: Shapes, x: jax.Array, arrays: dict) -> jax.Array:
    """L(W_1, …, W_N) = ℓ(W_N⋯W_1) as a function of the flattened layers x."""
    return kind.loss_fn(product(_unflatten(x, shapes)), arrays)


@functools.partial(jax.jit, static_argnums=(0, 1, 4))
def _top(kind: type[Problem], shapes: Shapes, x: jax.Array, arrays: dict, k: int) -> jax.Array:
    """The k largest eigenvalues of ∇²L(x) by the Lanczos of `dlnode.flows.hessian` (the one that runs along
    trajectories), on Hessian-vector products (one jvp of grad: no Hessian is formed)."""
    grad = jax.grad(functools.partial(_network_loss, kind, shapes), argnums=0)
    return top_eigenvalues(lambda y: grad(y, arrays), x, k)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _hessian(kind: type[Problem], shapes: Shapes, x: jax.Array, arrays: dict) -> jax.Array:
    return jax.hessian(functools.partial(_network_loss, kind, shapes), argnums=0)(x, arrays)


def _check_layers(problem: Problem, weights: Sequence[Any]) -> list[np.ndarray]:
    layers = [np.asarray(w, dtype=np.float64) for w in weights]
    if not layers or any(w.ndim != 2 for w in layers):
        raise refused(f"weights must be a non-empty sequence of 2-d layers W_1..W_N; got {len(layers)} arrays")
    shapes = [w.shape for w in layers]
    chained = all(shapes[j][1] == shapes[j - 1][0] for j in range(1, len(shapes)))
    if not chained or shapes[0][1] != problem.d_in or shapes[-1][0] != problem.d_out:
        raise refused(
            f"weights must chain from d_in={problem.d_in} to d_out={problem.d_out} (W_j of shape (d_j, d_j-1)); "
            f"got shapes {shapes}"
        )
    if not all(np.all(np.isfinite(w)) for w in layers):
        raise refused("weights must be finite; got NaN or inf entries (a failed run has no sharpness)")
    return layers


def sharpness(problem: Problem, weights: Sequence[Any], k: int = 1, exact: bool = False) -> float | np.ndarray:
    """Top eigenvalue(s) of the Hessian of L(W_1, …, W_N) = ℓ(W_N⋯W_1), in the problem's loss convention.

    By default Lanczos with full reorthogonalisation on exact Hessian-vector products (`dlnode.flows.hessian`,
    the code that computes the sharpness along a trajectory); ``exact=True`` forms the full Hessian with
    `jax.hessian` and takes `eigvalsh` (the oracle, for small networks).
    Networks with at most k + 1 parameters always take the exact path.

    Parameters
    ----------
    problem : the problem whose loss ℓ is differentiated.
    weights : layers W_1 … W_N, W_j of shape (d_j, d_{j−1}).
    k : number of top eigenvalues.
    exact : use the dense Hessian.

    Returns
    -------
    S = λ_max as a float when k = 1, else the k largest eigenvalues, descending.
    """
    layers = _check_layers(problem, weights)
    shapes = tuple(w.shape for w in layers)
    x = jnp.concatenate([jnp.ravel(w) for w in layers])
    n = x.size
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise refused(f"k must be an integer in [1, {n}] (the number of parameters); got {k!r}")
    kind, arrays = type(problem), problem.arrays()
    if exact or k >= n - 1:
        values = np.linalg.eigvalsh(np.asarray(_hessian(kind, shapes, x, arrays)))[::-1][:k]
    else:
        values = np.asarray(_top(kind, shapes, x, jax.tree_util.tree_map(jnp.asarray, arrays), int(k)))
    return float(values[0]) if k == 1 else values


def _per_run(ds: xr.Dataset, func: Any, output_core_dims: list[str]) -> xr.DataArray:
    """Apply func(layers) to every run (and saved time, when ``weights`` is present) of a dataset."""
    name = "weights" if "weights" in ds else "weights_final"
    if name not in ds or "depth" not in ds.coords:
        raise refused("ds must be a dlnode Dataset with a depth coordinate and 'weights_final' (or 'weights')")
    d_in = ds.sizes["col"] if "col" in ds.dims else ds.sizes["in"]

    def one(weights: np.ndarray, depth: float) -> Any:
        return func(unpad_layers(weights, float(depth), d_in))

    return xr.apply_ufunc(
        one, ds[name], ds["depth"], input_core_dims=[["layer", "out", "in"], []],
        output_core_dims=[output_core_dims], vectorize=True, output_dtypes=[np.float64], dask="parallelized",
    )  # fmt: skip  # lazy on sweep stores (chunked by cell)


def sharpness_of(ds: xr.Dataset, problem: Problem, exact: bool = False) -> xr.DataArray:
    """Sharpness S = λ_max(∇²L) of each run at its final weights, or along time when ``weights`` was saved.

    Parameters
    ----------
    ds : a dlnode Dataset with ``weights_final`` (and optionally ``weights``), NaN-padded per layer.
    problem : the problem the runs were trained on.
    exact : use the dense Hessian (see `sharpness`).

    Returns
    -------
    DataArray over the run dims (and ``time``); NaN for depth ∞ (no layers) and for non-finite weights.
    """
    if not isinstance(problem, Problem):
        raise refused(f"problem must be a dlnode Problem; got {type(problem).__name__}")

    def one(layers: list[np.ndarray] | None) -> float:
        return np.nan if layers is None else sharpness(problem, layers, exact=exact)

    out = _per_run(ds, one, [])
    return out.rename("sharpness").assign_attrs(long_name="top Hessian eigenvalue of L", units="1/time")


def sharpness_bounds(
    problem: Regression, depth: int | Sequence[int], convention: Literal["dlnode", "marion_chizat"] = "dlnode"
) -> xr.Dataset:
    """Marion–Chizat sharpness levels of univariate regression (d_out = 1) at depth L.

    With w* the least-squares solution, Σ̂ = XXᵀ/n (``problem.sigma_xx``), a = w*ᵀΣ̂w*/‖w*‖², Λ = λ_max(Σ̂) and
    u = w*/‖w*‖, for their loss R(w) = (1/n)Σ_i (y_i − wᵀx_i)² (no ½):

    - ``s_min`` = 2 L a ‖w*‖^{2−2/L}: every minimiser has S ≥ S_min;
    - ``upper`` = 8 L Λ ‖w*‖^{2−2/L}: the line their code draws on its Gaussian-init figures (8LΛ at ‖w*‖ = 1),
      so S/S_min ≤ 4Λ/a below it;
    - ``aligned`` = 2‖w*‖^{2−2/L} λ_max(Σ̂ + (L−1) Σ̂^{1/2} u uᵀ Σ̂^{1/2}): the exact sharpness of the balanced
      rank-one aligned minimiser (derived from ∇²R = 2JᵀΣ̂J at a minimiser, docs/math.md §6).

    dlnode's loss is ℓ = (1/2n)‖WX − Y‖² = R/2, so with ``convention="dlnode"`` (default) all three are halved to
    compare with `sharpness`; ``"marion_chizat"`` gives the paper's values.

    Parameters
    ----------
    problem : a `Regression` with d_out = 1 and w* ≠ 0.
    depth : one depth L ≥ 1 or a list of them.
    convention : ``"dlnode"`` (½-loss) or ``"marion_chizat"`` (no ½).

    Returns
    -------
    Dataset over ``depth`` with ``s_min``, ``upper`` and ``aligned``; attrs a, Λ, κ = cond(Σ̂), ‖w*‖, convention.
    """
    if not isinstance(problem, Regression) or problem.d_out != 1:
        got = f"{type(problem).__name__} with d_out={getattr(problem, 'd_out', None)}"
        raise refused(f"problem must be a univariate Regression (d_out = 1); got {got}")
    if convention not in ("dlnode", "marion_chizat"):
        raise refused(f"convention must be 'dlnode' or 'marion_chizat'; got {convention!r}")
    depths = np.atleast_1d(np.asarray(depth))
    if depths.ndim != 1 or not np.issubdtype(depths.dtype, np.integer) or np.any(depths < 1):
        raise refused(f"depth must be a positive integer or a list of them; got {depth!r}")
    w = problem.w_star[0]
    norm = float(np.linalg.norm(w))
    if not norm > 0:
        raise refused("problem must have a non-zero least-squares solution w*; got w* = 0")
    sxx, u = problem.sigma_xx, w / norm
    evals, evecs = np.linalg.eigh(sxx)
    root = (evecs * np.sqrt(np.clip(evals, 0.0, None))) @ evecs.T
    a, lam = float(u @ sxx @ u), float(evals[-1])
    factor = 0.5 if convention == "dlnode" else 1.0
    power = norm ** (2.0 - 2.0 / depths)
    top = [np.linalg.eigvalsh(sxx + (n - 1) * np.outer(root @ u, root @ u))[-1] for n in depths]
    data = {"s_min": 2 * depths * a * power, "upper": 8 * depths * lam * power, "aligned": 2 * power * np.array(top)}
    out = xr.Dataset({k: ("depth", factor * v) for k, v in data.items()}, coords={"depth": depths.astype(float)})
    return out.assign_attrs(convention=convention, a=a, Lambda=lam, kappa=float(evals[-1] / evals[0]), norm_w=norm)


def _alignment_of(layers: list[np.ndarray] | None, size: int) -> np.ndarray:
    out = np.full(size, np.nan)
    for j in range(len(layers or []) - 1):
        u_lower = np.linalg.svd(layers[j])[0][:, 0]
        v_upper = np.linalg.svd(layers[j + 1])[2][0]
        out[j] = abs(float(v_upper @ u_lower))
    return out


def layer_alignment(ds: xr.Dataset) -> xr.DataArray:
    """Alignment |⟨v_1(W_{j+1}), u_1(W_j)⟩| of consecutive layers (top right vs top left singular vectors).

    The value at ``layer`` j is the alignment of W_j with W_{j+1}; the last layer of each run (and every layer of
    a depth-1 or depth-∞ run) is NaN. From ``weights`` along time when saved, else from ``weights_final``.
    Ill-defined (any value in [0, 1]) when a layer's top singular value is repeated. Small initialisation gives
    aligned layers, alignment → 1.

    Parameters
    ----------
    ds : a dlnode Dataset with ``weights_final`` (and optionally ``weights``).

    Returns
    -------
    DataArray over the run dims, (``time``,) and ``layer``.

    References
    ----------
    Ji, Telgarsky (2019), "Gradient descent aligns the layers of deep linear networks", arXiv 1810.02032;
    Marion, Chizat (2024), arXiv 2405.13456.
    """
    size = ds.sizes.get("layer", 0)
    out = _per_run(ds, functools.partial(_alignment_of, size=size), ["layer"])
    return out.rename("layer_alignment").assign_attrs(long_name="|<v1(W_j+1), u1(W_j)>|", units="1")
