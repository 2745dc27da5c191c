"""Metrics that are exact over a whole dataset, not just over one batch.

A :class:`Metric` is a pair of functions: ``sums(outputs, targets, weights)`` adds up what
the metric needs over a batch (``{"total": [], "count": []}`` for a mean; the sums of
``y``, ``y^2`` and squared residuals for R^2), and ``reduce(sums)`` turns the sums into the
value. Sums of several batches add up, so a split's value is ``reduce`` of the summed
batches: a mean is example-weighted, and R^2 comes from split-wide sums rather than an
average of per-batch R^2s, for any evaluation batch size. ``metric(outputs, targets)`` is
the value on one batch.

``weights: [N]`` (1 for real examples, 0 for padding) make padded batches exact too.

Example:
  >>> metrics.r2(predictions, targets)                       # on one batch
  >>> s = [metrics.r2.sums(p, t) for p, t in batches]       # over a dataset
  >>> metrics.r2.reduce(jax.tree.map(lambda *a: sum(a), *s))
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

Sums = dict[str, Any]


class Metric(NamedTuple):
    """A metric as per-batch sums and a reduction (see the module docstring).

    Attributes:
      sums: ``sums(outputs, targets, weights=None) -> {name: [] or [D] array}``.
      reduce: ``reduce(sums) -> []``; works on ``jnp`` and float64 NumPy sums alike.
    """

    sums: Callable[..., Sums]
    reduce: Callable[[Sums], Any]

    def __call__(self, outputs, targets, weights=None):
        """The metric's value on one batch."""
        return self.reduce(self.sums(outputs, targets, weights))


@jax.tree_util.register_pytree_node_class
class Stats:
    """A metric's sums over some examples, with the reduction that gives its value.

    A pytree whose leaves are the sums (``reduce`` is static), so it passes through
    ``jax.jit`` and ``Stats`` of equal metrics add leaf by leaf. A ``loss_fn`` may return
    ``Stats`` among its metrics to be exact over an evaluation split.
    """

    def __init__(self, sums: Sums, reduce: Callable[[Sums], Any]):
        self.sums, self.reduce = sums, reduce

    def value(self):
        return self.reduce(self.sums)

    def tree_flatten(self):
        return (self.sums,), self.reduce

    @classmethod
    def tree_unflatten(cls, reduce, children):
        return cls(children[0], reduce)


def stats(metric: Metric, outputs, targets, weights=None) -> Stats:
    """``metric``'s sums over a batch, as :class:`Stats`."""
    return Stats(metric.sums(outputs, targets, weights), metric.reduce)


def value(m) -> Any:
    """A metric's value: ``m.value()`` for :class:`Stats`, ``m`` itself for a plain scalar."""
    return m.value() if isinstance(m, Stats) else m


# --------------------------------------------------------------------------- means


def _xp(a):
    """NumPy for host sums, ``jax.numpy`` for traced or device ones."""
    return np if isinstance(a, (np.ndarray, np.generic, float)) else jnp


def _example_weights(values: jax.Array, weights: Optional[jax.Array]) -> jax.Array:
    """``weights [N]`` broadcast over ``values [N, ...]`` (ones when None)."""
    if weights is None:
        return jnp.ones(values.shape, jnp.float32)
    return jnp.broadcast_to(weights.reshape(weights.shape + (1,) * (values.ndim - 1)), values.shape).astype(jnp.float32)


def _ratio(sums: Sums):
    return sums["total"] / sums["count"]


def mean_of(elementwise: Callable[[jax.Array, jax.Array], jax.Array]) -> Metric:
    """The mean of ``elementwise(outputs, targets) -> [N, ...]`` over every element of a split."""

    def sums(outputs, targets, weights=None):
        values = elementwise(outputs, targets).astype(jnp.float32)
        w = _example_weights(values, weights)
        return {"total": jnp.sum(values * w), "count": jnp.sum(w)}

    return Metric(sums, _ratio)


def _class_ids(labels: jax.Array) -> jax.Array:
    return labels if jnp.issubdtype(labels.dtype, jnp.integer) else jnp.argmax(labels, axis=-1)


def _correct(logits, labels):
    return jnp.argmax(logits, axis=-1) == _class_ids(labels)


def _binary_correct(logits, labels):
    return (logits > 0) == (labels.reshape(logits.shape) > 0.5)


def _absolute_error(predictions, targets):
    return jnp.abs(predictions - targets.reshape(predictions.shape))


