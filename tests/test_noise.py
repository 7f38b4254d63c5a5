"""Minibatch SGD, label noise and their SDEs: the limits that are gradient descent and the flow, one step's
moments against their closed forms, and the refusals before any work."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from scipy.stats import linregress
from typer.testing import CliRunner

import dlnode as dln
from dlnode.cli import app
from dlnode.flows.flow import partial_products
from dlnode.flows.scales import problem_scales
from dlnode.run.sde_step import STEP_TOL

PROB = dln.SparseRegression.random(d=6, n=4, sparsity=2, noise=0.1, seed=3)
Z_MAX = 4.5  # a sample moment this many Monte Carlo standard errors off its closed form fails the test


SAVE = np.array([0.25, 0.5, 1.0])
PATHS = 4000  # the one-step moments and the weak error share one compiled shape (depth 1, PATHS paths, one save)


def _run(method, **kw):
    base = dict(depth=2, scale=0.5, seed=[0, 1], lr=0.05, t1=1.0, saveat=SAVE, progress=False)
    return dln.integrate(PROB, method=method, **(base | kw))


def test_full_batch_sgd_and_zero_label_noise_are_gd_bitwise():
    # a full batch without replacement is every sample once: gradient descent's own gradient (the same holds for
    # sampling="without_replacement", which takes the same branch)
    gd = _run("gd")
    for ds in (_run("sgd", batch=4, paths=[7]), _run("label_noise", noise=0.0, paths=[7])):
        for name in ("weights_final", "loss", "product"):
            np.testing.assert_array_equal(ds[name].isel(path=0).values, gd[name].values)
        assert list(ds["step"].values) == list(gd["step"].values)
    assert dict(gd.sizes)["seed"] == 2 and "path" not in gd.dims


def _one_step_moments(ds):
    """Mean and covariance over paths of β after one step (depth 1: β is the state)."""
    beta = ds["product"].isel(depth=0, scale=0, seed=0, time=-1).values.reshape(ds.sizes["path"], -1)
    return beta.mean(0), np.cov(beta.T)


def _per_sample_gradients(beta, prob=PROB):
    """Row i: ∇ℓᵢ = rᵢ xᵢᵀ, flattened (rᵢ = W xᵢ − yᵢ, one entry per output)."""
    x, y = prob.inputs, prob.labels
    r = beta.reshape(y.shape[0], -1) @ x - y  # (outputs, n)
    return np.einsum("on,dn->nod", r, x).reshape(x.shape[1], -1)


def _check_moments(ds, beta0, lr, cov_step, prob=PROB):
    mean, cov = _one_step_moments(ds)
    paths = ds.sizes["path"]
    expected = beta0 - lr * _per_sample_gradients(beta0, prob).mean(0)
    se = np.sqrt(np.diag(cov_step) / paths)
    assert np.all(np.abs(mean - expected) < Z_MAX * se + 1e-15)
    # trace of the covariance: its variance is 2 tr(C²)/P for a Gaussian, bounded by 2 tr(C)² /P in general; use
    # the sample fourth moments for the standard error
    dev = ds["product"].isel(depth=0, scale=0, seed=0, time=-1).values.reshape(paths, -1) - mean
    sq = np.sum(dev**2, axis=1)
    assert abs(sq.mean() - np.trace(cov_step)) < Z_MAX * sq.std() / np.sqrt(paths)


@pytest.mark.parametrize(
    ("sampling", "factor"),
    [("with_replacement", lambda n, b: 1 / b), ("without_replacement", lambda n, b: (n - b) / (b * (n - 1)))],
)
def test_one_sgd_step_has_the_minibatch_mean_and_covariance(sampling, factor):
    lr, batch, n = 0.1, 2, PROB.n
    ds = dln.integrate(PROB, depth=1, init="gaussian", scale=1.0, method="sgd", batch=batch, sampling=sampling,
                       lr=lr, t1=lr, saveat=np.array([lr]), paths=PATHS, progress=False)  # fmt: skip
    beta0 = ds["product"].isel(depth=0, scale=0, seed=0, time=0, path=0).values.ravel()
    g = _per_sample_gradients(beta0)
    sigma1 = np.cov(g.T, bias=True)  # (1/n) Σ (gᵢ − ḡ)(gᵢ − ḡ)ᵀ
    _check_moments(ds, beta0, lr, lr**2 * factor(n, batch) * sigma1)


def test_a_regression_with_several_outputs_keeps_its_samples_for_sgd():
    """SparseRegression(X, Y) with Y of k = 2 rows: its flow is `Regression(X, Y)`'s bit for bit (the same loss, the
    same solver), one SGD step has the minibatch mean and covariance of its per-sample gradients rᵢxᵢᵀ (k × d each),
    and a truth of the wrong size is refused in one line."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 12))
    y = rng.standard_normal((2, 3)) @ x + 0.1 * rng.standard_normal((2, 12))
    prob = dln.SparseRegression(x, y)
    assert (prob.d_out, prob.d_in) == (2, 3) and prob.convention == "(1/2n) sum_i ||W x_i - y_i||^2"
    kw = dict(depth=3, scale=0.3, method="tsit5", rtol=1e-10, atol=1e-12, t1=5.0, saveat=5, progress=False)
    flow, dense = dln.integrate(prob, **kw), dln.integrate(dln.Regression(x, y), **kw)
    np.testing.assert_array_equal(flow["product"].values, dense["product"].values)
    lr, batch = 0.1, 3
    ds = dln.integrate(prob, depth=1, init="gaussian", scale=1.0, method="sgd", batch=batch,
                       sampling="with_replacement", lr=lr, t1=lr, saveat=np.array([lr]), paths=PATHS,
                       progress=False)  # fmt: skip
    beta0 = ds["product"].isel(depth=0, scale=0, seed=0, time=0, path=0).values.ravel()
    g = _per_sample_gradients(beta0, prob)
    _check_moments(ds, beta0, lr, lr**2 / batch * np.cov(g.T, bias=True), prob)
    with pytest.raises(dln.DlnodeError, match=r"truth must have k × d = 2 × 3 entries") as info:
        dln.SparseRegression(x, y, truth=np.zeros(3))
    assert "\n" not in str(info.value)


