"""The blanc2020 study in its quick mode: label noise moves down R along the zero-loss manifold at the slow flow's
rate ηδ²/(4n), GD stays; a run with δ = 0 (gradient descent, path for path) fails the claims (the negative
control), and so do the slow flow's constant doubled or halved."""

import numpy as np
import pytest

from studies import blanc2020


@pytest.fixture(scope="module")
def ds():
    return blanc2020.compute(blanc2020.QUICK)


def test_every_check_passes(ds):
    rows = blanc2020.check(ds)
    assert len(rows) == 6 and all(row["passed"] for row in rows), [row for row in rows if not row["passed"]]


def test_regulariser_agrees_with_autodiff_of_the_network(ds):
    # dlnode's R (backward passes of the sensing adjoint) against jax.jacfwd of the residuals of W2 W1
    r0 = float(ds["gd_R"][0])
    assert abs(r0 - ds.attrs["R_start_autodiff"]) <= 1e-12 * r0
    # the slow flow starts at the retraction of theta_0 onto the manifold, which moves it by ~sqrt(loss) only
    assert abs(float(ds["flow_R"][0]) - r0) <= 1e-4 * r0


def test_without_label_noise_the_checks_fail(ds):
    # δ = 0 is gradient descent bitwise (tests/test_noise.py): substitute GD's run for every path and every δ
    control = ds.copy()
    for name in ("R", "loss", "imbalance"):
        gd = ds[f"gd_{name}"].expand_dims(delta=ds["delta"].values, path=ds["path"].values)
        control[f"ln_{name}"] = gd.transpose(*ds[f"ln_{name}"].dims).copy()
    failed = [row["claim"] for row in blanc2020.check(control) if not row["passed"]]
    for part in ("mean R falls", "scales like", "slow flow", "near balance"):
        assert any(part in claim for claim in failed), (part, failed)


def test_a_wrong_slow_flow_constant_fails(ds):
    assert blanc2020.flow_error(ds) <= blanc2020.FLOW_RTOL
    assert blanc2020.flow_error(ds, 2.0) > 2 * blanc2020.FLOW_RTOL
    assert blanc2020.flow_error(ds, 0.5) > 2 * blanc2020.FLOW_RTOL


def test_slow_flow_is_resolved(ds):
    # Heun on the manifold: half the substeps of the study's run change R by far less than the check's tolerance
    taus = ds["tau"].values[:6]
    coarse, rate = blanc2020.slow_flow(list(ds["start_weights"].values), blanc2020.problem(), taus, 10)
    fine = ds["flow_R"].values[:6]
    assert np.max(np.abs(coarse - fine) / fine) <= 1e-6
    # the initial rate dR/dτ = −‖∇_Γ R‖² against the finite difference of the flow's first interval
    assert rate == pytest.approx(ds.attrs["tangent_rate"], rel=1e-10)
    assert abs((fine[0] - fine[1]) / taus[1] - rate) <= 0.05 * rate


def test_figure(ds, tmp_path):
    paths = blanc2020.plot(ds, tmp_path)
    assert [p.name for p in paths] == ["blanc2020-regulariser.png"]
    assert 0 < paths[0].stat().st_size < 300_000