def _squared_error(predictions, targets):
    return jnp.square(predictions - targets.reshape(predictions.shape))


def _in_top(k: int):
    def in_top(logits, labels):
        _, top = jax.lax.top_k(logits, k)
        return jnp.any(top == _class_ids(labels)[..., None], axis=-1)

    return in_top


_accuracy = mean_of(_correct)
_binary_accuracy = mean_of(_binary_correct)
_mean_absolute_error = mean_of(_absolute_error)
_mean_squared_error = mean_of(_squared_error)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose arg-max logit is the label.

    Shapes: ``logits: [..., C]``; ``labels: [...]`` int or ``[..., C]`` one-hot (``[N, C]``
    for classification, ``[B, T, V]`` for sequences).
    """
    return _accuracy(logits, labels)


def top_k_accuracy(logits: jax.Array, labels: jax.Array, *, k: int = 5) -> jax.Array:
    """Fraction of rows whose label is among the ``k`` largest logits (ties broken by ``lax.top_k``)."""
    return mean_of(_in_top(k))(logits, labels)


def binary_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of elements where ``logits > 0`` agrees with ``labels > 0.5``."""
    return _binary_accuracy(logits, labels)


def mean_absolute_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean over all elements of ``|predictions - targets|``."""
    return _mean_absolute_error(predictions, targets)


def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean over all elements of ``(predictions - targets) ** 2``."""
    return _mean_squared_error(predictions, targets)


def _root(sums: Sums):
    return _xp(sums["total"]).sqrt(_ratio(sums))


# --------------------------------------------------------------------------- R^2


def _r2_sums(predictions, targets, weights=None) -> Sums:
    """Per output column ``[D]``: weight, and weighted sums of y, y^2 and the squared residuals."""
    y = targets.reshape(predictions.shape).astype(jnp.float32)
    y, p = y.reshape(y.shape[0], -1), predictions.reshape(y.shape[0], -1).astype(jnp.float32)
    w = _example_weights(y, weights)
    return {
        "count": jnp.sum(w, axis=0),
        "y": jnp.sum(w * y, axis=0),
        "y2": jnp.sum(w * y * y, axis=0),
        "residual": jnp.sum(w * jnp.square(y - p), axis=0),
    }


def _r2_reduce(sums: Sums):
    """``1 - SS_res / SS_tot`` per column, averaged (scikit-learn's ``r2_score`` with its
    defaults: a constant column scores 1 if predicted exactly, else 0)."""
    xp = _xp(sums["count"])
    total = sums["y2"] - sums["y"] * sums["y"] / sums["count"]
    exact = sums["residual"] == 0
    safe = xp.where(total > 0, total, 1.0)
    scores = xp.where(total > 0, 1.0 - sums["residual"] / safe, xp.where(exact, 1.0, 0.0))
    return xp.mean(scores)


r2 = Metric(_r2_sums, _r2_reduce)


def r2_score(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Coefficient of determination ``1 - SS_res / SS_tot``, averaged over output columns
    (scikit-learn's ``r2_score``). Shapes: ``predictions, targets: [N]`` or ``[N, D]``."""
    return r2(predictions, targets)


METRICS: dict[str, Metric] = {
    "accuracy": _accuracy,
    "top_5_accuracy": mean_of(_in_top(5)),
    "binary_accuracy": _binary_accuracy,
    "mean_absolute_error": _mean_absolute_error,
    "mean_squared_error": _mean_squared_error,
    "root_mean_squared_error": Metric(_mean_squared_error.sums, _root),
    "r2": r2,
}
"""Built-in metrics by the name a config's ``metrics`` list uses."""


def as_metric(fn: Callable | Metric) -> Metric:
    """``fn`` itself if it is a :class:`Metric`; a plain ``fn(outputs, targets) -> scalar``
    (a mean over the batch) becomes an example-weighted mean over a split."""
    if isinstance(fn, Metric):
        return fn

    def sums(outputs, targets, weights=None):
        n = outputs.shape[0]
        count = jnp.float32(n) if weights is None else jnp.sum(weights).astype(jnp.float32)
        if weights is not None:  # a batch mean cannot see padding; weight it by the real examples
            one = lambda o, t: fn(o[None], t[None])  # noqa: E731
            per_example = jax.vmap(one)(outputs, targets).astype(jnp.float32)
            return {"total": jnp.sum(per_example * weights), "count": count}
        return {"total": jnp.asarray(fn(outputs, targets), jnp.float32) * count, "count": count}

    return Metric(sums, _ratio)