def test_a_random_regression_with_several_outputs_and_its_sweep_config():
    """`SparseRegression.random(outputs=k)`: labels (k, n) = β* X exactly without noise, β* k × d with the same support
    in every row, rows of their own signs (rank 2 here); outputs=1 is the single-output instance bit for bit; a sweep
    config's problem table builds the same instance."""
    from dlnode.sweeps.config import load_config

    one = dln.SparseRegression.random(d=6, n=12, sparsity=2, seed=3, signed=True)
    np.testing.assert_array_equal(dln.SparseRegression.random(6, 12, 2, 0.0, 3, True, outputs=1).labels, one.labels)
    prob = dln.SparseRegression.random(d=6, n=12, sparsity=2, seed=3, signed=True, outputs=3)
    assert prob.labels.shape == (3, 12) and (prob.d_out, prob.d_in) == (3, 6)
    np.testing.assert_array_equal(prob.labels, prob.truth @ prob.inputs)
    assert np.all(prob.truth[:, 2:] == 0) and np.all(np.abs(prob.truth[:, :2]) == 1)
    assert np.linalg.matrix_rank(prob.truth) == 2
    config = load_config({
        "problem": {"kind": "sparse_regression", "d": 6, "n": 12, "sparsity": 2, "seed": 3, "signed": True,
                    "outputs": 3},
        "grid": {"depth": [2], "scale": [0.1]}, "integrate": {"t1": 1.0},
    })  # fmt: skip
    np.testing.assert_array_equal(config.problem.build().labels, prob.labels)


def _depth_one(method, lr, t1, **kw):
    return dln.integrate(PROB, depth=1, init="gaussian", scale=1.0, method=method, lr=lr, t1=t1,
                         saveat=np.array([t1]), paths=PATHS, progress=False, **kw)  # fmt: skip


