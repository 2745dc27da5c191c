"""Evaluation over a whole dataset, exact for every metric and any batch size.

Each batch's metrics come back as sums (:class:`fntrain.metrics.Stats`; a ``loss_fn``'s
plain scalars count as means over the batch's examples), kept on the device until the
split is done, added up on the host in float64 and reduced once.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fntrain import data as data_lib
from fntrain import metrics as metrics_lib
from fntrain.parallel import to_host
from fntrain.state import TrainState
from fntrain.step import LossFn

EvalStep = Callable[[TrainState, Any], dict]


def _as_stats(value, count) -> metrics_lib.Stats:
    if isinstance(value, metrics_lib.Stats):
        return value
    return metrics_lib.Stats({"total": value * count, "count": count}, metrics_lib._ratio)


def _example_count(batch) -> jax.Array:
    """Real examples in a batch: the sum of its weights for ``(x, y, weights)``, else its rows."""
    if isinstance(batch, tuple) and len(batch) == 3:
        return jnp.sum(batch[2]).astype(jnp.float32)
    return jnp.float32(jax.tree.leaves(batch)[0].shape[0])


def make_eval_stats_step(loss_fn: LossFn, *, metrics_sharding: Any = None) -> EvalStep:
    """A jitted ``step(train_state, batch) -> {name: Stats}`` (``loss`` included), in
    evaluation mode (``key=None``; the new model state is discarded)."""

    def eval_step(ts: TrainState, batch) -> dict:
        loss, (_, metrics) = loss_fn(ts.params, ts.model_state, batch, None)
        count = _example_count(batch)
        return {k: _as_stats(v, count) for k, v in {**metrics, "loss": loss}.items()}

    return jax.jit(eval_step, out_shardings=metrics_sharding)


def reduce_batches(eval_step: EvalStep, ts: TrainState, batches: Iterable) -> dict[str, float]:
    """The metrics of ``eval_step`` over all ``batches``: one host transfer at the end."""
    per_batch = [eval_step(ts, batch) for batch in batches]
    if not per_batch:
        raise ValueError("evaluation needs at least one batch")
    host = to_host(per_batch)
    totals = jax.tree.map(lambda *sums: np.sum(np.asarray(sums, np.float64), axis=0), *host)
    return {name: float(stats.value()) for name, stats in totals.items()}


def evaluate_arrays(
    eval_step: EvalStep,
    ts: TrainState,
    arrays: data_lib.Arrays,
    batch_size: int,
    put: Optional[Callable] = None,
    *,
    pad: bool = False,
) -> dict[str, float]:
    """``reduce_batches`` over ``arrays`` in order, each batch placed with ``put`` (e.g. on a
    mesh); with ``pad``, every batch has ``batch_size`` rows and its weights."""
    batches = data_lib.eval_batches(arrays, batch_size, pad=pad)
    return reduce_batches(eval_step, ts, batches if put is None else map(put, batches))


def evaluate(
    loss_fn: LossFn, params, model_state, data, *, batch_size: int = 256
) -> dict[str, float]:
    """Metrics of ``loss_fn`` (``loss`` included) over a whole dataset, in evaluation mode.

    Mean metrics are example-weighted and ratio metrics such as R^2 come from split-wide
    sums, so the result does not depend on ``batch_size``.

    Args:
      loss_fn: the step protocol, e.g. ``supervised_loss(net, loss, metric_fns={"r2": metrics.r2})``.
      params, model_state: the network's.
      data: ``fntrain.data.Arrays`` or an ``(x, y)`` pair of arrays ``[N, ...]``.
      batch_size: examples per evaluation batch.

    Example:
      >>> fn = ft.supervised_loss(net, ft.losses.mean_squared_error,
      ...                         metric_fns={"r2": ft.metrics.r2, "mae": ft.metrics.METRICS["mean_absolute_error"]})
      >>> ft.evaluate(fn, params, state, (x_test, y_test))
      {'r2': 0.93, 'mae': 0.21, 'loss': 0.07}
    """
    x, y = data
    # Arrays read from disk stay views: each batch reads its own rows.
    x, y = (a if data_lib.is_lazy(a) else np.asarray(a) for a in (x, y))
    ts = TrainState(jnp.zeros((), jnp.int32), params, model_state, None, jax.random.key(0))
    return evaluate_arrays(make_eval_stats_step(loss_fn), ts, data_lib.Arrays(x, y), batch_size)
