"""Analysis of dlnode trajectories: spectra, ranks, recovery, the Gidel staircase and saddle-to-saddle stages.

Every function takes a Dataset in the schema of docs/schema.md (or one of its DataArrays) and returns a DataArray
or Dataset that keeps the run coordinates (depth, scale, seed) and, where there is one, time. NaN, which pads a
failed run after its last reached time, propagates to NaN. Gradient descent against the flow (sharpness, its
bounds, layer alignment, discretisation error) lives in `dlnode.analysis.curvature`.

References
----------
Roy, Vetterli (2007), "The effective rank: a measure of effective dimensionality", EUSIPCO.
Gidel, Bach, Lacoste-Julien (2019), arXiv 1904.13262. Cao et al. (2022), arXiv 2212.14150.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import scipy.special
import xarray as xr

from dlnode.analysis.stages import escape_times, modes_learned, stages
from dlnode.analysis.variables import final_values, require_variable
from dlnode.errors import refused
from dlnode.flows import endtoend
from dlnode.problems.kinds import MatrixCompletion, Problem, Regression

__all__ = [
    "effective_rank",
    "escape_times",
    "final_values",
    "modes_learned",
    "gidel_time",
    "numerical_rank",
    "recovery_error",
    "rrr_staircase",
]
__all__ += ["schatten_norm", "stages", "unobserved_loss"]

Spectrum = xr.Dataset | xr.DataArray


def _singular_values(ds_or_sv: Spectrum) -> xr.DataArray:
    sv = ds_or_sv.get("singular_values") if isinstance(ds_or_sv, xr.Dataset) else ds_or_sv
    if not isinstance(sv, xr.DataArray) or "k" not in sv.dims:
        got = list(ds_or_sv.data_vars) if isinstance(ds_or_sv, xr.Dataset) else type(ds_or_sv).__name__
        raise refused(
            f"ds_or_sv must be a Dataset with 'singular_values' or a DataArray with dim 'k'; got {got}; "
            "pass the dataset returned by dlnode.integrate"
        )
    return sv


def numerical_rank(
    ds_or_sv: Spectrum, threshold: float = 1e-3, relative_to: Literal["current", "max"] = "current"
) -> xr.DataArray:
    """Numerical rank r_τ(W) = #{i : σ_i > τ σ_ref}.

    Parameters
    ----------
    ds_or_sv : a dlnode Dataset or its ``singular_values`` (dim ``k``).
    threshold : relative level τ in (0, 1).
    relative_to : ``"current"``: σ_ref = σ_1(W(t)) (docs/math.md §8); ``"max"``: σ_ref = max_t σ_1(W(t)) over each run,
        so that a small initialisation counts as rank 0 and saddle-to-saddle learning shows as a staircase.

    Returns
    -------
    DataArray without ``k`` (float, NaN where the spectrum is NaN); 0 for the zero matrix.
    """
    if not 0 < threshold < 1:
        raise refused(f"threshold must be in (0, 1); got {threshold!r}; pass a relative level such as 1e-3")
    if relative_to not in ("current", "max"):
        raise refused(f"relative_to must be 'current' or 'max'; got {relative_to!r}")
    sv = _singular_values(ds_or_sv)
    top = sv.max("k", skipna=False)
    ref = top.max("time") if relative_to == "max" and "time" in sv.dims else top
    rank = (sv > threshold * ref).sum("k").astype(np.float64).where(top.notnull())
    return rank.rename("numerical_rank").assign_attrs(long_name=f"numerical rank (tau={threshold:g})", units="1")


def effective_rank(ds_or_sv: Spectrum) -> xr.DataArray:
    """Effective rank erank(W) = exp(−Σ_i p_i ln p_i), p_i = σ_i / Σ_k σ_k.

    Parameters
    ----------
    ds_or_sv : a dlnode Dataset or its ``singular_values`` (dim ``k``).

    Returns
    -------
    DataArray without ``k``, in [1, min(d_out, d_in)] for W ≠ 0. Zero singular values do not count (0 ln 0 = 0);
    the zero matrix has effective rank 0 by convention; NaN spectra give NaN.

    References
    ----------
    Roy, Vetterli (2007), "The effective rank: a measure of effective dimensionality", EUSIPCO.
    """
    sv = _singular_values(ds_or_sv)
    total = sv.sum("k", skipna=False)
    p = sv / total.where(total > 0, 1.0)
    entropy = -xr.apply_ufunc(scipy.special.xlogy, p, p, dask="allowed").sum("k", skipna=False)  # lazy on sweeps
    erank = np.exp(entropy).where(total > 0, 0.0).where(total.notnull())
    return erank.rename("effective_rank").assign_attrs(long_name="effective rank (Roy-Vetterli)", units="1")


def schatten_norm(ds_or_sv: Spectrum, p: float) -> xr.DataArray:
    """Schatten p-(quasi-)norm ‖W‖_{S_p} = (Σ_i σ_i^p)^{1/p}, computed as σ_1 (Σ_i (σ_i/σ_1)^p)^{1/p}.

    Parameters
    ----------
    ds_or_sv : a dlnode Dataset or its ``singular_values`` (dim ``k``).
    p : p = 1 the nuclear norm, p = 2 Frobenius, p = ∞ spectral (σ_1); 0 < p < 1 the quasi-norms of low-rank
        implicit-regularisation studies (Arora et al. 2019).

    Returns
    -------
    DataArray without ``k``.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float, np.number)) or not p > 0:
        raise refused(f"p must be a positive number (or inf); got {p!r}; use p=1 for the nuclear norm")
    sv = _singular_values(ds_or_sv)
    top = sv.max("k", skipna=False)
    if np.isinf(p):
        out = top
    else:
        ratio = sv / top.where(top > 0, 1.0)
        out = top * (ratio**p).sum("k", skipna=False) ** (1.0 / p)
    return out.rename("schatten_norm").assign_attrs(long_name=f"Schatten {p:g}-norm of W", units="1")


