"""Dispatches: the training batches of up to K fused steps, never across an event."""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple, Optional

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
    """

    steps: int
    batch: Any
    position: data_lib.IteratorState
    examples: int


def dispatches(
    iterator: data_lib.BatchIterator,
    cadence: Cadence,
    start_step: int,
    *,
    steps_per_dispatch: int = 1,
    rows_only: bool = False,
    put: Optional[Callable[[Any], Any]] = None,
) -> Iterator[Dispatch]:
    """The run's dispatches from ``start_step`` to ``cadence.total_steps``.

    Each takes up to ``steps_per_dispatch`` steps, stopping at the next event and at an
    epoch's final partial batch (its shape differs, so it runs alone).

    Args:
      iterator: the training batches, positioned at ``start_step``.
      cadence: where the events are.
      steps_per_dispatch: K; above 1, batches are stacked on a leading ``[K]`` axis.
      rows_only: yield row indices for data kept on the device instead of batches.
      put: places a host batch on the devices (not called for rows).
    """
    fused = steps_per_dispatch > 1
    step = start_step
    while step < cadence.total_steps:
        count = max(1, min(cadence.steps_to_event(step, steps_per_dispatch), iterator.full_batches_left))
        if rows_only:
            rows = np.stack([iterator.next_indices() for _ in range(count)]).astype(np.int32)
            batch, examples = (rows if fused else rows[0]), rows.size
        else:
            batches = [next(iterator) for _ in range(count)]
            batch = jax.tree.map(lambda *b: np.stack(b), *batches) if fused else batches[0]
            examples = sum(len(b[0]) for b in batches)
            batch = put(batch) if put is not None else batch
        step += count
        yield Dispatch(count, batch, iterator.state, examples)
