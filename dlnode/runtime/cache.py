"""JAX's persistent compilation cache, on by default: a second process reuses the first one's compiled solvers.

Where it lives: ``$DLNODE_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/dlnode/jax`` (``~/.cache/dlnode/jax``).
``DLNODE_CACHE_DIR=off`` (or ``dlnode.compilation_cache(None)``) turns it off.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from dlnode.errors import warn

__all__ = ["compilation_cache", "default_cache_dir"]

OFF = ("", "0", "off", "none", "false", "no")
MIN_COMPILE_SECONDS = 0.2  # smaller programs recompile faster than they read back from disk


def default_cache_dir() -> Path | None:
    """The cache directory dlnode uses when none is given (None when ``DLNODE_CACHE_DIR`` turns it off)."""
    env = os.environ.get("DLNODE_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in OFF else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dlnode" / "jax"


def compilation_cache(path: str | os.PathLike | None = "default") -> Path | None:
    """Point JAX's persistent compilation cache at `path` (``"default"``: `default_cache_dir`; None: off).

    Returns the directory in use, or None when the cache is off (also when the directory cannot be created or
    written, said once in a warning: compiling without a cache is slower, never wrong).
    """
    where = default_cache_dir() if path == "default" else (None if path is None else Path(path).expanduser())
    if where is not None:
        try:
            where.mkdir(parents=True, exist_ok=True)
        except OSError:
            where = None
    if where is not None and not os.access(where, os.W_OK | os.X_OK):  # JAX would warn at every program it keeps
        warn(
            f"dlnode: the compilation cache directory {str(where)!r} is not writable: compiling without a "
            "persistent cache (set DLNODE_CACHE_DIR to a writable directory, or to off)"
        )
        where = None
    jax.config.update("jax_compilation_cache_dir", None if where is None else str(where))
    if where is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return where
