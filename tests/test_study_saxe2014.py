"""The saxe2014 study in its quick mode: every row of its check table holds, its claims restated, and each check
fails on a configuration that must fail it (another depth's curve, a wrong asymptotic law, Gaussian init on the
depth-independence row, too few init scales for a slope)."""

import numpy as np
import pytest

from studies import saxe2014


@pytest.fixture(scope="module")
def ds():
    return saxe2014.compute(saxe2014.QUICK)


def test_every_check_passes(ds):
    rows = saxe2014.check(ds)
    assert len(rows) >= 8 and all(set(row) == {"claim", "paper", "ours", "passed"} for row in rows)
    assert all(row["passed"] for row in rows), [row for row in rows if not row["passed"]]


def test_modes_follow_the_closed_forms_and_escape_polynomially(ds):
    # eq. 12 / 15: the solved flow against the exact t(u), at the solver's tolerance
    assert float(ds["curve_error"].max()) <= saxe2014.CURVE_RTOL
    # depth 3: escape = u0^{-1/3}/s (1 + O(u0^{1/3})): the ratio to Saxe's leading term approaches 1 as u0 shrinks
    ratio = (ds["escape"] / ds["escape_asymptotic"]).sel(depth=3).isel(k=0)
    assert np.all(np.diff(np.abs(ratio.values - 1)) < 0)  # scales in decreasing order
    assert abs(float(ratio.isel(scale=-1)) - 1) < 0.1


def test_negative_controls(ds):
    # the correction slope: a wrong leading term (the two-layer law at depth 3) fails; too few u0 is "not tested"
    assert saxe2014.correction_slope(ds, 3)[0] and saxe2014.correction_slope(ds, 4)[0]
    wrong = saxe2014.correction_slope(ds, 3, asymptotic=lambda u0, s, n: np.log(1 / u0) / (2 * s))
    assert not wrong[0]
    ok, text = saxe2014.correction_slope(ds.isel(scale=[0, 1]), 4)
    assert not ok and "not tested" in text
    # random init follows its own depth's decoupled rise, not another depth's
    for n in ds["random_depth"].values:
        assert saxe2014.random_follows(ds, int(n))[0]
        assert not saxe2014.random_follows(ds, int(n), shape_of="other depth")[0]
    # learning time: orthogonal init saturates with depth, Gaussian init does not
    assert saxe2014.depth_independent(ds, "orthogonal")[0]
    assert not saxe2014.depth_independent(ds, "gaussian")[0]


def test_figures(ds, tmp_path):
    paths = saxe2014.plot(ds, tmp_path)
    assert [p.name for p in paths] == ["saxe2014-modes.png", "saxe2014-escape.png", "saxe2014-learning-time.png"]
    assert all(0 < p.stat().st_size < 300_000 for p in paths)
