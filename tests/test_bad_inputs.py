"""Every bad input we tried, as a table: each is refused before any work with one line that names the argument.

Constructors, `integrate` (no compile happens: each case fails while planning), `save`, `open` and
`problem_from`. A case gives the call, the exception type it must raise, and the text naming the argument; dlnode's
own errors must also say the value received and a fix. The command line's cases are in test_cli_errors.py.
"""

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import dlnode as dln
from dlnode.errors import ArgumentError, DatasetError, DlnodeError, PathError, PathExistsError, PathMissingError

MC = dln.MatrixCompletion.random((3, 3), 1, 6, seed=0)
X, Y = np.ones((3, 4)), np.ones((2, 4))


def good_layers(shapes, scale, rng):
    return [scale * rng.standard_normal(s) for s in shapes]


def run(**kwargs):
    """An integrate call that would be valid but for `kwargs` (t1 small, no progress bar)."""
    return dln.integrate(MC, **{"depth": 2, "t1": 0.5, "saveat": 4, "progress": False, **kwargs})


CONSTRUCTORS = [
    ("Regression X complex", lambda: dln.Regression(X + 1j, Y), ArgumentError, "X"),
    ("Regression Y complex", lambda: dln.Regression(X, Y * 1j), ArgumentError, "Y"),
    ("Regression X strings", lambda: dln.Regression([["1", "x"]], [[1, 2]]), ArgumentError, "X"),
    ("Regression X ragged", lambda: dln.Regression([[1, 2], [3]], Y), ArgumentError, "X"),
    ("Regression X 1-D", lambda: dln.Regression(np.ones(4), Y), ArgumentError, "X"),
    ("Regression X empty", lambda: dln.Regression(np.ones((3, 0)), np.ones((2, 0))), ArgumentError, "X"),
    ("Regression X NaN", lambda: dln.Regression(np.full((3, 4), np.nan), Y), ArgumentError, "X"),
    ("Regression Y inf", lambda: dln.Regression(X, np.full((2, 4), np.inf)), ArgumentError, "Y"),
    ("Regression X bool", lambda: dln.Regression(X > 0, Y), ArgumentError, "X"),
    ("Regression samples differ", lambda: dln.Regression(X, np.ones((2, 5))), ArgumentError, "X and Y"),
    ("Regression X None", lambda: dln.Regression(None, Y), ArgumentError, "X"),
    ("Regression Y object", lambda: dln.Regression(X, [[object()] * 4]), ArgumentError, "Y"),
    ("whitened values complex", lambda: dln.Regression.whitened([1j], 2, 2), ArgumentError, "singular_values"),
    ("whitened values negative", lambda: dln.Regression.whitened([-1.0], 2, 2), ArgumentError, "singular_values"),
    ("whitened too many values", lambda: dln.Regression.whitened([3, 2, 1], 2, 2), ArgumentError, "singular_values"),
    ("whitened values strings", lambda: dln.Regression.whitened("3 2", 2, 2), ArgumentError, "singular_values"),
    ("whitened values empty", lambda: dln.Regression.whitened([], 2, 2), ArgumentError, "singular_values"),
    ("whitened d_in 0", lambda: dln.Regression.whitened([1.0], 0, 2), ArgumentError, "d_in"),
    ("whitened d_out True", lambda: dln.Regression.whitened([1.0], 2, True), ArgumentError, "d_out"),
    ("whitened d_in string", lambda: dln.Regression.whitened([1.0], "2", 2), ArgumentError, "d_in"),
    ("whitened d_in float", lambda: dln.Regression.whitened([1.0], 2.0, 2), ArgumentError, "d_in"),
    ("whitened seed -1", lambda: dln.Regression.whitened([1.0], 2, 2, seed=-1), ArgumentError, "seed"),
    ("whitened seed 2**63", lambda: dln.Regression.whitened([1.0], 2, 2, seed=2**63), ArgumentError, "seed"),
    ("whitened seed 1.5", lambda: dln.Regression.whitened([1.0], 2, 2, seed=1.5), ArgumentError, "seed"),
    ("completion target complex", lambda: dln.MatrixCompletion(np.eye(2) * 1j, np.eye(2)), ArgumentError, "target"),
    ("completion target strings", lambda: dln.MatrixCompletion([["a", "b"]], [[1, 0]]), ArgumentError, "target"),
    ("completion mask shape", lambda: dln.MatrixCompletion(np.eye(2), np.ones((3, 2))), ArgumentError, "mask"),
    ("completion mask value 2", lambda: dln.MatrixCompletion(np.eye(2), 2 * np.eye(2)), ArgumentError, "mask"),
    ("completion mask all False", lambda: dln.MatrixCompletion(np.eye(2), np.zeros((2, 2))), ArgumentError, "mask"),
    ("completion mask strings", lambda: dln.MatrixCompletion(np.eye(2), [["y", "n"]] * 2), ArgumentError, "mask"),
    ("completion mask complex", lambda: dln.MatrixCompletion(np.eye(2), np.eye(2) * 1j), ArgumentError, "mask"),
    ("completion normalize 'no'", lambda: dln.MatrixCompletion(np.eye(2), np.eye(2), "no"), ArgumentError, "normalize"),
    ("completion normalize 1", lambda: dln.MatrixCompletion(np.eye(2), np.eye(2), 1), ArgumentError, "normalize"),
    ("completion seed string", lambda: dln.MatrixCompletion(np.eye(2), np.eye(2), seed="a"), ArgumentError, "seed"),
    ("completion rank True", lambda: dln.MatrixCompletion(np.eye(2), np.eye(2), rank=True), ArgumentError, "rank"),
    ("completion rank 3 > 2", lambda: dln.MatrixCompletion(np.eye(2), np.eye(2), rank=3), ArgumentError, "rank"),
    ("random shape zero", lambda: dln.MatrixCompletion.random((0, 3), 1, 1), ArgumentError, "shape"),
    ("random shape bool", lambda: dln.MatrixCompletion.random((True, 3), 1, 1), ArgumentError, "shape"),
    ("random shape string", lambda: dln.MatrixCompletion.random("5x5", 1, 1), ArgumentError, "shape"),
    ("random shape triple", lambda: dln.MatrixCompletion.random((2, 2, 2), 1, 1), ArgumentError, "shape"),
    ("random rank True", lambda: dln.MatrixCompletion.random((5, 4), True, 12), ArgumentError, "rank"),
    ("random rank 7 > 5", lambda: dln.MatrixCompletion.random((5, 5), 7, 12), ArgumentError, "rank"),
    ("random rank 2.0", lambda: dln.MatrixCompletion.random((5, 5), 2.0, 12), ArgumentError, "rank"),
    ("random observed 0", lambda: dln.MatrixCompletion.random((5, 5), 2, 0), ArgumentError, "observed"),
    ("random observed 1.5", lambda: dln.MatrixCompletion.random((5, 5), 2, 1.5), ArgumentError, "observed"),
    ("random observed True", lambda: dln.MatrixCompletion.random((5, 5), 2, True), ArgumentError, "observed"),
    ("random observed > total", lambda: dln.MatrixCompletion.random((2, 2), 1, 5), ArgumentError, "observed"),
    ("random seed -1", lambda: dln.MatrixCompletion.random((5, 5), 2, 10, seed=-1), ArgumentError, "seed"),
    ("random seed 2**64", lambda: dln.MatrixCompletion.random((5, 5), 2, 10, seed=2**64), ArgumentError, "seed"),
    ("sensing A 2-D", lambda: dln.MatrixSensing(np.ones((2, 2)), np.eye(2)), ArgumentError, "A"),
    ("sensing A shape", lambda: dln.MatrixSensing(np.ones((4, 3, 2)), np.eye(2)), ArgumentError, "A"),
    ("sensing A complex", lambda: dln.MatrixSensing(np.ones((4, 2, 2)) * 1j, np.eye(2)), ArgumentError, "A"),
    ("sensing target NaN", lambda: dln.MatrixSensing(np.ones((4, 2, 2)), np.eye(2) * np.nan), ArgumentError, "target"),
    ("sensing rank True", lambda: dln.MatrixSensing(np.ones((4, 2, 2)), np.eye(2), rank=True), ArgumentError, "rank"),
    ("sensing measurements 0", lambda: dln.MatrixSensing.random((3, 3), 1, 0), ArgumentError, "measurements"),
    ("sensing measurements 2.0", lambda: dln.MatrixSensing.random((3, 3), 1, 2.0), ArgumentError, "measurements"),
    ("factorization complex", lambda: dln.Factorization(np.eye(2) * 1j), ArgumentError, "M"),
    ("factorization string", lambda: dln.Factorization("abc"), ArgumentError, "M"),
    ("factorization 3-D", lambda: dln.Factorization(np.ones((2, 2, 2))), ArgumentError, "M"),
    ("factorization NaN", lambda: dln.Factorization(np.full((2, 2), np.nan)), ArgumentError, "M"),
    ("factorization empty", lambda: dln.Factorization(np.ones((0, 2))), ArgumentError, "M"),
    ("init_layers scale string", lambda: dln.init_layers(MC, 2, "gaussian", "0.1"), ArgumentError, "scale"),
    ("init_layers seed -1", lambda: dln.init_layers(MC, 2, "gaussian", 0.1, -1), ArgumentError, "seed"),
]

