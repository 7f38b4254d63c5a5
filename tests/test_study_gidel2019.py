"""The gidel2019 study in its quick mode: every row of its check table holds, and its claims restated."""

import numpy as np
import pytest

from studies import gidel2019


@pytest.fixture(scope="module")
def ds():
    return gidel2019.compute(gidel2019.QUICK)


def test_every_check_passes(ds):
    rows = gidel2019.check(ds)
    assert len(rows) >= 6 and all(row["passed"] for row in rows), [row for row in rows if not row["passed"]]


def test_staircase_times(ds):
    # at ε = 1e-8 mode i is learned at t/ln(1/ε) = 1/s_i + ln(s_i)/(2 s_i ln(1/ε)): within 4 % of 1/s_i
    tau = ds["escape_flow"].sel(depth=2, scale=1e-8) / np.log(1e8)
    np.testing.assert_allclose(tau.values * ds["target_s"].values, 1.0, atol=0.04)
    # and exactly at the closed form, up to the solver and the 0.01 save grid
    np.testing.assert_allclose(ds["escape_flow"].sel(depth=2), ds["escape_exact"], rtol=gidel2019.FLOW_RTOL)
    # GD escapes later than the flow: its linear phase grows by 1 + lr·s < e^{lr·s} per step
    assert bool((ds["escape_gd"] > ds["escape_flow"].sel(depth=2)).all())


def test_figure(ds, tmp_path):
    (path,) = gidel2019.plot(ds, tmp_path)
    assert path.name == "gidel2019-staircase.png" and 0 < path.stat().st_size < 300_000
