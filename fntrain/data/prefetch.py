"""A bounded background thread that prepares the next items of an iterator ahead of use.

The training loop runs its host batches (read, padded and placed on the devices) through
it, so that reading a batch from disk overlaps the device's work on the step before. The
items and their order are those of the iterator: prefetching changes when an item is
made, never what it is, so a run's numbers are the same for any depth.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["Prefetcher", "prefetch"]

_POLL_S = 0.1


class Prefetcher:
    """Iterates ``items`` in a daemon thread, at most ``size`` items ahead of the consumer.

    Iterating yields ``items``'s items in order; an exception raised by ``items`` is raised
    again where its item would have come. ``close()`` (or leaving a ``with`` block) stops the
    thread and closes ``items``; items made ahead are dropped.

    Args:
      items: any iterator; it runs in the thread, so it must not need the main thread.
      size: how many items may wait, >= 1.

    Example:
      >>> with Prefetcher(dispatches(...), size=2) as upcoming:
      ...     for dispatch in upcoming:
      ...         ...
    """

    def __init__(self, items: Iterator, size: int):
        if size < 1:
            raise ValueError(f"Prefetcher size must be >= 1, got {size}")
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(items,), name="fntrain-prefetch", daemon=True)
        self._thread.start()

    def _run(self, items: Iterator) -> None:
        try:
            for item in items:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as e:  # handed to the consumer, raised there
            self._put(("error", e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def _put(self, entry: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "item":
            return value
        self._done = True
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stops the thread (waiting for the item it is making) and drops what it made ahead."""
        self._stop.set()
        self._done = True
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Inline:
    """``items`` itself, with the Prefetcher's ``close`` and ``with``."""

    def __init__(self, items: Iterator):
        self._items = items

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._items)

    def close(self) -> None:
        close = getattr(self._items, "close", None)
        if close is not None:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prefetch(items: Iterator, size: int):
    """``items`` prepared ``size`` ahead in a thread (:class:`Prefetcher`), or, for ``size``
    0, in the caller's thread; either way a context manager that closes ``items``."""
    return Prefetcher(items, size) if size > 0 else _Inline(items)
