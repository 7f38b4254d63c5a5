"""Shared test set-up: float64 (dlnode switches it on at import) and a persistent compilation cache for the suite,
so a second run of the tests (and CI's later tests) reuse compiled solvers."""

import os
from pathlib import Path

os.environ.setdefault("DLNODE_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".cache" / "jax-tests"))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
