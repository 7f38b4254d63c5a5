"""The saxe2014 study in its quick mode: every row of its check table holds, and its claims restated."""

import numpy as np
import pytest

from studies import saxe2014


@pytest.fixture(scope="module")
def ds():
    return saxe2014.compute(saxe2014.QUICK)


def test_every_check_passes(ds):
    rows = saxe2014.check(ds)
    assert len(rows) >= 4 and all(set(row) == {"claim", "paper", "ours", "passed"} for row in rows)
    assert all(row["passed"] for row in rows), [row for row in rows if not row["passed"]]


def test_modes_follow_the_closed_forms_and_escape_polynomially(ds):
    # eq. 12 / 15: the solved flow against the exact t(u), at the solver's tolerance
    assert float(ds["curve_error"].max()) <= saxe2014.CURVE_RTOL
    # depth 3 from u0 = 1e-6: escape = u0^{-1/3}/s (1 + O(u0^{1/3})), within 2 % of Saxe's leading term
    ratio = (ds["escape"] / ds["escape_asymptotic"]).sel(depth=3, scale=1e-2)
    np.testing.assert_allclose(ratio.values, 1.0, atol=2e-2)


def test_figures(ds, tmp_path):
    paths = saxe2014.plot(ds, tmp_path)
    assert [p.name for p in paths] == ["saxe2014-modes.png", "saxe2014-escape.png"]
    assert all(0 < p.stat().st_size < 300_000 for p in paths)
