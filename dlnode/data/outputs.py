"""One output-path policy for every writer (`save`, `export`, a study's files, `demo`, `plot`).

Checked before any work; an existing path is replaced only when asked (``overwrite``) and only when dlnode wrote
it, as its format marker shows: ``dlnode_format`` in a dataset's root attributes, ``dlnode-figure`` in a figure's
metadata (the Creator field of PNG, PDF, SVG and PostScript files). Formats that carry no metadata (JPEG, TIFF,
...) cannot be marked, so an existing file of those is never replaced. Errors name the user's path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dlnode._version import __version__
from dlnode.errors import PathError, fail, shown

from dlnode.data.storage import as_path, check_output_path

__all__ = ["FIGURE_MARKER", "check_figure_path", "check_output_folder", "figure_metadata", "is_dlnode_figure"]

FIGURE_MARKER = "dlnode-figure"
MARKED_FIGURES = (".png", ".pdf", ".svg", ".eps", ".ps")  # matplotlib writes a Creator field in these
MARKER_SCAN = 64 * 2**20  # figures are small: read at most this much looking for the marker


def figure_metadata(path: str | os.PathLike) -> dict[str, str] | None:
    """`savefig`'s metadata that marks a figure as dlnode's (None for a format that holds none)."""
    if Path(os.fspath(path)).suffix.lower() in MARKED_FIGURES:
        return {"Creator": f"{FIGURE_MARKER} {__version__} (matplotlib)"}
    return None


def is_dlnode_figure(path: Path) -> bool:
    """Whether `path` is a regular file whose bytes carry dlnode's figure marker."""
    if path.is_symlink() or not path.is_file() or path.suffix.lower() not in MARKED_FIGURES:
        return False
    try:
        with open(path, "rb") as f:
            return FIGURE_MARKER.encode() in f.read(MARKER_SCAN)
    except OSError:
        return False


def check_figure_path(path: Any, overwrite: bool, suffixes: tuple[str, ...], argument: str = "--out") -> Path:
    """An image path that can be written: a known suffix, a writable directory, and nothing there unless
    `overwrite` and it is a figure dlnode wrote."""
    suffix = as_path(path, argument).suffix.lower()
    own = ("a figure dlnode wrote" if suffix in MARKED_FIGURES or suffix not in suffixes else
           f"a figure dlnode wrote (a {suffix} file holds no metadata to mark it by, so dlnode never replaces one)")  # fmt: skip
    return check_output_path(path, overwrite, suffixes, argument, is_dlnode_figure, own=own)


def check_output_folder(path: Any, argument: str = "--out") -> Path:
    """A folder to write into: an existing directory, or one that can be created (its first existing ancestor is a
    writable directory). Nothing is created here."""
    path = as_path(path, argument)
    if path.exists() and not path.is_dir():
        fail(argument, "must be a directory (or a path where one can be made)", shown(f"{str(path)!r}, a file"),
             "choose a folder, e.g. -o results", kind=PathError)  # fmt: skip
    probe = path
    while not probe.exists():
        if probe.is_symlink() or probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        fail(argument, "must be a directory (or a path where one can be made)",
             shown(f"{str(path)!r}: {str(probe)!r} is not a directory"), "choose another folder",
             kind=PathError)  # fmt: skip
    if not os.access(probe, os.W_OK | os.X_OK):
        fail(argument, "must be in a writable directory", shown(f"{str(path)!r}: {str(probe)!r} is not writable"),
             "choose a directory you can write to", kind=PathError)  # fmt: skip
    return path
