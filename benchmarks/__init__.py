"""Timing scripts for dlnode against its peers (outside the library and its unit tests): `python -m benchmarks.run`.

Importing the package pins every thread pool to one thread before numpy, scipy, jax or torch load theirs, so the
comparison is per core and small LU factorisations do not fight over the cores: run the scripts as modules
(``python -m benchmarks.<name>``), or set these variables yourself before anything imports numpy. XLA computes on
one thread per process already: that is dlnode's default (``DLNODE_XLA_THREADS``, `dlnode.runtime.xla_threads`).
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
