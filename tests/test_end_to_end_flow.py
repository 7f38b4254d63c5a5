"""flow='end_to_end' through `integrate`: against the per-layer flow, Saxe-type σ dynamics, the ∞ limit, energy."""

import math
import re

import numpy as np
import pytest
import xarray as xr
from scipy.integrate import cumulative_simpson
from scipy.stats import linregress

import dlnode as dln
from dlnode.flows.endtoend import end_to_end_field, metric, recover_layers
from dlnode.problems.network import init_end_to_end

TIGHT = dict(method="dopri8", rtol=1e-11, atol=1e-13, progress=False)
MATCH = 1e-7  # two 8th-order solves at rtol 1e-11 over O(1) times agree far below this


@pytest.mark.parametrize(("shape", "depth"), [((4, 4), 2), ((4, 4), 3), ((3, 5), 4), ((5, 3), 5)])
def test_per_layer_product_equals_the_end_to_end_flow(shape, depth):
    prob = dln.MatrixCompletion.random(shape, 2, 10, seed=1)
    scale = 0.5
    w0 = init_end_to_end(prob, "balanced", scale, seed=0)
    layers0 = recover_layers(w0, depth, None)
    taus = np.linspace(0.0, 4.0, 9)
    e2e = dln.integrate(prob, depth=depth, flow="end_to_end", init="balanced", scale=scale, seed=0, t1=4.0,
                        scale_of="product", saveat=taus, **TIGHT)  # fmt: skip
    per = dln.integrate(prob, depth=depth, init=lambda shapes, s, rng: layers0, scale=1.0, seed=0, t1=4.0 / depth,
                        saveat=taus / depth, **TIGHT)  # fmt: skip
    diff = e2e["product"].values - per["product"].values
    assert np.max(np.abs(diff)) < MATCH * max(1.0, float(np.abs(per["product"]).max()))
    assert float(per["balancedness"].max()) < MATCH
    # the rebuilt layers of the e2e run multiply back to its final W and are balanced
    final = e2e["weights_final"].values[0, 0, 0]
    rebuilt = [final[j, : s[0], : s[1]] for j, s in enumerate(dln.layer_shapes(depth, prob.d_in, prob.d_out))]
    assert np.allclose(dln.product(rebuilt), e2e["product"].values[0, 0, 0, -1], rtol=0, atol=1e-12)
    assert max(np.abs(d).max() for d in dln.balancedness(rebuilt)) < 1e-12


def _cumulative(values, x):
    return np.concatenate([[0.0], cumulative_simpson(values, x=x)])


def test_singular_values_follow_their_ode():
    prob = dln.MatrixSensing.random((3, 3), 2, 30, seed=2)
    depth, taus = 3, np.linspace(0.0, 2.0, 401)
    ds = dln.integrate(prob, depth=depth, flow="end_to_end", init="balanced", scale=0.8, seed=1, t1=2.0,
                       scale_of="product", saveat=taus, **TIGHT)  # fmt: skip
    ws = ds["product"].values[0, 0, 0]
    rate = np.zeros((len(taus), 3))
    for k, w in enumerate(ws):  # dσ_r/dτ = −σ_r^{2−2/N} ⟨E, u_r v_rᵀ⟩ (the t-form divided by N)
        u, s, vt = np.linalg.svd(w)
        e = np.asarray(prob.grad(w))
        rate[k] = -(s ** (2 - 2 / depth)) * np.einsum("ir,ij,rj->r", u, e, vt)
    sigma = ds["singular_values"].values[0, 0, 0]
    start = 40  # the balanced init has equal σ; from τ = 0.2 on they are distinct and u_r, v_r well defined
    assert np.min(-np.diff(sigma[start:], axis=1)) > 1e-2
    integral = np.stack([_cumulative(rate[start:, r], taus[start:]) for r in range(3)], axis=1)
    assert np.max(np.abs(sigma[start] + integral - sigma[start:])) < 1e-8


def test_finite_depths_approach_infinite_depth_like_one_over_n():
    prob = dln.MatrixCompletion.random((4, 4), 2, 10, seed=0)
    depths = [8, 16, 32, 64]
    ds = dln.integrate(prob, depth=[*depths, "inf"], flow="end_to_end", init="balanced", scale=0.3, seed=0, t1=6.0,
                       scale_of="product", saveat=np.linspace(0.0, 6.0, 13), **TIGHT)  # fmt: skip
    assert math.isinf(ds.depth.values[-1])
    limit = ds["product"].sel(depth=math.inf)
    errors = [float(np.abs(ds["product"].sel(depth=float(n)) - limit).max()) for n in depths]
    slope = linregress(np.log(depths), np.log(errors)).slope
    assert abs(slope + 1.0) < 0.15, (slope, errors)
    assert np.isnan(ds["weights_final"].sel(depth=math.inf)).all()
    assert "tau = N t" in ds.attrs["time_rescaling"]