INTEGRATE = [
    ("problem is an array", lambda: dln.integrate(np.eye(3), depth=2), ArgumentError, "problem"),
    ("depth 0", lambda: run(depth=0), ArgumentError, "depth"),
    ("depth -1", lambda: run(depth=-1), ArgumentError, "depth"),
    ("depth 2.5", lambda: run(depth=2.5), ArgumentError, "depth"),
    ("depth True", lambda: run(depth=True), ArgumentError, "depth"),
    ("depth 'two'", lambda: run(depth="two"), ArgumentError, "depth"),
    ("depth []", lambda: run(depth=[]), ArgumentError, "depth"),
    ("depth repeated", lambda: run(depth=[1, 1]), ArgumentError, "depth"),
    ("depth None", lambda: run(depth=None), ArgumentError, "depth"),
    ("depth nan", lambda: run(depth=math.nan), ArgumentError, "depth"),
    ("depth inf on layers", lambda: run(depth="inf"), ValueError, "depth"),
    ("width 0", lambda: run(width=0), ArgumentError, "width"),
    ("width 0 end_to_end", lambda: run(width=0, init="balanced", flow="end_to_end"), ArgumentError, "width"),
    ("width 0 gd", lambda: run(width=0, method="gd", lr=0.1), ArgumentError, "width"),
    ("width 0 modified", lambda: run(width=0, flow="modified", lr=0.1), ArgumentError, "width"),
    ("width -3", lambda: run(width=-3), ArgumentError, "width"),
    ("width 2.0", lambda: run(width=2.0), ArgumentError, "width"),
    ("width True", lambda: run(width=True), ArgumentError, "width"),
    ("width '8'", lambda: run(width="8"), ArgumentError, "width"),
    ("init unknown", lambda: run(init="he"), ArgumentError, "init"),
    ("init a list", lambda: run(init=["gaussian"]), ArgumentError, "init"),
    ("init returns None", lambda: run(init=lambda shapes, scale, rng: None), ArgumentError, "init"),
    ("init takes 1 argument", lambda: run(init=lambda shapes: good_layers(shapes, 1, 0)), ArgumentError, "init"),
    ("init wrong shapes", lambda: run(init=lambda s, c, r: [np.zeros((2, 2))]), ArgumentError, "init"),
    ("init complex layers", lambda: run(init=lambda s, c, r: [np.ones(x) * 1j for x in s]), ArgumentError, "init"),
    ("init NaN layers", lambda: run(init=lambda s, c, r: [np.full(x, np.nan) for x in s]), ArgumentError, "init"),
    ("init returns an array", lambda: run(init=lambda s, c, r: np.zeros((2, 3, 3))), ArgumentError, "init"),
    ("init returns strings", lambda: run(init=lambda s, c, r: ["a", "b"]), ArgumentError, "init"),
    (
        "init bad at depth 3 only",
        lambda: run(depth=[1, 3], init=lambda s, c, r: [np.eye(3)] * 2),
        ArgumentError,
        "init",
    ),
    ("init gaussian end_to_end", lambda: run(flow="end_to_end"), ArgumentError, "init"),
    ("scale 0", lambda: run(scale=0), ArgumentError, "scale"),
    ("scale -1", lambda: run(scale=-1.0), ArgumentError, "scale"),
    ("scale nan", lambda: run(scale=math.nan), ArgumentError, "scale"),
    ("scale inf", lambda: run(scale=math.inf), ArgumentError, "scale"),
    ("scale string", lambda: run(scale="0.1"), ArgumentError, "scale"),
    ("scale True", lambda: run(scale=True), ArgumentError, "scale"),
    ("scale []", lambda: run(scale=[]), ArgumentError, "scale"),
    ("scale repeated", lambda: run(scale=[0.1, 0.1]), ArgumentError, "scale"),
    ("scale complex", lambda: run(scale=0.1j), ArgumentError, "scale"),
    ("seed -1", lambda: run(seed=-1), ArgumentError, "seed"),
    ("seed 2**63", lambda: run(seed=2**63), ArgumentError, "seed"),
    ("seed 2**70", lambda: run(seed=2**70), ArgumentError, "seed"),
    ("seed 1.0", lambda: run(seed=1.0), ArgumentError, "seed"),
    ("seed '0'", lambda: run(seed="0"), ArgumentError, "seed"),
    ("seed repeated", lambda: run(seed=[0, 0]), ArgumentError, "seed"),
    ("seed []", lambda: run(seed=[]), ArgumentError, "seed"),
    ("seed True", lambda: run(seed=True), ArgumentError, "seed"),
    ("seed None", lambda: run(seed=None), ArgumentError, "seed"),
    ("flow unknown", lambda: run(flow="sideways"), ArgumentError, "flow"),
    ("flow None", lambda: run(flow=None), ArgumentError, "flow"),
    ("method unknown", lambda: run(method="rk4"), ArgumentError, "method"),
    ("method None", lambda: run(method=None), ArgumentError, "method"),
    ("gd without lr", lambda: run(method="gd"), ValueError, "lr"),
    ("gd lr negative", lambda: run(method="gd", lr=-0.1), ValueError, "lr"),
    ("gd lr string", lambda: run(method="gd", lr="0.1"), ValueError, "lr"),
    ("lr with tsit5", lambda: run(method="tsit5", lr=0.1), ValueError, "lr"),
    ("gd end_to_end", lambda: run(method="gd", lr=0.1, flow="end_to_end", init="balanced"), ArgumentError, "gd"),
    (
        "rosenbrock e2e depth 1",
        lambda: run(depth=1, method="rosenbrock", flow="end_to_end", init="balanced"),
        ArgumentError,
        "depth",
    ),  # fmt: skip
    ("t1 0", lambda: run(t1=0.0), ValueError, "t1"),
    ("t1 -1", lambda: run(t1=-1.0), ValueError, "t1"),
    ("t1 nan", lambda: run(t1=math.nan), ValueError, "t1"),
    ("t1 string", lambda: run(t1="1"), ValueError, "t1"),
    ("rtol 0", lambda: run(rtol=0), ArgumentError, "rtol"),
    ("rtol 1", lambda: run(rtol=1), ArgumentError, "rtol"),
    ("rtol 2", lambda: run(rtol=2), ArgumentError, "rtol"),
    ("rtol string", lambda: run(rtol="1e-6"), ArgumentError, "rtol"),
    ("atol 5", lambda: run(atol=5), ArgumentError, "atol"),
    ("atol -1", lambda: run(atol=-1e-9), ArgumentError, "atol"),
    ("atol nan", lambda: run(atol=math.nan), ArgumentError, "atol"),
    ("saveat 0", lambda: run(saveat=0), ArgumentError, "saveat"),
    ("saveat -5", lambda: run(saveat=-5), ArgumentError, "saveat"),
    ("saveat unsorted", lambda: run(saveat=[0.0, 0.2, 0.1]), ArgumentError, "saveat"),
    ("saveat 2-D", lambda: run(saveat=[[0.0, 0.1]]), ArgumentError, "saveat"),
    ("saveat string", lambda: run(saveat="many"), ArgumentError, "saveat"),
    ("saveat True", lambda: run(saveat=True), ArgumentError, "saveat"),
    ("saveat 10.5", lambda: run(saveat=10.5), ArgumentError, "saveat"),
    ("saveat NaN scalar", lambda: run(saveat=math.nan), ArgumentError, "saveat"),
    ("saveat NaN", lambda: run(saveat=[math.nan]), ArgumentError, "saveat"),
    ("saveat empty", lambda: run(saveat=[]), ArgumentError, "saveat"),
    ("saveat complex", lambda: run(saveat=np.array([0.1, 0.2]) * 1j), ArgumentError, "saveat"),
    ("saveat negative time", lambda: run(saveat=[-0.1, 0.2]), ArgumentError, "saveat"),
    ("saveat past t1", lambda: run(t1=0.5, saveat=[0.1, 2.0]), ValueError, "saveat"),
    ("save_weights 'yes'", lambda: run(save_weights="yes"), ArgumentError, "save_weights"),
    ("max_steps 0", lambda: run(max_steps=0), ArgumentError, "max_steps"),
    ("max_steps 1.5", lambda: run(max_steps=1.5), ArgumentError, "max_steps"),
    ("loss_tol -1", lambda: run(loss_tol=-1.0), ValueError, "loss_tol"),
    ("saveat needs 4000 GiB", lambda: run(saveat=10**10), ArgumentError, "saveat"),
    (
        "save_weights on a big grid",
        lambda: dln.integrate(
            dln.MatrixCompletion.random((300, 300), 2, 500, seed=0),
            depth=[2, 3, 4],
            seed=range(8),
            saveat=2000,
            save_weights=True,
            progress=False,
        ),
        ArgumentError,
        "save_weights",
    ),  # fmt: skip
]


