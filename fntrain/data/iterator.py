"""Resumable shuffled batch streams and sequential evaluation batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple, Optional

import jax
import numpy as np

from fntrain.data.errors import DataError
from fntrain.data.sources import Arrays

__all__ = ["IteratorState", "BatchIterator", "eval_batches", "example_weights", "gather_batch", "pad_batch", "pad_rows"]

Batch = tuple[np.ndarray, np.ndarray]


class IteratorState(NamedTuple):
    """Position of the NEXT batch of a BatchIterator.

    Attributes:
        epoch: epoch index (plain int).
        offset: index into that epoch's permutation where the next batch starts.
    """

    epoch: int = 0
    offset: int = 0

    def to_dict(self) -> dict[str, int]:
        """JSON-ready dict."""
        return {"epoch": int(self.epoch), "offset": int(self.offset)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IteratorState":
        """Inverse of `to_dict`."""
        try:
            return cls(epoch=int(d["epoch"]), offset=int(d["offset"]))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"iterator state must be a dict with int 'epoch' and "
                            f"'offset', got {d!r}") from e


class BatchIterator:
    """An endless, resumable stream of (x, y) minibatches.

    Epoch e visits examples in the order
    `jax.random.permutation(jax.random.fold_in(key, e), N)` (or 0..N-1 when
    shuffle=False), so the stream is a pure function of (key, state) and a new
    iterator built with `state=old.state` continues exactly where `old` stopped.

    Args:
        arrays: x [N, ...], y [N, ...].
        batch_size: B, examples per batch.
        key: JAX PRNG key.
        shuffle: reshuffle each epoch.
        drop_last: skip the final partial batch of each epoch.
        state: position to start from.

    Raises:
        DataError: bad batch_size or a state outside the data.
    """

    def __init__(
        self,
        arrays: Arrays,
        batch_size: int,
        *,
        key: jax.Array,
        shuffle: bool = True,
        drop_last: bool = False,
        state: IteratorState = IteratorState(),
    ):
        n = arrays.num_examples
        if n < 1:
            raise DataError("BatchIterator: dataset is empty; expected at least one example")
        if int(batch_size) != batch_size or batch_size < 1:
            raise DataError(f"BatchIterator: batch_size must be an int >= 1, got {batch_size}")
        if drop_last and batch_size > n:
            raise DataError(f"BatchIterator: batch_size={batch_size} > {n} examples with "
                            f"drop_last=True would yield no batches; use a batch_size <= "
                            f"{n} or drop_last=False")
        state = IteratorState(int(state.epoch), int(state.offset))
        if state.epoch < 0 or not 0 <= state.offset <= n:
            raise DataError(f"BatchIterator: state {state} is outside the data; expected "
                            f"epoch >= 0 and 0 <= offset <= {n}")
        self._arrays = arrays
        self._n = n
        self._batch_size = int(batch_size)
        self._key = key
        self._shuffle = shuffle
        self._drop_last = drop_last
        self._epoch, self._offset = state
        self._normalize()
        self._order_epoch: int | None = None
        self._order: np.ndarray | None = None

    @property
    def arrays(self) -> Arrays:
        """The data the batches are drawn from."""
        return self._arrays

    @property
    def state(self) -> IteratorState:
        """IteratorState of the next batch to be yielded."""
        return IteratorState(self._epoch, self._offset)

    @property
    def steps_per_epoch(self) -> int:
        """Number of batches in one full epoch."""
        if self._drop_last:
            return self._n // self._batch_size
        return -(-self._n // self._batch_size)

    @property
    def full_batches_left(self) -> int:
        """Full-size batches before the current epoch ends (a final partial one not counted)."""
        return (self._epoch_end() - self._offset) // self._batch_size

    def _epoch_end(self) -> int:
        # Offset at which the current epoch stops yielding batches.
        return self.steps_per_epoch * self._batch_size if self._drop_last else self._n

    def _normalize(self) -> None:
        # A position with no batch left in its epoch is the start of the next one.
        if self._offset >= self._epoch_end():
            self._epoch += 1
            self._offset = 0

    def _order_for(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            if self._shuffle:
                perm = jax.random.permutation(jax.random.fold_in(self._key, epoch), self._n)
                self._order = np.asarray(perm)
            else:
                self._order = np.arange(self._n)
            self._order_epoch = epoch
        return self._order

    def next_indices(self) -> np.ndarray:
        """The rows ``[b] int`` of the next batch, advancing past it (for data kept elsewhere,
        e.g. on the device: ``x[rows]`` is the batch ``next()`` would return)."""
        order = self._order_for(self._epoch)
        idx = order[self._offset:self._offset + self._batch_size]
        self._offset += len(idx)
        self._normalize()
        return idx

    def _next_batch(self) -> Batch:
        idx = self.next_indices()
        return self._arrays.x[idx], self._arrays.y[idx]

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return self._next_batch()

    def epoch(self) -> Iterator[Batch]:
        """Yields the remaining batches of the current epoch only.

        Afterwards `state` is (epoch + 1, 0). The epoch is fixed when the
        generator is created; the batch is taken lazily on each step.
        """
        current = self._epoch
        while self._epoch == current:
            yield self._next_batch()


def eval_batches(arrays: Arrays, batch_size: int, *, pad: bool = False) -> Iterator[tuple]:
    """Sequential batches over the data once, final partial batch included.

    Args:
        arrays: x [N, ...], y [N, ...].
        batch_size: B, examples per batch (>= 1).
        pad: pad every batch to B rows and add its weights (see `pad_batch`).

    Yields:
        (x [b, ...], y [b, ...]) with b = B except possibly the last; with pad,
        (x [B, ...], y [B, ...], weights [B]).
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise DataError(f"eval_batches: batch_size must be an int >= 1, got {batch_size}")
    for start in range(0, arrays.num_examples, int(batch_size)):
        batch = arrays.x[start:start + batch_size], arrays.y[start:start + batch_size]
        yield pad_batch(batch, batch_size) if pad else batch


