"""XLA's CPU runtime computes on DLNODE_XLA_THREADS threads (default one), and the process keeps its affinity.

Each case runs in a fresh interpreter (the CPU client is created once per process). The reference is the thread
list of that process in /proc: the compute pool's threads are named by XLA ("XLAEigen").
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlnode.runtime.xla_threads import ENV, requested_threads

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")

PROBE = """
import json, os
{before}
import dlnode
import jax.numpy as jnp
jnp.ones(3).sum().block_until_ready()
tasks = os.listdir("/proc/self/task")
names = [open(f"/proc/self/task/{{t}}/comm").read().strip() for t in tasks]
print(json.dumps({{"pool": sum("XLAEigen" in n for n in names),
                  "affinities": sorted({{tuple(sorted(os.sched_getaffinity(int(t)))) for t in tasks}})}}))
"""


def _probe(value=None, before=""):
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if value is not None:
        env[ENV] = value
    done = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


CPUS = sorted(os.sched_getaffinity(0))


def test_one_thread_by_default_and_the_affinity_is_kept():
    got = _probe()
    assert got["pool"] == 1
    assert got["affinities"] == [CPUS]  # every thread, XLA's included, may run on every CPU it could before


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs to tell one thread from all")
def test_all_is_xla_own_pool_and_a_number_is_that_many():
    assert _probe("all")["pool"] == len(CPUS)
    got = _probe("2")
    assert got["pool"] == 2 and got["affinities"] == [CPUS]


def test_a_client_made_before_dlnode_is_left_alone():
    before = "import jax.numpy as jnp; jnp.ones(1).block_until_ready()"
    assert _probe(before=before)["pool"] == len(CPUS)


@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5", ""])
def test_a_bad_value_is_one_line_naming_the_variable(value):
    with pytest.raises(ValueError, match=rf"^{ENV} must be a positive integer or 'all' .* got {value!r}"):
        requested_threads(value)
    env = dict(os.environ, **{ENV: value})
    done = subprocess.run([sys.executable, "-c", "import dlnode"], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and f"ArgumentError: {ENV} must be" in done.stderr.splitlines()[-1]


def test_values():
    assert requested_threads("1") == 1
    assert requested_threads(" 3 ") == 3
    assert requested_threads("ALL") is None


def test_the_dlnode_command_says_a_bad_value_in_one_line():
    """The command imports dlnode before its own error handling runs: a bad value is still one line, exit code 2."""
    command = Path(sys.executable).parent / "dlnode"
    assert command.exists(), f"the dlnode command is not installed beside {sys.executable}"
    done = subprocess.run([str(command), "info", "nothing.nc"], env={**os.environ, ENV: "none"}, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    want = f"error: {ENV} must be a positive integer or 'all' (XLA's own pool, one thread per CPU); got 'none'; "
    assert done.stderr.splitlines() == [want + "unset it for one thread"]