class Files:
    """The files the storage and open cases act on, made once per module in a temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        ds = dln.integrate(MC, depth=1, seed=[0, 1], t1=0.5, saveat=3, progress=False)
        self.ds = ds
        dln.save(ds, root / "good.nc")
        dln.save(ds, root / "good.zarr")
        (root / "mine.txt").write_text("a file of the user's")
        (root / "foreign.nc").write_text("not dlnode's")
        (root / "foreign.zarr").mkdir()
        (root / "foreign.zarr" / "notes.txt").write_text("a folder of the user's")
        (root / "dir.nc").mkdir()
        (root / "file.zarr").write_text("a file")
        xr.Dataset({"a": ("x", np.arange(3.0))}).to_netcdf(root / "plain.nc", engine="h5netcdf")
        xr.Dataset({"a": ("x", np.arange(3.0))}).to_netcdf(root / "classic.nc", engine="scipy")
        xr.Dataset({"a": ("x", np.arange(3.0))}).to_zarr(root / "plain.zarr", consolidated=False)
        data = (root / "good.nc").read_bytes()
        (root / "truncated.nc").write_bytes(data[: len(data) // 2])
        (root / "noise.nc").write_bytes(np.random.default_rng(0).bytes(4096))
        (root / "empty.nc").write_bytes(b"")
        self.zarr_without("no_var.zarr", "product")
        self.zarr_without("no_time.zarr", "time")
        self.zarr_without("no_chunk.zarr", "loss/c")
        shutil.copytree(root / "good.zarr", root / "bad_chunk.zarr")
        for chunk in (root / "bad_chunk.zarr" / "loss" / "c").rglob("*"):
            if chunk.is_file():
                chunk.write_bytes(b"garbage")
        self.variant("json.nc", lambda d: d.attrs.update(problem_fields="{"))
        self.variant("newer.nc", lambda d: d.attrs.update(dlnode_format_version=2))
        self.variant("legacy.nc", lambda d: [d.attrs.pop("dlnode_format"), d.attrs.pop("dlnode_format_version")])
        self.variant("status.nc", lambda d: d["status"].values.__setitem__((0, 0, 0), 42))

    def zarr_without(self, name: str, part: str) -> None:
        shutil.copytree(self.root / "good.zarr", self.root / name)
        shutil.rmtree(self.root / name / part)

    def variant(self, name: str, change) -> None:
        """A dlnode file changed behind dlnode's back (written with xarray directly)."""
        ds = self.ds.copy(deep=True)
        change(ds)
        ds.to_netcdf(self.root / name, engine="h5netcdf")

    def with_problem(self, change) -> xr.Dataset:
        ds = self.ds.copy(deep=True)
        change(ds)
        return ds