@pytest.mark.parametrize("depth", [3, math.inf])
def test_energy_identity_along_a_trajectory(depth):
    # ℓ(τ) − ℓ(0) = −∫ g(Ẇ, Ẇ) dτ: the residual of Simpson's rule on the saved grid must be pure quadrature error,
    # falling like h⁴ (fitted), and small on the finest grid
    prob = dln.MatrixCompletion.random((4, 5), 2, 12, seed=3)
    counts, residuals = [201, 401, 801], []
    for count in counts:
        taus = np.linspace(0.0, 3.0, count)
        ds = dln.integrate(prob, depth=[depth], flow="end_to_end", init="balanced", scale=0.5, seed=0, t1=3.0,
                           scale_of="product", saveat=taus, **TIGHT)  # fmt: skip
        ws = ds["product"].values[0, 0, 0]
        power = np.array([float(metric(w, end_to_end_field(w, prob.grad(w), depth), depth)) for w in ws])
        loss = ds["loss"].values[0, 0, 0]
        residuals.append(np.max(np.abs(loss - loss[0] + _cumulative(power, taus))))
    slope = linregress(np.log(counts), np.log(residuals)).slope
    assert abs(slope + 4.0) < 0.5, (slope, residuals)
    assert residuals[-1] < 1e-8 * loss[0]
    # the stored grad_norm is the same rate: −dℓ/dτ = ‖∇L‖²/N
    assert np.allclose(ds["grad_norm"].values[0, 0, 0] ** 2, power, rtol=1e-9)


def test_end_to_end_round_trip_with_infinite_depth(tmp_path):
    prob = dln.Regression.whitened([2.0, 1.0], 2, 3, seed=0)
    ds = dln.integrate(prob, depth=[2, "inf"], flow="end_to_end", init="decoupled", scale=1e-2, seed=0,
                       scale_of="product", saveat=30, progress=False)  # fmt: skip
    assert (ds["status"].values == 1).all()
    for suffix in (".nc", ".zarr"):
        dln.save(ds, tmp_path / f"e2e{suffix}")
        xr.testing.assert_identical(dln.open(tmp_path / f"e2e{suffix}"), ds)


def test_end_to_end_needs_a_balanced_init():
    prob = dln.Factorization(np.eye(2))
    with pytest.raises(ValueError, match="flow='end_to_end' needs a balanced init"):
        dln.integrate(prob, depth=2, flow="end_to_end", init="gaussian", progress=False)
    with pytest.raises(ValueError, match="method='gd' is gradient descent on the layers"):
        dln.integrate(prob, depth=2, flow="end_to_end", init="balanced", method="gd", lr=0.1, progress=False)


def test_gd_follows_the_modified_flow_one_order_better():
    prob = dln.Regression.whitened([2.0, 1.0, 0.5], 3, 3, seed=2)
    times = np.linspace(0.5, 4.0, 8)
    kw = dict(depth=3, init="gaussian", scale=0.5, seed=0, t1=4.0, saveat=times, progress=False)
    lrs = np.array([0.04, 0.02, 0.01, 0.005])
    errors = []
    for lr in lrs:
        gd = dln.integrate(prob, method="gd", lr=lr, **kw)
        modified = dln.integrate(prob, flow="modified", lr=lr, method="dopri8", rtol=1e-12, atol=1e-14, **kw)
        errors.append(float(np.abs(gd["product"] - modified["product"]).max()))
    slope = linregress(np.log(lrs), np.log(errors)).slope
    assert abs(slope - 2.0) < 0.15, (slope, errors)


