"""The stiff path of end-to-end flows (``method="rosenbrock"``, ``flow="end_to_end"``): singular coordinates.

References: the end-to-end field in W (docs/math.md §5) for the coordinate field; a derivative of the Cayley chart; the
closed-form escape times of decoupled modes (docs/math.md §3) at depth 8 and ∞ from σ = 1e-24, where W itself cannot
hold the unlearned modes; and a tight dopri8 integration of the W-space flow on coupled (completion) problems, one
of them with a norm that diverges.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

import dlnode as dln
from dlnode.flows import scales
from dlnode.flows.endtoend import end_to_end_field
from dlnode.flows.flow import get_flow
from dlnode.solvers import auto, driver, singular
from dlnode.solvers.stepping import compiled

TARGET_SV = np.array([3.0, 2.0, 1.0, 0.5, 0.0, 0.0])
# Escape times at rtol 1e-9 against the quadrature of the scalar law: the saves bracket each predicted time on a grid
# of relative spacing 5e-8, so 2e-7 allows four grid cells of integration error on ~10^18 time units.
ESCAPE_RTOL, ESCAPE_TOL, ESCAPE_GRID = 1e-9, 2e-7, 5e-8
# Coupled problem against dopri8 at rtol 1e-11 (W space, where σ ≥ 1e-3·scale stays far above round-off): a 4th-order
# method with a per-step controller keeps the global error within a modest multiple of rtol (measured 5e-8 at 1e-9).
COUPLED_RTOL, COUPLED_FACTOR = 1e-7, 100.0


def _frames(rng, m, n):
    return np.linalg.qr(rng.normal(size=(m, m)))[0], np.linalg.qr(rng.normal(size=(n, n)))[0]


@pytest.mark.parametrize(("m", "n", "depth"), [(5, 5, 3), (6, 4, 4), (4, 6, 2), (5, 5, math.inf), (4, 6, math.inf)])
def test_coordinate_field_is_the_end_to_end_field(m, n, depth):
    rng = np.random.default_rng(0)
    u, v = _frames(rng, m, n)
    s = np.sort(rng.uniform(0.1, 2.0, min(m, n)))[::-1]
    target = rng.normal(size=(m, n))

    def gradient(w):
        return w - target

    om_u, om_v, dell, w = singular.singular_field(jnp.asarray(u), jnp.asarray(v), jnp.log(s), gradient, depth)
    r = len(s)
    # d/dτ (U S Vᵀ) = UΩ_U S Vᵀ + U Ṡ Vᵀ + U S (VΩ_V)ᵀ
    w_dot = ((u @ om_u)[:, :r] * s + u[:, :r] * (s * np.asarray(dell))) @ v[:, :r].T
    w_dot = w_dot + (u[:, :r] * s) @ (v @ om_v)[:, :r].T
    expected = np.asarray(end_to_end_field(w, gradient(w), depth))
    np.testing.assert_allclose(w_dot, expected, atol=1e-13 * np.abs(expected).max())
    np.testing.assert_array_equal(np.asarray(om_u), -np.asarray(om_u).T)


@pytest.mark.parametrize(("m", "n"), [(5, 5), (6, 4), (4, 6)])
@pytest.mark.parametrize("depth", [2, 3, 7, math.inf])
def test_rate_from_coordinates_is_the_end_to_end_energy(m, n, depth):
    """−dℓ/dτ = Σ_ik (a_ik/N) (UᵀEV)_ik² from ln σ alone equals ⟨E, −F⟩ for the W-space field F, with a tie (two
    equal σ, where the closed form is 0/0) and, for a rectangular W, the zero modes of the padding."""
    rng = np.random.default_rng(3)
    u, v = _frames(rng, m, n)
    s = np.sort(rng.uniform(0.1, 2.0, min(m, n)))[::-1]
    s[2] = s[1]
    w = (u[:, : len(s)] * s) @ v[:, : len(s)].T
    e = rng.normal(size=(m, n))
    g = u.T @ e @ v
    weights = singular.operator_weights(jnp.log(s), m, n, singular.depth_power(depth))
    rate = float(jnp.sum(weights * g * g))
    expected = -float(np.sum(e * np.asarray(end_to_end_field(w, e, depth))))
    assert rate == pytest.approx(expected, rel=1e-12)


def test_one_compiled_solver_serves_every_depth(traces):
    """Depth is a traced number of the singular path: depths 2, 3 and ∞ of one shape trace its solver once, and the
    product at each depth is the one a run of that depth alone gives."""
    prob = dln.MatrixCompletion.random((5, 5), 2, 18, seed=4)
    kw = _balanced_product(method="rosenbrock", t1=30.0, saveat=6, rtol=1e-8, atol=1e-13)
    for depth in (2, [2, 3, "inf"]):  # what a process traces once outside the solver (the initial gradients at
        dln.integrate(prob, **{**kw, "depth": depth})  # each batch size, in singular coordinates) is not counted
    compiled.cache_clear()
    before = traces()
    dln.integrate(prob, **{**kw, "depth": 2})
    one_depth = traces() - before
    assert one_depth > 0
    compiled.cache_clear()
    before = traces()
    together = dln.integrate(prob, **{**kw, "depth": [2, 3, "inf"]})
    assert traces() - before == one_depth  # the solver of depth 2 serves depths 3 and inf: traced once
    for k, depth in enumerate([2, 3, "inf"]):
        alone = dln.integrate(prob, **{**kw, "depth": depth})
        np.testing.assert_array_equal(together["product"].isel(depth=k).values, alone["product"].isel(depth=0).values)
    assert traces() - before == one_depth


@pytest.mark.parametrize(("m", "n"), [(5, 5), (6, 4)])
@pytest.mark.parametrize("depth", [3, math.inf])
def test_the_cheaper_origin_field_has_the_chart_fields_value_and_jacobian(m, n, depth):
    """The Rosenbrock steps take J from `field(..., at_origin=True)`, a cheaper function that must agree with the
    Cayley chart's field to first order at A = B = 0: same value and same Jacobian there (forward mode)."""
    rng = np.random.default_rng(5)
    u, v = _frames(rng, m, n)
    ell = np.log(np.sort(rng.uniform(0.1, 2.0, min(m, n)))[::-1])
    target = jnp.asarray(rng.normal(size=(m, n)))

    def gradient(w):
        return w - target

    chart = singular._Chart(m, n, len(ell))
    z0 = jnp.concatenate([jnp.zeros(sum(chart.sizes)), jnp.asarray(ell)])
    c = singular.depth_power(depth)
    u, v, e0 = jnp.asarray(u), jnp.asarray(v), -target
    fields = [jax.jit(lambda z, origin=origin: chart.field(z, u, v, gradient, c, e0, at_origin=origin))
              for origin in (False, True)]  # fmt: skip
    exact, cheap = (jax.jit(jax.jacfwd(f))(z0) for f in fields)
    np.testing.assert_allclose(cheap, exact, rtol=0, atol=1e-12 * np.abs(exact).max())
    np.testing.assert_allclose(fields[1](z0), fields[0](z0), rtol=1e-14)


