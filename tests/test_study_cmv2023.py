"""Cohen, Menon & Veraszto (2023) in its quick mode: every check passes, and the depth-N end-to-end flow and
volume form approach depth ∞ at the rate 1/N."""

import numpy as np
import pytest

import studies

cmv = studies.load("cmv2023")


@pytest.fixture(scope="module")
def quick():
    return cmv.compute(cmv.QUICK)


@pytest.mark.slow
def test_quick_mode_passes_every_check(quick, tmp_path):
    rows = cmv.check(quick)
    assert len(rows) == 3
    assert all(r["passed"] for r in rows), studies.format_table(rows)
    paths = cmv.plot(quick, tmp_path)
    assert all(10_000 < p.stat().st_size < 300_000 for p in paths)


@pytest.mark.slow
def test_distance_to_the_infinite_depth_flow_falls_like_one_over_n(quick):
    end = quick["distance_to_inf"].isel(time=-1)
    assert -1.2 <= cmv.slope(quick) <= -0.8
    # and it is monotone in N: deeper is closer to the limit
    finite = [d for d in end["depth"].values if np.isfinite(d)]
    assert np.all(np.diff(end.sel(depth=finite).values) < 0)
    assert float(end.sel(depth=np.inf)) == 0.0