def test_log_volume_along_a_trajectory_matches_its_formula():
    prob = dln.MatrixCompletion.random((3, 3), 2, 6, seed=0)
    ds = dln.integrate(prob, depth=[4, "inf"], flow="end_to_end", init="balanced", scale=0.5, seed=0, t1=2.0,
                       scale_of="product", saveat=np.linspace(0.5, 2.0, 4), progress=False)  # fmt: skip
    logvol = ds.dln.log_volume()
    assert logvol.dims == ("depth", "scale", "seed", "time")
    s = ds["singular_values"].sel(depth=4.0).values[0, 0, -1]
    x = s ** (2 / 4)  # docs/math.md §5 on the rescaled axis: Σ_{i<k} ln(N|σ_i^{2/N} − σ_k^{2/N}|) + (1/N − 1) Σ ln σ_i
    pairs = sum(np.log(4 * abs(x[i] - x[k])) for i in range(3) for k in range(i + 1, 3))
    assert float(logvol.sel(depth=4.0)[0, 0, -1]) == pytest.approx(pairs + (1 / 4 - 1) * np.sum(np.log(s)), rel=1e-12)
    s = ds["singular_values"].sel(depth=math.inf).values[0, 0, -1]
    pairs = sum(np.log(abs(np.log(s[i] ** 2) - np.log(s[k] ** 2))) for i in range(3) for k in range(i + 1, 3))
    assert float(logvol.sel(depth=math.inf)[0, 0, -1]) == pytest.approx(pairs - np.sum(np.log(s)), rel=1e-12)


@pytest.mark.parametrize("shape", [(6, 3), (3, 6)])
def test_infinite_depth_keeps_a_rectangular_column_space_and_says_so(shape):
    """a^∞_ik = 0 between a singular value and a padded zero (docs/math.md §5): at depth ∞ a 6 × 3 W keeps its
    column space (3 × 6: its row space), so on a factorisation whose target lies outside it the loss stops at the
    best fit inside, ½‖M − PM‖² (P the projector onto W(0)'s column space), a closed form; the plan warns before the
    run, and the run stops there as `subspace_optimum`, its floor ℓ*_S stored as `loss_floor`. Negative control:
    depth 64 leaves that subspace and converges."""
    rng = np.random.default_rng(3)
    target = rng.standard_normal((shape[0], 2)) @ rng.standard_normal((2, shape[1]))
    prob = dln.Factorization(target)
    kw = dict(flow="end_to_end", init="balanced", scale=1e-2, scale_of="product", seed=0, progress=False)
    with pytest.warns(UserWarning) as record:
        ds = dln.integrate(prob, depth="inf", **kw)
    said = [str(w.message) for w in record]
    assert any(re.search(r"at depth inf the end-to-end flow keeps W\(0\)'s (column|row) space", m) for m in said)
    assert any("subspace_optimum (the best fit inside W(0)'s subspace, loss_floor" in m for m in said)  # after
    w = ds["product"].isel(depth=0, scale=0, seed=0).values
    loss = ds.loss.isel(depth=0, scale=0, seed=0).values
    last = np.flatnonzero(np.isfinite(loss))[-1]
    basis = np.linalg.svd(w[0] if shape[0] > shape[1] else w[0].T, full_matrices=False)[0]
    m = target if shape[0] > shape[1] else target.T
    best = 0.5 * np.linalg.norm(m - basis @ (basis.T @ m)) ** 2
    assert best > 0.1 * loss[0]  # the target is far from W(0)'s subspace
    assert loss[last] == pytest.approx(best, rel=1e-6)
    moved = np.linalg.svd(w[last] if shape[0] > shape[1] else w[last].T, full_matrices=False)[0]
    assert np.linalg.svd(basis.T @ moved, compute_uv=False).min() > 1 - 1e-9  # the subspace, to round-off
    assert ds.status.item() == int(dln.Status.SUBSPACE_OPTIMUM)
    assert ds.loss_floor.item() == pytest.approx(best, rel=1e-10)
    assert loss[last] - best <= 1e-8 * (loss[0] - best)  # the stop rule, against the floor
    assert np.all(loss[last:] == loss[last])  # held past its end, as a converged run's
    deep = dln.integrate(prob, depth=64, **kw)
    assert deep.status.item() == int(dln.Status.CONVERGED)
    assert deep.loss.isel(time=-1).item() < 1e-6 * best
    assert "loss_floor" not in deep  # no floor above l* at a finite depth
    fixed = dln.integrate(prob, depth="inf", t1=float(ds.t_final.item()), **kw)  # t1 given: no stop rule
    assert fixed.status.item() == int(dln.Status.FINISHED) and "loss_floor" not in fixed


def test_no_frozen_subspace_warning_where_there_is_none(recwarn):
    prob = dln.Factorization(np.random.default_rng(0).standard_normal((4, 4)))
    dln.integrate(prob, depth="inf", flow="end_to_end", init="balanced", scale=1e-2, scale_of="product", t1=1.0,
                  progress=False)  # fmt: skip
    dln.integrate(dln.Factorization(np.ones((5, 3))), depth=4, flow="end_to_end", init="balanced", scale=1e-2,
                  scale_of="product", t1=1.0, progress=False)  # fmt: skip
    assert not [w for w in recwarn if "keeps W(0)" in str(w.message)]