@pytest.mark.parametrize(("m", "n"), [(5, 5), (6, 4), (4, 6)])
def test_step_error_is_the_change_of_w_per_pair(m, n):
    """A step's error is measured as the change of W in each pair's entries relative to the pair's size: for a small
    chart move e = (A, B, δ ln σ), the scaled pair entries have squares summing to (δW_ik² + δW_ki²)/(σ_i + σ_k)²
    (δW = Uᵀ(W' − W)V), so turning a pair of nearly equal σ together costs almost nothing."""
    rng = np.random.default_rng(3)
    u, v = _frames(rng, m, n)
    k = min(m, n)
    sigma = np.array([2.0, 1.0, 1.0 + 1e-9, 0.3, 0.1, 0.05])[:k]  # a near tie: its turning is (almost) a gauge
    chart = singular._Chart(m, n, k)
    eps = 1e-7
    e = eps * rng.normal(size=sum(chart.sizes) + k)
    w = (u[:, :k] * sigma) @ v[:, :k].T
    z = jnp.asarray(np.concatenate([e[:-k], np.log(sigma) + e[-k:]]))
    u1, v1, ell1 = (np.asarray(x) for x in chart.frames(jnp.asarray(u), jnp.asarray(v), z))
    d = u.T @ ((u1[:, :k] * np.exp(ell1)) @ v1[:, :k].T - w) @ v
    scaled = np.asarray(singular.scaled_error(chart, jnp.asarray(np.log(sigma)), jnp.asarray(e)))
    sa, sb = (np.asarray(chart.skew(jnp.asarray(x), size)) for x, size in
              ((scaled[: chart.sizes[0]], m), (scaled[chart.sizes[0] : -k], n)))  # fmt: skip
    for i in range(k):
        for j in range(i + 1, k):
            in_w = (d[i, j] ** 2 + d[j, i] ** 2) / (sigma[i] + sigma[j]) ** 2
            np.testing.assert_allclose(sa[i, j] ** 2 + sb[i, j] ** 2, in_w, rtol=1e-5)
    np.testing.assert_array_equal(scaled[-k:], e[-k:])  # ln σ: already a relative change
    # the near tie's turning is weighted by its relative gap, the shear by 1
    pair = (1, 2)
    turn = 0.5 * (np.asarray(chart.skew(jnp.asarray(e[: chart.sizes[0]]), m))[pair]
                  + np.asarray(chart.skew(jnp.asarray(e[chart.sizes[0] : -k]), n))[pair])  # fmt: skip
    assert abs(0.5 * (sa[pair] + sb[pair])) <= 1e-9 * abs(turn)


