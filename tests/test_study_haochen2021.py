"""The haochen2021 study in its quick mode: its checks against their script's numbers hold, and a label-noise run
with δ = 0 (gradient descent, path for path) fails the recovery and band checks (the negative control)."""

import pytest

from studies import haochen2021


@pytest.fixture(scope="module")
def ds():
    return haochen2021.compute(haochen2021.QUICK)


def test_their_data_are_regenerated_exactly():
    prob = haochen2021.their_data()
    assert prob.inputs.shape == (100, 40) and prob.truth.sum() == 5 and prob.loss_min < 1e-20
    # their script's first design entry under np.random.seed(123), after the 100 uniform draws of w_true
    assert abs(prob.inputs[0, 0] - THEIR_FIRST_X) < 1e-15


THEIR_FIRST_X = 2.0871133595881854  # np.random.seed(123); np.random.rand(100); np.random.randn(40, 100)[0, 0]


def test_every_check_passes_against_their_numbers(ds):
    rows = haochen2021.check(ds)
    assert int(ds.attrs["iters"]) in haochen2021.THEIRS  # the quick run is compared with their log, not only ours
    assert len(rows) >= 3 and all(row["passed"] for row in rows), [row for row in rows if not row["passed"]]


def test_without_label_noise_the_checks_fail(ds):
    # a run with δ = 0 is gradient descent (bitwise: tests/test_noise.py); at the quick horizon its every path is
    # GD's, so their label-noise number is outside the band and the recovery claim fails
    control = ds.copy()
    control["ln_test_error"] = ds["gd_test_error"].expand_dims(path=ds["path"].values).copy()
    failed = [row["claim"] for row in haochen2021.check(control) if not row["passed"]]
    assert any("label noise ends near beta*" in claim for claim in failed)
    assert any("label-noise test error" in claim for claim in failed)


def test_figure(ds, tmp_path):
    paths = haochen2021.plot(ds, tmp_path)
    assert [p.name for p in paths] == ["haochen2021-test-error.png"]
    assert 0 < paths[0].stat().st_size < 300_000
