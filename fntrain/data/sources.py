"""Data sources: embedded, synthetic and file loaders returning `Arrays`.

Every loader returns numpy arrays; nothing here downloads or unpickles.
"""

from __future__ import annotations

import csv
import gzip
import os
import struct
from typing import NamedTuple

import numpy as np

from fntrain.data.errors import DataError

__all__ = [
    "Arrays",
    "DataError",
    "load_digits",
    "make_classification",
    "make_regression",
    "load_npz",
    "read_idx",
    "load_idx",
    "load_csv",
]


class Arrays(NamedTuple):
    """A dataset as a pair of aligned arrays.

    Attributes:
        x: [N, ...] inputs.
        y: [N, ...] targets.
    """

    x: np.ndarray
    y: np.ndarray

    @property
    def num_examples(self) -> int:
        """N, the number of examples."""
        return int(self.x.shape[0])


def _check_aligned(x: np.ndarray, y: np.ndarray, where: str) -> None:
    if x.ndim == 0 or y.ndim == 0:
        raise DataError(f"{where}: x and y must have a leading example axis, "
                        f"got x.shape={x.shape}, y.shape={y.shape}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{where}: x has {x.shape[0]} examples but y has "
                        f"{y.shape[0]}; expected the same leading length")


# --- embedded / synthetic -------------------------------------------------


def load_digits() -> Arrays:
    """scikit-learn's embedded 8x8 handwritten digits (no download).

    Returns:
        Arrays with x: [1797, 8, 8, 1] float32 in [0, 1] and
        y: [1797] int32 in 0..9.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    return Arrays(x=x, y=bunch.target.astype(np.int32))


def make_classification(
    num_examples: int = 1000,
    num_features: int = 20,
    num_classes: int = 3,
    *,
    seed: int = 0,
    class_sep: float = 2.0,
) -> Arrays:
    """Gaussian-cluster classification data, one unit-variance cluster per class.

    Class centers are drawn from N(0, class_sep^2 / num_features) per feature
    so that the expected distance between centers is about class_sep * sqrt(2)
    regardless of num_features. Labels are balanced up to rounding and shuffled.

    Args:
        num_examples: N, number of examples.
        num_features: F, input dimension.
        num_classes: C, number of classes (>= 2).
        seed: numpy generator seed; same seed gives identical data.
        class_sep: scale of the class centers; larger is easier.

    Returns:
        Arrays with x: [N, F] float32 and y: [N] int32 in 0..C-1.
    """
    if num_examples < 1 or num_features < 1:
        raise DataError(f"make_classification: num_examples and num_features must "
                        f"be >= 1, got {num_examples} and {num_features}")
    if num_classes < 2:
        raise DataError(f"make_classification: num_classes must be >= 2, got {num_classes}")
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, class_sep / np.sqrt(num_features),
                         size=(num_classes, num_features))
    y = rng.permutation(np.arange(num_examples) % num_classes)
    x = centers[y] + rng.normal(size=(num_examples, num_features))
    return Arrays(x=x.astype(np.float32), y=y.astype(np.int32))


def make_regression(
    num_examples: int = 1000,
    num_features: int = 8,
    num_outputs: int = 1,
    *,
    noise: float = 0.1,
    seed: int = 0,
) -> Arrays:
    """Linear regression data plus a mild sinusoidal nonlinearity.

    y = x @ W + b + 0.1 * sin(x[:, :1]) + noise * eps, with x, eps ~ N(0, 1),
    W ~ N(0, 1/F) and b ~ N(0, 1). The sin term (same for every output) keeps
    the task from being exactly linear without dominating it.

    Args:
        num_examples: N, number of examples.
        num_features: F, input dimension.
        num_outputs: O, target dimension.
        noise: standard deviation of the additive Gaussian noise.
        seed: numpy generator seed; same seed gives identical data.

    Returns:
        Arrays with x: [N, F] float32 and y: [N, O] float32.
    """
    if num_examples < 1 or num_features < 1 or num_outputs < 1:
        raise DataError(f"make_regression: num_examples, num_features and num_outputs "
                        f"must be >= 1, got {num_examples}, {num_features}, {num_outputs}")
    if noise < 0:
        raise DataError(f"make_regression: noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 1.0 / np.sqrt(num_features), size=(num_features, num_outputs))
    b = rng.normal(size=(num_outputs,))
    x = rng.normal(size=(num_examples, num_features))
    y = x @ w + b + 0.1 * np.sin(x[:, :1]) + noise * rng.normal(size=(num_examples, num_outputs))
    return Arrays(x=x.astype(np.float32), y=y.astype(np.float32))


# --- npz -------------------------------------------------------------------


def load_npz(path: str | os.PathLike, x_key: str = "x", y_key: str = "y") -> Arrays:
    """Load x and y arrays from a .npz archive (pickle disabled).

    Args:
        path: path to the .npz file.
        x_key: archive key of the inputs, [N, ...].
        y_key: archive key of the targets, [N, ...].

    Returns:
        Arrays with the stored dtypes and shapes.

    Raises:
        DataError: missing/unreadable file, missing key, or length mismatch.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found; expected an .npz archive")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = sorted(archive.files)
            missing = [k for k in (x_key, y_key) if k not in keys]
            if missing:
                raise DataError(f"{path}: missing key(s) {missing}; keys present: {keys}")
            x, y = archive[x_key], archive[y_key]
    except DataError:
        raise
    except (ValueError, OSError) as e:  # not a zip, or object arrays needing pickle
        raise DataError(f"{path}: could not read as .npz without pickle: {e}") from e
    _check_aligned(x, y, path)
    return Arrays(x=x, y=y)


