"""Files on disk, safely: output paths checked before any work, atomic writes, and what a zarr store lacks.

Nothing here knows the dataset schema (that is `dataset`); these are the rules for paths:

- an output path is checked before any work: a known suffix, an existing writable parent directory, and no
  existing file or directory unless the caller allows replacing it (and then only one of dlnode's own);
- a write goes to a hidden temporary sibling and is renamed into place, so an interrupted or failed write leaves
  the old file (or nothing) behind, never half a file; a zarr store (a directory) replaces another in one atomic
  exchange where the system has one (Linux), otherwise in two renames whose leftover after a kill is reported;
- a zarr store lists its chunk files, so a chunk that is missing is found instead of read as fill values.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import glob
import json
import math
import os
import secrets
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dlnode.errors import PathError, PathExistsError, PathMissingError, fail, shown

__all__ = [
    "DATASET_SUFFIXES",
    "atomic_path",
    "check_input_path",
    "check_output_path",
    "damaged_hdf5_array",
    "is_dlnode_store",
    "missing_chunks",
    "replacement_cut_short",
    "suffix_of",
]

DATASET_SUFFIXES = {".nc": "netcdf", ".zarr": "zarr"}
LABELS = {".nc": ".nc (netCDF)", ".zarr": ".zarr (zarr store)"}
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
FORMAT_ATTR = "dlnode_format"


def suffix_of(path: Path, suffixes: Sequence[str], argument: str, reading: bool = False) -> str:
    """The path's suffix (lower case) if it is one of `suffixes`; a one-line error otherwise (for a file to read,
    the fix is to pass one dlnode wrote, not to rename it)."""
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        names = " or ".join(LABELS.get(x, x) for x in suffixes)
        fix = (f"pass a dataset written by dlnode.save or dlnode run ({names}); dlnode reads no other format"
               if reading else f"name it e.g. {path.stem or 'out'}{suffixes[0]}")  # fmt: skip
        fail(argument, f"must end in {names}", str(path), fix)
    return suffix


def as_path(path: Any, argument: str = "path") -> Path:
    """`path` as a `Path` (a str or an os.PathLike); a one-line error for anything else (a number, None)."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        fail(argument, "must be a path (a str or a pathlib.Path)", shown(f"{type(path).__name__} {path!r}"),
             f"pass e.g. {argument}='run.nc'")  # fmt: skip
    return Path(os.fspath(path)).expanduser()


def check_input_path(path: Any, argument: str = "path") -> tuple[Path, str]:
    """An existing dataset path: (path, "netcdf" | "zarr"); netCDF is a file, zarr a directory."""
    path = as_path(path, argument)
    kind = DATASET_SUFFIXES[suffix_of(path, tuple(DATASET_SUFFIXES), argument, reading=True)]
    replacement_cut_short(path, argument)
    if not path.exists():
        fail(
            argument,
            "does not exist",
            None,
            "check the path",
            PathMissingError,
            text=f"{argument} does not exist: {str(path)!r}",
        )
    if kind == "netcdf" and path.is_dir():
        fail(argument, "is a directory, not a netCDF file", str(path), "pass the .nc file itself", kind=PathError)
    if kind == "zarr" and not path.is_dir():
        fail(argument, "is a file, not a zarr store (a directory)", str(path), "pass the .zarr directory", PathError)
    return path, kind