def test_cayley_chart_velocity_moves_the_frame_by_omega():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 4)) * 0.7
    a, om = a - a.T, rng.normal(size=(4, 4))
    om = om - om.T
    u0 = _frames(rng, 4, 4)[0]

    def frame(x):
        return u0 @ singular._cayley(x)

    u, du = jax.jvp(frame, (jnp.asarray(a),), (singular._chart_velocity(jnp.asarray(a), jnp.asarray(om)),))
    np.testing.assert_allclose(du, u @ om, atol=1e-13)


def _escape_time(depth, scale, sigma):
    """τ at which a decoupled mode of target σ* reaches σ*/2 from `scale`: ∫ dσ/(σ^{2−2/N}(σ* − σ)) in ln σ."""
    c = 0.0 if math.isinf(depth) else 2.0 / depth
    return quad(lambda x: np.exp((c - 1) * x) / (sigma - np.exp(x)), np.log(scale), np.log(sigma / 2), limit=500,
                epsabs=0.0, epsrel=1e-13)[0]  # fmt: skip


@pytest.mark.parametrize(("depth", "scale"), [(8, 1e-24), ("inf", 1e-6)])
def test_decoupled_escapes_from_tiny_init_match_the_closed_form(depth, scale):
    rng = np.random.default_rng(0)
    qa, qb = _frames(rng, 6, 6)
    prob = dln.Factorization((qa * TARGET_SV) @ qb.T)
    n = math.inf if depth == "inf" else depth
    taus = [_escape_time(n, scale, s) for s in TARGET_SV[:4]]
    offsets = np.arange(-40, 41) * ESCAPE_GRID
    grid = np.unique(np.concatenate([[0.0], *[tau * (1 + offsets) for tau in taus]]))
    ds = dln.integrate(prob, depth=depth, flow="end_to_end", init="decoupled", scale=scale, method="rosenbrock",
                       scale_of="product", rtol=ESCAPE_RTOL, atol=ESCAPE_RTOL * 1e-3, saveat=grid,
                       t1=float(grid[-1]), progress=False)  # fmt: skip
    sv = ds.singular_values.isel(depth=0, scale=0, seed=0).values
    assert ds.status.item() in (0, 1)  # reached the last save, or converged (ℓ − ℓ* ≤ 1e-8 (ℓ₀ − ℓ*)) there
    for i, (sigma, tau) in enumerate(zip(TARGET_SV[:4], taus, strict=True)):
        crossed = ds.time.values[np.argmax(sv[:, i] > sigma / 2)]
        assert abs(crossed - tau) <= ESCAPE_TOL * tau, (i, crossed, tau)
    # modes of σ* = 0 decay as dσ/dτ = −σ^{3−2/N}, kept exactly at any size (an SVD of W gives round-off ~1e-16)
    c = 0.0 if math.isinf(n) else 2.0 / n
    decayed = (scale ** (c - 2) + (2 - c) * ds.time.values[-1]) ** (-1 / (2 - c))
    np.testing.assert_allclose(sv[-1, 4:], decayed, rtol=1e-6)
    # stages in order: the stronger mode escapes first
    assert np.all(np.diff(taus) > 0)


