"""Compiled executables are bounded in number (`core.COMPILED_MAX`), so a process that compiles without end keeps a
bounded number of memory mappings; a dropped executable is compiled again, to the same result.

The reference for the memory is the process's own /proc/self/maps: with no bound, each executable kept ~15
mappings (measured), and the kernel allows 65,530 per process.
"""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from dlnode.solvers import core

PROBE = """
import gc, json, numpy as np, jax, jax.numpy as jnp
import dlnode
from dlnode.solvers import core
fn = jax.jit(lambda x: jnp.sin(x) * 2 + jnp.cumsum(x))
def maps():
    gc.collect()
    return sum(1 for _ in open("/proc/self/maps"))
core.call(fn, np.ones(1))
base = maps()
sizes = iter(range(2, 10_000))
for _ in range(core.COMPILED_MAX):
    core.call(fn, np.ones(next(sizes)))
full = maps()
most = 0
for _ in range(4 * core.COMPILED_MAX):
    core.call(fn, np.ones(next(sizes)))
    most = max(most, len(core._COMPILED))
print(json.dumps({"base": base, "full": full, "after": maps(), "most": most}))
"""


def test_a_process_that_compiles_without_end_keeps_bounded_mappings():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["most"] <= core.COMPILED_MAX
    per_executable = (got["full"] - got["base"]) / core.COMPILED_MAX
    assert per_executable > 2, got  # each executable does cost mappings: the measure sees them
    unbounded = 4 * core.COMPILED_MAX * per_executable  # what keeping all of them would add
    assert got["after"] - got["full"] < 0.2 * unbounded, got


def test_a_dropped_executable_compiles_again_to_the_same_result():
    fn = jax.jit(lambda x: jnp.exp(x) - x)
    x = np.linspace(0.0, 1.0, 7)
    first = np.asarray(core.call(fn, x))
    np.testing.assert_allclose(first, np.exp(x) - x, rtol=1e-15)
    core.release_compiled()
    assert not core._COMPILED
    again = np.asarray(core.call(fn, x))
    np.testing.assert_array_equal(again, first)
    assert len(core._COMPILED) == 1
