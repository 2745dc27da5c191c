"""NumPy files: `.npz` archives (read into memory) and `.npy` files (read a batch at a time).

Neither unpickles: ``allow_pickle=False`` always, so object arrays are refused.
"""

from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np

from fntrain.data import lazy
from fntrain.data.checks import Part
from fntrain.data.errors import DataError
from fntrain.data.sources import Arrays

__all__ = ["SPLIT_NAMES", "load_npy", "load_npz", "npz_parts"]

SPLIT_NAMES = ("train", "val", "test")
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)


def _open_npz(path: str):
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found; expected an .npz archive")
    size = os.path.getsize(path)
    if size == 0:
        raise DataError(f"{path}: empty file (0 bytes); expected an .npz archive written by np.savez")
    with open(path, "rb") as f:
        start = f.read(6)
    if start.startswith(b"\x93NUMPY"):
        raise DataError(f"{path}: a .npy file (one array), not an .npz archive; for one file per array use "
                        "data.name: npy (x_path, y_path), or save both arrays with np.savez")
    if not start.startswith(b"PK"):
        raise DataError(f"{path}: not an .npz archive (a zip file): it starts with {start!r}; expected a file "
                        "written by np.savez")
    try:
        return np.load(path, allow_pickle=False)
    except _READ_ERRORS as e:
        raise DataError(f"{path}: could not be read as an .npz archive ({_detail(e)}); is it truncated or "
                        "damaged? Write it again with np.savez") from None


def _detail(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _member(archive, path: str, key: str) -> np.ndarray:
    try:
        return archive[key]
    except _READ_ERRORS as e:
        if "pickle" in str(e):
            raise DataError(f"{path}: array {key!r} holds Python objects, which cannot be read without pickle "
                            "(disabled); store numbers") from None
        raise DataError(f"{path}: array {key!r} could not be read ({_detail(e)}); the archive is damaged or "
                        "truncated") from None


def load_npz(path: str | os.PathLike, x_key: str = "x", y_key: str = "y") -> Arrays:
    """Load x and y arrays from a .npz archive (pickle disabled).

    Args:
      path: path to the .npz file.
      x_key: archive key of the inputs, [N, ...].
      y_key: archive key of the targets, [N, ...].

    Returns:
      Arrays with the stored dtypes and shapes.

    Raises:
      DataError: a missing, empty, truncated or damaged file, a `.npy` named `.npz`, a
        missing key, object arrays, or a length mismatch.
    """
    path = os.fspath(path)
    with _open_npz(path) as archive:
        keys = sorted(archive.files)
        missing = [k for k in (x_key, y_key) if k not in keys]
        if missing:
            raise DataError(f"{path}: missing key(s) {missing}; keys present: {keys}")
        x, y = _member(archive, path, x_key), _member(archive, path, y_key)
    _check_aligned(x, y, path, x_key, y_key)
    return Arrays(x=x, y=y)


def _check_aligned(x, y, where: str, x_name: str = "x", y_name: str = "y") -> None:
    if x.ndim == 0 or y.ndim == 0:
        raise DataError(f"{where}: {x_name} and {y_name} must have a leading example axis, got shapes "
                        f"{tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{where}: {x_name} has {x.shape[0]} examples but {y_name} has {y.shape[0]}; expected the "
                        "same leading length")


def npz_parts(path: str | os.PathLike, x_key: str = "x", y_key: str = "y") -> dict[str, Part]:
    """The splits an archive holds, as :class:`~fntrain.data.checks.Part` s.

    Training arrays are ``x_key``/``y_key`` or ``{x_key}_train``/``{y_key}_train``; a
    validation split ``{x_key}_val``/``{y_key}_val`` and a test split
    ``{x_key}_test``/``{y_key}_test`` are used as they are when present (MNIST-1D's
    ``x``, ``y``, ``x_test``, ``y_test`` give train and test).

    Raises:
      DataError: as ``load_npz``, plus a split with only one of its two arrays, or both
        ``x`` and ``x_train``.
    """
    path = os.fspath(path)
    with _open_npz(path) as archive:
        keys = sorted(archive.files)
        names = _split_keys(path, keys, x_key, y_key)
        parts = {}
        for split, (xk, yk) in names.items():
            x, y = _member(archive, path, xk), _member(archive, path, yk)
            _check_aligned(x, y, path, repr(xk), repr(yk))
            parts[split] = Part(Arrays(x, y), f"{path}: array {xk!r}", f"{path}: array {yk!r}")
    return parts


def _split_keys(path: str, keys: list[str], x_key: str, y_key: str) -> dict[str, tuple[str, str]]:
    names = {}
    for split in SPLIT_NAMES:
        pair = (f"{x_key}_{split}", f"{y_key}_{split}")
        present = [k for k in pair if k in keys]
        if len(present) == 1:
            other = next(k for k in pair if k not in keys)
            raise DataError(f"{path}: has {present[0]!r} but no {other!r}; a split needs both arrays "
                            f"(keys present: {keys})")
        if present:
            names[split] = pair
    plain = [k for k in (x_key, y_key) if k in keys]
    if "train" in names and plain:
        raise DataError(f"{path}: holds both {plain[0]!r} and {names['train'][0]!r}; expected one set of training "
                        f"arrays: rename or drop one (keys present: {keys})")
    if "train" not in names:
        missing = [k for k in (x_key, y_key) if k not in keys]
        if missing:
            raise DataError(f"{path}: missing key(s) {missing}; keys present: {keys}; expected training arrays "
                            f"{x_key!r}/{y_key!r} or {x_key + '_train'!r}/{y_key + '_train'!r}")
        names["train"] = (x_key, y_key)
    return {split: names[split] for split in SPLIT_NAMES if split in names}


def load_npy(x_path: str | os.PathLike, y_path: str | os.PathLike) -> Arrays:
    """Inputs and targets from two `.npy` files, read a batch at a time (nothing is loaded).

    Args:
      x_path: `.npy` of the inputs, ``[N, ...]``, C order.
      y_path: `.npy` of the targets, ``[N, ...]``.

    Returns:
      Arrays of :class:`~fntrain.data.lazy.RowView` s: indexing reads only the rows asked for.

    Raises:
      DataError: as :func:`~fntrain.data.lazy.open_npy`, or a length mismatch.
    """
    x, y = lazy.open_npy(x_path), lazy.open_npy(y_path)
    if len(x) != len(y):
        raise DataError(f"{os.fspath(x_path)} has {len(x)} rows but {os.fspath(y_path)} has {len(y)}; expected one "
                        "target row per input row")
    return Arrays(x, y)
