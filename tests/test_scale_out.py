"""Scale-out edges: local workers capped at the CPUs, the scheduler contacted before anything is written (with a
short, stated timeout), and one writer per sweep store at a time, through a lock a killed process cannot leave
behind."""

import os
import socket
import subprocess
import sys
import time

import pytest

import dlnode as dln

CONFIG = {
    "problem": {"kind": "factorization", "shape": [2, 2], "rank": 1, "seed": 0},
    "grid": {"depth": [1], "scale": [0.3], "method": "gd", "lr": [0.1]},
    "integrate": {"t1": 1.0, "saveat": 3},
}


def test_more_workers_than_cpus_are_refused(tmp_path):
    cpus = len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match="workers") as err:
        dln.sweep(CONFIG, tmp_path / "s.zarr", workers=cpus + 1)
    assert str(cpus) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "s.zarr").exists()


def test_an_unreachable_scheduler_is_refused_fast_before_any_write(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(ValueError, match="scheduler") as err:
        dln.sweep(CONFIG, tmp_path / "s.zarr", scheduler=f"tcp://127.0.0.1:{port}")
    assert time.perf_counter() - start < 10
    assert "interrupted" not in str(err.value)
    assert not (tmp_path / "s.zarr").exists()


def test_one_writer_per_store_and_a_killed_writer_leaves_no_lock(tmp_path):
    from distributed import Client

    store = tmp_path / "s.zarr"
    lock = tmp_path / ".s.zarr.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"f = open({str(lock)!r}, 'a+')\n"
        "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match="another") as err:
            dln.sweep(CONFIG, store, progress=False)
        assert "\n" not in str(err.value) and str(store) in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        ds = dln.sweep(CONFIG, store, client=client, progress=False)
    assert int(ds["status"].values.item()) == int(dln.Status.FINISHED)


def test_the_local_cluster_warns_of_no_dashboard_port(recwarn):
    """The docs say the local cluster has no dashboard: with Dask's port 8787 held by someone else, starting it
    prints no 'Port 8787 is already in use' warning."""
    import socket

    from dlnode.sweeps.sweep import local_cluster

    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8787))
        holder.listen()
    except OSError:
        pass  # held already: the situation under test
    try:
        with local_cluster(1):
            pass
    finally:
        holder.close()
    assert not [w for w in recwarn if "already in use" in str(w.message)]
