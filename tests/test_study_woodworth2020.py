"""The woodworth2020 study in its quick mode: the flow's limit is the Q_α minimiser computed independently, and each
check fails on a negative control (the minimiser at 10α, the two interpolators swapped, α reversed, GD's steps
swapped)."""

import numpy as np
import pytest
import xarray as xr

from studies import woodworth2020 as ww


@pytest.fixture(scope="module")
def ds():
    return ww.compute(ww.QUICK)


def failed(ds: xr.Dataset) -> list[str]:
    return [row["claim"] for row in ww.check(ds) if not row["passed"]]


def test_every_check_passes(ds):
    rows = ww.check(ds)
    assert len(rows) == 6 and not failed(ds), [row for row in rows if not row["passed"]]
    assert (ds["status"] == 1).all() and (ds["gd_status"] == 1).all()


def test_the_dual_solution_is_the_constrained_minimiser():
    # KKT by construction (β = 2α² sinh(Xλ)); feasibility to the solver's rtol; and Q_α no larger than at two other
    # interpolators (min-ℓ₁, min-ℓ₂) or at the minimiser nudged along the null space of the constraints
    prob = ww.problem(40, 15, 2, 3)
    x, y = prob.inputs, prob.labels.ravel()
    null = np.linalg.svd(x.T)[2][-1]  # a unit vector with Xᵀ null = 0
    for alpha in (1e-3, 1e-1, 10.0):
        beta = ww.q_minimiser(x, y, alpha)
        assert np.linalg.norm(x.T @ beta - y) <= 1e-12 * np.linalg.norm(y)
        q = lambda b, a=alpha: ww.dln.hypentropy(b, a)  # noqa: E731
        refs = ww.dln.interpolators(prob)
        assert q(beta) <= min(q(refs["l1"][0]), q(refs["l2"][0])) * (1 + 1e-9)  # equal to roundoff at the limits
        scale = np.linalg.norm(beta)
        assert q(beta) < min(q(beta + 1e-3 * scale * null), q(beta - 1e-3 * scale * null))


def test_hypentropy_is_the_paper_function():
    # q(z) = 2 − √(4 + z²) + z·arcsinh(z/2): q(0) = 0, q'(z) = arcsinh(z/2) (by central differences), q ≈ z²/4 near
    # 0 (kernel: Q_α ≈ ‖β‖²/4α²) and q(z) ≈ |z| log|z| for large |z| (rich: Q_α/ln(1/α²) → ‖β‖₁)
    def q(z):
        return ww.dln.hypentropy(np.atleast_1d(z), 1.0)

    h = 1e-5
    for z in (-3.0, 0.5, 7.0):
        assert abs((q(z + h) - q(z - h)) / (2 * h) - np.arcsinh(z / 2)) < 1e-8
    assert q(0.0) == 0 and abs(q(1e-3) / 1e-6 - 0.25) < 1e-6
    assert abs(q(1e8) / (1e8 * np.log(1e8)) - 1) < 0.1


def test_the_minimiser_at_ten_times_alpha_fails_the_limit_check(ds):
    prob = [ww.problem(ds.attrs["d"], ds.attrs["n"], ds.attrs["sparsity"], int(s)) for s in ds["seed"].values]
    control = ds.copy()
    control["beta_q"] = xr.DataArray(
        [[ww.q_minimiser(p.inputs, p.labels, 10 * float(a)) for a in ds["alpha"].values] for p in prob],
        dims=("seed", "alpha", "coord"),
    )
    assert any("argmin Q_alpha" in claim for claim in failed(control))


def test_swapping_the_interpolators_fails_both_limits(ds):
    control = ds.copy()
    control["beta_l1"], control["beta_l2"] = ds["beta_l2"], ds["beta_l1"]
    claims = failed(control)
    assert any("the min-l1 interpolator" in c for c in claims) and any("the min-l2 interpolator" in c for c in claims)


def test_reversed_alpha_fails_the_transition(ds):
    control = ds.copy()
    control["beta_flow"] = ds["beta_flow"].copy(data=ds["beta_flow"].values[:, ::-1])
    assert any("rises monotonically" in claim for claim in failed(control))


def test_swapped_gd_steps_fail_the_first_order_check(ds):
    control = ds.copy()
    control["beta_gd"] = ds["beta_gd"].copy(data=ds["beta_gd"].values[::-1])
    assert any(claim.startswith("GD") for claim in failed(control))


def test_figure(ds, tmp_path):
    paths = ww.plot(ds, tmp_path)
    assert [p.name for p in paths] == ["woodworth2020-test-error.png"]
    assert 0 < paths[0].stat().st_size < 300_000
