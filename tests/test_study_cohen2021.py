"""The cohen2021 study in its quick mode: every check holds, and each check fails on a run that must fail it."""

import numpy as np
import pytest  # noqa: I001

from studies import cohen2021


@pytest.fixture(scope="module")
def ds():
    return cohen2021.compute(cohen2021.QUICK)


def test_checks(ds):
    """Every check holds, and the tracking row shows the numbers it was decided on."""
    rows = cohen2021.check(ds)
    assert len(rows) == 7 and all(set(row) == {"claim", "paper", "ours", "passed"} for row in rows)
    assert all(row["passed"] for row in rows), [row for row in rows if not row["passed"]]
    error = cohen2021.tracking_error(ds)
    assert error <= cohen2021.TRACK_RTOL and f"{error:.3f}" in rows[4]["ours"]
    assert error < cohen2021.tracking_error(ds, "gradient_loss")
    assert (ds["status"] == 0).all()  # every run reached its t1: GD on the edge did not diverge


def test_negative_controls(ds):
    """The edge check fails on the gradient flow's sharpness (it passes 2/lr and keeps rising); the tracking check
    fails with the gradient flow's loss, or the central flow's own loss (no oscillation term), in place of the
    predicted average, and fails from the first edge time on (the entry transient, where GD overshoots the edge)."""
    assert cohen2021.edge_deviation(ds, "gradient_sharpness") > cohen2021.EDGE_BAND
    assert cohen2021.tracking_error(ds, "gradient_loss") > cohen2021.TRACK_RTOL
    assert cohen2021.apart_factor(ds, "central_loss_averaged") < cohen2021.GRADIENT_APART < cohen2021.apart_factor(ds)
    assert cohen2021.tracking_error(ds, "central_loss") > cohen2021.TRACK_RTOL
    assert cohen2021.tracking_error(ds, start=cohen2021.edge_time(ds)) > cohen2021.TRACK_RTOL


def test_against_their_central_flow(ds):
    """dlnode's central flow against the authors' code run on the same instance (`THEIRS`): within THEIRS_RTOL of
    their flow at dt → 0 in predicted average loss and in sharpness; their Euler runs at dt = lr/4, lr/8, lr/16 come
    to ours at first order (the difference halves with dt). Negative controls: the gradient flow's loss and
    sharpness, and the central flow's own loss (no oscillation term), fail the same check, and so does a dataset of
    another instance."""
    row = cohen2021.check(ds)[6]
    loss = cohen2021.theirs_error(ds)
    sharpness = cohen2021.theirs_error(ds, "central_sharpness", "sharpness")
    assert row["passed"] and loss <= cohen2021.THEIRS_RTOL and sharpness <= cohen2021.THEIRS_RTOL
    assert f"loss {loss:.1e}, sharpness {sharpness:.1e}" in row["ours"]
    errors = [cohen2021.theirs_error(ds, theirs=cohen2021.THEIRS["loss_averaged"][s]) for s in (4, 8, 16)]
    assert all(1.8 < errors[i] / errors[i + 1] < 2.2 for i in range(2)), errors
    assert cohen2021.theirs_error(ds, "gradient_loss") > cohen2021.THEIRS_RTOL
    assert cohen2021.theirs_error(ds, "gradient_sharpness", "sharpness") > cohen2021.THEIRS_RTOL
    assert cohen2021.theirs_error(ds, "central_loss") > cohen2021.THEIRS_RTOL
    assert cohen2021.theirs_error(ds.assign_attrs(lr=0.04)) == np.inf


def test_gd_is_the_flow_before_the_edge(ds):
    """Before the edge the central flow is in regime 0 and is the gradient flow."""
    t_edge = cohen2021.edge_time(ds)
    before = ds["flow_time"].values < 0.5 * t_edge
    assert before.sum() >= 2 and (ds["central_regime"].values[before] == 0).all()
    # X = 0 there: the same field as the gradient flow's, on the same save grid and tolerances
    np.testing.assert_allclose(ds["central_loss"].values[before], ds["gradient_loss"].values[before], rtol=1e-12)


def test_figure(ds, tmp_path):
    paths = cohen2021.plot(ds, tmp_path)
    assert [p.name for p in paths] == ["cohen2021-edge.png"] and 0 < paths[0].stat().st_size < 300_000


def _dense_central_flow(config: dict, substeps: int, steps: int) -> np.ndarray:
    """An independent integration of the central flow (k = 1): the dense Hessian's top eigenpair by eigh at every
    sub-step, ∇S = ∇(uᵀ∇²L u) by autodiff, and explicit Euler with dt = lr/substeps on the discrete
    complementarity of Cohen, Damian et al.'s code (X = max(0, −(A + dt·dA/dt|_{X=0}) / (dt·½‖∇S‖²)),
    A = 2/lr − S). Returns the predicted average loss L + ½ X S at the first `steps` + 1 GD step times."""
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    import dlnode as dln
    from dlnode.flows.flow import flat_problem

    prob = cohen2021.problem(config)
    lr = config["lr"]
    layers = dln.init_layers(prob, config["depth"], "gaussian", config["scale"], config["seed"])
    flat, unravel = ravel_pytree(tuple(jnp.asarray(w) for w in layers))
    loss_fn, _ = flat_problem(type(prob))
    arrays = jax.tree_util.tree_map(jnp.asarray, prob.arrays())

    def loss(x):
        return loss_fn(unravel(x), arrays)

    gradient, hessian = jax.grad(loss), jax.hessian(loss)
    dt = lr / substeps

    def substep(x, _):
        values, vectors = jnp.linalg.eigh(hessian(x))
        s, u = values[-1], vectors[:, -1]
        grad_s = jax.grad(lambda z: jax.jvp(gradient, (z,), (u,))[1] @ u)(x)
        g = gradient(x)
        x_cov = jnp.maximum(0.0, -(2 / lr - s + dt * grad_s @ g) / (dt * 0.5 * grad_s @ grad_s))
        return x - dt * (g + 0.5 * x_cov * grad_s), loss(x) + 0.5 * x_cov * s

    def step(x, _):
        x, predicted = jax.lax.scan(substep, x, None, length=substeps)
        return x, predicted[0]

    _, predicted = jax.jit(lambda x: jax.lax.scan(step, x, None, length=steps + 1))(flat)
    return np.asarray(predicted)


def test_central_flow_against_a_dense_euler_integration(ds):
    """dlnode's central flow (Lanczos, the relaxed complementarity, tsit5) against an independent integration with the
    dense Hessian and Euler steps of lr/2 and lr/4 over the first 120 GD steps (the edge entry and 15x t_edge): the
    Euler solution converges to dlnode's at first order (the difference halves with the step) and the Richardson
    extrapolation of the two is within 0.3 % of it once on the edge, 1.5 % at the entry (where dlnode relaxes onto
    the edge on the time scale τ = lr and the Euler scheme on dt)."""
    config, steps = cohen2021.QUICK, 120
    every = config["every"]
    ours = ds["central_loss_averaged"].values[: steps // every + 1]
    coarse, fine = (_dense_central_flow(config, n, steps)[::every] for n in (2, 4))
    errors = [np.max(np.abs(ref - ours) / ours) for ref in (coarse, fine)]
    assert 1.7 < errors[0] / errors[1] < 2.3, errors  # first order: the error halves with dt
    extrapolated = np.abs(2 * fine - coarse - ours) / ours
    settled = ds["flow_time"].values[: ours.size] >= 0.5
    assert extrapolated.max() < 0.015 and extrapolated[settled].max() < 0.003, extrapolated