def test_one_label_noise_step_and_one_sde_step_have_the_label_noise_covariance():
    # one step of label-noise GD, and one Euler–Maruyama step of its SDE with dt = η: mean β₀ − η∇L, covariance
    # η² δ²/n² Σᵢ xᵢxᵢᵀ. One Heun step (additive noise at depth 1, so no Itô–Stratonovich correction) is
    # β₀ + A(β₀ − W*)... with A = −ηΣ + η²Σ²/2 and covariance η (I − ηΣ/2) D (I − ηΣ/2)ᵀ, D = ηδ²/n² Σᵢ xᵢxᵢᵀ
    lr, delta, n = 0.1, 0.7, PROB.n
    x = PROB.inputs
    diffusion = lr**2 * delta**2 / n**2 * x @ x.T
    for method in ("label_noise", "sde_euler"):
        ds = _depth_one(method, lr, lr, noise=delta)
        beta0 = ds["product"].isel(depth=0, scale=0, seed=0, time=0, path=0).values.ravel()
        _check_moments(ds, beta0, lr, diffusion)
    ds = _depth_one("sde_heun", lr, lr, noise=delta)
    beta0 = ds["product"].isel(depth=0, scale=0, seed=0, time=0, path=0).values.ravel()
    sigma = x @ x.T / n
    half = np.eye(PROB.d_in) - lr * sigma / 2
    mean, cov = _one_step_moments(ds)
    expected = PROB.w_star.ravel() + (beta0 - PROB.w_star.ravel()) @ (np.eye(PROB.d_in) - lr * sigma + lr**2 *
                                                                      sigma @ sigma / 2)  # fmt: skip
    cov_step = half @ diffusion @ half.T
    assert np.all(np.abs(mean - expected) < Z_MAX * np.sqrt(np.diag(cov_step) / PATHS) + 1e-15)
    assert np.abs(cov - cov_step).max() < 0.1 * np.abs(cov_step).max()


def test_sde_without_diffusion_is_euler_and_heun_on_the_flow():
    # depth 1, δ = 0: the flow is β(t) = W* + (β₀ − W*) e^{−tΣ}; Euler–Maruyama takes (I − dtΣ)^k, Heun
    # (I − dtΣ + dt²Σ²/2)^k, exactly; both converge to the flow, at orders 1 and 2
    sigma = PROB.inputs @ PROB.inputs.T / PROB.n
    w_star = PROB.w_star.ravel()
    errors = {"sde_euler": [], "sde_heun": []}
    for dt in (0.025, 0.0125):
        for method, step in (("sde_euler", np.eye(PROB.d_in) - dt * sigma),
                             ("sde_heun", np.eye(PROB.d_in) - dt * sigma + dt**2 * sigma @ sigma / 2)):  # fmt: skip
            ds = _depth_one(method, 0.1, 1.0, noise=0.0, dt=dt)
            beta = ds["product"].isel(depth=0, scale=0, seed=0, path=0).values.reshape(2, -1)
            exact = w_star + (beta[0] - w_star) @ np.linalg.matrix_power(step, round(1.0 / dt))
            np.testing.assert_allclose(beta[1], exact, rtol=1e-12, atol=1e-12)
            flow = w_star + (beta[0] - w_star) @ scipy.linalg.expm(-sigma)
            errors[method].append(np.abs(beta[1] - flow).max())
    assert 0.9 < np.log2(errors["sde_euler"][0] / errors["sde_euler"][1]) < 1.1
    assert 1.8 < np.log2(errors["sde_heun"][0] / errors["sde_heun"][1]) < 2.2


