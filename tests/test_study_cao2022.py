"""The cao2022 study in its quick mode: every row of its check table holds, its claims restated, and a negative
control for each check (a configuration or a convention that must fail it)."""

import numpy as np
import pytest

import dlnode as dln
from studies import _cao2022_cases as cases
from studies import cao2022


@pytest.fixture(scope="module")
def ds():
    return cao2022.compute(cao2022.QUICK)


def test_every_check_passes(ds):
    rows = cao2022.check(ds)
    assert len(rows) == 14 and all(row["passed"] for row in rows), [row for row in rows if not row["passed"]]


def test_stages_equal_the_target_rank(ds):
    assert bool((ds["status"] == dln.Status.CONVERGED).all()) and bool((ds["final_loss"] <= 1e-6).all())
    for rank in ds["rank"].values:
        np.testing.assert_array_equal(ds["num_stages"].sel(rank=rank).values, rank)
    # stages end in order: every escape after the previous one
    ends = ds["end"].sel(rank=5)
    assert bool((ends.diff("stage").isel(stage=slice(0, 4)) > 0).all())


def test_stage_count_control_fails(ds):
    # a real rank-2 target whose two modes rise together (s2/s1 = 0.999): one stage, so "stages == R" must fail
    merged = ds["close_stages"].sel(close_ratio=0.999).values
    assert not cases.count_row("rank 2", merged, 2, "")["passed"]
    assert not cases.count_row("rank 2", np.array([]), 2, "")["passed"]  # nothing tested: a failure


def test_duration_control_fails(ds):
    # depth 3's escapes read as depth 2's (and back): each law is checked against the other's data
    swapped = ds.assign_coords(depth=ds["depth"].values[::-1])
    rows = cao2022._duration_rows(swapped)
    assert len(rows) == 2 and not any(row["passed"] for row in rows)


def test_gd_matches_the_flow_to_first_order(ds):
    assert bool(ds["gd_finite"].all()) and bool((ds["gd_stages"] == ds.attrs["gd_rank"]).all())
    gap = abs(ds["gd_end"] - ds["flow_end"]).isel(gd_stage=slice(0, 3))
    assert float(gap.max()) < 0.1  # small against the stage ends themselves (≥ 0.9)
    # control: GD's time read in the other loss convention (t = 2·lr·step): a gap that does not shrink with lr
    rows = cases.gd_rows(ds.assign(gd_end=2 * ds["gd_end"]))
    assert rows[0]["passed"] and not any(row["passed"] for row in rows[1:])


def test_merged_stages_as_the_closed_form_says(ds):
    got = ds["close_stages"]
    assert got.sel(close_ratio=0.999).values.tolist() == [1, 1]  # merged at every u0 float64 can hold
    assert got.sel(close_ratio=0.95).values.tolist() == [1, 2]  # merged at 1e-6, two stages at 1e-40
    # control: the same runs seen on every 40th saved time, cells wider than the margins: undecidable, a failure
    coarse = cases.close_values(cao2022.QUICK | {"close_ratio": [0.95], "close_thin": 40})
    (row,) = cases.close_rows(coarse)
    assert not row["passed"] and "not resolvable" in row["ours"]


def test_mode_below_the_cut(ds):
    cell = ds.sel(cut_ratio=0.03)
    assert int(cell["cut_stages"]) == 1 and int(cell["cut_stages_low"]) == 2
    assert abs(float(cell["cut_final"]) / 0.03 - 1) < 1e-2  # learned all the same
    # control: a mode at 6.25 % (above the cut) is counted, so the row's claim fails
    (row,) = cases.cut_rows(cases.below_cut(cao2022.QUICK | {"cut_ratio": [0.0625]}))
    assert not row["passed"]


def test_completion_by_gd_and_flow(ds):
    # deep matrix completion (their reconstruction setting) by GD at depths 2 (eps 1e-12) and 3 (1e-2): 3 stages, M
    # recovered
    assert list(ds["cmp_depth"].values) == [2, 3] and list(ds["cmp_scale"].values) == [1e-12, 1e-2]
    assert bool((ds["cmp_stages"] == 3).all()) and bool((ds["cmp_error"] < 1e-2).all())
    assert bool((ds["cmp_status"] == dln.Status.CONVERGED).all())
    # control: depth 2 from eps 1e-2 on instance 0, where two modes rise together (ln(1/eps) too small to part
    # them), shows 2 stages, and the row fails
    (row,) = cases.completion_rows(
        cases.completion(cao2022.QUICK | {"cmp_seed": [0], "cmp_depth": [2], "cmp_scale": 1e-2, "cmp_method": ["flow"]})
    )
    assert not row["passed"] and "[2]" in row["ours"]


def test_figures(ds, tmp_path):
    paths = cao2022.plot(ds, tmp_path)
    assert [p.name for p in paths] == ["cao2022-stages.png", "cao2022-gd.png"]
    assert all(0 < p.stat().st_size < 300_000 for p in paths)
