"""Validate everything before any work: every depth and cell of a call or a sweep (inits, widths, memory with the
saved weights, config lists non-empty and well typed, ranks within the shape, config files that are text), each
refused in one line naming the argument, the rule, the value and the fix."""

import dataclasses

import numpy as np
import pytest

import dlnode as dln
from dlnode.errors import DlnodeError

TARGET = np.diag([2.0, 1.0])
GOOD = {
    "problem": {"kind": "factorization", "shape": [4, 4], "rank": 2, "seed": 0},
    "grid": {"depth": [1, 2], "scale": [0.1], "seed": [0], "method": "tsit5"},
    "integrate": {"t1": 1.0, "saveat": 3},
}


def _with(table, **values):
    return {**GOOD, table: {**GOOD[table], **values}}


def _one_line(exc):
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if any method takes a window (the call computed before it was refused)."""
    for name, method in list(dln.METHODS.items()):
        monkeypatch.setitem(dln.METHODS, name, dataclasses.replace(
            method, advance=lambda *a, _n=name: pytest.fail(f"{_n} ran before the call was refused")))  # fmt: skip


def test_an_init_that_is_not_finite_at_a_later_depth_is_refused_before_any_work(no_work):
    def init(shapes, scale, rng):
        value = np.nan if len(shapes) == 3 else scale
        return [np.full(s, value) for s in shapes]

    with pytest.raises(DlnodeError, match="init") as err:
        dln.integrate(dln.Factorization(TARGET), depth=[2, 3], init=init, t1=1.0, saveat=3, progress=False)
    _one_line(err.value)


def test_an_init_that_is_not_finite_at_a_later_seed_is_refused_before_any_work(no_work):
    def init(shapes, scale, rng):
        bad = rng.standard_normal() > 0.5  # depends on the seed: some seed draws it
        return [np.full(s, np.inf if bad else scale) for s in shapes]

    with pytest.raises(DlnodeError, match="init"):
        dln.integrate(dln.Factorization(TARGET), depth=2, init=init, seed=range(20), t1=1.0, saveat=3,
                      progress=False)  # fmt: skip


def test_a_width_too_large_for_memory_is_refused(no_work):
    with pytest.raises(DlnodeError, match="width|memory") as err:
        dln.integrate(dln.Factorization(TARGET), depth=3, width=10**5, t1=1.0, saveat=3, progress=False)
    _one_line(err.value)


@pytest.mark.parametrize("key", ["depth", "scale", "seed", "method", "init", "flow"])
def test_empty_grid_lists_are_refused(key):
    with pytest.raises(ValueError, match=f"grid.{key}") as err:
        dln.sweep(_with("grid", **{key: []}), "never.zarr")
    _one_line(err.value)


@pytest.mark.parametrize(
    ("table", "values", "word"),
    [
        ("problem", {"kind": "factorization", "matrix": [[1.0, 2.0], [3.0]], "shape": None, "rank": None,
                     "seed": 0}, "matrix"),
        ("problem", {"rank": 9}, "rank"),
        ("problem", {"rnak": 3}, "rnak"),
        ("grid", {"seed": [2**63]}, "seed"),
        ("integrate", {"saveat": 10**9}, "saveat"),
        ("integrate", {"saveat": 1e9}, "saveat"),
    ],
)  # fmt: skip
def test_bad_config_values_are_refused_in_one_line(table, values, word, tmp_path):
    config = _with(table, **values)
    config[table] = {k: v for k, v in config[table].items() if v is not None}
    with pytest.raises(ValueError, match=word) as err:
        dln.sweep(config, tmp_path / "s.zarr")
    _one_line(err.value)
    assert not (tmp_path / "s.zarr").exists()


def test_a_save_weights_grid_too_large_for_memory_is_refused(tmp_path):
    config = _with("integrate", saveat=100_000, save_weights=True)
    config["grid"] = {**config["grid"], "seed": list(range(200)), "depth": [1, 2, 3, 4, 5, 6, 7, 8]}
    config["problem"] = {"kind": "factorization", "shape": [40, 40], "rank": 2}
    with pytest.raises(ValueError, match="save_weights|memory") as err:
        dln.sweep(config, tmp_path / "s.zarr")
    _one_line(err.value)
    assert not (tmp_path / "s.zarr").exists()


def test_a_binary_file_or_a_directory_as_config_is_refused(tmp_path):
    binary = tmp_path / "c.toml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    for path in (binary, tmp_path):
        with pytest.raises(ValueError, match=str(path)) as err:
            dln.sweep(path, tmp_path / "s.zarr")
        _one_line(err.value)


def test_open_refuses_what_is_not_a_path():
    for value in (42, None, 1.5):
        with pytest.raises(DlnodeError, match="path") as err:
            dln.open(value)
        _one_line(err.value)


def test_a_store_with_damaged_status_metadata_is_refused(tmp_path, capsys):
    import json

    from distributed import Client

    from dlnode.cli import main

    path = tmp_path / "s.zarr"
    config = {**GOOD, "grid": {**GOOD["grid"], "depth": [1], "method": "gd", "lr": [0.1]}}
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        dln.sweep(config, path, client=client, progress=False)
    meta = path / "status" / "zarr.json"
    damaged = json.loads(meta.read_text())
    damaged.pop("shape")
    meta.write_text(json.dumps(damaged))
    with pytest.raises(DlnodeError, match="status") as err:
        dln.open(path)
    _one_line(err.value)
    with pytest.raises(SystemExit) as done:
        main(["info", str(path)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "status" in err and "bug" not in err


def test_an_unwritable_cache_directory_turns_the_cache_off_with_one_warning(monkeypatch, tmp_path):
    import os

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    try:
        with pytest.warns(UserWarning, match="not writable") as seen:
            assert dln.compilation_cache(tmp_path) is None
        assert len(seen) == 1
    finally:
        monkeypatch.undo()
        dln.compilation_cache()  # back to the suite's cache (DLNODE_CACHE_DIR)


def test_the_template_of_a_large_grid_is_written_in_seconds(tmp_path):
    """40,000 cells (2,500 tasks of 16): the template holds metadata only, and its status is known without
    reading back every absent chunk (a 2e6-cell grid took over a minute before its progress bar appeared)."""
    import time

    from dlnode.sweeps import store as sweep_store
    from dlnode.sweeps.config import load_config

    grid = {"depth": [1], "scale": [0.1 + i * 1e-3 for i in range(100)], "seed": list(range(400)), "method": "gd",
            "lr": [0.1]}  # fmt: skip
    config = load_config({**GOOD, "grid": grid})
    layout = sweep_store.Layout.of(config, 16)
    start = time.perf_counter()
    status = sweep_store.prepare(tmp_path / "big.zarr", layout)
    assert time.perf_counter() - start < 5
    assert status.shape == (1, 100, 400) and (status == int(dln.Status.PENDING)).all()
    assert (sweep_store.read_status(tmp_path / "big.zarr")[:, :2, :16] == int(dln.Status.PENDING)).all()
