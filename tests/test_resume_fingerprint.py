"""Resume only what it was: `dlnode.resume` continues the call it interrupted, on the problem and arguments of that
call, and refuses in one line when the problem object, the dataset's stored problem or its attributes changed
since; the dataset returned does not share the problem's arrays."""

import dataclasses
import os
import signal

import numpy as np
import pytest

import dlnode as dln
from dlnode.errors import DlnodeError

RUN = {"depth": [2, 3], "scale": 0.3, "t1": 1.0, "saveat": 4, "progress": False, "method": "gd", "lr": 0.05}


@pytest.fixture
def interrupted(monkeypatch):
    """An integrate call interrupted by a SIGINT in its first window; the problem it ran on."""
    real = dln.METHODS["gd"]
    calls = {"n": 0}

    def advance(flow, state, arrays, ts, c):
        calls["n"] += 1
        if calls["n"] == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real.advance(flow, state, arrays, ts, c)

    monkeypatch.setitem(dln.METHODS, "gd", dataclasses.replace(real, advance=advance))
    prob = dln.Factorization(np.diag([2.0, 1.0]))
    ds = dln.integrate(prob, **RUN)
    monkeypatch.undo()
    return prob, ds


def test_the_dataset_does_not_share_the_problems_arrays(interrupted):
    prob, ds = interrupted
    prob.target_matrix[0, 0] = 9.0
    assert float(ds["problem_target_matrix"][0, 0]) == 2.0


def test_resume_refuses_a_changed_problem(interrupted):
    prob, ds = interrupted
    prob.target_matrix[0, 0] = 9.0
    with pytest.raises(DlnodeError, match="problem") as err:
        dln.resume(ds)
    assert "\n" not in str(err.value)


def test_resume_refuses_a_changed_dataset(interrupted):
    _, ds = interrupted
    ds["problem_target_matrix"][0, 0] = 5.0
    with pytest.raises(DlnodeError, match="problem"):
        dln.resume(ds)


def test_resume_refuses_changed_attributes(interrupted):
    _, ds = interrupted
    ds.attrs["rtol"] = 0.5
    with pytest.raises(DlnodeError, match="rtol"):
        dln.resume(ds)


def test_an_unchanged_interrupted_call_resumes_to_the_uninterrupted_result(interrupted):
    prob, ds = interrupted
    whole = dln.resume(ds)
    want = dln.integrate(prob, **RUN)
    np.testing.assert_array_equal(whole["loss"].values, want["loss"].values)
    np.testing.assert_array_equal(whole["status"].values, want["status"].values)
