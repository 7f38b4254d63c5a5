"""A study of the smallest size, registered with the `studies` runner for one test: what the runner does with its
files and with Ctrl-C, independent of any paper's study (which change with their papers). It computes for real:
two `dlnode.integrate` passes (gradient descent, one compile) on a 2 × 2 factorisation, a check of the loss drop
against the closed form of depth 1, and one figure drawn by `dlnode plot`'s own function."""

import sys
import types

import numpy as np

import dlnode as dln

NAME = "tiny"
TARGET = np.diag([2.0, 1.0])


def compute(config):
    prob = dln.Factorization(TARGET)
    run = {"scale": 0.3, "t1": 1.0, "saveat": 4, "method": "gd", "lr": 0.05, "progress": False}
    first = dln.integrate(prob, depth=1, **run)  # a first pass, as the paper studies' compute make
    ds = dln.integrate(prob, depth=config["depths"], **run)
    loss = first["loss"].values.ravel()
    ds.attrs["first_ratio"] = float(loss[-1] / loss[0])
    return ds


def check(ds):
    # depth 1 GD on ½‖W − M‖²: W_k − M = (1 − lr)^k (W_0 − M), so the loss falls by (1 − lr)^{2k} after k = t1/lr steps
    ours, exact = ds.attrs["first_ratio"], 0.95**40
    passed = bool(np.isclose(ours, exact, rtol=1e-10, atol=0))
    return [{"claim": "depth-1 GD loss ratio", "paper": f"{exact:.6g}", "ours": f"{ours:.6g}", "passed": passed}]


def plot(ds, outdir):
    from dlnode.analysis.plot import PLOTS

    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / f"{NAME}-loss.png"
    PLOTS["loss"](ds, path=path)
    return [path]


def register(monkeypatch):
    """Make ``studies.load("tiny")`` and ``dlnode study tiny`` find this study, for one test."""
    import studies

    module = types.ModuleType(f"studies.{NAME}")
    module.__dict__.update(NAME=NAME, TITLE="a 2 x 2 factorisation", PAPER="(test study)", QUICK={"depths": [2, 3]},
                           FULL={"depths": [2, 3]}, compute=compute, check=check, plot=plot)  # fmt: skip
    monkeypatch.setattr(studies, "STUDIES", (*studies.STUDIES, NAME))
    monkeypatch.setitem(sys.modules, f"studies.{NAME}", module)
    return module
