"""The cao2022 study in its quick mode: every row of its check table holds, and its claim restated."""

import numpy as np
import pytest

import dlnode as dln
from studies import cao2022


@pytest.fixture(scope="module")
def ds():
    return cao2022.compute(cao2022.QUICK)


def test_every_check_passes(ds):
    rows = cao2022.check(ds)
    assert len(rows) == 7 and all(row["passed"] for row in rows), [row for row in rows if not row["passed"]]


def test_stages_equal_the_target_rank(ds):
    assert bool((ds["status"] == dln.Status.CONVERGED).all()) and bool((ds["final_loss"] <= 1e-6).all())
    for rank in ds["rank"].values:
        np.testing.assert_array_equal(ds["num_stages"].sel(rank=rank).values, rank)
    # stages end in order: every escape after the previous one
    ends = ds["end"].sel(rank=5)
    assert bool((ends.diff("stage").isel(stage=slice(0, 4)) > 0).all())


def test_figure(ds, tmp_path):
    (path,) = cao2022.plot(ds, tmp_path)
    assert path.name == "cao2022-stages.png" and 0 < path.stat().st_size < 300_000