def example_weights(num_real: int, size: int) -> np.ndarray:
    """``[size]`` float32: 1 for the first ``num_real`` rows, 0 for the padding after them."""
    return (np.arange(size) < num_real).astype(np.float32)


def pad_batch(batch: Batch, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y)`` of ``b <= size`` rows -> ``(x, y, weights)`` of ``size`` rows, padded with
    zeros of weight 0, so that every batch has one shape whatever the device count."""
    x, y = batch
    n = len(x)

    def grow(a):
        return np.concatenate([a, np.zeros((size - n, *a.shape[1:]), a.dtype)]) if n < size else a

    return grow(x), grow(y), example_weights(n, size)


def gather_batch(
    arrays: Arrays,
    rows: np.ndarray,
    *,
    pad_to: Optional[int] = None,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple:
    """This process's share of the batch of ``rows``, reading only that share.

    The global batch is ``(x[rows], y[rows])``, padded with ``pad_batch`` to ``pad_to``
    rows when given; process ``p`` of ``P`` feeds its contiguous ``1/P`` of those rows (as
    ``fntrain.parallel.process_rows`` cuts them), and only those rows are read, so on one
    process this is exactly the padded global batch.

    Args:
      arrays: x [N, ...], y [N, ...] (arrays in memory or views of a file).
      rows: ``[b]`` int rows of the global batch.
      pad_to: the global batch size to pad to (weights added); None: no padding.
      process_index, process_count: this process and how many feed the batch.

    Returns:
      ``(x [b/P, ...], y [b/P, ...])``, or with ``pad_to``, ``(x, y, weights)`` of
      ``pad_to/P`` rows.
    """
    size = len(rows) if pad_to is None else pad_to
    per = size // process_count
    start = process_index * per
    mine = rows[start : min(start + per, len(rows))] if start < len(rows) else rows[:0]
    batch = arrays.x[mine], arrays.y[mine]
    return batch if pad_to is None else pad_batch(batch, per)


def pad_rows(rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``[b]`` -> ``([size] int32, weights [size])``, padded with row 0 of weight 0."""
    n = len(rows)
    padded = np.concatenate([rows, np.zeros(size - n, rows.dtype)]) if n < size else rows
    return padded.astype(np.int32), example_weights(n, size)