def check_output_path(
    path: Any,
    overwrite: bool = False,
    suffixes: Sequence[str] = tuple(DATASET_SUFFIXES),
    argument: str = "path",
    replaceable: Callable[[Path], bool] | None = None,
    make_parents: bool = False,
    own: str = "a dlnode dataset",
) -> Path:
    """Check, before any work, that `path` can be written: a known suffix, an existing writable parent, and no
    existing entry unless `overwrite` (then it must be a file, or what `replaceable` accepts: one that dlnode
    wrote, described by `own` in the error)."""
    path = as_path(path, argument)
    suffix_of(path, suffixes, argument)
    replacement_cut_short(path, argument)
    parent = path.parent if str(path.parent) else Path(".")
    if make_parents and not parent.exists() and not parent.is_symlink():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = shown(f"{str(parent)!r}: {exc.strerror or exc}")
            fail(argument, "must be in a directory that can be created", why, "choose another path", kind=PathError)
    if not parent.is_dir():
        why = "is not a directory" if parent.exists() else "does not exist"
        fail(
            argument,
            "must be in an existing directory",
            shown(f"{str(path)!r}: {str(parent)!r} {why}"),
            f"create the directory first (mkdir -p {parent}) or choose another path",
            kind=PathError,
        )
    try:
        with open(parent / f".{path.name}.probe-{secrets.token_hex(4)}", "wb") as probe:
            pass
        os.unlink(probe.name)
    except OSError as exc:
        fail(
            argument,
            "must be in a writable directory",
            shown(f"{str(parent)!r}: {exc.strerror or exc}"),
            "choose a directory you can write to",
            kind=PathError,
        )
    if path.exists() or path.is_symlink():
        if not overwrite:
            fail(
                argument,
                "already exists",
                str(path),
                "pass overwrite=True (CLI: --overwrite) to replace it, or choose another path",
                kind=PathExistsError,
            )
        ok = path.is_file() if replaceable is None else replaceable(path)
        if not ok:
            what = "a directory" if path.is_dir() else "a file"
            fail(
                argument,
                f"exists and is not {own}, so it is not replaced even with overwrite",
                shown(f"{str(path)!r} ({what})"),
                "move it away yourself or choose another path",
                kind=PathExistsError,
            )
    return path


def is_dlnode_store(path: Path) -> bool:
    """Whether `path` is a file or zarr store that dlnode wrote (its root attrs carry ``dlnode_format``)."""
    if path.is_symlink():
        return False
    if path.is_dir():
        return _zarr_root_attrs(path).get(FORMAT_ATTR) is not None
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            if f.read(8) != HDF5_SIGNATURE:
                return False
        import h5py

        with h5py.File(path, "r") as h5:
            return h5.attrs.get(FORMAT_ATTR) is not None
    except (OSError, ValueError):
        return False


def damaged_hdf5_array(path: Path) -> str | None:
    """The name of the first array of an HDF5 (netCDF-4) file that cannot be read whole (a chunk that fails its
    checksum or its filter), or None if every array reads (or the file does not open at all)."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            names: list[str] = []
            h5.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            for name in names:
                try:
                    h5[name][()]
                except (OSError, ValueError, RuntimeError):
                    return name
    except (OSError, ValueError, RuntimeError):
        return None
    return None


def _zarr_root_attrs(path: Path) -> dict:
    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        try:
            meta = json.loads((path / name).read_text())
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(meta, dict):
            attrs = meta.get(key, {}) if key else meta
            return attrs if isinstance(attrs, dict) else {}
    return {}


@contextlib.contextmanager
def atomic_path(path: Path, argument: str = "path", replace: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary sibling of `path` to write; on success it takes `path`'s place in one rename
    (a directory: the old one is moved aside first and removed last), on any failure or interrupt it is removed.

    Unless `replace`, the last step never clobbers: if `path` appeared while the data were written (another
    process), `PathExistsError` is raised and nothing is replaced. The sibling keeps `path`'s suffix, so writers
    that choose a format by suffix (matplotlib) still work.
    """
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = path.with_name(f".{path.stem}{PARTIAL}{token}{path.suffix}")
    try:
        try:
            yield tmp
            if replace:
                _replace(tmp, path, token)
            else:
                _place(tmp, path, argument)
        except OSError as exc:
            if isinstance(exc, PathError):
                raise
            fail(
                argument,
                "could not be written",
                shown(f"{str(path)!r}: {exc.strerror or exc}"),
                "check the free disk space and the permissions",
                kind=PathError,
            )
    finally:
        _remove(tmp)