@pytest.mark.parametrize("shape", [(6, 6), (5, 7)])
def test_coupled_completion_agrees_with_a_tight_w_space_reference(shape):
    prob = dln.MatrixCompletion.random(shape, 2, 22, seed=2)
    times = np.concatenate([[0.0], np.logspace(0, np.log10(400.0), 40)[:-1], [400.0]])
    kw = dict(
        depth=3,
        flow="end_to_end",
        init="balanced",
        scale_of="product",
        scale=1e-3,
        seed=0,
        t1=400.0,
        saveat=times,
        progress=False,
    )
    ref = dln.integrate(prob, method="dopri8", rtol=1e-11, atol=1e-14, **kw)
    ds = dln.integrate(prob, method="rosenbrock", rtol=COUPLED_RTOL, atol=COUPLED_RTOL * 1e-3, **kw)
    assert ds.status.item() == 0 and ref.status.item() == 0
    w, w_ref = (x["product"].isel(depth=0, scale=0, seed=0).values for x in (ds, ref))
    err = np.linalg.norm(w - w_ref, axis=(1, 2)) / np.linalg.norm(w_ref, axis=(1, 2))
    assert err.max() <= COUPLED_FACTOR * COUPLED_RTOL, err.max()
    # at least two stages happened (two singular values learned), so the comparison crossed a saddle
    assert np.sum(ds.singular_values.isel(depth=0, scale=0, seed=0).values[-1] > 0.1) == 2


def _balanced_product(**kw):
    """integrate's keywords for an end-to-end run (depth 3 unless `kw` says) from a balanced product of scale 1e-3."""
    base = dict(depth=3, flow="end_to_end", init="balanced", scale_of="product", scale=1e-3, progress=False)
    return {**base, **kw}


def test_norm_diverges_where_the_low_rank_fit_is_at_infinity():
    """Razin & Cohen (2020): complete [[?, 1], [1, 0]] from a balanced init with det W(0) > 0 (seed 3). The sign of
    det W is kept along the flow (det W = Π det W_j, and no balanced layer can become singular), so a fit needs
    W₁₁W₂₂ > W₁₂W₂₁ → 1 with W₂₂ → 0: the loss can only go to zero while W₁₁ → −∞. The singular path follows σ₁
    to ~20 and σ₂ down 100× in agreement with a tight W-space dopri8 run, through the regime where the sharpness
    grows like σ₁^{2−2/N}."""
    prob = dln.MatrixCompletion(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([[False, True], [True, True]]))
    t1 = 1e3
    times = np.concatenate([[0.0], np.logspace(0, np.log10(t1), 25)])
    kw = _balanced_product(seed=3, t1=t1, saveat=times)
    ref = dln.integrate(prob, method="dopri8", rtol=1e-12, atol=1e-15, max_steps=1_000_000, **kw)
    ds = dln.integrate(prob, method="rosenbrock", rtol=COUPLED_RTOL, atol=COUPLED_RTOL * 1e-3, **kw)
    assert ds.status.item() == 0 and ref.status.item() == 0
    w, w_ref = (x["product"].isel(depth=0, scale=0, seed=0).values for x in (ds, ref))
    err = np.linalg.norm(w - w_ref, axis=(1, 2)) / np.linalg.norm(w_ref, axis=(1, 2))
    assert err.max() <= COUPLED_FACTOR * COUPLED_RTOL, err.max()
    assert np.all(np.linalg.det(w) > 0)
    sv = ds.singular_values.isel(depth=0, scale=0, seed=0).values
    loss = ds.loss.isel(depth=0, scale=0, seed=0).values
    assert sv[-1, 0] > 15.0 and sv[-1, 1] < 1e-2 * sv[0, 1]  # σ₁ runs off, σ₂ falls: rank one at infinity
    assert loss[-1] < 2e-3 * loss[0] and np.all(np.diff(loss) <= 0)
    # the fit at infinity: W₁₂W₂₁ → 1 from below W₁₁W₂₂ (det > 0), so W₂₂ → 0 and |W₁₁| grows like 1/|W₂₂|
    assert w[-1, 0, 0] < -15.0 and -0.1 < w[-1, 1, 1] < 0.0
    assert 0.9 < w[-1, 0, 1] * w[-1, 1, 0] < w[-1, 0, 0] * w[-1, 1, 1]


