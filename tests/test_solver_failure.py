"""A run that reaches `solver_failure` on purpose, for a reason the closed form states.

Depth 3 from a decoupled init of per-layer scale 1e-40: each mode is the balanced scalar flow du/dt = 3u^{4/3}(s − u)
(docs/math.md §3), so d(u^{−1/3})/dt = −(s − u) and the top mode (s = 2, u₀ = 1e-120) escapes at
t* = u₀^{−1/3}/s = 5e39, on the time scale 1/(3s) of its escape. Time carried as a compensated two-float sum resolves
about 2^{−105}·t ≈ 1e8 there: the escape's steps are below what the time can resolve, the driver sees a window in
which the cell's time did not move, and the run stops as `solver_failure` right at t* with the plateau before it
kept.
"""

import math

import numpy as np
import pytest

import dlnode as dln

TOP, NEXT = 2.0, 1.0
SCALE, DEPTH = 1e-40, 3


def test_an_escape_beyond_the_resolution_of_time_is_a_solver_failure():
    prob = dln.Factorization(np.diag([TOP, NEXT]))
    with pytest.warns(UserWarning, match="solver_failure"):
        ds = dln.integrate(prob, depth=DEPTH, init="decoupled", scale=SCALE, progress=False)
    assert ds["status"].item() == dln.Status.SOLVER_FAILURE
    escape = (SCALE**DEPTH) ** (-1 / 3) / TOP  # t* of the closed form
    t_final = float(ds["t_final"].item())
    assert abs(t_final / escape - 1) < 1e-9
    assert t_final * 2.0**-105 > 1e6 / (3 * TOP)  # the time's resolution there, against the escape's time scale
    loss = ds["loss"].isel(depth=0, scale=0, seed=0).values
    kept = loss[ds["time"].values <= t_final]
    assert len(kept) > 100 and np.all(np.isfinite(kept))  # the plateau before the failure is kept
    assert math.isclose(kept[-1], kept[0], rel_tol=1e-12)  # still on it: nothing was learned yet