def _place(tmp: Path, path: Path, argument: str) -> None:
    """Move `tmp` to `path`, which must not exist (a hard link is the atomic no-clobber rename for files)."""
    try:
        if tmp.is_dir():
            if path.exists() or path.is_symlink():
                raise FileExistsError(path)
            os.rename(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links
                if path.exists() or path.is_symlink():
                    raise FileExistsError(path) from None
                os.replace(tmp, path)
    except FileExistsError:
        fail(
            argument,
            "appeared while the data were written, and is not replaced",
            str(path),
            "pass overwrite=True (CLI: --overwrite) to replace it, or choose another path",
            PathExistsError,
        )


def _replace(tmp: Path, path: Path, token: str) -> None:
    """Put `tmp` in `path`'s place. Files, or a directory onto nothing: one rename. A directory onto a directory:
    one atomic exchange where the system has one (the old store ends in `tmp`, removed by the caller); otherwise
    two renames through a hidden sibling, whose leftover after a kill between them `replacement_cut_short` finds.
    """
    if not tmp.is_dir() or not path.is_dir():
        os.replace(tmp, path)  # atomic for files (and for a directory onto nothing)
        return
    if _exchange(tmp, path):
        return
    aside = path.with_name(f".{path.stem}{ASIDE}{token}{path.suffix}")
    os.rename(path, aside)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(aside, path)
        raise
    shutil.rmtree(aside, ignore_errors=True)


ASIDE = ".replaced-"  # the hidden sibling a replaced store waits in between the two renames of the fallback
PARTIAL = ".partial-"
RENAME_EXCHANGE = 2  # linux/fs.h: swap two existing paths atomically
AT_FDCWD = -100
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM}


def _exchange(a: Path, b: Path) -> bool:
    """Swap `a` and `b` in one step (Linux renameat2 with RENAME_EXCHANGE): True if done, False where the system
    or the file system has no such call (then nothing changed)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), str(b))


@functools.cache
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def replacement_cut_short(path: Path, argument: str = "path") -> None:
    """If `path` is missing because a replacement of it was killed between its two renames (the fallback of
    `_replace`), say in one line where the previous store and the new one are and how to put one back."""
    if path.exists() or path.is_symlink() or not path.parent.is_dir():
        return
    asides = sorted(path.parent.glob(f".{glob.escape(path.stem)}{ASIDE}*{glob.escape(path.suffix)}"))
    if not asides:
        return
    aside = asides[-1]
    token = aside.name[len(f".{path.stem}{ASIDE}") : len(aside.name) - len(path.suffix)]
    new = path.with_name(f".{path.stem}{PARTIAL}{token}{path.suffix}")
    where = f"the previous store is in {aside.name!r}" + (f", the new one in {new.name!r}" if new.is_dir() else "")
    fix = f"put one back: mv {shlex.quote(str(aside))} {shlex.quote(str(path))}"
    if new.is_dir():
        fix += f" (or {shlex.quote(str(new))} for the new one)"
    fail(argument, "is missing", shown(where), fix, PathMissingError,
         text=f"{argument} {str(path)!r} is missing: a replacement of it was cut short (killed between its two "
         "renames)")  # fmt: skip


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        with contextlib.suppress(OSError):
            path.unlink()


def missing_chunks(path: Path) -> dict[str, list[tuple[slice, ...]]]:
    """For each array of a local zarr store, the index regions of the chunks (or shards) that have no file."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    out: dict[str, list[tuple[slice, ...]]] = {}
    for name, arr in group.arrays():
        unit = getattr(arr, "shards", None) or arr.chunks
        grid = [math.ceil(n / c) if c else 0 for n, c in zip(arr.shape, unit, strict=True)]
        folder = path / name
        stored = {str(p.relative_to(folder)).replace(os.sep, "/") for p in folder.rglob("*") if p.is_file()}
        gaps = []
        for coords in _grid(grid):
            if arr.metadata.encode_chunk_key(coords) not in stored:
                gaps.append(tuple(slice(i * c, (i + 1) * c) for i, c in zip(coords, unit, strict=True)))
        if gaps:
            out[name] = gaps
    return out


def _grid(shape: list[int]) -> Iterator[tuple[int, ...]]:
    import itertools

    return itertools.product(*(range(n) for n in shape))
