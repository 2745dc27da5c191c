"""Dispatches: the training batches of up to K fused steps, never across an event."""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple, Optional, Union

import jax
import numpy as np

from fntrain import data as data_lib
from fntrain.cadence import Cadence


class Dispatch(NamedTuple):
    """One call of the train step.

    Attributes:
      steps: the steps it runs (K for a full fused dispatch, fewer up to an event).
      batch: its input: a batch ``(x, y)`` (``[K, B, ...]`` leaves when fused), or the rows
        ``[B]`` / ``[K, B]`` int32 of data kept on the device.
      position: the data iterator's position after it.
      examples: training examples in it.
      fused: whether its batch has the leading ``[K]`` axis of a fused dispatch.
    """

    steps: int
    batch: Any
    position: data_lib.IteratorState
    examples: int
    fused: bool = False


def dispatches(
    iterator: data_lib.BatchIterator,
    cadence: Cadence,
    start_step: int,
    *,
    steps_per_dispatch: Union[int, Callable[[], int]] = 1,
    rows_only: bool = False,
    pad_to: Optional[int] = None,
    put: Optional[Callable[[Any], Any]] = None,
    gather: Optional[Callable[[np.ndarray], Any]] = None,
) -> Iterator[Dispatch]:
    """The run's dispatches from ``start_step`` to ``cadence.total_steps``.

    Each takes up to ``steps_per_dispatch`` steps, stopping at the next event. Without
    padding it also stops at an epoch's final partial batch (its shape differs, so it runs
    alone); with ``pad_to`` every batch is padded to that many rows and carries its weights.

    Args:
      iterator: the training batches, positioned at ``start_step``.
      cadence: where the events are.
      steps_per_dispatch: K; above 1, batches are stacked on a leading ``[K]`` axis. A
        function instead is read before each dispatch (``loop.steps_per_dispatch: auto``);
        a dispatch it would cut short of its K at an event then runs as single steps, so
        only two programs compile.
      rows_only: yield row indices for data kept on the device instead of batches:
        ``rows`` or, with ``pad_to``, ``(rows, weights)``.
      pad_to: the batch size to pad to (``data.pad_batch``); None: no padding and no weights.
      put: places a host batch on the devices (not called for rows).
      gather: ``gather(rows) -> batch``, the host batch of a step's rows ``[B]``; None: the
        whole batch, padded to ``pad_to`` (``data.gather_batch``). A multi-process run gives
        one that reads only this process's rows.
    """
    if gather is None:
        gather = lambda rows: data_lib.gather_batch(iterator.arrays, rows, pad_to=pad_to)  # noqa: E731
    chosen = callable(steps_per_dispatch)
    size = steps_per_dispatch if chosen else (lambda: steps_per_dispatch)
    step = start_step
    while step < cadence.total_steps:
        k = size()
        count = cadence.steps_to_event(step, k)
        if pad_to is None:
            count = max(1, min(count, iterator.full_batches_left))
        if chosen and count < k:
            count = 1
        fused = count > 1 if chosen else k > 1
        rows = [iterator.next_indices() for _ in range(count)]
        examples = sum(len(r) for r in rows)
        if rows_only:
            steps = [data_lib.pad_rows(r, pad_to) for r in rows] if pad_to else [r.astype(np.int32) for r in rows]
        else:
            steps = [gather(r) for r in rows]
        batch = jax.tree.map(lambda *b: np.stack(b), *steps) if fused else steps[0]
        if put is not None and not rows_only:
            batch = put(batch)
        step += count
        yield Dispatch(count, batch, iterator.state, examples, fused)