STORAGE = [
    ("save unknown suffix", lambda f: dln.save(f.ds, f.root / "x.h5"), ArgumentError, "path"),
    ("save no suffix", lambda f: dln.save(f.ds, f.root / "x"), ArgumentError, "path"),
    ("save existing file", lambda f: dln.save(f.ds, f.root / "good.nc"), PathExistsError, "path"),
    ("save existing store", lambda f: dln.save(f.ds, f.root / "good.zarr"), PathExistsError, "path"),
    (
        "save over a foreign file",
        lambda f: dln.save(f.ds, f.root / "foreign.nc", overwrite=True),
        PathExistsError,
        "path",
    ),  # fmt: skip
    (
        "save over a foreign folder",
        lambda f: dln.save(f.ds, f.root / "foreign.zarr", overwrite=True),
        PathExistsError,
        "path",
    ),  # fmt: skip
    (
        "save onto a folder named .nc",
        lambda f: dln.save(f.ds, f.root / "dir.nc", overwrite=True),
        PathExistsError,
        "path",
    ),  # fmt: skip
    ("save parent is a file", lambda f: dln.save(f.ds, f.root / "mine.txt" / "x.nc"), PathError, "path"),
    ("save a DataArray", lambda f: dln.save(f.ds["loss"], f.root / "x.nc"), ArgumentError, "ds"),
    ("save a plain Dataset", lambda f: dln.save(xr.Dataset({"a": 1}), f.root / "x.nc"), DatasetError, "ds"),
    ("save without the depth dim", lambda f: dln.save(f.ds.isel(depth=0), f.root / "x.nc"), DatasetError, "ds"),
    ("save without status", lambda f: dln.save(f.ds.drop_vars("status"), f.root / "x.nc"), DatasetError, "ds"),
    ("save overwrite 'yes'", lambda f: dln.save(f.ds, f.root / "x.nc", overwrite="yes"), ArgumentError, "overwrite"),
    (
        "save an all-False mask",
        lambda f: dln.save(f.with_problem(lambda d: d["problem_mask"].values.fill(False)), f.root / "x.nc"),
        DatasetError,
        "problem_fields",
    ),  # fmt: skip
    (
        "save a dict attribute to netCDF",
        lambda f: dln.save(f.ds.assign_attrs(config={"a": 1}), f.root / "x.nc"),
        DatasetError,
        "ds",
    ),
    (
        "save a None attribute to netCDF",
        lambda f: dln.save(f.ds.assign_attrs(x=None), f.root / "x.nc"),
        DatasetError,
        "ds",
    ),
    (
        "save a NUL in a string to netCDF",
        lambda f: dln.save(f.ds.assign_attrs(note="a\x00b"), f.root / "x.nc"),
        DatasetError,
        "ds",
    ),
    (
        "save a 2**70 attribute to netCDF",
        lambda f: dln.save(f.ds.assign_attrs(n=2**70), f.root / "x.nc"),
        DatasetError,
        "ds",
    ),
    (
        "save a bool attribute to netCDF",
        lambda f: dln.save(f.ds.assign_attrs(b=True), f.root / "x.nc"),
        DatasetError,
        "ds",
    ),
    ("open missing", lambda f: dln.open(f.root / "nothing.nc"), PathMissingError, "path"),
    ("open unknown suffix", lambda f: dln.open(f.root / "mine.txt"), ArgumentError, "path"),
    ("open plain netCDF", lambda f: dln.open(f.root / "plain.nc"), DatasetError, "path"),
    ("open netCDF-3", lambda f: dln.open(f.root / "classic.nc"), DatasetError, "path"),
    ("open truncated", lambda f: dln.open(f.root / "truncated.nc"), DatasetError, "path"),
    ("open random bytes", lambda f: dln.open(f.root / "noise.nc"), DatasetError, "path"),
    ("open empty file", lambda f: dln.open(f.root / "empty.nc"), DatasetError, "path"),
    ("open a text file named .nc", lambda f: dln.open(f.root / "foreign.nc"), DatasetError, "path"),
    ("open folder named .nc", lambda f: dln.open(f.root / "dir.nc"), PathError, "path"),
    ("open file named .zarr", lambda f: dln.open(f.root / "file.zarr"), PathError, "path"),
    ("open folder, not zarr", lambda f: dln.open(f.root / "foreign.zarr"), DatasetError, "path"),
    ("open plain zarr", lambda f: dln.open(f.root / "plain.zarr"), DatasetError, "path"),
    ("open deleted variable", lambda f: dln.open(f.root / "no_var.zarr"), DatasetError, "path"),
    ("open deleted coordinate", lambda f: dln.open(f.root / "no_time.zarr"), DatasetError, "path"),
    ("open deleted chunks", lambda f: dln.open(f.root / "no_chunk.zarr"), DatasetError, "path"),
    ("open garbage chunk", lambda f: dln.open(f.root / "bad_chunk.zarr"), DatasetError, "path"),
    ("open bad problem JSON", lambda f: dln.open(f.root / "json.nc"), DatasetError, "problem_fields"),
    ("open newer format", lambda f: dln.open(f.root / "newer.nc"), DatasetError, "path"),
    ("open legacy file", lambda f: dln.open(f.root / "legacy.nc"), DatasetError, "path"),
    ("open unknown status code", lambda f: dln.open(f.root / "status.nc"), DatasetError, "path"),
    ("open chunks 'auto'", lambda f: dln.open(f.root / "good.nc", chunks="auto"), ArgumentError, "chunks"),
    ("problem_from without fields", lambda f: dln.problem_from(xr.Dataset()), ArgumentError, "ds"),
    (
        "problem_from nested JSON",
        lambda f: dln.problem_from(f.with_problem(lambda d: d.attrs.update(problem_fields="[" * 5000 + "]" * 5000))),
        DatasetError,
        "problem_fields",
    ),  # fmt: skip
    (
        "problem_from missing keys",
        lambda f: dln.problem_from(
            f.with_problem(lambda d: d.attrs.update(problem_fields='{"kind": "matrix_completion"}'))
        ),
        DatasetError,
        "problem_fields",
    ),  # fmt: skip
    (
        "problem_from unknown kind",
        lambda f: dln.problem_from(
            f.with_problem(lambda d: d.attrs.update(problem_fields='{"kind": "nope", "scalars": {}}'))
        ),
        DatasetError,
        "problem_fields",
    ),  # fmt: skip
    (
        "problem_from not JSON text",
        lambda f: dln.problem_from(f.with_problem(lambda d: d.attrs.update(problem_fields=3))),
        DatasetError,
        "problem_fields",
    ),  # fmt: skip
    (
        "problem_from deleted array",
        lambda f: dln.problem_from(f.ds.drop_vars("problem_mask")),
        DatasetError,
        "problem_fields",
    ),  # fmt: skip
    (
        "problem_from bad scalar",
        lambda f: dln.problem_from(
            f.with_problem(
                lambda d: d.attrs.update(
                    problem_fields=json.dumps(
                        {"kind": "matrix_completion", "scalars": {"normalize": "yes", "seed": 0, "rank": 1}}
                    )
                )
            )
        ),
        DatasetError,
        "problem_fields",
    ),  # fmt: skip
]


