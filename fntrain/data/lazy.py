"""Arrays larger than memory: `.npy` files whose rows are read a batch at a time.

A :class:`RowView` is an ``[n, ...]`` array that is never held whole: rows ``index`` of a
`.npy` file, read when asked for (``view[rows]``, ``view[a:b]``) and passed through the
view's row-wise transforms (dtype casts, standardization). Splitting (:func:`take`),
casting and standardizing (:func:`transform`) compose lazily, so such a dataset is split,
standardized and batched without being read whole: each batch reads its own rows, a
multi-host run's process reads only its rows, and the data position stays ``(epoch,
offset)`` into the same index as for data in memory.

The file is opened with ``np.load(mmap_mode="r")``, which reads and checks its header;
rows are then read with ``pread`` rather than through the map. On Linux a page fault in a
file map maps the whole page-cache folio around it, so random rows read through a map grow
the resident set toward the file's size (measured on a 1.5 GB file: 400 batches of 128
random rows left 1.5 GB resident through the map, 34 MB with ``pread``, at a similar
rate). Page-cache pages that ``pread`` copies from stay out of the process's memory.

Helpers take either a plain ``np.ndarray`` (data in memory, handled as before) or a view.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Callable, Iterator

import numpy as np

from fntrain.data.errors import DataError

__all__ = ["NpyFile", "RowView", "blocks", "is_lazy", "open_npy", "take", "transform"]

BLOCK_BYTES = 32 << 20  # streaming passes (checks, statistics) read about this much at a time
# A file this small (labels, mostly) is read once into memory: a pread per 4-byte label would
# cost as much as one per 3 KB image.
SMALL_FILE_BYTES = 16 << 20


class NpyFile:
    """A C-ordered `.npy` file opened for reading rows with ``pread``.

    Files of at most ``SMALL_FILE_BYTES`` (16 MiB) are read into memory once instead.

    Attributes:
      path: the file.
      shape: ``[N, ...]`` as stored.
      dtype: the stored dtype in native byte order (what reads return).
      offset: bytes before the data (the header).
    """

    def __init__(self, path: str | os.PathLike):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise DataError(f"{path}: file not found; expected a .npy file")
        mapped = _open_map(path)
        if mapped.ndim == 0:
            raise DataError(f"{path}: holds a scalar of shape (); expected an array [N, ...] with one row per example")
        if mapped.ndim > 1 and not mapped.flags.c_contiguous:
            raise DataError(
                f"{path}: array of shape {mapped.shape} is stored in Fortran order, so its rows are not contiguous; "
                "expected C order: re-save it with np.save(path, np.ascontiguousarray(a))"
            )
        self.path = path
        self.shape = tuple(int(d) for d in mapped.shape)
        self.file_dtype = mapped.dtype
        self.dtype = mapped.dtype.newbyteorder("=")
        self.offset = int(mapped.offset)
        self.row_bytes = math.prod(self.shape[1:]) * self.file_dtype.itemsize
        small = self.row_bytes * self.shape[0] <= SMALL_FILE_BYTES
        self._memory = np.array(mapped, dtype=self.dtype) if small else None
        del mapped  # unmapped: rows are read with pread from here on
        self._open()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)

    def __getstate__(self):  # a worker process reopens the file rather than sharing a descriptor
        return {k: v for k, v in self.__dict__.items() if k != "_fd"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, rows: np.ndarray) -> np.ndarray:
        """``[len(rows), ...]``: the given rows (any order, repeats allowed); consecutive rows
        are read at once, others one ``pread`` each (random rows of 3 KB: ~1,300 batches of
        128 a second on one core, against ~600 reading into slices of one buffer)."""
        rows = np.asarray(rows, np.int64)
        if self._memory is not None:
            return self._memory[rows]
        if len(rows) and np.all(np.diff(rows) == 1):
            return self.read_range(int(rows[0]), int(rows[-1]) + 1)
        size, base, fd = self.row_bytes, self.offset, self._fd
        data = bytearray().join([os.pread(fd, size, base + r * size) for r in rows.tolist()])
        if len(data) != len(rows) * size:
            raise DataError(f"{self.path}: file ended early; it was truncated while in use")
        # A copy into NumPy's own (aligned) memory: device_put of an array over a bytearray
        # costs ~2 ms per 400 KB batch on XLA:CPU, of a copy ~40 us.
        out = np.frombuffer(data, self.file_dtype).reshape(len(rows), *self.shape[1:])
        return out.copy() if self.file_dtype.isnative else out.astype(self.dtype)

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """``[stop - start, ...]``: the contiguous rows ``start:stop``."""
        if self._memory is not None:
            return self._memory[start:stop].copy()
        out = np.empty((stop - start, *self.shape[1:]), self.file_dtype)
        if stop > start:
            self._pread(memoryview(out.reshape(-1).view(np.uint8)), start)
        return out if self.file_dtype.isnative else out.astype(self.dtype)

    def _pread(self, view: memoryview, row: int) -> None:
        position, done = self.offset + row * self.row_bytes, 0
        while done < len(view):
            n = os.preadv(self._fd, [view[done:]], position + done)
            if n == 0:
                raise DataError(f"{self.path}: file ended at byte {position + done}; it was truncated while in use")
            done += n


def _open_map(path: str) -> np.memmap:
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "mmap length is greater than file size" in detail:
            raise DataError(f"{path}: truncated: the file is shorter than the array its header declares; write it "
                            "again with np.save") from None
        raise DataError(f"{path}: could not be read as a .npy file without pickle ({detail}); expected an array "
                        f"written by np.save") from None
    if not isinstance(mapped, np.memmap):
        if hasattr(mapped, "close"):
            mapped.close()
        raise DataError(f"{path}: is an .npz archive, not a .npy file; use data.name: npz, or save each array "
                        "with np.save")
    return mapped


class RowView:
    """An ``[n, ...]`` array whose rows are read from a :class:`NpyFile` when indexed.

    ``view[rows]`` (an int array), ``view[a:b]`` and ``view[i]`` read just those rows and
    return NumPy arrays; ``take`` and ``map`` return new views without reading anything.

    Args:
      file: the file.
      index: ``[n]`` int64 file rows of this view, in order; None: all rows.
      transforms: row-wise functions ``f(block [b, ...]) -> [b, ...]`` applied in order to
        every block read (each output row depends on its input row only).
    """

    def __init__(self, file: NpyFile, index: np.ndarray | None = None, transforms: tuple[Callable, ...] = ()):
        self.file = file
        self.index = None if index is None else np.asarray(index, np.int64)
        self.transforms = tuple(transforms)
        probe = self._apply(np.zeros((0, *file.shape[1:]), file.dtype))
        self.dtype = probe.dtype
        self.shape = (len(file) if self.index is None else len(self.index), *probe.shape[1:])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        rows = "all rows" if self.index is None else f"{len(self)} rows"
        return f"RowView({self.file.path!r}, {rows}, shape={self.shape}, dtype={self.dtype})"

    def _apply(self, block: np.ndarray) -> np.ndarray:
        for fn in self.transforms:
            block = fn(block)
        return block

    def _file_rows(self, rows: np.ndarray) -> np.ndarray:
        return rows if self.index is None else self.index[rows]

    def _positions(self, key) -> np.ndarray:
        """``key`` (slice or int array) as ``[b]`` int64 positions into this view."""
        n = len(self)
        if isinstance(key, slice):
            return np.arange(*key.indices(n), dtype=np.int64)
        rows = np.asarray(key)
        if rows.dtype == bool or not np.issubdtype(rows.dtype, np.integer) or rows.ndim != 1:
            raise TypeError(f"RowView rows must be a slice or a 1-D int array, got {rows.dtype} of shape {rows.shape}")
        if len(rows) and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"RowView: row index out of range for {n} rows")
        return np.where(rows < 0, rows + n, rows).astype(np.int64)

    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            out = self[np.asarray([key])][0]
        else:
            out = self._apply(self.file.read(self._file_rows(self._positions(key))))
        return out[(slice(None), *rest)] if rest else out

    def __array__(self, dtype=None, copy=None):
        """Reads every row (for small data; the training loop never calls it)."""
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def take(self, rows: np.ndarray) -> "RowView":
        """The view of ``self``'s rows ``rows`` (positions into this view), nothing read."""
        return RowView(self.file, self._file_rows(self._positions(rows)), self.transforms)

    def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> "RowView":
        """The view with the row-wise ``fn`` applied after the current transforms."""
        return RowView(self.file, self.index, (*self.transforms, fn))

    def blocks(self, max_bytes: int | None = None) -> Iterator[np.ndarray]:
        """Every row of the view once, transformed, in blocks read in file order.

        For reductions (checks, statistics): a block holds the view's rows among a
        contiguous stretch of about ``max_bytes`` (None: ``BLOCK_BYTES``) of the file, so a
        split of random rows is read sequentially.
        """
        per = max(1, (max_bytes or BLOCK_BYTES) // max(self.file.row_bytes, 1))
        if self.index is None:
            for start in range(0, len(self.file), per):
                yield self._apply(self.file.read_range(start, min(start + per, len(self.file))))
            return
        ordered = np.sort(self.index)
        for start in range(0, len(self.file), per):
            lo, hi = np.searchsorted(ordered, [start, start + per])
            if hi > lo:
                wanted = ordered[lo:hi]
                chunk = self.file.read_range(int(wanted[0]), int(wanted[-1]) + 1)
                yield self._apply(chunk[wanted - wanted[0]])


def open_npy(path: str | os.PathLike) -> RowView:
    """A `.npy` file as a :class:`RowView` of all its rows (only the header is read).

    Raises:
      DataError: a missing file, one ``np.load`` cannot map without pickle (object
        arrays, a damaged header, a file shorter than its header says), an ``.npz``, a
        scalar, or a Fortran-ordered array.
    """
    return RowView(NpyFile(path))


def is_lazy(a) -> bool:
    """Whether ``a`` is a :class:`RowView` (read on demand) rather than an array in memory."""
    return isinstance(a, RowView)


def take(a, rows: np.ndarray):
    """Rows ``rows`` of ``a``: a copy for an array in memory, a view (nothing read) for a RowView."""
    return a.take(rows) if is_lazy(a) else a[rows]


def transform(a, fn: Callable[[np.ndarray], np.ndarray]):
    """``fn(a)`` for an array in memory; a view applying the row-wise ``fn`` for a RowView."""
    return a.map(fn) if is_lazy(a) else fn(a)


def blocks(a, max_bytes: int | None = None) -> Iterator[np.ndarray]:
    """Every row of ``a`` once, in blocks of about ``max_bytes`` (None: ``BLOCK_BYTES``; in
    memory: slices of ``a``)."""
    if is_lazy(a):
        yield from a.blocks(max_bytes)
        return
    per = max(1, (max_bytes or BLOCK_BYTES) // max(a[:1].nbytes, 1))
    for start in range(0, len(a), per):
        yield a[start : start + per]
