"""Every member's metrics over its own split, in one vmapped pass per batch.

Exact as :mod:`fntrain.evaluation` is: per-batch sums stay on the device until the split is
done, are added up on the host in float64 and reduced once, member by member.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from fntrain import data as data_lib
from fntrain.parallel import to_host


def member_batches(arrays: tuple, index: np.ndarray, batch_size: int, *, pad: bool):
    """The split in order, as batches ``[M, B, ...]``: member ``m``'s rows of data set ``index[m]``.

    Args:
      arrays: ``(x [D, N, ...], y [D, N, ...])``.
      index: ``[M]`` int, each member's data set.
      batch_size: rows per batch; with ``pad`` the last batch is padded with weight-0 rows
        and every batch carries its weights ``[M, B]``.
    """
    x, y = arrays
    n = x.shape[1]
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        if pad:
            rows, weights = data_lib.pad_rows(rows, batch_size)
            w = np.broadcast_to(weights, (len(index), len(weights)))
            yield x[index[:, None], rows[None, :]], y[index[:, None], rows[None, :]], np.ascontiguousarray(w)
        else:
            yield x[index[:, None], rows[None, :]], y[index[:, None], rows[None, :]]


def evaluate_members(
    eval_step: Callable, ts, values: dict, arrays: tuple, index: np.ndarray, batch_size: int, *, pad: bool
) -> list[dict[str, float]]:
    """``[{metric: value}]``, one dict per member, of ``eval_step`` over the whole split."""
    per_batch = [eval_step(ts, batch, values) for batch in member_batches(arrays, index, batch_size, pad=pad)]
    if not per_batch:
        raise ValueError("evaluation needs at least one batch")
    host = to_host(per_batch)
    totals = jax.tree.map(lambda *sums: np.sum(np.asarray(sums, np.float64), axis=0), *host)
    return [
        {name: float(jax.tree.map(lambda a: a[m], stats).value()) for name, stats in totals.items()}
        for m in range(len(index))
    ]