if os.path.isdir("/proc"):  # read-only even for root: the one unwritable directory every Linux machine has
    STORAGE.append(("save unwritable parent", lambda f: dln.save(f.ds, Path("/proc/x.nc")), PathError, "path"))


def _regression_fields(change):
    problem = dln.Regression(np.arange(12.0).reshape(3, 4), np.ones((2, 4)))
    arrays, scalars = problem.fields()
    change(arrays, scalars)
    return lambda: dln.Problem.from_fields("regression", arrays, scalars)


REBUILD = [
    ("regression minimiser changed", _regression_fields(lambda a, s: a["minimiser"].__iadd__(1.0)), "minimiser"),
    ("regression sigma_xx not PSD", _regression_fields(lambda a, s: a.update(sigma_xx=-np.eye(3))), "sigma_xx"),
    ("regression minimum negative", _regression_fields(lambda a, s: s.update(minimum=-1.0)), "minimum"),
    ("regression n zero", _regression_fields(lambda a, s: s.update(n=0)), "n"),
    ("regression extra field", _regression_fields(lambda a, s: s.update(extra=1)), "fields"),
]


def _check_message(err: BaseException, argument: str) -> None:
    message = str(err)
    assert "\n" not in message and message.strip() == message, message
    assert argument in message, (argument, message)
    if isinstance(err, DlnodeError):
        assert argument in err.argument or argument in message.split(";")[0], message
        assert err.fix and "; " in message, message  # rule; got value; fix


