"""One benchmark case in a fresh interpreter (a cold compile, its own compile cache): its last JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys


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
