"""Timing scripts for dlnode against its peers (outside the library and its unit tests): `python -m benchmarks.run`.

Importing the package pins every thread pool to one thread before numpy, scipy, jax or torch load theirs, so the
comparison is per core and small LU factorisations do not fight over the cores: run the scripts as modules
(``python -m benchmarks.<name>``), or set these variables yourself before anything imports numpy.
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"]
    ).strip()
os.environ.setdefault("MPLBACKEND", "Agg")