def test_epochs_use_every_sample_once_per_epoch():
    # depth 1, lr tiny: one epoch (n/B steps) moves β by −lr Σᵢ ∇ℓᵢ(β₀) + O(lr²) whatever the order, the same in
    # every path; sampling with replacement does not (its paths spread by O(lr))
    lr, n, batch = 1e-6, PROB.n, 2
    kw = dict(depth=1, init="gaussian", scale=1.0, method="sgd", batch=batch, lr=lr, t1=n // batch * lr,
              saveat=np.array([n // batch * lr]), paths=PATHS, progress=False)  # fmt: skip

    def spread(sampling):
        beta = dln.integrate(PROB, sampling=sampling, **kw)["product"].isel(depth=0, scale=0, seed=0, time=-1)
        return np.ptp(beta.values.reshape(PATHS, -1), axis=0).max()

    assert spread("epochs") < 1e-3 * spread("with_replacement")


def test_label_noise_sgd_and_its_sde_agree_to_first_order_in_lr():
    # depth 1 (a linear model): E ⟨β, 1⟩ after t = 1 under label-noise GD with step η and under its SDE (Euler–
    # Maruyama, dt = η/4) differ by O(η); fitted over η ∈ {0.2, 0.1, 0.05} with PATHS paths each, every difference
    # at least 4 Monte Carlo standard errors
    etas, errors = [0.2, 0.1, 0.05], []
    kw = dict(depth=1, init="gaussian", scale=1.0, t1=1.0, saveat=np.array([1.0]), noise=0.2, paths=PATHS,
              progress=False)  # fmt: skip
    for eta in etas:
        runs = [dln.integrate(PROB, method=m, lr=eta, **kw | ({"dt": eta / 4} if m == "sde_euler" else {}))
                for m in ("label_noise", "sde_euler")]  # fmt: skip
        phi = [ds["product"].isel(time=-1).sum(("row", "col")) for ds in runs]
        weak = dln.weak_error(*phi)
        error, mc = float(weak["error"].squeeze()), float(weak["mc_error"].squeeze())
        assert error > 4 * mc
        errors.append(error)
    slope = linregress(np.log(etas), np.log(errors)).slope
    assert 0.8 < slope < 1.2, (slope, errors)


def test_paths_dim_round_trips(tmp_path):
    ds = _run("label_noise", noise=0.5, paths=2, seed=0)  # the shapes of the bitwise test: compiled once
    assert ds["loss"].dims == ("depth", "scale", "seed", "path", "time")
    assert list(ds["path"].values) == [0, 1]
    assert ds.attrs["batch"] == 4 and ds.attrs["label_noise"] == 0.5 and ds.attrs["paths"] == 2
    dln.validate(ds)
    dln.save(ds, tmp_path / "sgd.nc")
    back = dln.open(tmp_path / "sgd.nc")
    np.testing.assert_array_equal(back["loss"].values, ds["loss"].values)
    # different paths differ; a path is reproducible alone
    loss = ds["loss"].isel(time=-1).values.ravel()
    assert len(set(loss.tolist())) == 2
    alone = _run("label_noise", noise=0.5, paths=[1, 5], seed=0)
    np.testing.assert_allclose(alone["loss"].isel(path=0).values, ds["loss"].isel(path=1).values, rtol=1e-12)


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        (dict(method="sgd", batch=0), "batch must be an integer in [1, n] = [1, 4]"),
        (dict(method="sgd", batch=5), "batch must be an integer in [1, n] = [1, 4]"),
        (dict(method="sgd"), "batch is required for method='sgd'"),
        (dict(method="label_noise", noise=-0.1), "noise must be a finite number >= 0"),
        (dict(method="label_noise"), "noise is required for method='label_noise'"),
        (dict(method="sgd", batch=1, sampling="shuffle"), "sampling must be one of"),
        (dict(method="sgd", batch=1, paths=0), "paths must be a positive count"),
        (
            dict(method="sgd", batch=1, paths=10**9),
            "paths asks for more memory than this machine has available; got 1000000000 paths",
        ),
        (dict(method="sde_euler"), "needs a diffusion"),
        (dict(method="sde_euler", batch=4), "needs a diffusion"),
        (dict(method="gd", batch=1), "batch applies to the stochastic methods"),
        (dict(method="sgd", batch=1, t1=None), "t1 is required for method='sgd'"),
        (dict(method="sgd", batch=1, dt=0.1), "dt applies to the SDE methods only"),
        (dict(method="sde_euler", noise=1.0, dt=-1.0), "dt must be"),
        (dict(method="sde_euler", noise=1.0, dt=0.03), "dt must be lr times a power of two"),
        (dict(method="sde_heun", noise=1.0, dt=0.1 * 2.0**-11), "pass dt=9.76563e-05"),
    ],
)
def test_bad_noise_arguments_are_refused_in_one_line(kw, words):
    base = dict(depth=2, lr=0.1, t1=1.0, progress=False)
    with pytest.raises(dln.DlnodeError) as err:
        dln.integrate(PROB, **(base | kw))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_brownian_increments_are_one_path_at_every_dyadic_step():
    # the increments of dt = lr·2^m steps are sums of the finer ones, exactly (one path for every m), and have the
    # moments of Brownian increments: mean 0, variance dt, uncorrelated from step to step
    import jax

    from dlnode.solvers.sde import brownian_increment

    lr, size = 0.1, 3
    key = jax.random.PRNGKey(7)

    increments = jax.jit(jax.vmap(brownian_increment, in_axes=(None, 0, None, None, None)), static_argnums=4)

    def steps(level, count):
        return np.asarray(increments(key, np.arange(count), level, lr, size))

    fine = steps(-3, 32)  # dt = lr/8: four cells
    for level in (-2, -1, 0, 1, 2):
        coarse = steps(level, 32 >> (level + 3))
        summed = fine.reshape(len(coarse), -1, size).sum(axis=1)
        np.testing.assert_allclose(coarse, summed, rtol=0, atol=1e-15)
    keys = jax.random.split(jax.random.PRNGKey(1), 20000)
    for level in (-2, 0, 1):
        dt = lr * 2.0**level
        draw = jax.jit(
            jax.vmap(lambda k, m=level: jax.vmap(lambda n: brownian_increment(k, n, m, lr, size))(np.arange(3)))
        )
        inc = np.asarray(draw(keys))
        se = dt * np.sqrt(2.0 / len(keys))  # standard error of a sample variance
        assert np.all(np.abs(inc.mean(axis=0)) < Z_MAX * np.sqrt(dt / len(keys)))
        assert np.all(np.abs(inc.var(axis=0) - dt) < Z_MAX * se)
        cross = (inc[:, 0] * inc[:, 1]).mean(axis=0)
        assert np.all(np.abs(cross) < Z_MAX * dt / np.sqrt(len(keys)))
    # the Brownian stream is apart from the label-noise stream of the same path key: cell 1 against step 0's labels
    from dlnode.solvers.stochastic import LABEL_STREAM

    cell = np.asarray(jax.vmap(lambda k: brownian_increment(k, 1, 0, 1.0, size))(keys))
    label = np.asarray(jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(jax.random.fold_in(k, LABEL_STREAM), 0),
                                                             (size,)))(keys))  # fmt: skip
    assert np.all(np.abs((cell * label).mean(axis=0)) < Z_MAX / np.sqrt(len(keys)))