def recovery_error(ds: xr.Dataset, target: Problem | Any) -> xr.DataArray:
    """Relative recovery error ‖W(t) − M‖_F / ‖M‖_F.

    Parameters
    ----------
    ds : a dlnode Dataset (its ``product``).
    target : a non-zero matrix M of shape (d_out, d_in), or a problem standing for its minimiser W* (the target
        matrix of completion, sensing and factorisation; the least-squares solution of regression).

    Returns
    -------
    DataArray over the run dims and time.
    """
    w = require_variable(ds, "product")
    m = np.asarray(target.w_star if isinstance(target, Problem) else target, dtype=np.float64)
    if m.shape != (w.sizes["row"], w.sizes["col"]):
        raise refused(f"target must have the product's shape {(w.sizes['row'], w.sizes['col'])}; got {m.shape}")
    norm = float(np.linalg.norm(m))
    if not norm > 0:
        raise refused(f"target must be a non-zero finite matrix; got ||M||_F = {norm}")
    diff = w - xr.DataArray(m, dims=("row", "col"))
    err = np.sqrt((diff**2).sum(("row", "col"), skipna=False)) / norm
    return err.rename("recovery_error").assign_attrs(long_name="||W - M||_F / ||M||_F", units="1")


def unobserved_loss(ds: xr.Dataset, problem: MatrixCompletion) -> xr.DataArray:
    """Test loss of matrix completion on the unobserved entries, in the training loss's convention.

    ℓ_test(W) = ½ Σ_{(i,j)∉Ω} (W_ij − M_ij)², divided by |Ω^c| when the problem is ``normalize``-d (as its training
    loss is by |Ω|); so ℓ + ℓ_test = ½‖W − M‖²_F for the unnormalised problem.

    Parameters
    ----------
    ds : a dlnode Dataset (its ``product``).
    problem : the `MatrixCompletion` it was trained on; it must leave some entry unobserved.

    Returns
    -------
    DataArray over the run dims and time.
    """
    if not isinstance(problem, MatrixCompletion):
        raise refused(f"problem must be a MatrixCompletion; got {type(problem).__name__}")
    w = require_variable(ds, "product")
    if problem.mask.shape != (w.sizes["row"], w.sizes["col"]):
        raise refused(f"problem shape {problem.mask.shape} must match the product's {(w.sizes['row'], w.sizes['col'])}")
    hidden = ~problem.mask
    if not hidden.any():
        raise refused("problem must leave at least one entry unobserved; got a full mask (use recovery_error)")
    weight = xr.DataArray(hidden / (hidden.sum() if problem.normalize else 1.0), dims=("row", "col"))
    diff = w - xr.DataArray(problem.target_matrix, dims=("row", "col"))
    loss = 0.5 * (weight * diff**2).sum(("row", "col"), skipna=False)
    return loss.rename("unobserved_loss").assign_attrs(long_name="loss on unobserved entries", units="1")


