"""Shared test set-up: float64 (dlnode switches it on at import) and a persistent compilation cache for the
processes the suite starts (CLI runs, studies, sweep workers), so they reuse what earlier ones compiled.

The test process itself keeps its compiled functions in memory and does not read the persistent cache: once in a
full run it crashed (a segmentation fault inside XLA while deserialising a valid cached executable), and it gains
little from it, since it compiles each function once anyway."""

import os
from pathlib import Path

os.environ.setdefault("DLNODE_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".cache" / "jax-tests"))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import dlnode  # noqa: E402

dlnode.compilation_cache(None)