# --- IDX (MNIST) -----------------------------------------------------------

_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_maybe_gzip(path: str) -> bytes:
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        raw = f.read()
    # Sniff the magic bytes: MNIST mirrors are inconsistent about ".gz" names.
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt or truncated gzip stream: {e}") from e
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or plain.

    Header: two zero bytes, a dtype code, ndim, then ndim big-endian uint32
    dimension sizes, then the big-endian data.

    Args:
        path: path to the IDX file; gzip is detected from its first bytes.

    Returns:
        Array of the stored shape, converted to native byte order.

    Raises:
        DataError: missing file, bad magic number, or truncated data.
    """
    path = os.fspath(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4:
        raise DataError(f"{path}: file has {len(raw)} bytes; expected at least a "
                        f"4-byte IDX magic number")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _IDX_DTYPES:
        raise DataError(f"{path}: bad IDX magic number 0x{raw[:4].hex()}; expected "
                        f"0x0000 then a dtype code in "
                        f"{[hex(c) for c in _IDX_DTYPES]} and ndim")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(f"{path}: truncated IDX header; expected {ndim} dimension "
                        f"sizes ({header_len} bytes) but file has {len(raw)} bytes")
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = len(raw) - header_len
    if have != expected:
        kind = "truncated" if have < expected else "trailing bytes in"
        raise DataError(f"{path}: {kind} IDX data; shape {shape} of {dtype.name} needs "
                        f"{expected} bytes but {have} follow the header")
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def load_idx(images_path: str | os.PathLike, labels_path: str | os.PathLike) -> Arrays:
    """Load an IDX image/label pair such as MNIST.

    Args:
        images_path: IDX file of images, [N, H, W] (or [N, H, W, C]).
        labels_path: IDX file of labels, [N].

    Returns:
        Arrays with x: [N, H, W, 1] float32 (uint8 images scaled to [0, 1];
        4-D images keep their channel axis) and y: [N] int32.

    Raises:
        DataError: unreadable files, unexpected ranks, or count mismatch.
    """
    images_path, labels_path = os.fspath(images_path), os.fspath(labels_path)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim not in (3, 4):
        raise DataError(f"{images_path}: images have shape {images.shape}; "
                        f"expected [N, H, W] or [N, H, W, C]")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: labels have shape {labels.shape}; expected [N]")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} has {images.shape[0]} images but "
                        f"{labels_path} has {labels.shape[0]} labels; expected equal counts")
    x = images.astype(np.float32)
    if images.dtype == np.uint8:
        x /= 255.0
    if x.ndim == 3:
        x = x[..., None]
    return Arrays(x=x, y=labels.astype(np.int32))


# --- CSV -------------------------------------------------------------------


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def load_csv(
    path: str | os.PathLike,
    *,
    target_column: int | str = -1,
    header: bool | None = None,
    delimiter: str = ",",
    target_dtype: str = "int",
) -> Arrays:
    """Load a numeric CSV table, one example per row.

    Args:
        path: path to the CSV file. Blank lines are skipped.
        target_column: index (negative counts from the end) or header name of
            the target column; every other column is a feature.
        header: True if the first row is a header, False if not, None to
            auto-detect (header iff some first-row field is non-numeric).
        delimiter: field separator.
        target_dtype: "int" for class labels or "float" for regression.

    Returns:
        Arrays with x: [N, F] float32 and y: [N] int32 ("int") or
        [N, 1] float32 ("float").

    Raises:
        DataError: missing file, bad options, ragged rows, or a non-numeric
            cell (message gives path, line and column).
    """
    path = os.fspath(path)
    if target_dtype not in ("int", "float"):
        raise DataError(f"load_csv: target_dtype must be 'int' or 'float', got {target_dtype!r}")
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found; expected a CSV file")
    with open(path, newline="") as f:
        rows = [(i, r) for i, r in enumerate(csv.reader(f, delimiter=delimiter), start=1)
                if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path}: no rows; expected a CSV table")

    if header is None:
        header = not all(_is_number(c) for c in rows[0][1])
    names = [c.strip() for c in rows[0][1]] if header else None
    body = rows[1:] if header else rows
    if not body:
        raise DataError(f"{path}: no data rows after the header")

    width = len(names) if names is not None else len(body[0][1])
    for line, r in body:
        if len(r) != width:
            raise DataError(f"{path}: line {line} has {len(r)} fields; expected {width}")
    if width < 2:
        raise DataError(f"{path}: {width} column(s); expected at least one feature "
                        f"column and a target column")

    if isinstance(target_column, str):
        if names is None:
            raise DataError(f"{path}: target_column={target_column!r} is a name but the "
                            f"file has no header row; pass an int index or header=True")
        if target_column not in names:
            raise DataError(f"{path}: no column named {target_column!r}; columns: {names}")
        t = names.index(target_column)
    else:
        t = int(target_column)
        if not -width <= t < width:
            raise DataError(f"{path}: target_column={t} out of range for {width} columns")
        t %= width

    values = np.empty((len(body), width), dtype=np.float64)
    for i, (line, r) in enumerate(body):
        for j, cell in enumerate(r):
            try:
                values[i, j] = float(cell)
            except ValueError:
                col = f"{j + 1} ({names[j]!r})" if names is not None else f"{j + 1}"
                raise DataError(f"{path}: line {line}, column {col}: non-numeric "
                                f"value {cell!r}; expected a number") from None

    x = np.delete(values, t, axis=1).astype(np.float32)
    target = values[:, t]
    if target_dtype == "int":
        if not np.all(np.isfinite(target)) or np.any(target != np.round(target)):
            bad = int(np.flatnonzero(~np.isfinite(target) | (target != np.round(target)))[0])
            raise DataError(f"{path}: line {body[bad][0]}: target {body[bad][1][t]!r} is "
                            f"not an integer; expected class labels or target_dtype='float'")
        y = target.astype(np.int32)
    else:
        y = target.astype(np.float32)[:, None]
    return Arrays(x=x, y=y)