def test_label_noise_started_at_a_minimiser_is_not_diverged():
    # depth 1 from W = W* exactly (ℓ₀ = ℓ* up to round-off): label noise lifts the loss to its floor
    # O(η δ² ·tr Σ) at once, ~10¹² ℓ₀ and more; the loss is bounded, so the run must not say diverged (the bound is
    # diverge · max(ℓ₀, ℓ(W = 0)))
    w_star = PROB.w_star

    def at_minimiser(shapes, scale, rng):
        return [w_star.reshape(shapes[0])]

    ds = dln.integrate(PROB, depth=1, init=at_minimiser, scale=1.0, method="label_noise", noise=0.5, lr=0.05,
                       t1=1.0, saveat=np.array([0.0, 1.0]), paths=8, progress=False)  # fmt: skip
    loss = ds["loss"].isel(depth=0, scale=0, seed=0)
    assert float(loss.isel(time=0).max()) - PROB.loss_min < 1e-20
    assert float(loss.isel(time=-1).min()) > 1e12 * max(float(loss.isel(time=0).max()), 1e-300)
    assert (ds["status"] == int(dln.Status.FINISHED)).all()
    assert float(loss.isel(time=-1).max()) < float(PROB.loss(np.zeros_like(w_star)))


def test_sgd_needs_a_problem_with_samples():
    prob = dln.Regression.whitened([2.0, 1.0], d_in=3, d_out=3)
    with pytest.raises(dln.DlnodeError, match="must keep its samples"):
        dln.integrate(prob, method="sgd", batch=1, lr=0.1, t1=1.0, progress=False)