@pytest.mark.parametrize(("call", "kind", "argument"), [c[1:] for c in CONSTRUCTORS + INTEGRATE],
                         ids=[c[0] for c in CONSTRUCTORS + INTEGRATE])  # fmt: skip
def test_bad_arguments_are_refused_with_one_line(call, kind, argument):
    with pytest.raises(kind) as info:
        call()
    _check_message(info.value, argument)


@pytest.mark.parametrize(("call", "argument"), [c[1:] for c in REBUILD], ids=[c[0] for c in REBUILD])
def test_a_problem_is_rebuilt_through_its_rules(call, argument):
    with pytest.raises(ArgumentError) as info:
        call()
    _check_message(info.value, argument)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return Files(tmp_path_factory.mktemp("bad_files"))


@pytest.mark.parametrize(("call", "kind", "argument"), [c[1:] for c in STORAGE], ids=[c[0] for c in STORAGE])
def test_bad_files_and_paths_are_refused_with_one_line(files, call, kind, argument):
    before = sorted(p.name for p in files.root.iterdir())
    with pytest.raises(kind) as info:
        call(files)
    _check_message(info.value, argument)
    assert sorted(p.name for p in files.root.iterdir()) == before  # nothing written, nothing left behind
    assert (files.root / "mine.txt").read_text() == "a file of the user's"
    assert (files.root / "foreign.zarr" / "notes.txt").read_text() == "a folder of the user's"
    assert (files.root / "foreign.nc").read_text() == "not dlnode's"


@pytest.mark.parametrize(("depth", "scale"), [(400, 0.1), (60, 1e6), (1000, 1e-3), (3, 1e-300)])
def test_planning_arithmetic_survives_extreme_depths_and_scales(depth, scale):
    """scale^depth under- or overflows a float (0.1^400, 1e6^60): the planning works in logarithms instead of
    raising ZeroDivisionError/OverflowError."""
    from dlnode.flows import scales as integration
    from dlnode.flows.scales import predicted_stiffness

    horizon = getattr(integration, "escape_estimate", None) or integration.default_t_max
    assert 0 < horizon(MC, [float(depth)], [scale]) < math.inf
    ratio = predicted_stiffness(MC, float(depth), scale)
    assert ratio >= 0 and (ratio > 1) == (scale < 1)  # (s/u₀)^(1−2/N) with s of order 1: above 1 iff u₀ is small