def test_a_run_out_of_steps_keeps_what_it_reached():
    prob = dln.MatrixCompletion.random((5, 5), 2, 15, seed=2)
    times = np.logspace(-1, 3, 30)
    kw = _balanced_product(t1=1e3, saveat=times)
    full = dln.integrate(prob, method="rosenbrock", **kw)
    cut = dln.integrate(prob, method="rosenbrock", max_steps=40, **kw)
    assert full.status.item() in (0, 1) and cut.status.item() == -1
    t_final = float(cut.t_final.values.ravel()[0])
    w, w_full = (x["product"].isel(depth=0, scale=0, seed=0).values for x in (cut, full))
    reached = cut.time.values <= t_final
    assert 1 < reached.sum() < len(reached)
    np.testing.assert_allclose(w[reached], w_full[reached], rtol=0, atol=1e-12)  # the same steps up to the cut
    assert np.isnan(w[~reached]).all()


def test_bad_input_is_refused_before_integration():
    prob = dln.Factorization(np.diag([2.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match="max_steps must be a positive integer"):
        dln.integrate(prob, depth=3, flow="end_to_end", init="balanced", method="rosenbrock", max_steps=0,
                      progress=False)  # fmt: skip
    assert singular.unknowns(6, 4) == 15 + 6 + 4 == sum(singular._Chart(6, 4, 4).sizes) + 4
    with pytest.raises(ValueError, match="must be >= 2 for method=.rosenbrock. on flow=.end_to_end."):
        singular.make_batch(get_flow("end_to_end", type(prob), 1.0))


def test_depth_one_is_refused_with_the_rule():
    prob = dln.Factorization(np.eye(3))
    with pytest.raises(ValueError, match="must be >= 2 for method=.rosenbrock. on flow=.end_to_end."):
        dln.integrate(prob, depth=[1, 2], flow="end_to_end", init="balanced", method="rosenbrock", progress=False)


def test_auto_takes_singular_coordinates_for_stiff_end_to_end_flows():
    prob = dln.MatrixCompletion.random((6, 6), 2, 22, seed=2)
    kw = dict(flow="end_to_end", init="balanced", scale_of="product", t1=50.0, saveat=8, progress=False)
    stiff = dln.integrate(prob, depth=4, scale=1e-8, **kw)
    assert stiff.attrs["method"] == "rosenbrock" and "singular coordinates" in stiff.attrs["method_reason"]
    # end-to-end scale is σ(0) itself: s*^{2−2/N} h / (σ(0)^{1−2/N} g), with s* = |W*|, g = |grad l(0)| and h = 1
    s_star, g = np.linalg.norm(prob.w_star, 2), np.linalg.norm(prob.grad(np.zeros((6, 6))), 2)
    assert scales.predicted_stiffness(prob, 4, 1e-8, "end_to_end", "product") == pytest.approx(
        s_star**1.5 / (1e-8**0.5 * g), rel=1e-9
    )
    assert scales.predicted_stiffness(prob, math.inf, 1e-8, "end_to_end", "product") == pytest.approx(
        s_star**2 / (1e-8 * g), rel=1e-9
    )
    assert scales.predicted_stiffness(prob, 4, 1e-8, "end_to_end", "product") > auto.STIFF_RATIO
    mild = dln.integrate(prob, depth=4, scale=0.5, **kw)
    assert mild.attrs["method"] == "tsit5"
    assert scales.predicted_stiffness(prob, 4, 0.5, "end_to_end", "product") <= auto.STIFF_RATIO


def test_auto_takes_singular_coordinates_for_a_large_w_past_depth_two():
    """On the gauntlet's case 28 (a 53 × 55 completion, depth 3, balanced product 4.2e-3) the flow is predicted mild
    (26) yet turns stiff after its escapes: tsit5 took 17,673 steps without converging (51 s). At depth ≥ 3 a W of at
    least `LARGE_STATE` entries goes to the singular path, which converges (here on a completion of that size);
    depth 2 (no plateau) and a small W keep tsit5."""
    prob = dln.MatrixCompletion.random((53, 55), 4, 0.78, seed=0)
    rest = ("balanced", None, "end_to_end", math.nan, "product")
    assert scales.predicted_stiffness(prob, 3, 4.2e-3, "end_to_end", "product") <= auto.STIFF_RATIO
    method, reason = auto.choose_method(prob, [3], [4.2e-3], *rest)
    assert method == "rosenbrock" and "a W of 2915 entries" in reason
    assert auto.choose_method(prob, [2], [4.2e-3], *rest)[0] == "tsit5"
    small = dln.MatrixCompletion.random((20, 20), 2, 0.5, seed=0)
    assert auto.choose_method(small, [3], [0.3], *rest)[0] == "tsit5"
    ds = dln.integrate(prob, **_balanced_product(scale=4.2e-3, saveat=40))
    assert ds.attrs["method"] == "rosenbrock" and ds.status.item() == int(dln.Status.CONVERGED)


def test_auto_chooses_per_depth_and_says_which_method_ran_each(tmp_path):
    """A depth without a plateau (the end-to-end flow at depth 2) is not handed the stiff path because another depth
    of the call needs it: auto picks per depth, the dataset's ``method`` says "per depth" and ``method_used`` says
    which ran each cell, and each depth's run is the one a call of that depth alone with that method gives."""
    prob = dln.MatrixCompletion.random((6, 6), 2, 22, seed=2)
    kw = dict(flow="end_to_end", init="balanced", scale_of="product", scale=1e-8, t1=50.0, saveat=8, rtol=1e-7,
              atol=1e-12, progress=False)  # fmt: skip
    ds = dln.integrate(prob, depth=[2, 4], **kw)
    assert ds.attrs["method"] == "per depth" and ds.attrs["method_requested"] == "auto"
    assert "depth 2: predicted stiffness 1 <= 100 -> tsit5" in ds.attrs["method_reason"]
    assert "depth 4: predicted plateau stiffness" in ds.attrs["method_reason"]
    assert ds.attrs["max_steps"] == "per depth: the default of the method that ran"
    names = dict(enumerate(ds["method_used"].attrs["flag_meanings"].split()))
    used = {float(d): {names[int(c)] for c in ds["method_used"].sel(depth=d).values.ravel()} for d in ds.depth.values}
    assert used == {2.0: {"tsit5"}, 4.0: {"rosenbrock"}}
    for depth, method in ((2, "tsit5"), (4, "rosenbrock")):
        alone = dln.integrate(prob, depth=depth, method=method, **kw)
        np.testing.assert_array_equal(ds["product"].sel(depth=depth).values, alone["product"].isel(depth=0).values)
        assert "method_used" not in alone
    dln.save(ds, tmp_path / "mixed.nc")
    np.testing.assert_array_equal(dln.open(tmp_path / "mixed.nc")["method_used"].values, ds["method_used"].values)
    same = dln.integrate(prob, depth=[4, 6], **kw)  # both stiff: one method, as before
    assert same.attrs["method"] == "rosenbrock" and "method_used" not in same


@pytest.mark.parametrize("depth", [4, "inf"])
def test_matrix_free_stage_solves_agree_with_the_dense_lu(monkeypatch, depth):
    """The two ways of solving the stage systems — GMRES on Jacobian-vector products with the pair-local
    preconditioner, and the LU of the formed Jacobian — give one trajectory to the tolerance, through the plateau and
    every escape of a 6 × 6 completion."""
    prob = dln.MatrixCompletion.random((6, 6), 2, 24, seed=1)
    times = np.concatenate([[0.0], np.logspace(-1, 4, 60)])
    kw = _balanced_product(depth=depth, t1=float(times[-1]), saveat=times, method="rosenbrock", rtol=1e-8,
                          atol=1e-11)  # fmt: skip
    runs = {}
    monkeypatch.setattr(singular, "SWITCH_MAX_UNKNOWNS", 0)  # GMRES throughout, never switched to the LU
    for name, limit in (("dense", 10**9), ("krylov", 0)):
        monkeypatch.setattr(singular, "DENSE_MAX_UNKNOWNS", limit)
        compiled.cache_clear()
        runs[name] = dln.integrate(prob, **kw)
    compiled.cache_clear()
    for ds in runs.values():
        assert ds.status.item() in (0, 1)
    w, w_ref = (runs[k]["product"].isel(depth=0, scale=0, seed=0).values for k in ("krylov", "dense"))
    reached = runs["krylov"].time.values <= min(float(r.t_final.max()) for r in runs.values())
    err = np.linalg.norm(w - w_ref, axis=(1, 2)) / np.linalg.norm(w_ref, axis=(1, 2))
    assert err[reached].max() <= 1e-5, err[reached].max()
    loss = runs["krylov"].loss.isel(depth=0, scale=0, seed=0).values[reached]
    assert loss[-1] < 1e-6 * loss[0]  # through the escapes


def test_stage_solves_switch_to_dense_lu_where_gmres_falls_short(monkeypatch):
    """On a 20 × 20 rank-2 completion (400 unknowns, above the dense limit of 300) at depth 16 the pair-local
    preconditioner is too weak: GMRES falls short on 30 % of the attempts and each is retried at a fifth of h (4092
    steps). The same holds on a 12 × 12 completion with 58 observed entries (144 unknowns), run here with the dense
    limit lowered to 100 so that GMRES is tried first (a quarter of the cost). The batch switches to dense LU stage
    solves between windows, and the trajectory is the one dense LU gives from the start, to the tolerance."""
    monkeypatch.setattr(singular, "DENSE_MAX_UNKNOWNS", 100)
    compiled.cache_clear()  # nothing compiled under the default limit is reused
    prob = dln.MatrixCompletion.random((12, 12), 2, 58, 0, normalize=True)
    kw = _balanced_product(depth=16, saveat=40)
    switched = []
    variant = singular.SingularRosenbrock.variant

    def spy(self, st):
        chosen = variant(self, st)
        switched.append(chosen.dense)
        return chosen

    monkeypatch.setattr(singular.SingularRosenbrock, "variant", spy)
    ds = dln.integrate(prob, **kw)
    assert ds.attrs["method"] == "rosenbrock" and ds.status.item() == 1
    assert not switched[0] and switched[-1]  # GMRES first, dense LU after the switch
    # the switch is part of the state: stopped (Ctrl-C) right after the window that made it, the run resumes in
    # dense LU from its first window and to the same bits
    made, checks = switched.index(True), []
    monkeypatch.setattr(driver, "_interrupt_requested", lambda flag: checks.append(flag) or len(checks) == made)
    stopped = dln.integrate(prob, **kw)
    assert stopped.status.item() == int(dln.Status.INTERRUPTED)
    monkeypatch.setattr(driver, "_interrupt_requested", lambda flag: False)
    switched.clear()
    resumed = dln.resume(stopped)
    assert switched[0] and resumed.status.item() == 1
    np.testing.assert_array_equal(resumed["product"].values, ds["product"].values)
    monkeypatch.setattr(singular, "DENSE_MAX_UNKNOWNS", 10**9)
    compiled.cache_clear()
    ref = dln.integrate(prob, **{**kw, "saveat": ds.time.values})
    compiled.cache_clear()
    w, w_ref = (x["product"].isel(depth=0, scale=0, seed=0).values for x in (ds, ref))
    err = np.linalg.norm(w - w_ref, axis=(1, 2)) / np.linalg.norm(w_ref, axis=(1, 2))
    assert err.max() <= 1e-4, err.max()


def test_a_deep_run_goes_on_past_escapes_far_out_on_the_time_axis(monkeypatch):
    """Depth 16 from balanced layers of scale 3e-3 (σ(0) ~ 1e-41) on a 5 × 6 rank-2 sensing problem (20
    measurements): the modes escape at t ≈ 6e34 and 2e35. After an escape the learned mode's pairs sit at their
    equilibrium, where the computed G_1k are round-off; those entries count as zero (`_without_roundoff`), the
    steps grow with t again, and the run converges to the rank-2 target with the other modes still at ~1e-41. The
    trajectory agrees with the same path at rtol 1e-10, whose escapes take more windows of steps below the time's
    resolution than the ulp rule alone allowed (it stopped there as `solver_failure` before the driver measured the
    state's change). Negative control: with G's round-off kept, the run creeps just after the first escape and
    spends its step budget there."""
    prob = dln.MatrixSensing.random((5, 6), 2, 20, 0)
    kw = dict(depth=16, init="balanced", scale=3e-3, flow="end_to_end", progress=False)
    ds = dln.integrate(prob, **kw)
    assert ds.attrs["method"] == "rosenbrock" and ds.status.item() == int(dln.Status.CONVERGED)
    target = np.asarray(prob.target_matrix)
    w = ds["product"].isel(depth=0, scale=0, seed=0).values
    assert np.linalg.norm(w[-1] - target) <= 2e-3 * np.linalg.norm(target)  # measured 7.8e-4 (loss_tol 1e-8)
    sigma = ds["singular_values"].isel(depth=0, scale=0, seed=0, time=-1).values
    assert sigma[1] > 1.0 and np.all(sigma[2:] < 1e-35)  # two modes learned, three never left ~1e-41
    times = ds["time"].values[ds["time"].values <= ds["t_final"].item()]
    assert times[-1] > 1e35  # past both escapes
    ref = dln.integrate(prob, **kw, rtol=1e-10, saveat=times, t1=times[-1], loss_tol=None)
    assert ref.status.item() == int(dln.Status.FINISHED)
    w_ref = ref["product"].isel(depth=0, scale=0, seed=0).values
    err = np.linalg.norm(w[: len(times)] - w_ref, axis=(1, 2)) / np.linalg.norm(w_ref, axis=(1, 2))
    assert err.max() <= 1e-5, err.max()  # measured 1.5e-6 (1.5e-6 against rtol 1e-12 too)

    monkeypatch.setattr(singular, "_without_roundoff", lambda g, size: g)
    compiled.cache_clear()
    kept = dln.integrate(prob, **kw, max_steps=6000)
    compiled.cache_clear()
    assert kept.status.item() == int(dln.Status.MAX_STEPS) and kept["t_final"].item() < 1e35


def test_g_at_its_rounding_level_is_zero_in_value_and_keeps_its_derivative():
    """`_without_roundoff` zeroes the entries of G within (m + n)·ε·size, in value only: its Jacobian is the identity,
    so a Rosenbrock step's J keeps the stiff entries of the pairs whose G is round-off (a plain `where` would drop
    those rows: the negative control)."""
    g = jnp.array([[2.0, 3e-16], [-1e-15, 1e-3], [5e-14, 0.5]])  # 3 × 2: floor (3 + 2)·ε·size
    size = 4.0  # floor 4.4e-15: the entries 3e-16 and -1e-15 are round-off, 5e-14 is not
    out = singular._without_roundoff(g, size)
    np.testing.assert_array_equal(out, jnp.where(jnp.abs(g) > 5 * np.finfo(float).eps * size, g, 0.0))
    assert out[0, 1] == 0 and out[1, 0] == 0 and out[2, 0] == g[2, 0]
    jac = jax.jacfwd(lambda x: singular._without_roundoff(x, size))(g).reshape(6, 6)
    np.testing.assert_array_equal(jac, np.eye(6))
    plain = jax.jacfwd(lambda x: jnp.where(jnp.abs(x) > 5 * np.finfo(float).eps * size, x, 0.0))(g).reshape(6, 6)
    assert not np.array_equal(plain, np.eye(6))
