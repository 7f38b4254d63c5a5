"""Replacing a zarr store (a directory) is one atomic step where the system has one (Linux renameat2 with
RENAME_EXCHANGE): at no moment is there no store at the path. Elsewhere it takes two renames through a hidden
sibling; a process killed between them leaves no store at the path, and the next open or save says in one line
where the previous and the new store are and how to put one back."""

import ctypes
import errno
import os
import platform
import subprocess
import sys
import textwrap

import pytest
import xarray as xr

import dlnode as dln
from dlnode.data import storage
from dlnode.errors import PathMissingError

PROB = dln.MatrixCompletion.random((3, 3), 1, 6, seed=0)


@pytest.fixture(scope="module")
def ds():
    return dln.integrate(PROB, depth=1, seed=[0, 1], t1=0.5, saveat=3, progress=False)


def _stores(ds, tmp_path):
    """An existing store at run.zarr, and a different dataset to replace it with."""
    path = tmp_path / "run.zarr"
    dln.save(ds, path)
    return path, ds.assign(loss=ds["loss"] * 2)


def _glibc_with_renameat2() -> bool:
    """Linux with glibc 2.28 or later: the systems where dlnode must find the atomic exchange (elsewhere the
    two-rename fallback runs, and the tests below that force it cover that)."""
    if not sys.platform.startswith("linux"):
        return False
    lib, version = platform.libc_ver()
    return lib == "glibc" and tuple(int(v) for v in version.split(".")[:2]) >= (2, 28)


# decided from the platform, not from what dlnode detects: where the exchange must exist, a detection that
# fails makes these tests fail instead of skipping
HAS_EXCHANGE = pytest.mark.skipif(not _glibc_with_renameat2(), reason="not Linux with glibc >= 2.28 (no renameat2)")


def test_renameat2_is_found_where_the_system_has_it():
    assert (storage._renameat2() is not None) == _glibc_with_renameat2()


@HAS_EXCHANGE
def test_the_exchange_swaps_two_directories_in_one_call(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "which").write_text("a"), (b / "which").write_text("b")
    assert storage._exchange(a, b)
    assert (a / "which").read_text() == "b" and (b / "which").read_text() == "a"


@HAS_EXCHANGE
def test_a_store_is_replaced_by_the_exchange_without_a_moment_without_store(ds, tmp_path, monkeypatch):
    path, changed = _stores(ds, tmp_path)
    seen = []
    exchange = storage._exchange

    def watched(a, b):
        seen.append(b.is_dir() and dln.open(b)["loss"].equals(ds["loss"]))  # the old store is there just before
        done = exchange(a, b)
        seen.append(done and dln.open(b)["loss"].equals(changed["loss"]))  # and the new one right after
        return done

    def no_rename(*args):  # the two-rename fallback would leave the path empty in between: it must not run
        raise AssertionError("os.rename called on a system with an atomic exchange")

    monkeypatch.setattr(storage, "_exchange", watched)
    monkeypatch.setattr(storage.os, "rename", no_rename)
    dln.save(changed, path, overwrite=True)
    assert seen == [True, True]
    xr.testing.assert_identical(dln.open(path), changed.assign_attrs(ds.attrs))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # the old store is removed


def test_the_fallback_replaces_a_store_with_two_renames(ds, tmp_path, monkeypatch):
    path, changed = _stores(ds, tmp_path)
    monkeypatch.setattr(storage, "_exchange", lambda a, b: False)
    dln.save(changed, path, overwrite=True)
    xr.testing.assert_identical(dln.open(path), changed.assign_attrs(ds.attrs))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_system_without_the_exchange_call_falls_back(ds, tmp_path, monkeypatch):
    path, changed = _stores(ds, tmp_path)
    storage._renameat2.cache_clear()
    monkeypatch.setattr(storage.sys, "platform", "darwin")
    try:
        assert not storage._exchange(tmp_path, path)
        dln.save(changed, path, overwrite=True)
    finally:
        storage._renameat2.cache_clear()
    xr.testing.assert_identical(dln.open(path), changed.assign_attrs(ds.attrs))


KILLED_BETWEEN_RENAMES = textwrap.dedent(
    """
    import os, signal, sys
    import dlnode as dln
    from dlnode.data import storage

    ds = dln.open(sys.argv[1])
    storage._exchange = lambda a, b: False  # a system without the atomic exchange
    rename, calls = os.rename, []

    def rename_then_die(src, dst):
        if calls:  # the second rename: the process is killed before it
            os.kill(os.getpid(), signal.SIGKILL)
        calls.append(src)
        rename(src, dst)

    storage.os.rename = rename_then_die
    dln.save(ds, sys.argv[2], overwrite=True)
    """
)


def test_a_kill_between_the_two_renames_is_reported_on_the_next_open_and_save(ds, tmp_path):
    path, changed = _stores(ds, tmp_path)
    source = tmp_path / "changed.nc"
    dln.save(changed, source)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_RENAMES, str(source), str(path)], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == -9, run.stderr[-2000:]
    assert not path.exists()
    (aside,) = tmp_path.glob(".run.replaced-*.zarr")
    (new,) = tmp_path.glob(".run.partial-*.zarr")
    for call in (lambda: dln.open(path), lambda: dln.save(ds, path)):
        with pytest.raises(PathMissingError) as err:
            call()
        text = str(err.value)
        assert "\n" not in text and "cut short" in text and aside.name in text and new.name in text, text
        assert f"mv {aside} {path}" in text
    xr.testing.assert_identical(dln.open(aside), ds)  # nothing was lost: both stores are whole
    xr.testing.assert_identical(dln.open(new), changed.assign_attrs(ds.attrs))
    os.rename(aside, path)  # doing what the message says
    xr.testing.assert_identical(dln.open(path), ds)


def test_a_file_system_that_refuses_the_exchange_falls_back(ds, tmp_path, monkeypatch):
    """renameat2 exists but this file system does not support RENAME_EXCHANGE (EINVAL): two renames instead."""
    path, changed = _stores(ds, tmp_path)

    def refused(*args):
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(storage, "_renameat2", lambda: refused)
    assert not storage._exchange(tmp_path, path)
    dln.save(changed, path, overwrite=True)
    xr.testing.assert_identical(dln.open(path), changed.assign_attrs(ds.attrs))