@pytest.mark.parametrize("network", ["dense", "diagonal"])
@pytest.mark.parametrize("kind", ["regression", "sensing"])
@pytest.mark.parametrize(
    ("batch", "sampling", "label", "depth"),
    [
        (20, "epochs", True, 3),
        (5, "epochs", False, 2),
        (5, "with_replacement", True, 4),
        (4, "without_replacement", True, 1),
    ],
)
def test_heun_correction_closed_form_is_the_column_sum(batch, sampling, label, depth, kind, network):
    """‖σ(θ)‖²_F in closed form (regression and matrix-sensing samples; a dense network, and a diagonal one
    β = u^D − v^D, where it is ⟨D²(u^{2D−2} + v^{2D−2}), Σ_columns G⊙G⟩), and its gradient (Heun's Stratonovich
    correction), equal the sum over the diffusion's columns, each one backward pass: label noise, minibatch noise
    (every sampling rule), both."""
    import jax
    import jax.numpy as jnp

    from dlnode.flows.diagonal import diagonal_backprop
    from dlnode.flows.flow import layer_gradients
    from dlnode.problems.samples import samples_of
    from dlnode.solvers.sde import control_size, dense_spread, diagonal_spread, diffusion
    from dlnode.solvers.stochastic import Noise

    if kind == "regression":
        prob = dln.SparseRegression.random(d=10, n=20, sparsity=3, noise=0.1, seed=0)
    else:
        prob = dln.MatrixSensing.random(shape=(4, 5), rank=1, measurements=20, seed=0)
    arrays = jax.tree_util.tree_map(jnp.asarray, prob.arrays())
    noise = Noise(batch, sampling, label, 20)
    if network == "dense":
        state = tuple(jnp.asarray(w) for w in dln.init_layers(prob, depth, "gaussian", 0.7, 1))
        apply = diffusion(noise, type(prob), layer_gradients)
        spread = dense_spread(noise, type(prob).kind)
    else:
        rng = np.random.default_rng(1)
        shape = (4, 5) if kind == "sensing" else (1, 10)
        state = (jnp.asarray(0.5 + rng.uniform(size=shape)), jnp.asarray(0.5 + rng.uniform(size=shape)))
        apply = diffusion(noise, type(prob), lambda y, fn, a: diagonal_backprop(y, fn, a, depth))
        spread = diagonal_spread(noise, type(prob).kind, depth)
    columns = jnp.eye(control_size(noise, samples_of(type(prob).kind).width(arrays)))

    def column_sum(y):
        cols = jax.vmap(lambda e: apply(y, e, arrays, 0.05, 0.7))(columns)
        return sum(jnp.sum(c * c) for c in jax.tree_util.tree_leaves(cols))

    def closed(y):
        return spread(y, arrays, 0.05, 0.7)

    closed, column_sum = jax.jit(closed), jax.jit(column_sum)  # compiled once, not traced op by op
    np.testing.assert_allclose(float(closed(state)), float(column_sum(state)), rtol=1e-13)
    for got, want in zip(jax.jit(jax.grad(closed))(state), jax.jit(jax.grad(column_sum))(state), strict=True):
        np.testing.assert_allclose(
            np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-14 * float(np.abs(want).max())
        )


def test_partial_products_factor_the_end_to_end_matrix():
    """The closed forms above read layer j's part of a W-space column G as L_jᵀ G P_jᵀ: L_j W_j P_j = W for every j."""
    rng = np.random.default_rng(0)
    layers = tuple(jnp.asarray(rng.normal(size=shape)) for shape in [(4, 3), (5, 4), (2, 5)])
    prefixes, suffixes, w = partial_products(layers)
    np.testing.assert_allclose(w, layers[2] @ layers[1] @ layers[0], rtol=1e-13)
    for left, layer, right in zip(suffixes, layers, prefixes, strict=True):
        np.testing.assert_allclose(left @ layer @ right, w, rtol=1e-13)


