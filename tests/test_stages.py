"""Tests of dlnode.analysis.stages (escape times, stages, modes learned) against Saxe's closed form and Gidel's GD
scaling.

Trajectories come from the references of `reference_runs`: a hand-written NumPy GD loop and the closed form of the
depth-2 balanced decoupled flow, u(t) = s e^{2st} / (e^{2st} − 1 + s/u₀) with dlnode's ½-loss.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from reference_runs import S_WELL_SEPARATED, build_dataset, exact_flow_states, gd_dataset, layer_grads, log_steps

import dlnode as dln
from dlnode.analysis import spectra as analysis


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_number_of_stages_equals_target_rank(rank):
    # Cao et al. (2022): from small init, a rank-R target is learned in R plateau-and-jump stages, at depth 2
    # (per-layer scale 1e-6) and at depth 3 (whose escape is polynomial in 1/scale, so scale 0.05 suffices).
    prob = dln.Regression.whitened(S_WELL_SEPARATED[:rank], 4, 4, seed=rank)
    ds2 = gd_dataset(prob, [2], [1e-6], [0, 1], 0.02, log_steps(1200, 150))
    ds3 = gd_dataset(prob, [3], [0.05], [0, 1], 0.04, log_steps(2000, 150))
    s = np.array(S_WELL_SEPARATED[:rank])
    # each plateau sits at a saddle, loss ½ Σ_{i≥k} s_i². In its middle (in ln t), at depth 2 from 1e-6 the modes
    # learned before are within 1e-3 of s_i and the next one below 1e-3 s_k; at depth 3 from 0.05 the escapes
    # (∝ 1/s_k) are only a factor 2 apart and the plateaus short, so the middle is 1e-2 s_k² off the saddle.
    for ds, plateau_tol in ((ds2, 1e-3), (ds3, 1e-2)):
        found = analysis.stages(ds)
        np.testing.assert_array_equal(found["num_stages"].values, rank)
        np.testing.assert_array_equal(
            found["rank"].isel(stage=slice(0, rank)).values.reshape(-1, rank)[0], np.arange(1, rank + 1)
        )
        for k in range(rank):
            plateau = found["plateau_loss"].isel(stage=k)
            assert np.all(abs(plateau - 0.5 * np.sum(s[k:] ** 2)) <= plateau_tol * s[k] ** 2), plateau.values


def escape_rtol(times, t_escape, s) -> np.ndarray:  # noqa: ANN001
    """Linear interpolation of g(x) = ln σ(eˣ) across a cell of width Δ in x = ln t errs by Δ²/8·|g''/g'| in x.

    At the half-way point of a logistic rise of rate 2s, g' = ts and g'' = ts − (ts)², so |g''/g'| = |1 − ts|;
    twice that bound, as a relative error in t.
    """
    log_t = np.log(np.asarray(times)[np.asarray(times) > 0])
    return 2 * np.max(np.diff(log_t)) ** 2 / 8 * np.abs(1 - np.asarray(t_escape) * np.asarray(s))


def test_stage_times_follow_gidel_scaling():
    # Gidel et al. (2019): a mode escapes after ln(1/ε)/ln(1 + lr·s) GD steps. The linear phase is scale-invariant,
    # so for two scales with the same seed the shift of the escapes between ε₁ and ε₂ is exactly
    # lr·ln(ε₁/ε₂)/ln(1 + lr·s_k), up to contamination by the neighbouring mode, O(ε₁^{2(1 − s_(k+1)/s_k)}) = O(ε₁)
    # = 1e-4 here, and one-step interpolation.
    scaling_rtol = 1e-3
    lr, eps1, eps2 = 0.02, 1e-4, 1e-8
    prob = dln.Regression.whitened(S_WELL_SEPARATED, 3, 3, seed=0)
    ds = gd_dataset(prob, [2], [eps2, eps1], [0, 1], lr, np.arange(0, 1401))
    ends = analysis.stages(ds)["end"].sel(depth=2).isel(stage=slice(0, 3))
    shift = ends.sel(scale=eps2) - ends.sel(scale=eps1)
    predicted = lr * np.log(eps1 / eps2) / np.log1p(lr * np.array(S_WELL_SEPARATED))
    np.testing.assert_allclose(shift.values, np.broadcast_to(predicted, shift.shape), rtol=scaling_rtol)
    # one escape per stage here: the stages' ends are the modes' escape times
    escapes = analysis.escape_times(ds).sel(depth=2).reset_coords(drop=True)
    np.testing.assert_array_equal(escapes.values, ends.transpose("scale", "seed", "stage").values)
    # the same GD trajectory saved on a coarse log grid gives the same stage times, up to interpolation
    coarse = ds.isel(time=log_steps(1400, 80))
    fine, rough = analysis.stages(ds)["end"].isel(stage=slice(0, 3)), analysis.stages(coarse)
    rtol = escape_rtol(coarse["time"], fine, xr.DataArray(S_WELL_SEPARATED, dims="stage"))
    assert np.all(abs(rough["end"].isel(stage=slice(0, 3)) - fine) <= rtol * fine)
    assert np.all(rough["resolution"].isel(stage=slice(0, 3)) > analysis.stages(ds)["resolution"].isel(stage=0))


def test_closed_form_solves_the_layer_gradient_flow():
    # dW/dt of the closed form (central difference, error O(h²)·|d³W/dt³| ≈ 1e-8·s³) against the chain rule
    # dW/dt = −(G_2 W_1 + W_2 G_1) of the per-layer flow dW_j/dt = −G_j: checks the factor 2 in du/dt = 2u(s − u).
    h, derivative_atol = 1e-4, 1e-6
    prob = dln.Regression.whitened(S_WELL_SEPARATED, 3, 3, seed=0)
    for t in (0.1, 0.5, 1.0, 3.0):
        (w1, w2), before, after = exact_flow_states(prob, 0.3, [t, t - h, t + h])
        g1, g2 = layer_grads([w1, w2], prob.grad(w2 @ w1))
        numeric = (dln.product(after) - dln.product(before)) / (2 * h)
        np.testing.assert_allclose(numeric, -(g2 @ w1 + w2 @ g1), atol=derivative_atol)


def interpolation_bound(times, t, s, u0) -> float:  # noqa: ANN001
    """Δ²/8 · max |d²ℓ/dx²| over the save cell of `times` holding t, x = ln t, for ℓ = ½ Σ (s_i − u_i)² along the
    closed form (u' = 2u(s − u), u'' = 2u'(s − 2u)): the error bound of linear interpolation in x."""
    i = int(np.searchsorted(times, t)) - 1
    x = np.linspace(np.log(times[i]), np.log(times[i + 1]), 201)[:, None]
    tt = np.exp(x)
    u = u0 * s / (u0 + (s - u0) * np.exp(-2 * s * tt))
    du = 2 * u * (s - u)
    d2u = 2 * du * (s - 2 * u)
    dl, d2l = -np.sum((s - u) * du, axis=1), np.sum(du**2 - (s - u) * d2u, axis=1)
    second = tt[:, 0] * dl + tt[:, 0] ** 2 * d2l  # d²ℓ/dx² = t ℓ'(t) + t² ℓ''(t)
    return float((x[-1, 0] - x[0, 0]) ** 2 / 8 * np.max(np.abs(second)))


def test_stages_of_the_closed_form_flow():
    # Balanced decoupled depth-2 flow: u_k(t) = s e^{2st}/(e^{2st} − 1 + s/u₀) crosses x = u_k(T)/2 (half its final
    # value) at t_k = ln(x(s/u₀ − 1)/(s − x))/(2s), ≈ ln(1/ε)/s_k for ε → 0 (Gidel), u₀ = ε².
    eps = 1e-6
    prob = dln.Regression.whitened(S_WELL_SEPARATED, 3, 3, seed=0)
    times = np.concatenate([[0.0], np.geomspace(1e-2, 40, 200)])
    ds = build_dataset(prob, {(2, eps, 0): exact_flow_states(prob, eps, times)}, times, init="decoupled")
    found = analysis.stages(ds).squeeze(("depth", "scale", "seed"))
    s, u0 = np.array(S_WELL_SEPARATED), eps**2
    x = ds["singular_values"].isel(time=-1).squeeze().values / 2
    t_k = np.log(x * (s / u0 - 1) / (s - x)) / (2 * s)
    rtol = escape_rtol(times, t_k, s)
    np.testing.assert_array_less(abs(found["end"].values[:3] - t_k), rtol * t_k)
    np.testing.assert_array_less(abs(found["start"].values[:3] - [0, *t_k[:2]]), rtol * np.array([1, *t_k[:2]]))
    escapes = analysis.escape_times(ds).squeeze(("depth", "scale", "seed"))
    np.testing.assert_array_less(abs(escapes.values - t_k), rtol * t_k)
    assert np.all(escapes["resolution"].values <= 1.1 * np.max(np.diff(np.log(times[1:]))))
    np.testing.assert_allclose(found["duration"].values[:3], np.diff([0, *found["end"].values[:3]]))
    np.testing.assert_array_equal(found["rank"].values[:3], [1, 2, 3])
    # the plateau loss is the loss at the plateau's middle in ln t, t_m = √(a_m · max(r_m, a_m)), a_m the previous
    # rise's end (the first saved time > 0 for m = 1) and r_m the rise's start (¼ of the final value); linearly
    # interpolated in x = ln t, it is the closed-form loss there up to ½(x − x₀)(x₁ − x)·|ℓ''| ≤ Δ²/8 · max |ℓ''|
    after = np.array([times[1], *found["rise_end"].values[:2]])
    rise = analysis.escape_times(ds, level=0.25).squeeze(("depth", "scale", "seed")).values
    middle = np.sqrt(after * np.maximum(rise, after))
    exact = [float(prob.loss(dln.product(state))) for state in exact_flow_states(prob, eps, middle)]
    bound = [interpolation_bound(times, t, s, u0) for t in middle]
    np.testing.assert_array_less(abs(found["plateau_loss"].values[:3] - exact), bound)
    # and plateau m sits at the saddle with modes 1 … m − 1 learned, loss ½ Σ_{i≥m} s_i²: the nearest of the saddles
    saddles = 0.5 * np.cumsum(s[::-1] ** 2)[::-1]
    nearest = np.argmin(abs(found["plateau_loss"].values[:3, None] - saddles[None, :]), axis=1)
    np.testing.assert_array_equal(nearest, [0, 1, 2])
    assert int(found["num_stages"]) == 3
    # the staircase of modes learned jumps at the escapes (away from the cells that hold them)
    count = analysis.modes_learned(ds).squeeze(("depth", "scale", "seed")).values
    expected = (times[:, None] >= t_k[None, :]).sum(axis=1)
    cell = np.max(np.diff(np.log(times[1:])))
    far = np.all(abs(np.log(np.maximum(times, 1e-300))[:, None] - np.log(t_k)[None, :]) > cell, axis=1)
    np.testing.assert_array_equal(count[far], expected[far])


@pytest.mark.slow
def test_stages_of_a_low_rank_completion_across_depths_scales_and_seeds():
    # A 30×30 rank-3 completion (450 of 900 entries seen), default save grid: 3 stages at depth 3 (scales 0.1,
    # 0.01) and at depth 2 from scales small enough that its escapes, at ≈ ln(1/ε)/s_i, are further apart than its
    # rises (width ∝ 1/s_i): 1e-5, 1e-6. Every stage ends at an escape, never at an early save time.
    prob = dln.MatrixCompletion.random(shape=(30, 30), rank=3, observed=450, seed=0)
    for depth, scales in ((2, [1e-5, 1e-6]), (3, [1e-1, 1e-2])):
        ds = dln.integrate(prob, depth=depth, scale=scales, seed=[0, 1, 2], progress=False)
        assert np.all(ds["status"] == dln.Status.CONVERGED)
        found = analysis.stages(ds)
        np.testing.assert_array_equal(found["num_stages"].values, 3)
        np.testing.assert_array_equal(found["rank"].isel(stage=slice(0, 3)).values.reshape(-1, 3), [[1, 2, 3]] * 6)
        # the first plateau is the initial loss: nothing is learned before the first escape
        loss0 = ds["loss"].isel(time=0)
        assert np.all(abs(found["plateau_loss"].isel(stage=0) - loss0) < 1e-3 * loss0)
        # every stage ends in a real drop of the loss (half a mode of the target learned, ≥ 10 % of the plateau's
        # loss here), not at an early save time where nothing happens
        t, loss = ds["time"].values, ds["loss"].transpose("depth", "scale", "seed", "time").values
        ends, plateaus = (found[v].isel(stage=slice(0, 3)).transpose("depth", "scale", "seed", "stage").values
                          for v in ("end", "plateau_loss"))  # fmt: skip
        for cell in np.ndindex(ends.shape[:3]):
            at_end = np.interp(ends[cell], t, loss[cell])
            assert np.all(at_end < 0.9 * plateaus[cell]), (cell, at_end, plateaus[cell])


def test_stages_of_a_nan_padded_run_equal_those_of_its_reached_part():
    # A failed run is NaN-padded after its last reached time; the spectrum may stop before the loss does. Both
    # paddings give the stages, escapes and staircase of the run cut at its last time with a finite spectrum. From
    # scale 0.9 (u₀ = 0.81) the mode s_3 = 1 starts above half its final value: it counts as learned from the start,
    # which needs the final spectrum.
    prob = dln.Regression.whitened(S_WELL_SEPARATED, 3, 3, seed=0)
    times = np.concatenate([[0.0], np.geomspace(1e-3, 40, 200)])
    runs = {(2, scale, 0): exact_flow_states(prob, scale, times) for scale in (1e-6, 0.9)}
    ds = build_dataset(prob, runs, times, init="decoupled")
    cut = ds.isel(time=slice(0, -20))
    padded = ds.copy(deep=True)
    padded["singular_values"][dict(time=slice(-20, None))] = np.nan  # loss still finite there
    padded_all = padded.copy(deep=True)
    padded_all["loss"][dict(time=slice(-20, None))] = np.nan
    expected = analysis.stages(cut)
    np.testing.assert_array_equal(expected["rank"].max("stage").values.ravel(), [3, 3])
    np.testing.assert_array_equal(expected["num_stages"].values.ravel(), [3, 1])  # 0.9: s_1, s_2 rise together
    for run in (padded, padded_all):
        xr.testing.assert_identical(analysis.stages(run), expected)
        xr.testing.assert_identical(analysis.escape_times(run), analysis.escape_times(cut))
        count = analysis.modes_learned(run)
        xr.testing.assert_identical(count.isel(time=slice(0, -20)), analysis.modes_learned(cut))
        assert bool(count.isel(time=slice(-20, None)).isnull().all())


def test_levels_accept_numpy_floats():
    prob = dln.Regression.whitened(S_WELL_SEPARATED, 3, 3, seed=0)
    times = np.concatenate([[0.0], np.geomspace(1e-2, 40, 60)])
    ds = build_dataset(prob, {(2, 1e-6, 0): exact_flow_states(prob, 1e-6, times)}, times, init="decoupled")
    xr.testing.assert_identical(
        analysis.stages(ds, level=np.float32(0.5), learned=np.float64(0.05)), analysis.stages(ds, 0.5, 0.05)
    )
    with pytest.raises(ValueError, match="level must be in"):
        analysis.stages(ds, level=True)
