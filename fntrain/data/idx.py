"""IDX files (the MNIST format), gzipped or plain, read no further than their header declares."""

from __future__ import annotations

import math
import os
import struct
import zlib

import numpy as np

from fntrain.data.errors import DataError
from fntrain.data.sources import Arrays

__all__ = ["load_idx", "read_idx"]

_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_READ = 1 << 20


class _Stream:
    """The bytes of a file, gunzipped if it starts with gzip's magic, read on demand.

    MNIST mirrors are inconsistent about ".gz" names, so gzip is sniffed, not guessed.
    """

    def __init__(self, path: str):
        self.path = path
        self.file = open(path, "rb")
        self.gzip = self.file.read(2) == b"\x1f\x8b"
        self.file.seek(0)
        self.inflate = zlib.decompressobj(wbits=31) if self.gzip else None
        self.pending = b""

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the data)."""
        if not self.gzip:
            return self.file.read(n)
        out = [self.pending[:n]]
        self.pending, have = self.pending[n:], len(out[0])
        while have < n:
            chunk = self._inflate(n - have)
            if not chunk:
                break
            out.append(chunk)
            have += len(chunk)
        return b"".join(out)

    def _inflate(self, limit: int) -> bytes:
        """At most ``limit`` more decompressed bytes; never inflates past them (a gzip bomb
        costs only what the header declared)."""
        while True:
            if self.inflate.unconsumed_tail:
                return self._decompress(self.inflate.unconsumed_tail, limit)
            if self.inflate.eof:
                rest = self.inflate.unused_data
                if not rest.startswith(b"\x1f\x8b"):
                    return b""
                self.inflate = zlib.decompressobj(wbits=31)  # a second gzip member
                return self._decompress(rest, limit)
            data = self.file.read(_READ)
            if not data:
                raise DataError(f"{self.path}: corrupt or truncated gzip stream: it ends before its data does")
            out = self._decompress(data, limit)
            if out:
                return out

    def _decompress(self, data: bytes, limit: int) -> bytes:
        try:
            return self.inflate.decompress(data, limit)
        except zlib.error as e:
            raise DataError(f"{self.path}: corrupt or truncated gzip stream: {e}") from None

    def close(self) -> None:
        self.file.close()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or plain.

    Header: two zero bytes, a dtype code, ndim, then ndim big-endian uint32 dimension
    sizes, then the big-endian data. The data is read (and decompressed) only up to the
    size the header declares plus one byte, so a gzip bomb is refused after that much.

    Args:
      path: path to the IDX file; gzip is detected from its first bytes.

    Returns:
      Array of the stored shape, converted to native byte order.

    Raises:
      DataError: missing file, bad magic number, truncated data or trailing bytes.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    stream = _Stream(path)
    try:
        return _read(stream, path)
    finally:
        stream.close()


def _read(stream: _Stream, path: str) -> np.ndarray:
    magic = stream.read(4)
    if len(magic) < 4:
        raise DataError(f"{path}: file has {len(magic)} bytes; expected at least a 4-byte IDX magic number")
    zero, code, ndim = struct.unpack(">HBB", magic)
    if zero != 0 or code not in _IDX_DTYPES:
        raise DataError(f"{path}: bad IDX magic number 0x{magic.hex()}; expected 0x0000 then a dtype code in "
                        f"{[hex(c) for c in _IDX_DTYPES]} and ndim")
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header; expected {ndim} dimension sizes ({4 + 4 * ndim} bytes) "
                        f"but file has {4 + len(dims)} bytes")
    shape = struct.unpack(f">{ndim}I", dims)
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if not stream.gzip:
        have = os.path.getsize(path) - 4 - 4 * ndim
        if have != expected:
            _size_error(path, shape, dtype, expected, have)
    data = stream.read(expected + 1)
    if len(data) != expected:
        _size_error(path, shape, dtype, expected, len(data), more=len(data) > expected and stream.gzip)
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _size_error(path, shape, dtype, expected, have, more=False):
    if have < expected:
        raise DataError(f"{path}: truncated IDX data; shape {shape} of {dtype.name} needs {expected} bytes but "
                        f"{have} follow the header")
    if more:
        raise DataError(f"{path}: the gzip stream decompresses to more than the {expected} bytes its IDX header "
                        f"declares (shape {shape} of {dtype.name}); stopped there: a damaged file or a gzip bomb")
    raise DataError(f"{path}: trailing bytes in IDX data; shape {shape} of {dtype.name} needs {expected} bytes but "
                    f"{have} follow the header")


def load_idx(images_path: str | os.PathLike, labels_path: str | os.PathLike) -> Arrays:
    """Load an IDX image/label pair such as MNIST.

    Args:
      images_path: IDX file of images, [N, H, W] (or [N, H, W, C]).
      labels_path: IDX file of labels, [N]: integers, or floats that are whole numbers.

    Returns:
      Arrays with x: [N, H, W, 1] float32 (uint8 images scaled to [0, 1]; 4-D images
      keep their channel axis) and y: [N] int32.

    Raises:
      DataError: unreadable files, unexpected ranks, count mismatch, or a label that is
        not a whole number (named with its row).
    """
    images_path, labels_path = os.fspath(images_path), os.fspath(labels_path)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim not in (3, 4):
        raise DataError(f"{images_path}: images have shape {images.shape}; expected [N, H, W] or [N, H, W, C]")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: labels have shape {labels.shape}; expected [N]")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels; "
                        "expected equal counts")
    if labels.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
        if len(bad):
            raise DataError(f"{labels_path}: row {bad[0]}: label {labels[bad[0]]!s}; expected whole-number class "
                            "labels (this file stores floats, which would be truncated)")
        if len(labels) and np.abs(labels).max() >= 2**31:
            r = int(np.argmax(np.abs(labels)))
            raise DataError(f"{labels_path}: row {r}: label {labels[r]!s}; expected class labels below 2**31")
    x = images.astype(np.float32)
    if images.dtype == np.uint8:
        x /= 255.0
    if x.ndim == 3:
        x = x[..., None]
    return Arrays(x=x, y=labels.astype(np.int32))
