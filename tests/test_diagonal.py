"""Diagonal linear networks β = u^D − v^D: Woodworth et al.'s implicit-bias limit, the conserved quantities, gradient
descent against a hand-written loop, and the analyses over paths (R(θ), tr ∇²L, interpolators, sparsity)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
import xarray as xr

import dlnode as dln

PROB = dln.SparseRegression.random(d=10, n=5, sparsity=2, seed=1, signed=True)
LIMIT_TOL = 1e-7  # the flow's limit (rtol 1e-10) against the convex solve
CONSERVED_TOL = 1e-8  # drift of u⊙v (D = 2) or u^{2−D} + v^{2−D} over a tsit5 run at rtol 1e-10


def _q_alpha_minimiser(alpha):
    """argmin Q_α(β) s.t. Xᵀβ = y: stationarity gives arcsinh(β/(2α²)) = Xλ, so β = 2α² sinh(Xλ) with Xᵀβ(λ) = y."""
    x, y, a2 = PROB.inputs, PROB.labels.ravel(), 2 * alpha**2

    def residual(lam):
        return x.T @ (a2 * np.sinh(x @ lam)) - y

    def jacobian(lam):
        return x.T @ (a2 * np.cosh(x @ lam)[:, None] * x)

    sol = scipy.optimize.root(residual, np.zeros(PROB.n), jac=jacobian, tol=1e-14)
    assert np.abs(residual(sol.x)).max() < 1e-12
    return a2 * np.sinh(x @ sol.x)


def _flow(alpha, depth=2, **kw):
    return dln.integrate(PROB, depth=depth, network="diagonal", init="uniform", scale=alpha, method="tsit5",
                         rtol=1e-10, atol=1e-12, loss_tol=1e-20, progress=False, **kw)  # fmt: skip


def test_flow_limit_minimises_woodworths_q_alpha():
    refs = dln.interpolators(PROB)
    ds = _flow([0.1, 1.0], save_weights=True)
    for alpha in (0.1, 1.0):
        beta = ds["product"].sel(scale=alpha).isel(depth=0, seed=0, time=-1).values.ravel()
        assert int(ds["status"].sel(scale=alpha).item()) == int(dln.Status.CONVERGED)
        expected = _q_alpha_minimiser(alpha)
        assert np.abs(beta - expected).max() < LIMIT_TOL
        # negative control: neither the minimum-ℓ₂ nor the minimum-ℓ₁ interpolator is that limit at α = 0.1
        if alpha == 0.1:
            for other in refs.values():
                assert np.abs(other.ravel() - expected).max() > 1e3 * LIMIT_TOL
        assert dln.hypentropy(beta, alpha) <= dln.hypentropy(refs["l2"], alpha) + 1e-9
    _regulariser_closed_form(ds)
    # α → ∞ is the kernel regime: the limit tends to the minimum-ℓ₂ interpolator
    kernel = ds["product"].sel(scale=1.0).isel(depth=0, seed=0, time=-1).values
    small = ds["product"].sel(scale=0.1).isel(depth=0, seed=0, time=-1).values
    assert np.abs(kernel - refs["l2"]).max() < np.abs(small - refs["l2"]).max() / 10
    assert float(ds["balancedness"].max()) < CONSERVED_TOL  # u⊙v is conserved


def _regulariser_closed_form(ds):
    # depth 2 diagonal: ∇_u rᵢ = 2u⊙xᵢ, ∇_v rᵢ = −2v⊙xᵢ, so R = (4/n) Σᵢ Σⱼ (uⱼ² + vⱼ²) xᵢⱼ²; and
    # tr ∇²L = R + (1/n) Σᵢ rᵢ tr ∇²rᵢ with tr ∇²rᵢ = Σⱼ (2xᵢⱼ − 2xᵢⱼ) = 0: equal all along the run
    part = ds.isel(scale=[0], time=slice(0, None, 50))
    reg, trace = dln.implicit_regulariser(part, PROB), dln.hessian_trace(part, PROB)
    w = part["weights"].isel(depth=0, scale=0, seed=0)
    x2 = (PROB.inputs**2).sum(axis=1)
    for k in range(part.sizes["time"]):
        u, v = w.isel(time=k).values[0, 0, : PROB.d_in], w.isel(time=k).values[1, 0, : PROB.d_in]
        expected = 4 / PROB.n * np.sum((u**2 + v**2) * x2)
        assert abs(float(reg.isel(depth=0, scale=0, seed=0, time=k)) - expected) < 1e-10 * expected
    np.testing.assert_allclose(trace.values, reg.values, rtol=1e-10)


def test_depth_three_conserves_u_and_v_powers():
    ds = dln.integrate(PROB, depth=3, network="diagonal", init="gaussian", scale=0.5, seed=[0, 1], method="tsit5",
                       rtol=1e-10, atol=1e-12, t1=5.0, saveat=4, progress=False)  # fmt: skip
    assert ds["loss"].isel(time=-1).max() < ds["loss"].isel(time=0).min()
    assert float(ds["balancedness"].max()) < CONSERVED_TOL


def _decoupled_diagonal(beta_star):
    """A regression whose design has X Xᵀ = n I (d = 4, n = 8): ∇ℓ(β) = β − β*, so every coordinate of a diagonal
    network runs its own scalar flow."""
    d, n = len(beta_star), 8
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((n, n)))
    x = np.sqrt(n) * q[:, :d].T
    return dln.SparseRegression(x, x.T @ beta_star)


def _scalar_flows(beta_star, depth, alpha, times):
    """β(t) = u(t)^D of du/dt = −D u^{D−1}(u^D − β*) from u(0) = α, one coordinate at a time (scipy Radau, rtol
    1e-12): the `positive` init on the decoupled design, by a second backend."""
    out = []
    for b in beta_star:
        sol = scipy.integrate.solve_ivp(lambda t, u, b=b: -depth * u ** (depth - 1) * (u**depth - b),
                                        (0.0, times[-1]), [alpha], method="Radau", t_eval=times, rtol=1e-12,
                                        atol=1e-14)  # fmt: skip
        out.append(sol.y[0] ** depth)
    return np.array(out).T


def test_a_deep_diagonal_network_takes_the_stiff_path_by_default_and_matches_its_scalar_flows():
    # depth 3 from 1e-3: each coordinate waits ~ 1/(3·1e-3·β*) on its plateau (up to 1333 time units), then relaxes
    # at a rate up to 9·2^{4/3} ≈ 23: stiff, so auto takes rosenbrock (tsit5 needed 10.6× its steps on this case
    # until converged, and ran out of its 200,000 on SparseRegression.random() from 1e-3)
    beta_star = np.array([2.0, 1.0, 0.5, 0.25])
    prob, alpha = _decoupled_diagonal(beta_star), 1e-3
    times = np.linspace(0.0, 1500.0, 1501)  # saves every time unit: each escape (about one unit wide) is sampled
    ds = dln.integrate(prob, depth=3, network="diagonal", init="positive", scale=alpha, t1=1500.0, saveat=times,
                       progress=False)  # fmt: skip
    assert ds.attrs["method"] == "rosenbrock" and "depth >= 3 is stiff" in ds.attrs["method_reason"]
    assert int(ds["status"].item()) == int(dln.Status.FINISHED)
    beta = ds["product"].values.reshape(len(times), -1)
    reference = _scalar_flows(beta_star, 3, alpha, times)
    tol = 1e-5  # of max β*, at every save (measured 1.4e-7 with the default rtol)
    assert np.abs(beta - reference).max() < tol * beta_star.max()
    # negative control: an init off by 1e-4 of itself shifts the escapes by as much, far outside the tolerance
    shifted = _scalar_flows(beta_star, 3, alpha * (1 + 1e-4), times)
    assert np.abs(shifted - reference).max() > 100 * tol * beta_star.max()
    # until converged, with every default: the stiff path again, converged
    ds = dln.integrate(prob, depth=[2, 3], network="diagonal", init="positive", scale=alpha, progress=False)
    assert ds.attrs["method"] == "per depth" and (ds["status"] == int(dln.Status.CONVERGED)).all()
    names = ds["method_used"].attrs["flag_meanings"].split()
    assert [names[code] for code in ds["method_used"].values.ravel()] == ["tsit5", "rosenbrock"]


def test_diagonal_gd_equals_a_hand_written_loop():
    lr, steps, depth = 0.02, 50, 2
    ds = dln.integrate(PROB, depth=depth, network="diagonal", init="uniform", scale=0.3, method="gd", lr=lr,
                       t1=steps * lr, saveat=np.array([steps * lr]), progress=False)  # fmt: skip
    u = np.full(PROB.d_in, 0.3)
    v = np.full(PROB.d_in, 0.3)
    x, y = PROB.inputs, PROB.labels.ravel()
    for _ in range(steps):
        e = (((u**depth - v**depth) @ x) - y) @ x.T / PROB.n  # ∇ℓ(β) of (1/2n)‖βX − y‖²
        u, v = u - lr * depth * u ** (depth - 1) * e, v + lr * depth * v ** (depth - 1) * e
    got = ds["weights_final"].isel(depth=0, scale=0, seed=0).values
    np.testing.assert_allclose(got[0, 0, : PROB.d_in], u, rtol=1e-12)
    np.testing.assert_allclose(got[1, 0, : PROB.d_in], v, rtol=1e-12)


def test_dense_regulariser_against_autodiff_jacobians():
    # depth 3, width 5 (layers padded in the dataset): R from jax.grad of each sample's output, one by one; a
    # multilinear network has tr ∇²rᵢ = 0 (each layer enters linearly), so tr ∇²L = R all along the run
    ds = dln.integrate(PROB, depth=3, width=5, method="gd", lr=0.05, t1=1.0, saveat=2, save_weights=True,
                       progress=False)  # fmt: skip
    reg, trace = dln.implicit_regulariser(ds, PROB), dln.hessian_trace(ds, PROB)
    w = ds["weights"].isel(depth=0, scale=0, seed=0, time=-1).values
    layers = (w[0, :5, : PROB.d_in], w[1, :5, :5], w[2, :1, :5])

    def output(flat, x):
        a, b, c = flat[:50].reshape(5, 10), flat[50:75].reshape(5, 5), flat[75:].reshape(1, 5)
        return (c @ b @ a @ x)[0]

    flat = jnp.concatenate([jnp.ravel(a) for a in layers])
    rows = [jax.grad(output)(flat, jnp.asarray(PROB.inputs[:, i])) for i in range(PROB.n)]
    expected = float(sum(jnp.sum(g**2) for g in rows)) / PROB.n
    assert abs(float(reg.isel(time=-1).squeeze()) - expected) < 1e-12 * expected
    np.testing.assert_allclose(trace.values, reg.values, rtol=1e-10)
    # at depth 1, ∇_β rᵢ = xᵢ: R = (1/n) Σᵢ ‖xᵢ‖² = tr Σ_xx, whatever β
    line = dln.integrate(PROB, depth=1, method="gd", lr=0.05, t1=1.0, saveat=2, progress=False)
    expected = float(np.sum(PROB.inputs**2) / PROB.n)
    assert abs(float(dln.implicit_regulariser(line, PROB, which="final").squeeze()) - expected) < 1e-12 * expected


def test_path_statistics_and_sparsity():
    rng = np.random.default_rng(0)
    a = xr.DataArray(rng.normal(1.0, 2.0, (3, 500)), dims=("time", "path"))
    b = xr.DataArray(rng.normal(1.5, 1.0, (3, 800)), dims=("time", "path"))
    summary = dln.path_summary(a)
    np.testing.assert_allclose(summary["mean"].values, a.values.mean(1))
    np.testing.assert_allclose(summary["mc_error"].values, a.values.std(1, ddof=1) / np.sqrt(500))
    weak = dln.weak_error(a, b)
    np.testing.assert_allclose(weak["error"].values, np.abs(a.values.mean(1) - b.values.mean(1)))
    expected = np.sqrt(a.values.var(1, ddof=1) / 500 + b.values.var(1, ddof=1) / 800)
    np.testing.assert_allclose(weak["mc_error"].values, expected)
    with pytest.raises(dln.DlnodeError, match="must have a 'path' dim"):
        dln.path_summary(a.isel(path=0))
    with pytest.raises(dln.DlnodeError, match=r"^b must be one variable .*got a Dataset of \['loss'\].*ds\['loss'\]"):
        dln.weak_error(a, xr.Dataset({"loss": b}))
    with pytest.raises(dln.DlnodeError, match="^which must be 'weights' .* or 'final'.*got 'last'"):
        dln.hessian_trace(xr.Dataset({"loss": b}), PROB, which="last")
    with pytest.raises(dln.DlnodeError, match="^problem must be a regression with samples.*got MatrixCompletion"):
        dln.interpolators(dln.MatrixCompletion.random(shape=(4, 4), rank=1, observed=0.5, seed=0))
    beta = xr.DataArray(np.array([[[3.0, -3.0, 0.0, 1e-9]]]), dims=("time", "row", "col"))
    sp = dln.sparsity(xr.Dataset({"product": beta}))
    assert int(sp["nonzero"].item()) == 2 and abs(float(sp["effective"].item()) - 2.0) < 1e-8


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        (dict(init="balanced"), "init must be one of ('uniform', 'positive', 'gaussian') for network='diagonal'"),
        (dict(width=4), "width does not apply to network='diagonal'"),
        (dict(network="sparse"), "network must be one of ('dense', 'diagonal')"),
        (dict(flow="end_to_end"), "flow must be 'layers' or 'modified' for network='diagonal'"),
    ],
)
def test_bad_diagonal_arguments_are_refused_in_one_line(kw, words):
    base = dict(depth=2, network="diagonal", init="uniform", progress=False, t1=1.0)
    with pytest.raises(dln.DlnodeError) as err:
        dln.integrate(PROB, **(base | kw))
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("depth", [2, 3])
def test_sharpness_of_a_diagonal_network_is_the_top_of_its_dense_hessian(depth):
    """`sharpness=k` on a diagonal network: the top k eigenvalues of ∇²L in (u, v), against the Hessian formed by
    jax.hessian at the saved weights."""
    ds = dln.integrate(PROB, depth=depth, network="diagonal", init="gaussian", scale=0.5, method="gd", lr=0.01,
                       t1=0.5, saveat=3, sharpness=3, save_weights=True, progress=False)  # fmt: skip
    arrays = jax.tree_util.tree_map(jnp.asarray, PROB.arrays())

    def loss(flat):
        u, v = flat.reshape(2, *PROB.labels.shape[:1], -1)
        return type(PROB).loss_fn(u**depth - v**depth, arrays)

    weights = ds["weights"].isel(depth=0, scale=0, seed=0).values  # (time, layer = u, v, out, in)
    dense = jax.jit(jax.hessian(loss))
    for k in range(ds.sizes["time"]):
        hessian = np.asarray(dense(jnp.asarray(weights[k].ravel())))
        top = np.sort(np.linalg.eigvalsh(hessian))[::-1][:3]
        np.testing.assert_allclose(ds["sharpness"].isel(depth=0, scale=0, seed=0, time=k).values, top, rtol=1e-9)


def test_sharpness_beyond_a_diagonal_networks_parameters_is_refused():
    with pytest.raises(dln.DlnodeError, match="sharpness.*at most the parameter count 20"):
        dln.integrate(PROB, depth=2, network="diagonal", method="gd", lr=0.01, t1=0.5, sharpness=21, progress=False)
