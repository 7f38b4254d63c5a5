"""The gauntlet's quick subset: generated cases nobody tuned, each with defaults only, against a second method at
rtol 1e-10 on its own save times (benchmarks/gauntlet.py; the full table is in benchmarks/README.md)."""

import math

import pytest

import dlnode as dln
from benchmarks.gauntlet import (
    TARGET_DRIFT,
    TARGET_ERROR,
    TRUTHFUL,
    error_against,
    generate,
    reference_error,
    reference_method,
    reference_run,
    run,
)

# three of the first quick cases (seed 0): the end-to-end flow in singular coordinates (depth 4), a per-layer
# residual init (depth 2) and a per-layer Gaussian sensing case (depth 4)
QUICK = [generate(seed=0, count=10, quick=True)[i] for i in (3, 6, 9)]


@pytest.mark.parametrize("case", QUICK, ids=lambda c: f"case{c.index}")
def test_defaults_hold_against_a_reference(case):
    row, ds = run(case)
    assert row["status"] in TRUTHFUL, case.describe()
    error, reference = reference_error(case, ds, reference_method(case, row["method"]))
    assert error <= TARGET_ERROR, (case.describe(), reference)
    if ds.attrs["flow"] != "end_to_end":  # balancedness at every save, the last one included
        assert row["drift"] <= TARGET_DRIFT and row["drift_last"] <= TARGET_DRIFT, case.describe()
    else:
        assert math.isnan(row["drift"])


@pytest.mark.slow
def test_depth_inf_default_rtol_meets_the_error_target_where_the_plateau_rule_did_not():
    """Gauntlet case 10 (5×66 regression, depth ∞ from a balanced 0.029, rectangular: `subspace_optimum`): its
    escape turns a plateau time error into a W error 100–300× rtol. With the defaults (rtol 2e-7 at most with depth
    ∞) W is within 1e-4 of rosenbrock at rtol 1e-10 on the run's own save times; negative control: the plateau
    rule's 7.2e-7 alone misses it (2.0e-4)."""
    case = generate()[10]
    row, ds = run(case)
    assert row["status"] == "subspace_optimum" and ds.attrs["rtol"] == 2e-7
    reference = reference_run(case, ds, "rosenbrock")
    error, _ = error_against(ds, reference, "rosenbrock")
    assert error <= TARGET_ERROR
    loose = dln.integrate(case.problem(), progress=False, rtol=7.2e-7, **case.call())
    loose_error, _ = error_against(loose, reference, "rosenbrock")  # the same save times (the run is t1-bound)
    assert loose_error > TARGET_ERROR