def test_the_default_sde_step_is_checked_at_half_the_step_on_the_same_paths(tmp_path):
    """Heun at its default step dt = lr = 0.05 (minibatches of 4 on a 6 × 5 sensing problem, depth 3) holds the
    loss near 1 on most paths up to t = 20, where the same SDE at lr/2 and lr/4 reaches ~1e-5 as SGD does: the run
    at the default step is run again on its first paths at dt/2 (the same Brownian paths), and the difference of
    the two path-means of the loss, relative to the stop rule's gap, is `dt_check`, with a warning above
    `STEP_TOL` that names a smaller step. Reference: `dt_check` recomputed from an explicit run at lr/2, and the
    same difference between lr/2 and lr/4 below the tolerance (the SDE is resolved there). Negative control: at
    lr 0.02 the default step passes its check, without a warning; a step the caller passes is not checked."""
    prob = dln.MatrixSensing.random(shape=(6, 5), rank=2, measurements=40, seed=0)
    kw = dict(depth=3, scale=0.1, method="sde_heun", batch=4, lr=0.05, t1=20.0, paths=4, saveat=20, progress=False)
    with pytest.warns(UserWarning, match=r"default SDE step dt = lr = 0.05 does not resolve sde_heun's SDE on this "
                                         r"run: .* pass dt=0.0125 \(lr/4\) or smaller"):  # fmt: skip
        ds = dln.integrate(prob, **kw)
    assert ds.attrs["dt_check"] > STEP_TOL and ds.attrs["dt_check_paths"] == 4
    dln.save(ds, tmp_path / "sde.nc")  # stored, and shown by `dlnode info`
    assert dln.open(tmp_path / "sde.nc").attrs["dt_check"] == ds.attrs["dt_check"]
    assert f"dt_check: {ds.attrs['dt_check']}" in CliRunner().invoke(app, ["info", str(tmp_path / "sde.nc")]).output
    half, quarter = (dln.integrate(prob, **kw | {"dt": dt, "saveat": ds["time"].values}) for dt in (0.025, 0.0125))
    assert "dt_check" not in half.attrs

    def difference(a, b):
        loss0 = a["loss"].isel(time=0, path=0).item()
        gap = min(loss0, problem_scales(prob).loss) - prob.loss_min
        return float(abs((a["loss"] - b["loss"]).mean("path")).max()) / gap

    assert difference(ds, half) == pytest.approx(ds.attrs["dt_check"], rel=1e-12)
    assert difference(half, quarter) < STEP_TOL / 2  # measured 0.023 (0.19 at lr against lr/2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolved = dln.integrate(prob, **kw | {"lr": 0.02})
    assert resolved.attrs["dt_check"] < STEP_TOL / 2  # measured 4e-4


def test_ctrl_c_in_the_step_check_keeps_the_complete_run_and_says_it_is_unchecked(monkeypatch):
    """Ctrl-C while the default step's check runs (simulated at the driver's check between windows, from the moment
    the check's call is built): the run itself is complete and returned, without `dt_check`, and a warning says the
    check was interrupted."""
    from dlnode.run import sde_step
    from dlnode.solvers import driver

    hit = {"now": False}
    build = sde_step.check_call

    def check_call(*args):
        hit["now"] = True
        return build(*args)

    monkeypatch.setattr(sde_step, "check_call", check_call)
    monkeypatch.setattr(driver, "_interrupt_requested", lambda flag: hit["now"])
    times = np.arange(1, 301) * 0.05  # saved at every step: several windows, so the check stops after its first
    kw = dict(depth=2, scale=0.5, lr=0.05, t1=float(times[-1]), saveat=times, paths=2, noise=0.5, progress=False)
    with pytest.warns(UserWarning, match=r"check of the default SDE step dt = lr = 0.05 was interrupted \(Ctrl-C\)"):
        ds = dln.integrate(PROB, method="sde_euler", **kw)
    assert (ds["status"] == int(dln.Status.FINISHED)).all() and "dt_check" not in ds.attrs
    monkeypatch.setattr(driver, "_interrupt_requested", lambda flag: False)
    assert "dt_check" in dln.integrate(PROB, method="sde_euler", **kw).attrs  # the control: not interrupted


def test_a_step_check_that_fails_keeps_the_complete_run(monkeypatch):
    """The check's own run failing (here: its plan raising, as a memory error would) returns the complete run
    without `dt_check` and says so; it does not lose the run."""
    from dlnode.run import integrate as integrate_module

    build = integrate_module.Plan.build
    calls = {"n": 0}

    def failing_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise MemoryError("no room for the check")
        return build(*args, **kwargs)

    monkeypatch.setattr(integrate_module.Plan, "build", failing_second)
    kw = dict(depth=2, scale=0.5, lr=0.05, t1=1.0, saveat=SAVE, paths=2, noise=0.5, progress=False)
    with pytest.warns(UserWarning, match=r"check of the default SDE step failed \(MemoryError: no room"):
        ds = dln.integrate(PROB, method="sde_euler", **kw)
    assert (ds["status"] == int(dln.Status.FINISHED)).all() and "dt_check" not in ds.attrs
