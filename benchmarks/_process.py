"""One benchmark case in a fresh interpreter (a cold compile, its own compile cache): its last JSON line; and a
fresh name for a run's table, so that a partial run never replaces an earlier run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def fresh_path(folder: Path, stem: str, suffix: str = ".md") -> Path:
    """``folder/stem.md``, or ``stem-2.md``, ``stem-3.md``, … : the first name not taken yet."""
    path, k = folder / f"{stem}{suffix}", 1
    while path.exists():
        k += 1
        path = folder / f"{stem}-{k}{suffix}"
    return path


def last_json(module: str, args: list[str], cache: str, limit: float) -> dict | None:
    """Run ``python -m module *args`` with the compile cache in `cache`; the dict its last line starting with '{'
    holds, ``{"failed": its last stderr line}`` when it fails or prints none, None past `limit` seconds."""
    env = dict(os.environ, DLNODE_CACHE_DIR=cache)
    try:
        done = subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True,
                              timeout=limit)  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"failed": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])