def _check_eps(eps: Any) -> np.ndarray:
    arr = np.asarray(eps, dtype=np.float64)
    if arr.size == 0 or not np.all((arr > 0) & (arr < 1)):
        raise refused(f"eps must lie in (0, 1) (the initialisation scale); got {eps!r}")
    return arr


def gidel_time(ds: xr.Dataset | xr.DataArray, eps: float | None = None) -> xr.DataArray:
    """Rescaled time τ = t / ln(1/ε).

    For depth 2 from per-layer scale ε, mode i of the target is learned at τ → 1/s_i as ε → 0 (docs/math.md §4): with
    dlnode's ½-loss a balanced mode obeys du/dt = 2u(s − u), u(0) = ε², and escapes at
    t ≈ ln(s/ε²)/(2s) = ln(1/ε)/s + O(1).

    Parameters
    ----------
    ds : a dlnode Dataset or DataArray with a ``time`` coordinate.
    eps : the initialisation scale ε in (0, 1); by default each run's ``scale`` coordinate.

    Returns
    -------
    DataArray over ``time`` (and ``scale`` when `eps` is None).

    References
    ----------
    Gidel, Bach, Lacoste-Julien (2019), "Implicit regularization of discrete gradient dynamics in linear neural
    networks", arXiv 1904.13262.
    """
    if "time" not in ds.coords:
        raise refused("ds must have a 'time' coordinate; pass a dlnode Dataset")
    if eps is None:
        if "scale" not in ds.coords:
            raise refused("eps is required when ds has no 'scale' coordinate; pass the initialisation scale")
        scale = ds["scale"]
        _check_eps(scale.values)
    else:
        scale = float(_check_eps(eps))
    out = ds["time"].reset_coords(drop=True) / np.log(1.0 / scale)
    return out.rename("rescaled_time").assign_attrs(long_name="t / ln(1/eps)", units="1")


def rrr_staircase(problem: Problem, times: Any) -> xr.Dataset:
    """Gidel's staircase: the rank-k reduced-rank-regression solution at rescaled times τ = t/ln(1/ε).

    With Σ_yx = Σ_i s_i u_i v_iᵀ (s_1 ≥ s_2 ≥ …), a depth-2 network from vanishing init learns mode i at
    τ = 1/s_i (its growth rate in the linear phase is s_i), so k(τ) = #{i : τ s_i > 1} modes are learned at τ, and
    the network sits at the rank-k(τ) reduced-rank-regression solution

        W_k = argmin_{rank W ≤ k} ℓ(W) = P_k W*,   P_k the projector on the top k eigenvectors of Σ_yx Σ_xx⁺ Σ_xy,

    (Izenman 1975), W* the least-squares solution. For whitened inputs (Σ_xx = I) W_k is the truncated SVD
    Σ_{i≤k} s_i u_i v_iᵀ; otherwise it is not the truncated SVD of W*. Under the assumption below the eigenvalues
    of Σ_yx Σ_xx⁺ Σ_xy are s_i²/λ_i (λ_i = v_iᵀ Σ_xx v_i): the network's plateau is W_k where the k largest s_i
    are also the k largest s_i²/λ_i (docs/math.md §4); elsewhere the modes it learned first are not W_k's.

    Parameters
    ----------
    problem : a `Regression` whose Σ_xx commutes with Σ_xy Σ_yx (Gidel et al.'s assumption, weaker than whitened
        inputs: the modes decouple and mode i grows at rate s_i), or a problem with loss ½‖W − W*‖²_F + const
        (identity Hessian: factorisation, fully observed completion).
    times : non-negative rescaled times τ, e.g. ``gidel_time(ds)``.

    Returns
    -------
    Dataset over ``rescaled_time`` with ``product`` (row, col), ``singular_values`` (k) and ``rank``, and
    ``learning_rate`` (k): the s_i, whose reciprocals are the steps' rescaled times.

    Raises
    ------
    DlnodeError : a problem with another loss, a Regression outside the assumption, or bad times.

    References
    ----------
    Gidel, Bach, Lacoste-Julien (2019), arXiv 1904.13262, Theorem 2. Izenman (1975), "Reduced-rank regression for
    the multivariate linear model", J. Multivariate Anal. 5.
    """
    sxx, syx = _regression_moments(problem)
    tau = np.asarray(times, dtype=np.float64)
    if tau.ndim != 1 or not np.all(np.isfinite(tau) & (tau >= 0)):
        raise refused(f"times must be a 1-d array of non-negative rescaled times; got {times!r}")
    s = np.linalg.svd(syx, compute_uv=False)
    w_star = np.asarray(problem.w_star, dtype=np.float64)
    # Izenman: the rank-k minimiser projects W* on the top k eigenvectors of Σ_yx Σ_xx⁺ Σ_xy (output space)
    evals, evecs = np.linalg.eigh(syx @ np.linalg.pinv(sxx, hermitian=True) @ syx.T)
    evecs = evecs[:, np.argsort(evals)[::-1]]
    rank = (tau[:, None] * s[None, :] > 1.0).sum(axis=1)
    products = np.zeros((rank.size, *w_star.shape))
    sv = np.zeros((rank.size, s.size))
    for t, k in enumerate(rank):  # W_k has rank exactly k: its other singular values are zero, not round-off
        products[t] = evecs[:, :k] @ evecs[:, :k].T @ w_star
        sv[t, :k] = np.linalg.svd(products[t], compute_uv=False)[:k]
    return xr.Dataset(
        {
            "product": (("rescaled_time", "row", "col"), products),
            "singular_values": (("rescaled_time", "k"), sv),
            "rank": ("rescaled_time", rank),
            "learning_rate": ("k", s, {"long_name": "singular values s_i of Sigma_yx (mode i learned at 1/s_i)"}),
        },
        coords={"rescaled_time": tau},
        attrs={"description": "rank-k reduced-rank regression for 1/s_k < t/ln(1/eps) < 1/s_(k+1) (depth 2)"},
    )


def _regression_moments(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """(Σ_xx, Σ_yx) of a problem for which Gidel's staircase holds, or a refusal naming the rule."""
    if isinstance(problem, Regression):
        sxx, syx = np.asarray(problem.sigma_xx, float), np.asarray(problem.sigma_yx, float)
        gram = syx.T @ syx
        scale = np.linalg.norm(sxx) * np.linalg.norm(gram)
        if np.linalg.norm(sxx @ gram - gram @ sxx) > 1e-10 * scale:
            raise refused(
                "problem must satisfy Gidel et al.'s assumption that Σ_xx commutes with Σ_xy Σ_yx (the modes "
                "decouple; whitened inputs are a special case); got a Regression where they do not commute, for "
                "which the staircase times are not 1/s_i"
            )
        return sxx, syx
    delta = np.random.default_rng(0).standard_normal((problem.d_out, problem.d_in))
    if not np.allclose(np.asarray(problem.grad(problem.w_star + delta)), delta, rtol=1e-12, atol=1e-12):
        raise refused(
            f"problem must be a Regression or have an identity Hessian (factorisation); got {problem.kind} "
            "with another loss, for which the staircase times are not 1/s_i"
        )
    return np.eye(problem.d_in), np.asarray(problem.w_star, dtype=np.float64)


def log_volume(ds: xr.Dataset) -> xr.DataArray:
    """Log state-space volume of W(t) for the end-to-end metric of each run's depth (docs/math.md §5).

    log vol_N = Σ_{i<k} ln(N|σ_i^{2/N} − σ_k^{2/N}|) + (1/N − 1) Σ_i ln σ_i on the rescaled time axis, and
    log vol_∞ = Σ_{i<k} ln|ln σ_i² − ln σ_k²| − Σ_i ln σ_i (up to an additive constant; see
    `dlnode.flows.endtoend.log_volume`). Small singular values carry large volume: Cohen, Menon, Veraszto's reading of
    implicit regularisation as a bias towards high volume (arXiv 2210.12497).
    """
    sv = require_variable(ds, "singular_values")
    if "depth" not in sv.coords or "k" not in sv.dims:
        raise refused(f"ds must have singular_values over 'k' with a depth coordinate; got dims {sv.dims}; pass "
                         "the dataset of dlnode.integrate")  # fmt: skip
    out = xr.apply_ufunc(
        _log_volume_block, sv, sv["depth"].reset_coords(drop=True), input_core_dims=[["k"], []],
        dask="parallelized", output_dtypes=[np.float64],
    )  # fmt: skip  # lazy on sweep stores: one block at a time, the same numbers as on the whole array
    return out.rename("log_volume").assign_attrs(long_name="log state-space volume of W (end-to-end metric)", units="1")


def _log_volume_block(sv: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """`endtoend.log_volume` of each spectrum (trailing axis) at its own depth (`depth` broadcast to sv[..., 0])."""
    depth = np.broadcast_to(depth, sv.shape[:-1])
    out = np.empty(sv.shape[:-1])
    for d in np.unique(depth):
        where = depth == d
        out[where] = np.asarray(endtoend.log_volume(sv[where], float(d) if np.isinf(d) else int(d)))
    return out
